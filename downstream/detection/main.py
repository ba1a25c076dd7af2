"""``colorbench detect``: Fast R-CNN on PASCAL VOC 2007 with a pretrained trunk (DESIGN §4).

    colorbench detect --config configs/downstream/det_tiny.yaml --checkpoint C --run-dir R
    colorbench detect --config configs/downstream/det_tiny.yaml --init gaussian --run-dir R
    colorbench detect --config configs/downstream/det_alexnet.yaml --checkpoint C --run-dir R \\
        --set data.root=/data/VOCdevkit/VOC2007

Trains on ``data.train_split`` (trainval), tests on ``data.val_split`` (test), writes the
devkit result files ``R/results/comp4_det_test_<class>.txt``, evaluates them as
``colorbench det-eval`` does (11-point VOC07 AP, plus pycocotools' AP@[.5:.95]), and
writes ``metrics.json`` (suite "pascal", protocol "voc07_det", metric "mAP" in percent
with layer ""; per-class rows: metric "AP", layer = the class; COCO rows "coco_AP",
"coco_AP50", "coco_AP75"), ``checkpoints/detector.pt`` and ``detections.png`` (a few
test images with their best detections). One process, one device.

Protocol (Fast R-CNN, as the self-supervised papers ran it): selective search
proposals; SGD momentum 0.9, weight decay 5e-4, biases at 2x lr without decay;
150k iterations, lr /10 every 50k; 2 images x 64 RoIs; multi-scale training,
single-scale test. ``data.crop`` / ``data.resize`` only feed the data-dependent trunk
inits (Gaussian / k-means BN statistics); detection images are scaled by ``input``.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from downstream.detection.data import (
    InputConfig,
    MinibatchSampler,
    SampleConfig,
    TestSet,
    TrainSet,
    build_records,
    collate_list,
)
from downstream.detection.engine import TestConfig, evaluate, random_detections, train_one_epoch
from downstream.detection.model import FastRCNN, HeadConfig, checkpoint_fc_state, param_groups
from downstream.detection.proposals import ProposalConfig, check_proposal_config, describe
from downstream.detection.voc_eval import (
    as_arrays,
    evaluate_arrays,
    evaluate_results,
    format_table,
    load_ground_truth,
    write_results,
)
from downstream.trunks import TrunkConfig, add_trunk_arguments, build_trunk, default_method, split_init, trunk_overrides
from pretext.data.loader import SkipCounter
from pretext.data.sources import DataConfig
from pretext.data.voc import voc_classes
from pretext.engine import dist as dist_utils
from pretext.engine.checkpoint import save_checkpoint
from pretext.engine.config import add_config_arguments, config_from_args, to_dict
from pretext.engine.runs import RunDir


@dataclass
class DetOptim:
    iterations: int = 150_000  # the protocol: 150k iterations ...
    milestones: list[int] = field(default_factory=lambda: [50_000, 100_000])  # ... lr /10 every 50k
    gamma: float = 0.1
    lr: float = 0.001  # Fast R-CNN's base lr
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_factor: float = 2.0  # Caffe's lr_mult 2 on biases (no decay on them)
    clip_grad_norm: float = 0.0  # 0 = off, as Fast R-CNN; e.g. 10 (the VOC classification protocol's)


@dataclass
class DetConfig:
    name: str = "det"
    method: str = ""  # label in the records; default: colorization (checkpoint) or the init name
    classes: list[str] = field(default_factory=list)  # empty: the data's (voc_classes: VOC's 20, sorted)
    seed: int = 0
    device: str = "auto"
    log_every: int = 20
    figure_images: int = 4  # test images drawn in detections.png (0 = no picture)
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(
        name="voc07", kind="voc", root="data/VOCdevkit/VOC2007", train_split="trainval", val_split="test",
        crop=227, resize=256, num_workers=2))
    proposals: ProposalConfig = field(default_factory=ProposalConfig)
    input: InputConfig = field(default_factory=InputConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    model: HeadConfig = field(default_factory=HeadConfig)
    optim: DetOptim = field(default_factory=DetOptim)
    test: TestConfig = field(default_factory=TestConfig)


def check_config(cfg: DetConfig) -> None:
    if cfg.data.kind != "voc":
        raise ValueError(f"detect reads a VOCdevkit: data.kind must be 'voc', got {cfg.data.kind!r}")
    if split_init(cfg.trunk.init)[0] == "supervised" and not cfg.trunk.checkpoint:
        raise ValueError("detect has no image labels to train a supervised trunk: train one with "
                         "'colorbench probe --init supervised' and pass its trunk with --checkpoint")
    check_proposal_config(cfg.proposals)
    if not cfg.input.train_scales or min(cfg.input.train_scales + [cfg.input.test_scale]) < 16:
        raise ValueError("input.train_scales must be non-empty and every scale >= 16 pixels")


# ---------------------------------------------------------------------------- data

def get_dataset(cfg: DetConfig, say=print):
    """(classes, train records, test records, counts of what was clipped / dropped / skipped)."""
    d = cfg.data
    classes = list(cfg.classes) or voc_classes(d.root)
    train, train_counts = build_records(d.root, d.train_split, classes, cfg.proposals, train=True,
                                        use_difficult=cfg.sample.use_difficult, say=say)
    test, test_counts = build_records(d.root, d.val_split, classes, cfg.proposals, train=False, say=say)
    counts = {**{f"train/{k}": v for k, v in train_counts.items()}, **{f"test/{k}": v for k, v in test_counts.items()}}
    props = [len(r.proposals) for r in train + test]
    say(f"data: {len(classes)} classes, {len(train)} training images, {len(test)} test images, "
        f"{sum(props) / max(len(props), 1):.0f} proposals per image" + (f"; {counts}" if counts else ""))
    return classes, train, test, counts


def train_loader(cfg: DetConfig, records, start: int = 0):
    sampler = MinibatchSampler(len(records), cfg.sample.images_per_batch, cfg.input.train_scales, cfg.input.flip,
                               cfg.seed, start)
    return torch.utils.data.DataLoader(TrainSet(records, cfg.sample, cfg.input.train_max_size), batch_sampler=sampler,
                                       num_workers=cfg.data.num_workers, collate_fn=collate_list)


def test_loader(cfg: DetConfig, records):
    return torch.utils.data.DataLoader(TestSet(records, cfg.input.test_scale, cfg.input.max_size), batch_size=None,
                                       num_workers=cfg.data.num_workers, collate_fn=collate_list)


# ---------------------------------------------------------------------------- main

def main(cfg: DetConfig, run_dir: str | Path, argv: list[str] | None = None) -> dict:
    """Train, test, write result files, records and the picture; returns the devkit result."""
    check_config(cfg)
    torch.manual_seed(cfg.seed)
    device = dist_utils.pick_device(cfg.device)
    run = RunDir(run_dir)
    run.write_config(cfg, argv)
    run.say(f"colorbench detect: run {run.path} | trunk {cfg.trunk.init} | {device}")
    classes, train, test, counts = get_dataset(cfg, run.say)
    trunk = build_trunk(cfg.trunk, cfg.data, device, run, None, run.say, seed=cfg.seed, batch_size=64)
    model = build_model(cfg, trunk, len(classes), run.say).to(device)
    skips = SkipCounter()
    step, train_speed = fit(cfg, model, train, classes, device, run, skips)
    dets, test_speed, shown = evaluate(model, test_loader(cfg, test), device, classes, cfg.test, skips)
    write_results(run.path / "results", cfg.data.val_split, dets)
    result = evaluate_results(cfg.data.root, cfg.data.val_split, run.path / "results", "11point", classes)
    run.say(format_table(result))
    chance = evaluate_arrays(load_ground_truth(cfg.data.root, cfg.data.val_split),
                             as_arrays(random_detections(test, classes, cfg.test, cfg.seed)), coco=False)["mAP"]
    speed = {**train_speed, **test_speed}
    run.say(f"random-box baseline (the same proposals, random class scores): mAP {100 * chance:.2f}; speed: "
            f"training {speed['train_images_per_s']:.1f} images/s, test {speed['test_images_per_s']:.1f} images/s; "
            f"{skips}")
    run.write_records(records(cfg, trunk, result), extra={
        "trunk": trunk.describe(), "model": model.describe(), "proposals": describe(cfg.proposals),
        "speed": speed, "data_counts": counts, **skips.as_dict(), "steps": step, "random_box_mAP": 100 * chance})
    if cfg.figure_images:
        from downstream.detection.figure import draw_detections
        draw_detections(run.path / "detections.png", test, shown[:cfg.figure_images], classes)
    return result


def build_model(cfg: DetConfig, trunk, num_classes: int, say=print) -> FastRCNN:
    """The detector on ``trunk``, fc6 / fc7 from the checkpoint's head when compatible."""
    head_state, note = None, "new"
    if cfg.trunk.checkpoint and cfg.model.from_checkpoint:
        channels = trunk.feature_info[trunk.taps[-1]]["channels"]
        head_state, note = checkpoint_fc_state(cfg.trunk.checkpoint, channels, cfg.model.output_size,
                                               cfg.model.fc_dim)
    model = FastRCNN(trunk, num_classes, cfg.model, head_state)
    say(f"model: {model.describe()}; fc6 / fc7 {note}")
    return model


def fit(cfg: DetConfig, model: FastRCNN, records, classes: list[str], device, run: RunDir,
        skips: SkipCounter) -> tuple[int, dict]:
    """SGD over ``optim.iterations`` minibatches; saves ``checkpoints/detector.pt``."""
    o = cfg.optim
    optimizer = torch.optim.SGD(param_groups(model, o.lr, o.weight_decay, o.bias_lr_factor), lr=o.lr,
                                momentum=o.momentum)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, o.milestones, o.gamma)
    with tqdm(total=o.iterations, desc="detect: train", unit="it", mininterval=2.0) as bar:
        step, speed = train_one_epoch(model, optimizer, scheduler, train_loader(cfg, records), device, 0,
                                      o.iterations, bar, run, skips, cfg.log_every, o.clip_grad_norm)
    save_checkpoint(run.checkpoint_dir / "detector.pt", {
        "format": "colorbench-detector-v1", "model": model.state_dict(), "classes": classes, "config": to_dict(cfg),
        "step": step,
        "trunk": model.trunk.describe()})
    return step, speed


def records(cfg: DetConfig, trunk, result: dict) -> list[dict]:
    base = {"suite": "pascal", "method": cfg.method or default_method(cfg.trunk), "encoder": trunk.encoder_name,
            "protocol": "voc07_det", "dataset": cfg.data.dataset_name, "split": cfg.data.val_split}
    rows = [{**base, "layer": "", "metric": "mAP", "value": 100 * result["mAP"]}]
    rows += [{**base, "layer": c, "metric": "AP", "value": 100 * v["ap"]} for c, v in result["classes"].items()
             if not math.isnan(v["ap"])]  # a class without test objects has no AP
    rows += [{**base, "layer": "", "metric": f"coco_{k}", "value": 100 * v} for k, v in result["coco"].items()]
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/downstream/det_tiny.yaml")
    add_trunk_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(DetConfig, args, **trunk_overrides(args))
    run_dir = args.run_dir or f"runs/{cfg.name}_{cfg.method or default_method(cfg.trunk).replace(':', '_')}"
    result = main(cfg, run_dir, sys.argv)
    print(f"detect: mAP {100 * result['mAP']:.2f} (VOC07 11-point) -> {run_dir}/metrics.json")
    return 0
