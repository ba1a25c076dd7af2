"""``colorbench voc-cls``: PASCAL VOC 2007 classification, fine-tuning or linear SVMs.

    colorbench voc-cls --config configs/downstream/voc_cls_tiny.yaml --protocol finetune \\
        --checkpoint runs/tiny/checkpoints/last.pt --set data.root=DATA/VOCdevkit/VOC2007 --run-dir R
    colorbench voc-cls --config configs/downstream/voc_cls_tiny.yaml --protocol svm --init gaussian ...
    colorbench voc-cls --config configs/downstream/voc_cls_alexnet.yaml --protocol finetune \\
        --checkpoint C --set train_from=fc6          # the "cls fc6-8" column (conv1: "cls all")

Protocols (DESIGN §4): ``finetune`` (``downstream.voc_cls.finetune``: Krähenbühl et al.'s
schedule, 10 random test crops, AP = sklearn's ``average_precision_score``) and ``svm``
(``downstream.voc_cls.svm``: Goyal et al. 2019, one LinearSVC per class and tap, AP = the
area under the monotone precision envelope, which is >= sklearn's on the same scores).
Both leave difficult-only labels out of the AP and count classes without a positive
test image out of the mAP with a warning.

Records (suite "pascal", metric "mAP" / "AP/<class>", percent): ``finetune`` -> protocol
``voc07_cls_fc6-8`` (train_from fc6), ``voc07_cls_all`` (train_from = the first tap) or
``voc07_cls_from_<tap>``, layer ""; ``svm`` -> protocol ``voc07_svm``, one row set per
tap (layer = the tap) plus the headline (layer "": the tap with the best
cross-validated trainval mAP).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from downstream.trunks import add_trunk_arguments, build_trunk, check_trunk_config, default_method, trunk_overrides
from downstream.voc_cls.config import PROTOCOLS, VocClsConfig, check_config
from downstream.voc_cls.data import get_dataset
from pretext.data.sources import source_for
from pretext.engine import dist as dist_utils
from pretext.engine.config import add_config_arguments, config_from_args, git_revision, to_yaml
from pretext.engine.runs import RunDir


def protocol_name(cfg: VocClsConfig, taps: list[str]) -> str:
    if cfg.protocol == "svm":
        return "voc07_svm"
    if cfg.train_from == "fc6":
        return "voc07_cls_fc6-8"
    return "voc07_cls_all" if cfg.train_from == taps[0] else f"voc07_cls_from_{cfg.train_from}"


def baseline_data(cfg: VocClsConfig):
    """The data a baseline trunk is built on: ``trunk_data``, or the VOC training split."""
    return cfg.trunk_data if cfg.trunk_data.root else cfg.data


def supervised_classes(cfg: VocClsConfig) -> int | None:
    if not cfg.trunk.init.startswith("supervised") or cfg.trunk.checkpoint:
        return None
    if not cfg.trunk_data.root:
        raise ValueError("init=supervised trains the trunk on labelled images first: set trunk_data.root "
                         "(an ImageFolder, e.g. the built-in imagefolder or ImageNet)")
    if cfg.trunk_num_classes:
        return cfg.trunk_num_classes
    src = source_for(cfg.trunk_data, "train")
    return len(src.classes) if src.classes else int(src.labels.max()) + 1


def main(cfg: VocClsConfig, argv: list[str] | None = None, run_dir: str | Path | None = None) -> dict:
    """One run; returns {"mAP", "records", "run_dir", "result"}."""
    check_config(cfg)
    check_trunk_config(cfg.trunk)
    if dist_utils.world_size() > 1:
        raise ValueError("voc-cls runs in one process (the protocols' batch 16 fits one device); "
                         "launch it without torchrun")
    device = dist_utils.pick_device(cfg.device)
    train_lbl, test_lbl = get_dataset(cfg)  # a wrong root fails before any run dir exists
    num_classes = supervised_classes(cfg)
    method = cfg.method or default_method(cfg.trunk)
    run = RunDir(run_dir or Path(cfg.out_dir) / f"{cfg.name}-{cfg.protocol}-{method}")
    run.write_config(cfg, argv)
    run.say(f"colorbench voc-cls {cfg.protocol}: run {run.path} | git {git_revision()} | {device} | argv {argv}")
    run.say(to_yaml(cfg).rstrip())
    for lbl in (train_lbl, test_lbl):
        run.say(lbl.summary())
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    trunk = build_trunk(cfg.trunk, baseline_data(cfg), device, run, num_classes, run.say, seed=cfg.seed,
                        batch_size=cfg.finetune.batch_size if cfg.protocol == "finetune" else cfg.svm.batch_size)
    protocol = protocol_name(cfg, trunk.taps)
    base = dict(suite="pascal", method=method, encoder=trunk.encoder_name, protocol=protocol,
                dataset=cfg.data.dataset_name, split=cfg.data.val_split)
    if cfg.protocol == "finetune":
        from downstream.voc_cls.finetune import run_finetune
        result = run_finetune(cfg, trunk, train_lbl, test_lbl, device, run)
        rows = {"": result}
        headline = result["mAP"]
    else:
        from downstream.voc_cls.svm import run_svm
        result = run_svm(cfg, trunk, train_lbl, test_lbl, device, run)
        rows = {**result["taps"], "": result["taps"][result["best"]]}
        headline = rows[""]["mAP"]
    records = [dict(base, layer=layer, metric=metric, value=round(value, 4))
               for layer, r in rows.items()
               for metric, value in [("mAP", r["mAP"]), *((f"AP/{c}", ap) for c, ap in r["aps"].items())]]
    extra = {**result["extra"], "trunk": trunk.describe(), "classes": train_lbl.classes,
             "train_images": len(train_lbl.ids), "test_images": len(test_lbl.ids),
             "annotation_problems": {s.split: dict(s.problems) for s in (train_lbl, test_lbl)},
             "images_without_annotation": {s.split: s.dropped for s in (train_lbl, test_lbl)},
             "seconds": round(time.perf_counter() - start, 2)}
    run.write_records(records, extra=extra)
    run.say(f"{protocol}: mAP {headline:.2f} over {len(train_lbl.classes)} classes"
            + (f" (headline tap {result['best']})" if cfg.protocol == "svm" else "")
            + f"; records in {run.path / 'metrics.json'}")
    return {"mAP": headline, "records": records, "run_dir": run.path, "result": result}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/downstream/voc_cls_tiny.yaml (built-in data, CPU minutes) or "
                                 "voc_cls_alexnet.yaml (the full protocols)")
    parser.add_argument("--protocol", choices=PROTOCOLS,
                        help="finetune: fc8 new, fc6-8 (--set train_from=fc6) or all layers (train_from=conv1) "
                             "fine-tuned, 10 random test crops, AP = sklearn's average_precision_score; "
                             "svm: LinearSVC per class on each frozen tap, cost by 3-fold CV, AP = area under "
                             "the monotone precision envelope (>= sklearn's AP on the same scores)")
    add_trunk_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(VocClsConfig, args, protocol=args.protocol, **trunk_overrides(args))
    main(cfg, sys.argv, args.run_dir)
    return 0
