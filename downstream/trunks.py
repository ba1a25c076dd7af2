"""The one place a harness gets its trunk (DESIGN §2, Trunks): nothing else builds one.

    trunk = build_trunk(cfg.trunk, cfg.data, device, run, num_classes, run.say)
    x = trunk.prepare(batch["image"], device)           # uint8 RGB -> the input it declares
    feats = trunk.forward_features(x, trunk.taps)        # {tap: [N, C, h, w]}

``trunk.init`` (``--init``, spelled the same in every harness):

* ``checkpoint``  a colorbench checkpoint (``--checkpoint``): a pretext method's or a
  trunk-only one (``pretext.engine.checkpoint``); its encoder must be ``trunk.encoder``.
* ``gaussian``    ``trunk.encoder`` with N(0, std^2) filters (``pretext.encoders.init``).
* ``kmeans``      ``trunk.encoder`` with Krähenbühl et al.'s data-dependent init.
* ``supervised``  ``trunk.encoder`` trained on the harness's labels first
  (``downstream.supervised``; saved as ``checkpoints/supervised_trunk.pt``), or with
  ``--checkpoint`` a trunk trained earlier.
* ``timm:ARCH`` / ``torchvision:ARCH``  a user's own encoder: the architecture is built
  here (``pretrained=False`` / ``weights=None``: nothing is ever downloaded) and loaded
  from ``--weights FILE``, e.g. a MoCo / DINO / supervised ResNet-50 state dict.

Inputs: colorbench encoders take the L channel (``input_kind`` "L": ``normalize_l`` of
Lab L, [N, 1, H, W]); user encoders take RGB (``input_kind`` "RGB": /255, then the
ImageNet mean / std that torchvision, MoCo and DINO weights were trained with).

``--weights`` files, ``--key-prefix`` (e.g. ``module.encoder_q.`` for MoCo, ``module.``
for a model saved under DDP, ``backbone.``) and the tap names of user encoders:
``downstream.user_encoders``. ``Trunk.describe()`` goes into every run record: init,
architecture, input, and the checkpoint (path, step, sha256) or weights (path, sha256).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from downstream.supervised import SupervisedConfig, save_trunk, train_loader, train_supervised
from downstream.user_encoders import RESNET_TAPS, build_user_encoder
from pretext.engine.checkpoint import file_sha256
from pretext.color.targets import to_lab
from pretext.data.loader import make_loader, train_transform, val_transform
from pretext.data.sources import DataConfig, source_for
from pretext.encoders import build_encoder, normalize_l
from pretext.encoders.init import MAX_PATCHES, calibration_batches, gaussian_init_, kmeans_init_
from pretext.engine import dist as dist_utils
from pretext.engine.checkpoint import CheckpointError, load_checkpoint, load_state_strict
from pretext.engine.config import to_dict

BASELINES = ("checkpoint", "gaussian", "kmeans", "supervised")
USER_KINDS = ("timm", "torchvision")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
RESNET50_CHANNELS = [64, 256, 512, 1024, 2048]  # the geometry of the published ResNet-50 pools


@dataclass
class BaselineInit:
    gaussian_std: float = 0.01  # Caffe's gaussian filler, as the papers' random baseline
    bn_from_data: bool = True  # gaussian: BN running stats from data (else identity: deep taps shrink)
    calib_images: int = 256  # images for k-means patches and BN statistics
    kmeans_max_patches: int = MAX_PATCHES  # per conv layer: >= 100 patches per filter (pretext.encoders.init)


@dataclass
class TrunkConfig:
    """The ``trunk:`` section of every harness config (see the module doc)."""
    init: str = "checkpoint"  # checkpoint | gaussian | kmeans | supervised | timm:ARCH | torchvision:ARCH
    checkpoint: str = ""  # colorbench checkpoint (init checkpoint, or a supervised trunk trained earlier)
    weights: str = ""  # state dict file of a timm / torchvision encoder (never downloaded)
    key_prefix: str = ""  # keep only weight keys with this prefix, stripped (module.encoder_q. for MoCo)
    encoder: str = "alexnet_cc"  # built for gaussian / kmeans / supervised; a checkpoint must match it
    encoder_kwargs: dict = field(default_factory=dict)
    baseline: BaselineInit = field(default_factory=BaselineInit)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)


def split_init(init: str) -> tuple[str, str]:
    """``"timm:resnet50"`` -> ("timm", "resnet50"); ``"gaussian"`` -> ("gaussian", "")."""
    kind, _, arch = init.partition(":")
    if (kind in BASELINES and not arch) or (kind in USER_KINDS and arch):
        return kind, arch
    raise ValueError(f"trunk.init must be one of {', '.join(BASELINES)}, timm:ARCH or torchvision:ARCH, got {init!r}")


def check_trunk_config(cfg: TrunkConfig) -> None:
    """The flags that go together (a ValueError that says what to drop or add)."""
    kind, _ = split_init(cfg.init)
    if kind == "checkpoint" and not cfg.checkpoint:
        raise ValueError("init=checkpoint needs --checkpoint (or --init gaussian / kmeans / supervised, "
                         "or --init timm:ARCH / torchvision:ARCH --weights FILE for a state dict)")
    if kind in USER_KINDS and not cfg.weights:
        raise ValueError(f"init={cfg.init} needs --weights FILE (a state dict; colorbench never downloads weights)")
    if kind in USER_KINDS and cfg.checkpoint:
        raise ValueError(f"init={cfg.init} loads --weights: drop --checkpoint")
    if kind in ("gaussian", "kmeans") and cfg.checkpoint:
        raise ValueError(f"init={cfg.init} builds a fresh trunk: drop --checkpoint")
    if kind not in USER_KINDS and (cfg.weights or cfg.key_prefix):
        raise ValueError(f"--weights / --key-prefix are for --init timm:ARCH or torchvision:ARCH, not init={cfg.init}")


def default_method(cfg: TrunkConfig) -> str:
    """The records' method label: colorization for a checkpoint, the baseline's name, or ARCH."""
    kind, arch = split_init(cfg.init)
    return arch or ("colorization" if kind == "checkpoint" else kind)


# ---------------------------------------------------------------------------- the trunk

class Trunk(nn.Module):
    """A feature extractor a harness can use: ``net`` (a colorbench encoder or a user's
    ``UserEncoder``) plus the input it declares and where it came from."""

    def __init__(self, net: nn.Module, input_kind: str, description: dict, pool_table: str | None = None):
        super().__init__()
        self.net, self.input_kind, self.pool_table = net, input_kind, pool_table
        self.encoder_name = description["architecture"]
        self._description = dict(description)

    @property
    def feature_info(self) -> dict[str, dict]:
        return self.net.feature_info

    @property
    def taps(self) -> list[str]:
        return list(self.feature_info)

    def forward_features(self, x: torch.Tensor, taps=None) -> dict[str, torch.Tensor]:
        """``x``: what ``prepare`` returns -> {tap: [N, C, h, w]}."""
        return self.net.forward_features(x, taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x, self.taps[-1:])[self.taps[-1]]

    def feature_size(self, h: int, w: int, tap: str | None = None) -> tuple[int, int]:
        return self.net.feature_size(h, w, tap)

    def prepare(self, images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
        """uint8 RGB [N, 3, H, W] (any device) -> this trunk's input on ``device``: L
        [N, 1, H, W] as ``normalize_l``, or RGB [N, 3, H, W] with the ImageNet mean / std."""
        if self.input_kind == "L":
            return normalize_l(to_lab(images, torch.device(device))[:, :1])
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 RGB images [N,3,H,W], got {images.dtype} {list(images.shape)}")
        x = images.to(device, non_blocking=True).float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)

    def describe(self) -> dict:
        """What the run records say about the trunk: init, architecture, input, and its
        source (checkpoint + step, or weights file + sha256 + key_prefix)."""
        return dict(self._description)

    def note(self, **fields) -> None:
        self._description.update(fields)


def encoder_trunk(name: str, encoder_kwargs: dict | None = None, init: str = "untrained", **info) -> Trunk:
    """A freshly built colorbench encoder as a Trunk (PyTorch's default init until a
    baseline init runs); ``info`` joins its description."""
    kwargs = dict(encoder_kwargs or {})
    return Trunk(build_encoder(name, **kwargs), "L", {"init": init, "architecture": name, "input": "L",
                                                      "encoder_kwargs": kwargs, **info}, pool_table=name)


def checkpoint_trunk(path: str | Path, expected: str, init: str = "checkpoint") -> Trunk:
    """The trunk of a colorbench checkpoint; one of another encoder is a clear error."""
    payload = load_checkpoint(path)
    name, kwargs = payload.get("encoder"), dict(payload.get("encoder_kwargs", {}))
    if name != expected:
        raise ValueError(f"checkpoint {path} holds a {name!r} encoder ({kwargs}) but this trunk is configured "
                         f"for {expected!r}: use the {name} config or --set trunk.encoder={name}")
    if not isinstance(payload.get("trunk"), dict):
        raise CheckpointError(f"checkpoint {path} has no 'trunk' state dict")
    trunk = encoder_trunk(name, kwargs, init, checkpoint=str(path), checkpoint_step=payload.get("step"),
                          checkpoint_method=payload.get("method") or payload.get("origin"),
                          checkpoint_sha256=file_sha256(path))
    load_state_strict(trunk.net, payload["trunk"])
    return trunk


def user_trunk(init: str, weights: str | Path, key_prefix: str = "", say=print) -> Trunk:
    """``timm:ARCH`` / ``torchvision:ARCH`` built here and loaded from ``weights``."""
    kind, arch = split_init(init)
    net, info = build_user_encoder(kind, arch, weights, key_prefix, say)
    channels = [net.feature_info[t]["channels"] for t in net.taps]
    table = "resnet50_cc" if net.taps == RESNET_TAPS and channels == RESNET50_CHANNELS else None
    return Trunk(net, "RGB", {"init": init, "architecture": init, "input": "RGB", **info}, pool_table=table)


# ---------------------------------------------------------------------------- build

def build_trunk(cfg: TrunkConfig, data: DataConfig, device: torch.device, run, num_classes: int | None = None,
                say=print, *, seed: int = 0, batch_size: int = 256) -> Trunk:
    """The trunk ``cfg`` names, on ``device``, identical on every rank. ``data`` feeds the
    data-dependent inits (k-means, BN statistics, supervised training on ``num_classes``
    labels); ``batch_size`` (global) and ``seed`` are the harness's own, so a baseline
    sees the batches its harness would. ``run`` (a RunDir) gets the supervised trunk."""
    check_trunk_config(cfg)
    kind, _ = split_init(cfg.init)
    if kind in USER_KINDS:
        trunk = user_trunk(cfg.init, cfg.weights, cfg.key_prefix, say)
    elif cfg.checkpoint:
        trunk = checkpoint_trunk(cfg.checkpoint, cfg.encoder, cfg.init)
    else:
        trunk = encoder_trunk(cfg.encoder, cfg.encoder_kwargs, cfg.init)
    trunk.to(device)
    if kind in ("gaussian", "kmeans") or (kind == "supervised" and not cfg.checkpoint):
        trunk.note(**_init_fresh(cfg, trunk, data, num_classes, device, run, say, seed, batch_size))
    dist_utils.broadcast_module_(trunk)  # data-dependent inits may differ by rounding across ranks
    return trunk


def _init_fresh(cfg: TrunkConfig, trunk: Trunk, data: DataConfig, num_classes, device, run, say, seed: int,
                batch_size: int) -> dict:
    b = cfg.baseline
    if cfg.init == "supervised":  # always random crops + flips, whatever the harness itself uses
        if not num_classes:
            raise ValueError("init=supervised trains on labels: this harness gives no num_classes")
        src = source_for(data, "train", transform=train_transform(data.crop, data.resize))
        loader = train_loader(src, batch_size, data.num_workers, seed)
        steps = train_supervised(trunk, loader, num_classes, cfg.supervised, device, log=run.log)
        path = run.checkpoint_dir / "supervised_trunk.pt"
        if dist_utils.is_main():
            recipe = {"trunk": to_dict(cfg), "data": to_dict(data), "batch_size": batch_size, "seed": seed}
            save_trunk(path, trunk.net, cfg.encoder, cfg.encoder_kwargs, steps, recipe)
        say(f"supervised pretraining: {steps} steps; trunk saved to {path}")
        return {"supervised_steps": steps, "supervised_checkpoint": str(path)}
    calib_src = source_for(data, "train", transform=val_transform(data.crop, data.resize))
    loader = make_loader(calib_src, min(batch_size, b.calib_images), shuffle=True, seed=seed)
    batches = calibration_batches(loader, device, b.calib_images)
    if cfg.init == "kmeans":
        kmeans_init_(trunk.net, batches, include_head=False, max_patches=b.kmeans_max_patches, seed=seed)
        say(f"k-means init (Krähenbühl et al.) on {sum(len(x) for x in batches)} images")
    else:
        gaussian_init_(trunk.net, b.gaussian_std, batches if b.bn_from_data else None, seed=seed)
        say(f"Gaussian init, std {b.gaussian_std}, BN statistics {'from data' if b.bn_from_data else 'identity'}")
    return {"calib_images": sum(len(x) for x in batches)}


# ---------------------------------------------------------------------------- command line

def add_trunk_arguments(parser: argparse.ArgumentParser) -> None:
    """``--init``, ``--checkpoint``, ``--weights``, ``--key-prefix`` (the trunk), ``--method``
    (its label in the records) and ``--run-dir``: the same in every harness."""
    parser.add_argument("--method", help="label in the run records (default: colorization for a checkpoint, "
                                         "the baseline's name, or ARCH for timm:ARCH / torchvision:ARCH)")
    parser.add_argument("--run-dir", help="run directory (default: under the config's out_dir, named after it "
                                          "and the method)")
    g = parser.add_argument_group("trunk (the encoder under test)")
    g.add_argument("--init", help="checkpoint (default: a colorbench checkpoint, --checkpoint); gaussian, kmeans, "
                                  "supervised (baselines built here); timm:ARCH or torchvision:ARCH (your own "
                                  "encoder, e.g. timm:resnet50, with --weights)")
    g.add_argument("--checkpoint", help="colorbench checkpoint (e.g. a pretext run's checkpoints/last.pt); its "
                                        "encoder must match trunk.encoder")
    g.add_argument("--weights", help="state dict file for --init timm:ARCH / torchvision:ARCH (e.g. a MoCo, DINO "
                                     "or supervised ResNet-50); read as tensors only, never downloaded")
    g.add_argument("--key-prefix", help="keep only weight keys starting with this and strip it: module.encoder_q. "
                                        "(MoCo), module. (saved under DDP), backbone. (mmselfsup, solo-learn)")


def trunk_overrides(args: argparse.Namespace) -> dict:
    """The trunk flags as config overrides: ``config_from_args(Cfg, args, **trunk_overrides(args))``."""
    return {"method": args.method, "trunk.init": args.init, "trunk.checkpoint": args.checkpoint, "trunk.weights": args.weights,
            "trunk.key_prefix": args.key_prefix}
