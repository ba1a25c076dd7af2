"""The PASCAL VOC devkit's detection evaluation, its result files, and ``colorbench det-eval``.

    colorbench det-eval --voc-root DEVKIT_PARENT --year 2007 --split test --dets RUN/results \\
        [--metric 11point|area] [--out ap.json]

Result files (the devkit's ``comp4``: trained on VOC data, own proposals):
``<dir>/comp4_det_<split>_<class>.txt``, one line per detection
``<image_id> <score> <xmin> <ymin> <xmax> <ymax>`` in VOC 1-based pixel coordinates
(a continuous box ``x1 .. x2`` is written ``x1 + 1 .. x2``, so a box read back from a
file and the annotations share the devkit's convention).

AP per class, as ``VOCevaldet.m``: detections sorted by score (stable: ties keep file
order); each one is matched to the ground-truth box of its image and class with the
largest overlap, IoU computed with the devkit's +1 pixel convention
(``iw = min(x2) - max(x1) + 1``); IoU >= 0.5 with a difficult box: ignored (neither
true nor false positive); with a box not yet detected: true positive; with one
already detected: false positive (a duplicate); below 0.5: false positive. Recall is
over the non-difficult boxes; AP is 11-point (VOC2007) or the area under the
precision envelope (VOC2010+), ``downstream.metrics.ap_from_pr``.

COCO-style AP@[.5:.95] (and AP50 / AP75) on the same detections through pycocotools,
with the ground truth and detections built as COCO dicts in memory. Difficult objects
become ``iscrowd`` regions, pycocotools' only way to ignore a box: a detection matching
one is neither true nor false positive (crowd overlap is measured over the detection's
area).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np

from downstream.metrics import ap_from_pr, mean_ap
from pretext.data.voc import read_annotation, voc_ids
from pretext.engine.checkpoint import atomic_write_text

RESULT_RE = re.compile(r"^comp\d+_det_(?P<split>.+?)_(?P<cls>[^_]+)\.txt$")


def result_path(folder: str | Path, split: str, cls: str) -> Path:
    return Path(folder) / f"comp4_det_{split}_{cls}.txt"


def write_results(folder: str | Path, split: str, dets: dict[str, list]) -> list[Path]:
    """``dets`` {class: [(image id, score, (x1, y1, x2, y2) continuous 0-based)]} -> one
    devkit file per class (every class gets a file, empty when it has no detection)."""
    paths = []
    for cls, rows in dets.items():
        lines = [f"{i} {s:.6f} {b[0] + 1:.1f} {b[1] + 1:.1f} {b[2]:.1f} {b[3]:.1f}\n" for i, s, b in rows]
        path = result_path(folder, split, cls)
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def read_results(path: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A devkit result file -> (image ids, scores [D], boxes [D, 4] 1-based as written).
    A malformed line is an error naming the file and the line number."""
    ids, scores, boxes = [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 6:
                    raise ValueError(f"{len(parts)} fields")
                values = [float(v) for v in parts[1:]]
                if not all(np.isfinite(values)):
                    raise ValueError("a value is not finite")
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: malformed detection line {line.strip()[:80]!r} ({exc}); expected "
                                 "'<image_id> <score> <xmin> <ymin> <xmax> <ymax>'") from None
            ids.append(parts[0])
            scores.append(values[0])
            boxes.append(values[1:])
    return ids, np.array(scores, dtype=np.float64), np.array(boxes, dtype=np.float64).reshape(-1, 4)


def load_ground_truth(voc_dir: str, split: str) -> dict[str, list]:
    """{image id: [(class, box [4] 1-based as in the XML, difficult)]} for ``split``."""
    gt = {}
    for image_id in voc_ids(voc_dir, split):
        ann = read_annotation(voc_dir, image_id)
        gt[image_id] = [(o.name, np.asarray(o.bbox, dtype=np.float64), bool(o.difficult))
                        for o in ann.objects if o.bbox is not None]
    return gt


def devkit_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one 1-based box [4] with boxes [G, 4], +1 pixel convention; -inf where
    they do not overlap (the devkit skips those)."""
    iw = np.minimum(box[2], gts[:, 2]) - np.maximum(box[0], gts[:, 0]) + 1
    ih = np.minimum(box[3], gts[:, 3]) - np.maximum(box[1], gts[:, 1]) + 1
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (gts[:, 2] - gts[:, 0] + 1) * (gts[:, 3] - gts[:, 1] + 1)
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area + areas - inter)
    return np.where((iw > 0) & (ih > 0), iou, -np.inf)


def eval_class(gt: dict[str, list], cls: str, ids: list[str], scores: np.ndarray, boxes: np.ndarray,
               method: str = "11point", min_overlap: float = 0.5, source: str = "") -> dict:
    """One class, VOCevaldet.m -> {"ap", "npos", "ndet", "tp", "fp", "recall", "precision"}.
    ``gt`` as ``load_ground_truth``; an image id it lacks is an error. AP is NaN when
    the class has no non-difficult box (the devkit's 0/0)."""
    boxes_of = {i: np.array([b for c, b, _ in objs if c == cls]).reshape(-1, 4) for i, objs in gt.items()}
    diff_of = {i: np.array([d for c, _, d in objs if c == cls], dtype=bool) for i, objs in gt.items()}
    npos = int(sum((~d).sum() for d in diff_of.values()))
    detected = {i: np.zeros(len(d), dtype=bool) for i, d in diff_of.items()}
    order = np.argsort(-scores, kind="stable")
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, d in enumerate(order):
        image_id = ids[d]
        if image_id not in boxes_of:
            raise ValueError(f"{source or cls}: image {image_id!r} is not in the evaluated split")
        gts = boxes_of[image_id]
        ov = devkit_iou(boxes[d], gts) if len(gts) else np.empty(0)
        j = int(np.argmax(ov)) if len(ov) else -1
        if j >= 0 and ov[j] >= min_overlap:
            if not diff_of[image_id][j]:
                if not detected[image_id][j]:
                    tp[rank], detected[image_id][j] = 1, True
                else:
                    fp[rank] = 1          # a duplicate detection
        else:
            fp[rank] = 1
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    recall = ctp / npos if npos else np.full(len(ctp), np.nan)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    ap = ap_from_pr(recall, precision, method) if npos else float("nan")
    return {"ap": ap, "npos": npos, "ndet": len(order), "tp": int(tp.sum()), "fp": int(fp.sum()),
            "recall": recall, "precision": precision}


# ---------------------------------------------------------------------------- COCO bridge

def coco_ap(gt: dict[str, list], dets: dict[str, tuple], classes: list[str]) -> dict[str, float]:
    """AP@[.5:.95], AP50, AP75 (fractions) through pycocotools. ``gt`` as
    ``load_ground_truth``; ``dets`` {class: (ids, scores, boxes 1-based)}."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_index = {i: n + 1 for n, i in enumerate(gt)}
    cat = {c: k + 1 for k, c in enumerate(classes)}
    anns = []
    for image_id, objs in gt.items():
        for name, b, difficult in objs:
            if name in cat:
                w, h = b[2] - b[0] + 1, b[3] - b[1] + 1   # 1-based inclusive -> COCO x, y, w, h
                anns.append({"id": len(anns) + 1, "image_id": image_index[image_id], "category_id": cat[name],
                             "bbox": [b[0] - 1, b[1] - 1, w, h], "area": w * h, "iscrowd": int(difficult)})
    results = [{"image_id": image_index[i], "category_id": cat[c], "score": float(s),
                "bbox": [b[0] - 1, b[1] - 1, b[2] - b[0] + 1, b[3] - b[1] + 1]}
               for c, (ids, scores, boxes) in dets.items() for i, s, b in zip(ids, scores, boxes)]
    if not results or not anns:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = {"images": [{"id": n} for n in image_index.values()],
                        "categories": [{"id": k, "name": c} for c, k in cat.items()], "annotations": anns}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": max(float(ev.stats[0]), 0.0), "AP50": max(float(ev.stats[1]), 0.0),
            "AP75": max(float(ev.stats[2]), 0.0)}


# ---------------------------------------------------------------------------- a folder of results

def find_result_files(folder: str | Path, split: str) -> dict[str, Path]:
    """{class: path} of the ``comp*_det_<split>_<class>.txt`` files in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(2, "detections folder not found", str(folder))
    found = {}
    for path in sorted(folder.iterdir()):
        m = RESULT_RE.match(path.name)
        if m and m["split"] == split:
            found[m["cls"]] = path
    if not found:
        raise ValueError(f"no result files comp*_det_{split}_<class>.txt in {folder}")
    return found


def evaluate_results(voc_dir: str, split: str, folder: str | Path, method: str = "11point",
                     classes: list[str] | None = None, coco: bool = True) -> dict:
    """Devkit AP of every class with a result file in ``folder`` (or of ``classes``: a
    class without a file is an error) -> {"classes": {cls: {ap, npos, ndet, tp, fp}},
    "mAP" (mean over classes with ground truth), "metric", "coco": {...}}."""
    files = find_result_files(folder, split)
    classes = list(classes) if classes else sorted(files)
    missing = [c for c in classes if c not in files]
    if missing:
        raise ValueError(f"no result file for classes {missing} in {folder}")
    raw = {c: read_results(files[c]) for c in classes}
    out = evaluate_arrays(load_ground_truth(voc_dir, split), raw, method, coco, {c: str(files[c]) for c in classes})
    return {"voc_dir": str(voc_dir), "split": split, **out}


def evaluate_arrays(gt: dict[str, list], raw: dict[str, tuple], method: str = "11point", coco: bool = True,
                    sources: dict[str, str] | None = None) -> dict:
    """``raw`` {class: (ids, scores [D], boxes [D, 4] 1-based)} -> per-class AP and mAP
    (over the classes with ground truth), plus the COCO numbers."""
    per = {}
    for cls, (ids, scores, boxes) in raw.items():
        r = eval_class(gt, cls, ids, scores, boxes, method, source=(sources or {}).get(cls, ""))
        per[cls] = {k: r[k] for k in ("ap", "npos", "ndet", "tp", "fp")}
    out = {"metric": method, "classes": per, "mAP": mean_ap({c: v["ap"] for c, v in per.items()}),
           "classes_without_ground_truth": [c for c, v in per.items() if np.isnan(v["ap"])]}
    if coco:
        out["coco"] = coco_ap(gt, raw, list(raw))
    return out


def as_arrays(dets: dict[str, list]) -> dict[str, tuple]:
    """{class: [(id, score, continuous box)]} -> {class: (ids, scores, boxes 1-based)}, as the files say."""
    out = {}
    for cls, rows in dets.items():
        boxes = np.array([b for _, _, b in rows], dtype=np.float64).reshape(-1, 4) + np.array([1, 1, 0, 0])
        out[cls] = ([i for i, _, _ in rows], np.array([s for _, s, _ in rows], dtype=np.float64), boxes)
    return out


def resolve_voc_dir(root: str, year: str) -> str:
    """DEVKIT_PARENT/VOCdevkit/VOC<year>; also accepts the VOCdevkit or VOC<year> folder itself."""
    for cand in (Path(root) / "VOCdevkit" / f"VOC{year}", Path(root) / f"VOC{year}", Path(root)):
        if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
            return str(cand)
    raise FileNotFoundError(2, f"no VOC{year} devkit (Annotations + ImageSets/Main) under", str(root))


def format_table(result: dict) -> str:
    rows = [f"{c:<14} {v['ap'] * 100:6.2f}  (gt {v['npos']}, det {v['ndet']})" for c, v in result["classes"].items()]
    rows.append(f"{'mAP':<14} {result['mAP'] * 100:6.2f}  ({result['metric']})")
    if "coco" in result:
        c = result["coco"]
        rows.append(f"{'COCO AP':<14} {c['AP'] * 100:6.2f}  (AP50 {c['AP50'] * 100:.2f}, AP75 {c['AP75'] * 100:.2f})")
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--voc-root", required=True, help="the folder holding VOCdevkit/ (or VOCdevkit itself)")
    parser.add_argument("--year", default="2007", help="VOC year (default 2007, the detection protocol's)")
    parser.add_argument("--split", default="test", help="ImageSets/Main split the detections are for")
    parser.add_argument("--dets", required=True, help="folder of comp4_det_<split>_<class>.txt result files")
    parser.add_argument("--metric", choices=("11point", "area"),
                        help="AP rule; default: 11point for 2007 (the VOC07 devkit), area for later years")
    parser.add_argument("--classes", help="comma-separated classes to evaluate (default: every result file)")
    parser.add_argument("--no-coco", action="store_true", help="skip the pycocotools AP@[.5:.95]")
    parser.add_argument("--out", help="write the result as JSON here")


def run(args: argparse.Namespace) -> int:
    voc_dir = resolve_voc_dir(args.voc_root, args.year)
    method = args.metric or ("11point" if str(args.year) == "2007" else "area")
    classes = [c for c in args.classes.split(",") if c] if args.classes else None
    result = evaluate_results(voc_dir, args.split, args.dets, method, classes, coco=not args.no_coco)
    print(format_table(result))
    if args.out:
        atomic_write_text(args.out, json.dumps(_no_nan(result), indent=1))
        print(f"det-eval: wrote {os.path.abspath(args.out)}")
    return 0


def _no_nan(value):
    """NaN (a class without ground truth) as JSON null."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return None if isinstance(value, float) and np.isnan(value) else value
