"""``colorbench segment``: FCN semantic segmentation on PASCAL VOC 2012 (DESIGN §4).

    colorbench segment --config configs/downstream/seg_tiny.yaml --checkpoint runs/tiny/checkpoints/last.pt \\
        --set data.root=data/builtin/VOCdevkit/VOC2007 --run-dir runs/seg-colorization
    colorbench segment --config configs/downstream/seg_tiny.yaml --init gaussian --run-dir runs/seg-gaussian
    colorbench segment --config configs/downstream/seg_alexnet.yaml --checkpoint C \\
        --set data.val_list=seg11valid.txt --set variant=fcn8s
    torchrun --nproc_per_node 4 -m benchmarks.cli segment --config ... --checkpoint C

Protocol: FCN-32s (or 16s / 8s, ``downstream.segmentation.model``) on the trunk, every
layer fine-tuned; SGD with the protocol's three lr phases (1e-4, 1e-5, 1e-6, 50k
iterations each); per-pixel cross-entropy averaged over labelled pixels (VOC's 255
border ignored). Then every validation image (``data.val_split``, or ``data.val_list``
such as FCN's seg11valid.txt) is predicted at its own resolution and saved as
``predictions/<id>.png`` (VOC palette, the truth's file name: ``colorbench seg-eval``
scores the folder again), one confusion matrix gives mIU, pixel accuracy, mean accuracy,
fwIU and per-class IU (``downstream.metrics``), and ``examples.png`` shows a few images
side by side (image | prediction | truth). Records: suite "pascal", protocol
"voc12_seg", metrics in percent with layer "" (per-class IU: layer = class, metric "IU").
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2
from tqdm import tqdm

from downstream.metrics import ConfusionMatrix
from downstream.segmentation.data import collate, segmentation_set, split_label, train_transforms
from downstream.segmentation.model import FCN, VARIANTS
from downstream.segmentation.outputs import save_label_png, save_side_by_side
from downstream.segmentation.seg_eval import class_names, report
from downstream.trunks import (TrunkConfig, add_trunk_arguments, build_trunk, check_trunk_config, default_method,
                               trunk_overrides)
from pretext.data.loader import SeededAugmentation, SkipCounter, StepBatchSampler
from pretext.data.sources import DataConfig
from pretext.data.voc import SEG_IGNORE
from pretext.engine import dist as dist_utils
from pretext.engine.config import add_config_arguments, config_from_args, git_revision, to_yaml
from pretext.engine.runs import RunDir


def protocol_data() -> DataConfig:
    return DataConfig(name="voc12", kind="voc", root="data/VOCdevkit/VOC2012", train_split="train", val_split="val",
                      crop=320,  # fixed-size crops batch on any GPU; VOC images are ~500x375
                      num_workers=4)


@dataclass
class SegOptim:
    name: str = "sgd"  # sgd (the protocol's) | adam (short CPU runs: learns in hundreds of steps, not 150k)
    lr_values: list[float] = field(default_factory=lambda: [1e-4, 1e-5, 1e-6])  # the protocol's three phases ...
    phase_iters: list[int] = field(default_factory=lambda: [50_000, 50_000, 50_000])  # ... of 50k iterations
    momentum: float = 0.9
    weight_decay: float = 5e-4  # FCN's
    head_lr_mult: float = 1.0  # the protocol fine-tunes every layer at one rate


@dataclass
class SegConfig:
    name: str = "seg"
    out_dir: str = "runs"
    method: str = ""  # label in the records; default: colorization (checkpoint), the init name, or ARCH
    variant: str = "fcn32s"  # fcn32s | fcn16s | fcn8s (the paper's row: FCN-32s)
    num_classes: int = 21  # VOC: background + 20 classes
    class_names: list[str] = field(default_factory=list)  # empty: VOC's names for 21 classes, else class<i>
    batch_size: int = 20  # global (all ranks), FCN's minibatch of 20 images
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])  # random rescale range (torchvision reference)
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    show_images: int = 4  # validation images in examples.png
    train_masks: str = "SegmentationClass"  # mask folder of the training ids (SegmentationClassAug: SBD's as PNGs)
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    data: DataConfig = field(default_factory=protocol_data)
    optim: SegOptim = field(default_factory=SegOptim)


def check_config(cfg: SegConfig, world: int) -> None:
    check_trunk_config(cfg.trunk)
    if cfg.variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {cfg.variant!r}")
    o = cfg.optim
    if len(o.lr_values) != len(o.phase_iters) or not o.lr_values or min(o.phase_iters) < 0:
        raise ValueError(f"optim.lr_values {o.lr_values} and optim.phase_iters {o.phase_iters} must be lists of the "
                         "same length (one lr per phase, iterations >= 0)")
    if o.name not in ("sgd", "adam"):
        raise ValueError(f"optim.name must be sgd or adam, got {o.name!r}")
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")
    if not 2 <= cfg.num_classes <= SEG_IGNORE:
        raise ValueError(f"num_classes must be in 2..{SEG_IGNORE}, got {cfg.num_classes}")
    if len(cfg.scale) != 2 or not 0 < cfg.scale[0] <= cfg.scale[1]:
        raise ValueError(f"scale must be [lo, hi] with 0 < lo <= hi, got {cfg.scale}")
    class_names(cfg.num_classes, cfg.class_names)


# ---------------------------------------------------------------------------- data

def get_dataset(cfg: SegConfig):
    """(train, val) VOC segmentation sets: random scale / crop / flip for training; val raw."""
    d = cfg.data
    scale = tuple(cfg.scale) if d.augment else (1.0, 1.0)
    train = segmentation_set(d, "train", train_transforms(d.crop, d.resize, scale, flip=d.augment), cfg.train_masks)
    return train, segmentation_set(d, "val")


def check_mask(mask: torch.Tensor, num_classes: int, ids: list[str]) -> None:
    labelled = mask[mask != SEG_IGNORE]
    if labelled.numel() and int(labelled.max()) >= num_classes:
        raise ValueError(f"mask value {int(labelled.max())} >= num_classes {num_classes} in one of {ids[:4]}: "
                         "set num_classes (and class_names) for this data set")


# ---------------------------------------------------------------------------- train / evaluate

def train_one_epoch(model: nn.Module, trunk, batches, steps: int, optimizer, scheduler, step: int,
                    cfg: SegConfig, device, skips: SkipCounter, bar, run: RunDir) -> int:
    """``steps`` optimiser steps (one pass over the training set) from ``batches``."""
    model.train()
    for _ in range(steps):
        batch = next(batches)
        skips.update(batch)
        labels = batch["mask"]
        if not isinstance(labels, torch.Tensor) or not (labels != SEG_IGNORE).any():
            step += 1  # every image bad, or no labelled pixel: the step passes without an update
            scheduler.step()
            bar.update(1)
            continue
        check_mask(labels, cfg.num_classes, batch["id"])
        x = trunk.prepare(batch["image"], device)                     # [N, 1|3, crop, crop]
        target = labels.to(device, non_blocking=True).long()           # [N, crop, crop]
        logits = model(x)                                              # [N, K, crop, crop]
        loss = F.cross_entropy(logits, target, ignore_index=SEG_IGNORE)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"segment: non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            run.log("train", step=step, lr=scheduler.get_last_lr()[0], loss=round(loss.item(), 5))
    return step


def evaluate(model: FCN, val_set, cfg: SegConfig, device, pred_dir: Path | None, skips: SkipCounter):
    """Predict this rank's share of ``val_set`` at each mask's resolution, save the PNGs,
    return (confusion matrix summed over ranks, images scored, examples for the picture)."""
    model.eval()
    mine = Subset(val_set, range(dist_utils.rank(), len(val_set), dist_utils.world_size()))
    loader = DataLoader(mine, batch_size=1, collate_fn=collate, num_workers=cfg.data.num_workers)
    cm, shown, seen = ConfusionMatrix(cfg.num_classes), [], 0
    resize = v2.Resize(cfg.data.resize, antialias=True) if cfg.data.resize else None
    with torch.inference_mode():
        for batch in tqdm(loader, desc="predict", unit="img", disable=not dist_utils.is_main()):
            skips.update(batch)
            for image, mask, image_id in zip(batch["image"], batch["mask"], batch["id"]):
                check_mask(mask, cfg.num_classes, [image_id])
                x = model.trunk.prepare((resize(image) if resize else image)[None], device)
                logits = model(x, tuple(mask.shape))                    # [1, K, H, W]: the truth's size
                pred = logits.argmax(1)[0].to(torch.uint8).cpu()         # [H, W]
                cm.update(pred, mask, where=image_id)
                if pred_dir is not None:
                    save_label_png(pred_dir / f"{image_id}.png", pred.numpy())
                if len(shown) < cfg.show_images:
                    shown.append((image.permute(1, 2, 0).numpy(), pred.numpy(), mask.numpy()))
                seen += 1
    total = int(dist_utils.all_reduce_sum(torch.tensor([seen]))[0])
    return cm.reduce(), total, shown


def phase_lambda(o: SegOptim):
    """LambdaLR factor: lr_values[phase] / lr_values[0], the phase of a step by phase_iters."""
    bounds = np.cumsum(o.phase_iters)

    def factor(step: int) -> float:
        phase = min(int(np.searchsorted(bounds, step, side="right")), len(o.lr_values) - 1)
        return o.lr_values[phase] / o.lr_values[0]
    return factor


def fit(model: FCN, net: nn.Module, train_set, cfg: SegConfig, device, run: RunDir, skips: SkipCounter) -> int:
    o, world = cfg.optim, dist_utils.world_size()
    head = {id(p) for p in model.head_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": o.lr_values[0]},
              {"params": model.head_parameters(), "lr": o.lr_values[0] * o.head_lr_mult}]
    if o.name == "adam":
        optimizer = torch.optim.Adam(groups, lr=o.lr_values[0], betas=(o.momentum, 0.999), weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.SGD(groups, lr=o.lr_values[0], momentum=o.momentum, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, phase_lambda(o))
    total = int(sum(o.phase_iters))
    sampler = StepBatchSampler(len(train_set), cfg.batch_size // world, world, dist_utils.rank(), seed=cfg.seed,
                               total_steps=total)
    loader = DataLoader(SeededAugmentation(train_set, cfg.seed), batch_sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.num_workers, persistent_workers=cfg.data.num_workers > 0)
    batches, step = iter(loader), 0
    with tqdm(total=total, desc="segment", unit="it", disable=not dist_utils.is_main()) as bar:
        while step < total:
            steps = min(sampler.steps_per_epoch, total - step)
            step = train_one_epoch(net, model.trunk, batches, steps, optimizer, scheduler, step, cfg, device,
                                   skips, bar, run)
    return step


# ---------------------------------------------------------------------------- main

def main(cfg: SegConfig, argv: list[str] | None = None, run_dir: str | Path | None = None) -> dict:
    """Train, predict, score; returns {"scores": report(...), "records": [...], "run_dir": Path}."""
    device = dist_utils.pick_device(cfg.device)
    _, world, _ = dist_utils.init_distributed(device.type)
    device = dist_utils.pick_device(cfg.device)
    check_config(cfg, world)
    method = cfg.method or default_method(cfg.trunk)
    train_set, val_set = get_dataset(cfg)  # a wrong root or list fails before any run directory exists
    run = RunDir(run_dir or Path(cfg.out_dir) / f"{cfg.name}-{method}", enabled=dist_utils.is_main())
    run.write_config(cfg, argv)
    run.say(f"colorbench segment: run {run.path} | git {git_revision()} | {world} rank(s) on {device} | argv {argv}")
    run.say(to_yaml(cfg).rstrip())
    torch.manual_seed(cfg.seed)
    trunk = build_trunk(cfg.trunk, cfg.data, device, run, None, run.say, seed=cfg.seed, batch_size=cfg.batch_size)
    described = trunk.describe()
    run.log("trunk", **described)
    model = FCN(trunk, cfg.num_classes, cfg.variant).to(device)
    run.say(f"{cfg.variant} on {described['architecture']}: taps {model.taps}; {len(train_set)} training images, "
            f"{len(val_set)} validation images ({split_label(cfg.data)})")
    net = model if world == 1 else nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    skips, start = SkipCounter(), time.perf_counter()
    steps = fit(model, net, train_set, cfg, device, run, skips)
    seconds = time.perf_counter() - start
    cm, images, shown = evaluate(model, val_set, cfg, device, run.path / "predictions", skips)
    names = class_names(cfg.num_classes, cfg.class_names)
    scores = report(cm, names)
    if dist_utils.is_main():
        save_side_by_side(run.path / "examples.png", shown)
    extra = {"trunk": described, "variant": cfg.variant, "taps": model.taps, "iterations": steps,
             "train_seconds": round(seconds, 2), "val_images": images, "skipped": skips.all_reduce(),
             "class_names": names, "confusion": scores["confusion"], "IU": scores["IU"],
             "predictions": str(run.path / "predictions")}
    records = write_records(run, cfg, method, described["architecture"], scores, extra)
    run.say(f"{images} images: mIU {scores['mIU']:.2f}  pixel acc {scores['pixel_acc']:.2f}  "
            f"mean acc {scores['mean_acc']:.2f}  fwIU {scores['fwIU']:.2f}")
    return {"scores": scores, "records": records, "run_dir": run.path}


def write_records(run: RunDir, cfg: SegConfig, method: str, encoder: str, scores: dict, extra: dict) -> list[dict]:
    """Headline rows (layer "") and one IU row per class present (absent classes: NaN, left out)."""
    base = dict(suite="pascal", method=method, encoder=encoder, protocol="voc12_seg", dataset=cfg.data.dataset_name,
                split=split_label(cfg.data))
    records = [dict(base, layer="", metric=m, value=scores[m]) for m in ("mIU", "pixel_acc", "mean_acc", "fwIU")]
    records += [dict(base, layer=name, metric="IU", value=v) for name, v in scores["IU"].items() if v is not None]
    run.write_records(records, extra=extra)
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/downstream/seg_tiny.yaml (built-in data, CPU minutes) or "
                                 "seg_alexnet.yaml (the full protocol on VOC 2012)")
    add_trunk_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        main(config_from_args(SegConfig, args, **trunk_overrides(args)), sys.argv, args.run_dir)
    finally:
        dist_utils.cleanup()
    return 0
