"""Checkpoints and atomic file writes (DESIGN §2).

Every file colorbench writes goes through ``atomic_write`` (temp file in the same
folder, fsync, rename; the temp file is removed on any failure), so a crash never
leaves a half-written checkpoint, record or cache behind.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts, read back with
``torch.load(..., weights_only=True)`` (nothing is ever unpickled). Format v2:

    format: "colorbench-checkpoint-v2"
    encoder, encoder_kwargs      how to rebuild the trunk (``pretext.encoders``)
    trunk                        the trunk's state dict (head-free)
    method, method_kwargs        the pretext method (``pretext.methods``), or absent for a
    method_state                 trunk-only checkpoint (supervised / k-means trunks);
                                 the method's own state: heads and buffers, keys without
                                 the ``trunk.`` prefix
    config, step, optimizers, schedulers, rng, ...   resume state, when written by training

Version 1 (colorbench 0.1: ``model`` = trunk + Zhang's ``head.*`` in one state dict)
is converted on load by ``upgrade_v1``, so old checkpoints keep working.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

CHECKPOINT_FORMAT = "colorbench-checkpoint-v2"
V1_FORMAT = "colorbench-checkpoint-v1"


class CheckpointError(ValueError):
    """A file that is not a usable colorbench checkpoint (the message says why)."""


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write(f)`` on a temp file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def file_sha256(path: str | Path) -> str:
    """The first 16 hex digits of a file's sha256 (names weights and sources in records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """``torch.save`` through ``atomic_write``."""
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a colorbench checkpoint (``weights_only=True``), upgraded to format v2."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, not a torch file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a colorbench checkpoint: it cannot be read as tensors and "
                              f"plain data ({first[:120]}); colorbench never unpickles arbitrary objects") from None
    if not isinstance(payload, dict) or payload.get("format") not in (CHECKPOINT_FORMAT, V1_FORMAT):
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a colorbench checkpoint (format {found!r}, expected "
                              f"{CHECKPOINT_FORMAT!r}); to use plain weights of a timm / torchvision "
                              "model pass --init timm:ARCH or torchvision:ARCH with --weights FILE")
    return upgrade_v1(payload) if payload["format"] == V1_FORMAT else payload


def upgrade_v1(payload: dict) -> dict:
    """A colorbench 0.1 checkpoint (trunk + Zhang head in ``model``) as format v2."""
    model = payload.get("model")
    if not isinstance(model, dict) or "encoder" not in payload:
        raise CheckpointError("a v1 checkpoint without 'model' / 'encoder' entries cannot be converted")
    kwargs = dict(payload.get("encoder_kwargs", {}))
    num_bins = kwargs.pop("num_bins", 313)
    out = {k: v for k, v in payload.items() if k not in ("model", "optimizer", "scheduler")}
    out.update(format=CHECKPOINT_FORMAT, upgraded_from=V1_FORMAT, encoder_kwargs=kwargs,
               trunk={k: v for k, v in model.items() if not k.startswith("head.")})
    if any(k.startswith("head.") for k in model):  # a colorization checkpoint (not a bare trunk)
        loss = payload.get("loss", "l2" if num_bins == 2 else "full")
        state = {k: v for k, v in model.items() if k.startswith("head.")}
        if "prior" in payload:
            state["prior"] = payload["prior"]
        out.update(method="zhang", method_kwargs={"loss": loss}, method_state=state)
    elif "method" in out:  # a bare trunk (e.g. the supervised ceiling) named how it was made
        out["origin"] = out.pop("method")
    return out


def load_state_strict(model: torch.nn.Module, state: dict, drop_prefixes: Iterable[str] = ()) -> None:
    """Strict load; the caller names key prefixes it expects to drop (e.g. ``head.``)."""
    drop = tuple(drop_prefixes)
    state = {k: v for k, v in state.items() if not (drop and k.startswith(drop))}
    own = {k for k in model.state_dict() if not (drop and k.startswith(drop))}
    missing, unexpected = sorted(own - state.keys()), sorted(state.keys() - own)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit this model: missing keys {missing[:8]}"
                              f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                              f"{'...' if len(unexpected) > 8 else ''} (was it trained with another encoder?)")
    bad = [k for k, v in model.state_dict().items() if k in state and v.shape != state[k].shape]
    if bad:
        raise CheckpointError(f"checkpoint shapes differ from the model at {bad[:5]} "
                              "(another width or encoder?)")
    model.load_state_dict(state, strict=False)  # own keys outside `drop` all present: checked above


def trunk_checkpoint(trunk: torch.nn.Module, encoder: str, encoder_kwargs: dict, **extra: Any) -> dict:
    """The payload of a trunk-only checkpoint (a supervised or k-means trunk, an export)."""
    return {"format": CHECKPOINT_FORMAT, "encoder": encoder, "encoder_kwargs": dict(encoder_kwargs),
            "trunk": trunk.state_dict(), **extra}
