"""Run directories, run records and checkpoints (DESIGN §2).

A run directory holds ``config.yaml`` (resolved config + git revision + versions),
``metrics.json`` (flat records: suite, method, encoder, protocol, dataset, split, layer,
metric, value, plus run id and date), ``log.jsonl`` (one JSON object per event) and
``checkpoints/``. Only rank 0 writes (callers pass ``enabled=is_main()``).

Checkpoints are written atomically (temp file + rename) and read with
``torch.load(..., weights_only=True)``: tensors, numbers, strings, lists and dicts only.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from pretext.config import environment, git_revision, to_yaml

RECORD_FIELDS = ("suite", "method", "encoder", "protocol", "dataset", "split", "layer", "metric", "value")
RECORD_SCHEMA = "colorbench-records-v1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a clear error for missing/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors, truncated files, foreign formats
        raise ValueError(f"cannot load checkpoint {path} safely (weights_only=True): {exc}") from exc
    if not isinstance(payload, dict) or "model" not in payload:
        raise ValueError(f"{path} is not a colorbench checkpoint (no 'model' entry)")
    return payload


def load_state_strict(model: torch.nn.Module, state: dict, drop_prefixes: Iterable[str] = ()) -> None:
    """Strict load; the caller names key prefixes it expects to drop (e.g. ``head.``)."""
    drop = tuple(drop_prefixes)
    state = {k: v for k, v in state.items() if not (drop and k.startswith(drop))}
    own = {k for k in model.state_dict() if not (drop and k.startswith(drop))}
    missing, unexpected = sorted(own - state.keys()), sorted(state.keys() - own)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit this model: missing keys {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''} (was it trained with another encoder?)")
    model.load_state_dict(state, strict=False)  # own keys outside `drop` all present: checked above
    bad = [k for k, v in model.state_dict().items() if k in state and v.shape != state[k].shape]
    if bad:
        raise ValueError(f"checkpoint shapes differ from the model at {bad[:5]}")


class RunDir:
    """A run directory; every write is a no-op when ``enabled`` is False (ranks > 0)."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.run_id = self.path.name
        if enabled:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)

    def write_config(self, config: Any, argv: list[str] | None = None) -> None:
        if not self.enabled:
            return
        header = {"git_revision": git_revision(), "argv": argv or [], "versions": environment(),
                  "created": _dt.datetime.now().isoformat(timespec="seconds")}
        text = to_yaml(config) + "\n# run metadata\n" + "".join(f"# {line}\n" for line in json.dumps(header, indent=1).splitlines())
        atomic_write_text(self.path / "config.yaml", text)

    def log(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        with open(self.path / "log.jsonl", "a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), "event": event, **fields}) + "\n")

    def write_records(self, records: list[dict], extra: dict | None = None) -> None:
        """Write ``metrics.json``: flat records, each with every field of RECORD_FIELDS."""
        if not self.enabled:
            return
        date = _dt.date.today().isoformat()
        rows = []
        for rec in records:
            missing = [f for f in RECORD_FIELDS if f not in rec]
            if missing:
                raise ValueError(f"run record lacks fields {missing}: {rec}")
            rows.append({**rec, "run_id": self.run_id, "date": date})
        payload = {"schema": RECORD_SCHEMA, "run_id": self.run_id, "records": rows, **(extra or {})}
        atomic_write_text(self.path / "metrics.json", json.dumps(payload, indent=1))

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"


CHECKPOINT_FORMAT = "colorbench-checkpoint-v1"


def encoder_checkpoint(model: torch.nn.Module, encoder: str, encoder_kwargs: dict, **extra: Any) -> dict:
    """The payload every colorbench checkpoint carries: weights + how to rebuild the model."""
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "encoder": encoder,
            "encoder_kwargs": dict(encoder_kwargs), **extra}


def load_encoder(path: str | Path, drop_head: bool = False, map_location: str | torch.device = "cpu"):
    """Rebuild the encoder a checkpoint was trained with and load its weights strictly.

    ``drop_head=True`` loads the trunk only (the colorization head keys ``head.*`` are
    expected and dropped). Returns (model, payload)."""
    from pretext.encoders import build_encoder

    payload = load_checkpoint(path, map_location)
    if payload.get("format") != CHECKPOINT_FORMAT or "encoder" not in payload:
        raise ValueError(f"{path} is not a colorbench encoder checkpoint (format {CHECKPOINT_FORMAT})")
    model = build_encoder(payload["encoder"], **payload.get("encoder_kwargs", {}))
    load_state_strict(model, payload["model"], drop_prefixes=("head.",) if drop_head else ())
    return model, payload
