"""``colorbench probe``: linear probes on every tap of a frozen encoder (DESIGN §4).

    colorbench probe --config configs/downstream/probe_tiny.yaml --checkpoint runs/tiny/checkpoints/last.pt
    colorbench probe --config configs/downstream/probe_tiny.yaml --init gaussian   # or kmeans, supervised
    colorbench probe --config configs/downstream/probe_imagenet_resnet50.yaml --init timm:resnet50 \\
        --weights moco_v2_800ep.pth.tar --key-prefix module.encoder_q. --set data.root=/data/imagenet
    torchrun --nproc_per_node 8 -m benchmarks.cli probe --config ... --checkpoint C

Protocol: the trunk is frozen in eval mode (BN statistics are weights too) and checked
unchanged after training (``TrunkChangedError`` otherwise). One trunk pass feeds every
tap's head: pool to ~9k dims (``downstream.probe.heads``: the published table for
AlexNet@227 / ResNet-50@224, an adaptive pool elsewhere), BatchNorm without affine,
Linear. SGD (Nesterov) lr 0.01, momentum 0.9, wd 5e-4, lr x0.1 at ``optim.milestones``;
random crop + flip for training, centre crop for validation; top-1 and top-5 per tap.
Images stream from disk; ``cache.enabled`` (no-augmentation mode only) stores pooled
features on disk for repeated runs (``downstream.probe.feature_cache``).

The trunk (``trunk:`` section, ``--init`` / ``--checkpoint`` / ``--weights`` /
``--key-prefix``) comes from ``downstream.trunks``: a colorbench checkpoint, the
``gaussian`` / ``kmeans`` / ``supervised`` baselines, or a user's ``timm:ARCH`` /
``torchvision:ARCH`` encoder with its weights file (fed RGB instead of L). Records:
suite "probe", protocol "linear_probe", split "val", one row per tap and metric
(top1 / top5, percent); ``encoder`` is the trunk's architecture and ``metrics.json``
holds ``trunk`` (``Trunk.describe()``: init, checkpoint or weights file and its sha256).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from downstream.metrics import topk_correct
from downstream.probe.feeds import make_feeds
from downstream.probe.heads import ProbeHeads, TrunkChangedError, TrunkGuard, build_pool_specs, freeze
from downstream.supervised import batch_usable
from downstream.trunks import (TrunkConfig, add_trunk_arguments, build_trunk, check_trunk_config, default_method,
                               trunk_overrides)
from pretext.data.loader import SkipCounter, train_transform, val_transform
from pretext.data.sources import DataConfig, source_for
from pretext.engine import dist as dist_utils
from pretext.engine.config import add_config_arguments, config_from_args, git_revision, to_yaml
from pretext.engine.runs import RunDir


def protocol_data() -> DataConfig:
    """The probe protocol's data defaults: ImageNet class folders, 256-px short side, 227 crops."""
    return DataConfig(name="imagenet", root="data/imagenet", crop=227,  # AlexNet's input (ResNet-50: 224)
                      resize=256,  # short side before cropping, as the protocol's 256-px images
                      num_workers=8)


@dataclass
class PoolConfig:
    mode: str = "auto"  # auto | table | adaptive (downstream.probe.heads)
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
class ProbeConfig:
    name: str = "probe"
    out_dir: str = "runs"
    method: str = ""  # label in the records; default: colorization (checkpoint), the init name, or ARCH
    taps: list[str] = field(default_factory=list)  # empty = every tap of the trunk
    batch_size: int = 256  # global batch (all ranks), as VISSL's linear evaluation
    num_classes: int = 0  # 0 = the training split's class folders
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    eval_every: int = 0  # 0 = validate once, at the end
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    data: DataConfig = field(default_factory=protocol_data)  # augment false: centre crops (feature cache mode)
    pool: PoolConfig = field(default_factory=PoolConfig)
    optim: ProbeOptim = field(default_factory=ProbeOptim)
    cache: CacheConfig = field(default_factory=CacheConfig)


def check_config(cfg: ProbeConfig, world: int) -> None:
    check_trunk_config(cfg.trunk)  # before any run directory exists
    if cfg.cache.enabled and cfg.data.augment:
        raise ValueError("cache.enabled stores one centre-crop view per image: set data.augment=false "
                         "(random crops + flips always stream from the images)")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")


# ---------------------------------------------------------------------------- data

def get_dataset(cfg: ProbeConfig):
    """(train, val) labelled sources; train augmented unless ``data.augment`` is false."""
    d = cfg.data
    train_tf = train_transform(d.crop, d.resize) if d.augment else val_transform(d.crop, d.resize)
    train = source_for(d, "train", transform=train_tf)
    val = source_for(d, "val", transform=val_transform(d.crop, d.resize))
    for src in (train, val):
        if (src.labels < 0).any():
            raise ValueError(f"{src.name}: a probe needs labelled images (imagefolder, or 'path label' lists)")
    if train.classes is not None and val.classes is not None and train.classes != val.classes:
        raise ValueError(f"train and val class folders differ ({len(train.classes)} vs {len(val.classes)}): "
                         "labels would not line up")
    num_classes = cfg.num_classes or (len(train.classes) if train.classes else int(train.labels.max()) + 1)
    if max(train.labels.max(), val.labels.max()) >= num_classes:
        raise ValueError(f"labels exceed num_classes={num_classes}")
    return train, val, num_classes


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
                raise ValueError("probe: an epoch gave no training batch (fewer usable images than batch_size?)")
            epoch += 1
    return step


# ---------------------------------------------------------------------------- main

def main(cfg: ProbeConfig, argv: list[str] | None = None, run_dir: str | Path | None = None) -> dict:
    """Run one probe; returns {"results": {tap: {top1, top5}}, "records": [...], "run_dir": Path}."""
    device = dist_utils.pick_device(cfg.device)
    _, world, _ = dist_utils.init_distributed(device.type)
    device = dist_utils.pick_device(cfg.device)  # the local rank's GPU once LOCAL_RANK is known
    check_config(cfg, world)
    method = cfg.method or default_method(cfg.trunk)
    train_src, val_src, num_classes = get_dataset(cfg)  # a wrong data root fails before any run dir exists
    run = RunDir(run_dir or Path(cfg.out_dir) / f"{cfg.name}-{method}", enabled=dist_utils.is_main())
    run.write_config(cfg, argv)
    say = run.say
    say(f"colorbench probe: run {run.path} | git {git_revision()} | {world} rank(s) on {device} | argv {argv}")
    say(to_yaml(cfg).rstrip())
    torch.manual_seed(cfg.seed + dist_utils.rank())
    trunk = build_trunk(cfg.trunk, cfg.data, device, run, num_classes, say, seed=cfg.seed, batch_size=cfg.batch_size)
    described = trunk.describe()
    run.log("trunk", **described)
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
    extra = {"trunk": described, "num_classes": num_classes, "iterations": steps,
             "val_images": val_images, "train_seconds": round(seconds, 2), "trunk_unchanged": True,
             "skipped": skips.all_reduce(),
             "pools": {t: {"kind": s.kind, "in": list(s.in_shape), "out": list(s.out_shape), "dim": s.dim}
                       for t, s in heads.specs.items()}}
    records = write_records(run, cfg, method, described["architecture"], results, extra)
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
    base = dict(suite="probe", method=method, encoder=encoder, protocol="linear_probe", dataset=cfg.data.dataset_name,
                split="val")
    records = [dict(base, layer=tap, metric=m, value=round(v, 4)) for tap, r in results.items() for m, v in r.items()]
    run.write_records(records, extra=extra)
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/downstream/probe_tiny.yaml (built-in data, CPU minutes), "
                                 "probe_imagenet_alexnet.yaml / probe_imagenet_resnet50.yaml (the full protocol)")
    add_trunk_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """The ``colorbench probe`` command; user errors (ValueError ...) go to the CLI's one-line report."""
    try:
        main(config_from_args(ProbeConfig, args, **trunk_overrides(args)), sys.argv, args.run_dir)
    except TrunkChangedError as exc:  # not a user error: the run itself went wrong
        print(f"colorbench probe: {exc}", file=sys.stderr)
        return 1
    finally:
        dist_utils.cleanup()
    return 0
