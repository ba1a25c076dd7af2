"""``colorbench seg-eval``: score a folder of predicted label PNGs against VOC's truth.

    colorbench seg-eval --pred runs/seg/predictions --gt VOCdevkit/VOC2012/SegmentationClass
    colorbench seg-eval --pred P --gt G --list seg11valid.txt --out scores.json
    torchrun --nproc_per_node 4 -m benchmarks.cli seg-eval --pred P --gt G

Every prediction ``<id>.png`` (or every id of ``--list``) is read with its truth
``<gt>/<id>.png`` (palette or grayscale PNGs of class indices) into ONE confusion matrix
over the pixels whose truth is a class (0 <= gt < n; VOC's 255 border is not counted),
then IU per class, mIU, pixel accuracy, mean accuracy and fwIU
(``downstream.metrics``). Under torchrun each rank reads every world-th file and the
matrices are summed. A missing truth, a size mismatch or a prediction value outside
[0, n) is an error naming the file.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch

from downstream.metrics import ConfusionMatrix
from pretext.data.voc import VOC_SEG_CLASSES, read_label_png, seg_ids
from pretext.engine import dist as dist_utils
from pretext.engine.checkpoint import atomic_write_text


def class_names(num_classes: int, names: list[str] | None = None) -> list[str]:
    """``names`` when given (one per class), VOC's for 21 classes, else class0, class1, ..."""
    if names:
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        return list(names)
    return list(VOC_SEG_CLASSES) if num_classes == len(VOC_SEG_CLASSES) else [f"class{i}" for i in range(num_classes)]


def pairs(pred_dir: str | Path, gt_dir: str | Path, list_file: str | None = None) -> list[tuple[str, str, str]]:
    """(id, prediction path, truth path), sorted by id: the ids of ``list_file``, or every
    PNG in ``pred_dir``. A missing file on either side is an error naming it."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pred_dir, "--pred"), (gt_dir, "--gt")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {d}")
    ids = seg_ids("", None, list_file) if list_file else sorted(p.stem for p in pred_dir.glob("*.png"))
    if not ids:
        raise ValueError(f"no prediction PNG in {pred_dir}")
    out = []
    for i in sorted(ids):
        pred, gt = pred_dir / f"{i}.png", gt_dir / f"{i}.png"
        for path, what in ((pred, "prediction"), (gt, "ground truth")):
            if not path.is_file():
                raise FileNotFoundError(f"{what} not found for id {i}: {path}")
        out.append((i, str(pred), str(gt)))
    return out


def evaluate_folders(pred_dir, gt_dir, num_classes: int = 21, list_file: str | None = None) -> tuple[ConfusionMatrix, int]:
    """(the confusion matrix summed over ranks, number of images) of ``pairs``."""
    items = pairs(pred_dir, gt_dir, list_file)
    cm, error = ConfusionMatrix(num_classes), None
    try:
        for _, pred, gt in items[dist_utils.rank()::dist_utils.world_size()]:
            cm.update(read_label_png(pred), read_label_png(gt), where=pred)
    except (ValueError, OSError) as exc:  # a bad file on one rank must not leave the others waiting
        error = exc
    failed = int(dist_utils.all_reduce_sum(torch.tensor([int(error is not None)]))[0])
    if error is not None:
        raise error
    if failed:
        raise ValueError(f"seg-eval: {failed} other rank(s) met a bad file (see their error)")
    return cm.reduce(), len(items)


def report(cm: ConfusionMatrix, names: list[str]) -> dict:
    """The scores as JSON-ready numbers: percentages, per-class IU (null: absent class)."""
    s = cm.scores()
    iu = {name: (None if math.isnan(v) else round(v, 4)) for name, v in zip(names, s["IU"].tolist())}
    return {"mIU": round(s["mIU"], 4), "pixel_acc": round(s["pixel_acc"], 4), "mean_acc": round(s["mean_acc"], 4),
            "fwIU": round(s["fwIU"], 4), "IU": iu, "pixels": int(cm.mat.sum()), "confusion": cm.mat.tolist()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="folder of predicted label PNGs (<id>.png, class indices)")
    parser.add_argument("--gt", required=True, help="folder of ground-truth PNGs, e.g. VOCdevkit/VOC2012/SegmentationClass")
    parser.add_argument("--num-classes", type=int, default=21, help="classes including background (default 21: "
                                                                    "PASCAL VOC's 20 + background)")
    parser.add_argument("--list", help="only these ids (one per line, e.g. seg11valid.txt); each must have both "
                                       "files (default: every PNG in --pred)")
    parser.add_argument("--out", help="write the scores and the confusion matrix as JSON here")


def run(args: argparse.Namespace) -> int:
    if args.num_classes < 1 or args.num_classes > 255:
        raise ValueError(f"--num-classes must be in 1..255 (255 marks ignored pixels), got {args.num_classes}")
    dist_utils.init_distributed("cpu")
    try:
        cm, images = evaluate_folders(args.pred, args.gt, args.num_classes, args.list)
        if int(cm.mat.sum()) == 0:
            raise ValueError(f"no pixel of the {images} ground-truth maps has a class in [0, {args.num_classes})")
        out = {"images": images, "num_classes": args.num_classes, "pred": os.path.abspath(args.pred),
               "gt": os.path.abspath(args.gt), **report(cm, class_names(args.num_classes))}
        if dist_utils.is_main():
            print(f"seg-eval: {images} images, {out['pixels']} pixels: mIU {out['mIU']:.2f}  pixel acc "
                  f"{out['pixel_acc']:.2f}  mean acc {out['mean_acc']:.2f}  fwIU {out['fwIU']:.2f}")
            print("IU per class: " + ", ".join(f"{k} {'-' if v is None else f'{v:.1f}'}" for k, v in out["IU"].items()))
            if args.out:
                atomic_write_text(args.out, json.dumps(out, indent=1))
    finally:
        dist_utils.cleanup()
    return 0
