"""``colorbench probe``: linear probes on every tap of a frozen encoder (DESIGN §4).

    colorbench probe --config configs/downstream/probe_tiny.yaml --checkpoint runs/tiny/checkpoints/last.pt
    colorbench probe --config configs/downstream/probe_tiny.yaml --init gaussian   # or kmeans, supervised
    colorbench probe --config configs/downstream/probe_imagenet_alexnet.yaml --checkpoint C \\
        --set data.root=/data/imagenet
    torchrun --nproc_per_node 8 -m benchmarks.cli probe --config ... --checkpoint C

Protocol: the trunk is frozen in eval mode (BN statistics are weights too) and checked
unchanged after training (``TrunkChangedError`` otherwise). One trunk pass feeds every
tap's head: pool to ~9k dims (``downstream.probe_heads``: the published table for
AlexNet@227 / ResNet-50@224, an adaptive pool elsewhere), BatchNorm without affine,
Linear. SGD (Nesterov) lr 0.01, momentum 0.9, wd 5e-4, lr x0.1 at ``optim.milestones``;
random crop + flip for training, centre crop for validation; top-1 and top-5 per tap.
Images stream from disk; ``cache.enabled`` (no-augmentation mode only) stores pooled
features on disk for repeated runs (``downstream.feature_cache``).

Trunks (``init``): ``checkpoint`` (a colorbench encoder checkpoint; its encoder must be
the config's), ``gaussian`` (N(0, 0.01^2) filters, BN statistics from data),
``kmeans`` (Krähenbühl et al., ``pretext.kmeans_init``), ``supervised`` (trained on the
labels first, ``downstream.supervised``). Records: suite "probe", protocol
"linear_probe", split "val", one row per tap and metric (top1 / top5, percent).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from downstream.probe.feeds import batch_usable, loader_for, make_feeds
from downstream.probe.heads import ProbeHeads, TrunkChangedError, TrunkGuard, build_pool_specs, freeze, topk_correct
from downstream.supervised import SupervisedConfig, save_trunk, train_supervised
from pretext.engine import dist as dist_utils
from pretext.engine.config import ConfigError, git_revision, load_config, to_dict, to_yaml
from pretext.encoders import build_encoder
from pretext.encoders.init import calibration_batches, gaussian_init_, kmeans_init_
from pretext.engine.checkpoint import load_encoder
from pretext.engine.runs import RunDir
from downstream.color_quality.classifier import train_transform
from pretext.data.sources import build_source
from pretext.data.loader import SkipCounter, make_loader, val_transform

INITS = ("checkpoint", "gaussian", "kmeans", "supervised")
DEFAULT_METHOD = {"checkpoint": "colorization", "gaussian": "gaussian", "kmeans": "kmeans", "supervised": "supervised"}


@dataclass
class ProbeData:
    name: str = "imagenet"  # the dataset name in the run records
    kind: str = "imagefolder"  # imagefolder | filelist (labelled kinds)
    root: str = "data/imagenet"
    train_split: Optional[str] = "train"
    val_split: Optional[str] = "val"
    train_list: Optional[str] = None  # filelist kind: list files ("path label" lines)
    val_list: Optional[str] = None
    train_limit: Optional[int] = None
    val_limit: Optional[int] = None
    crop: int = 227  # AlexNet's input; the pooling table is for 227 (ResNet-50: 224)
    resize: Optional[int] = 256  # short side before cropping, as the protocol's 256-px images
    augment: bool = True  # random crop + flip (protocol); false = centre crop (feature cache mode)
    num_classes: int = 0  # 0 = the training split's class folders
    batch_size: int = 256  # global batch (all ranks), as VISSL's linear evaluation
    num_workers: int = 8


@dataclass
class PoolConfig:
    mode: str = "auto"  # auto | table | adaptive (downstream.probe_heads)
    target_dim: int = 9000  # adaptive pools aim at the protocol's ~9k dims per tap


@dataclass
class ProbeOptim:
    iterations: int = 140_000  # the protocol: 140k iterations ...
    milestones: list[int] = field(default_factory=lambda: [40_000, 80_000, 120_000])  # ... lr x0.1 every 40k
    gamma: float = 0.1
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4


@dataclass
class CacheConfig:
    enabled: bool = False  # needs data.augment=false: one stored view per image
    dir: str = "runs/cache/probe_features"
    dtype: str = "float16"  # half the disk of float32; BN after the cache absorbs the scale


@dataclass
class BaselineInit:
    gaussian_std: float = 0.01  # Caffe's gaussian filler, as the papers' random baseline
    bn_from_data: bool = True  # gaussian: BN running stats from data (else identity: deep taps shrink)
    calib_images: int = 256  # images for k-means patches and BN statistics
    kmeans_max_patches: int = 20000  # per conv layer (magic_init: 10 per filter)


@dataclass
class ProbeConfig:
    name: str = "probe"
    out_dir: str = "runs"
    method: str = ""  # label in the records; default: colorization (checkpoint) or the init name
    init: str = "checkpoint"  # checkpoint | gaussian | kmeans | supervised
    checkpoint: str = ""
    encoder: str = "alexnet_cc"  # built for gaussian / kmeans / supervised; a checkpoint must match it
    encoder_kwargs: dict = field(default_factory=dict)
    taps: list[str] = field(default_factory=list)  # empty = every tap of the encoder
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    eval_every: int = 0  # 0 = validate once, at the end
    data: ProbeData = field(default_factory=ProbeData)
    pool: PoolConfig = field(default_factory=PoolConfig)
    optim: ProbeOptim = field(default_factory=ProbeOptim)
    cache: CacheConfig = field(default_factory=CacheConfig)
    baseline: BaselineInit = field(default_factory=BaselineInit)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)


def check_config(cfg: ProbeConfig, world: int) -> None:
    if cfg.init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {cfg.init!r}")
    if cfg.init == "checkpoint" and not cfg.checkpoint:
        raise ValueError("init=checkpoint needs --checkpoint (or --init gaussian / kmeans / supervised)")
    if cfg.init in ("gaussian", "kmeans") and cfg.checkpoint:
        raise ValueError(f"init={cfg.init} builds a fresh trunk: drop --checkpoint")
    if cfg.cache.enabled and cfg.data.augment:
        raise ValueError("cache.enabled stores one centre-crop view per image: set data.augment=false "
                         "(random crops + flips always stream from the images)")
    if cfg.data.batch_size % world:
        raise ValueError(f"data.batch_size {cfg.data.batch_size} is not divisible by {world} ranks")


# ---------------------------------------------------------------------------- data

def get_dataset(cfg: ProbeConfig):
    """(train, val) labelled sources; train augmented unless ``data.augment`` is false."""
    d = cfg.data
    train_tf = train_transform(d.crop, d.resize) if d.augment else val_transform(d.crop, d.resize)
    train = build_source(d.kind, d.root, d.train_split, transform=train_tf, list_file=d.train_list, limit=d.train_limit)
    val = build_source(d.kind, d.root, d.val_split, transform=val_transform(d.crop, d.resize),
                       list_file=d.val_list, limit=d.val_limit)
    for src in (train, val):
        if (src.labels < 0).any():
            raise ValueError(f"{src.name}: a probe needs labelled images (imagefolder, or 'path label' lists)")
    if train.classes is not None and val.classes is not None and train.classes != val.classes:
        raise ValueError(f"train and val class folders differ ({len(train.classes)} vs {len(val.classes)}): "
                         "labels would not line up")
    num_classes = d.num_classes or (len(train.classes) if train.classes else int(train.labels.max()) + 1)
    if max(train.labels.max(), val.labels.max()) >= num_classes:
        raise ValueError(f"labels exceed data.num_classes={num_classes}")
    return train, val, num_classes


# ---------------------------------------------------------------------------- trunk

def load_trunk(path: str, expected: str):
    """Trunk of a colorbench checkpoint; a checkpoint of another encoder is a clear error."""
    model, payload = load_encoder(path, drop_head=True)
    if payload["encoder"] != expected:
        raise ValueError(f"checkpoint {path} holds a {payload['encoder']!r} encoder "
                         f"({payload.get('encoder_kwargs', {})}) but this probe is configured for {expected!r}: "
                         f"use the {payload['encoder']} probe config or --set encoder={payload['encoder']}")
    return model, payload


def build_trunk(cfg: ProbeConfig, num_classes: int, device: torch.device, run: RunDir, say):
    """(trunk on ``device`` without its colour head, encoder name, kwargs, provenance)."""
    if cfg.checkpoint:
        trunk, payload = load_trunk(cfg.checkpoint, cfg.encoder)
        name, kwargs = payload["encoder"], dict(payload.get("encoder_kwargs", {}))
        info = {"checkpoint": str(cfg.checkpoint), "checkpoint_step": payload.get("step")}
    else:
        name, kwargs = cfg.encoder, dict(cfg.encoder_kwargs)
        trunk, info = build_encoder(name, **kwargs), {}
    trunk.head = nn.Identity()  # the probe never runs the colour head
    trunk.to(device)
    if cfg.init in ("gaussian", "kmeans") or (cfg.init == "supervised" and not cfg.checkpoint):
        info.update(_init_fresh(cfg, trunk, num_classes, device, run, name, kwargs, say))
    _broadcast(trunk)
    return trunk, name, kwargs, info


def _init_fresh(cfg, trunk, num_classes, device, run, name, kwargs, say) -> dict:
    b, d = cfg.baseline, cfg.data
    if cfg.init == "supervised":  # always random crops + flips, whatever the probe itself uses
        src = build_source(d.kind, d.root, d.train_split, transform=train_transform(d.crop, d.resize),
                           list_file=d.train_list, limit=d.train_limit)
        world, rank = dist_utils.world_size(), dist_utils.rank()
        steps = train_supervised(trunk, loader_for(src, cfg, True, world, rank), num_classes,
                                 cfg.supervised, device, log=run.log)
        path = run.checkpoint_dir / "supervised_trunk.pt"
        if dist_utils.is_main():
            save_trunk(path, trunk, name, kwargs, steps, to_dict(cfg))
        say(f"supervised pretraining: {steps} steps; trunk saved to {path}")
        return {"supervised_steps": steps, "supervised_checkpoint": str(path)}
    calib_src = build_source(d.kind, d.root, d.train_split, list_file=d.train_list,
                             transform=val_transform(d.crop, d.resize), limit=d.train_limit)
    loader = make_loader(calib_src, min(d.batch_size, b.calib_images), shuffle=True, seed=cfg.seed)
    batches = calibration_batches(loader, device, b.calib_images)
    if cfg.init == "kmeans":
        kmeans_init_(trunk, batches, include_head=False, max_patches=b.kmeans_max_patches, seed=cfg.seed)
        say(f"k-means init (Krähenbühl et al.) on {sum(len(x) for x in batches)} images")
    else:
        gaussian_init_(trunk, b.gaussian_std, batches if b.bn_from_data else None, seed=cfg.seed)
        say(f"Gaussian init, std {b.gaussian_std}, BN statistics {'from data' if b.bn_from_data else 'identity'}")
    return {"calib_images": sum(len(x) for x in batches)}


def _broadcast(module: nn.Module) -> None:
    """Rank 0's weights everywhere (data-dependent inits may differ by rounding across ranks)."""
    if dist_utils.world_size() > 1:
        for t in module.state_dict().values():
            torch.distributed.broadcast(t, 0)


# ---------------------------------------------------------------------------- train / evaluate

def train_one_epoch(net: nn.Module, feed, optimizer, scheduler, epoch: int, step: int, cfg: ProbeConfig,
                    bar, run: RunDir, evaluate_fn=None) -> int:
    """One pass of the heads over ``feed`` (or until ``optim.iterations``); returns the step."""
    net.train()
    for pooled, labels in feed.epoch(epoch):
        if step >= cfg.optim.iterations:
            break
        if not batch_usable(labels.numel(), labels.device):  # bad files can leave < 2 images
            continue
        logits = net(pooled)                                                  # {tap: [N, classes]}
        losses = {tap: F.cross_entropy(out, labels) for tap, out in logits.items()}
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"probe: non-finite loss at step {step}: "
                                     f"{ {t: v.item() for t, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.optim.iterations:
            bar.set_postfix(loss=f"{loss.item() / len(losses):.3f}")
            run.log("train", step=step, epoch=epoch, lr=scheduler.get_last_lr()[0],
                    loss={t: round(v.item(), 5) for t, v in losses.items()})
        if evaluate_fn is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.optim.iterations:
            run.log("val", step=step, **evaluate_fn())
            net.train()
    return step


def evaluate(heads: ProbeHeads, feed, device: torch.device) -> tuple[dict[str, dict[str, float]], int]:
    """({tap: {"top1": %, "top5": %}}, images) over the whole split (summed over ranks)."""
    heads.eval()
    counts = torch.zeros(len(heads.taps), 2, dtype=torch.float64, device=device)  # [taps, (top1, top5)]
    seen = torch.zeros(1, dtype=torch.float64, device=device)
    with torch.no_grad():
        for pooled, labels in feed.epoch(0):
            if labels.numel() == 0:
                continue
            logits = heads(pooled)
            for i, tap in enumerate(heads.taps):
                counts[i] += topk_correct(logits[tap], labels).to(counts)
            seen += labels.numel()
    total = dist_utils.all_reduce_sum(torch.cat([counts.flatten(), seen]))
    n = total[-1].item()
    if n == 0:
        raise ValueError("probe evaluation: the validation split gave no usable image")
    per_tap = total[:-1].reshape(-1, 2) * 100.0 / n
    return {tap: {"top1": per_tap[i, 0].item(), "top5": per_tap[i, 1].item()} for i, tap in enumerate(heads.taps)}, int(n)


def make_optimizer(params, o: ProbeOptim) -> torch.optim.SGD:
    """The protocol's SGD. Fused (one pass over the 5 x ~9.6M head weights per step
    instead of ~5): the update is memory-bound and cost ~30% of a CPU step otherwise."""
    try:
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device without a fused kernel
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)


def fit(net, heads, train_feed, val_feed, cfg: ProbeConfig, device, run: RunDir) -> int:
    o = cfg.optim
    optimizer = make_optimizer(list(heads.parameters()), o)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, o.milestones, o.gamma)
    step, epoch = 0, 0
    with tqdm(total=o.iterations, desc="probe", unit="it", disable=not dist_utils.is_main()) as bar:
        while step < o.iterations:
            before = step
            step = train_one_epoch(net, train_feed, optimizer, scheduler, epoch, step, cfg, bar, run,
                                   lambda: evaluate(heads, val_feed, device)[0])
            if step == before:
                raise ValueError("probe: an epoch gave no training batch (fewer usable images than data.batch_size?)")
            epoch += 1
    return step


# ---------------------------------------------------------------------------- main

def main(cfg: ProbeConfig, argv: list[str] | None = None, run_dir: str | Path | None = None) -> dict:
    """Run one probe; returns {"results": {tap: {top1, top5}}, "records": [...], "run_dir": Path}."""
    device = dist_utils.pick_device(cfg.device)
    _, world, _ = dist_utils.init_distributed(device.type)
    device = dist_utils.pick_device(cfg.device)  # the local rank's GPU once LOCAL_RANK is known
    check_config(cfg, world)
    method = cfg.method or DEFAULT_METHOD[cfg.init]
    train_src, val_src, num_classes = get_dataset(cfg)  # a wrong data root fails before any run dir exists
    run = RunDir(run_dir or Path(cfg.out_dir) / f"{cfg.name}-{method}", enabled=dist_utils.is_main())
    run.write_config(cfg, argv)

    def say(msg: str) -> None:
        if dist_utils.is_main():
            tqdm.write(msg)
            run.log("message", text=msg)
    say(f"colorbench probe: run {run.path} | git {git_revision()} | {world} rank(s) on {device} | argv {argv}")
    say(to_yaml(cfg).rstrip())
    torch.manual_seed(cfg.seed + dist_utils.rank())
    trunk, encoder, kwargs, info = build_trunk(cfg, num_classes, device, run, say)
    freeze(trunk)
    guard = TrunkGuard(trunk)
    taps = list(cfg.taps) or trunk.taps
    heads = build_heads(trunk, taps, cfg, num_classes, device, say)
    net = heads if world == 1 else nn.parallel.DistributedDataParallel(
        heads, device_ids=[device.index] if device.type == "cuda" else None)
    skips = SkipCounter()
    train_feed, val_feed = make_feeds(cfg, trunk, heads, train_src, val_src, device, skips, say)
    start = time.perf_counter()
    steps = fit(net, heads, train_feed, val_feed, cfg, device, run)
    seconds = time.perf_counter() - start
    results, val_images = evaluate(heads, val_feed, device)
    guard.check()  # raises TrunkChangedError if the frozen trunk moved
    extra = {"init": cfg.init, "encoder_kwargs": kwargs, "num_classes": num_classes, "iterations": steps,
             "val_images": val_images, "train_seconds": round(seconds, 2), "trunk_unchanged": True,
             "skipped": skips.all_reduce(device), **info,
             "pools": {t: {"kind": s.kind, "in": list(s.in_shape), "out": list(s.out_shape), "dim": s.dim}
                       for t, s in heads.specs.items()}}
    records = write_records(run, cfg, method, encoder, results, extra)
    say("top-1 / top-5 per tap: " + ", ".join(f"{t} {r['top1']:.1f} / {r['top5']:.1f}" for t, r in results.items()))
    return {"results": results, "records": records, "run_dir": run.path}


def build_heads(trunk, taps: list[str], cfg: ProbeConfig, num_classes: int, device, say) -> ProbeHeads:
    if set(taps) - set(trunk.taps):
        raise ValueError(f"unknown taps {sorted(set(taps) - set(trunk.taps))}; valid: {trunk.taps}")
    specs = build_pool_specs(trunk, taps, cfg.data.crop, cfg.pool.mode, cfg.pool.target_dim)
    for s in specs.values():
        say(f"  {s.tap}: {list(s.in_shape)} -> {s.kind} pool -> {list(s.out_shape)} = {s.dim} dims")
    return ProbeHeads(specs, num_classes).to(device)


def write_records(run: RunDir, cfg: ProbeConfig, method: str, encoder: str, results: dict, extra: dict) -> list[dict]:
    """One flat record per tap and metric (DESIGN §2), values in percent."""
    base = dict(suite="probe", method=method, encoder=encoder, protocol="linear_probe", dataset=cfg.data.name,
                split="val")
    records = [dict(base, layer=tap, metric=m, value=round(v, 4)) for tap, r in results.items() for m, v in r.items()]
    run.write_records(records, extra=extra)
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True,
                        help="YAML recipe: configs/downstream/probe_tiny.yaml (built-in data, CPU minutes), "
                             "probe_imagenet_alexnet.yaml / probe_imagenet_resnet50.yaml (the full protocol)")
    parser.add_argument("--checkpoint", help="colorbench encoder checkpoint to probe (e.g. a pretext run's "
                                             "checkpoints/last.pt); its encoder must match the config's")
    parser.add_argument("--init", choices=INITS,
                        help="trunk: checkpoint (default), or a baseline built here: gaussian, kmeans, supervised")
    parser.add_argument("--method", help="label in the run records (default: colorization for a checkpoint, "
                                         "else the init's name)")
    parser.add_argument("--run-dir", help="run directory (default: OUT_DIR/NAME-METHOD)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set optim.iterations=200")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(ProbeConfig, args.config, args.overrides)
        if args.checkpoint:  # set after parsing: paths are not YAML values
            cfg.checkpoint = args.checkpoint
        if args.init:
            cfg.init = args.init
        if args.method:
            cfg.method = args.method
        main(cfg, sys.argv, args.run_dir)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        print(f"colorbench probe: {exc}", file=sys.stderr)
        return 2
    except TrunkChangedError as exc:
        print(f"colorbench probe: {exc}", file=sys.stderr)
        return 1
    finally:
        dist_utils.cleanup()
    return 0
