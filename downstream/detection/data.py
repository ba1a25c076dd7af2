"""VOC detection data for Fast R-CNN: per-image records, scaling / flipping, RoI sampling.

Coordinates: every box here is ``x1 y1 x2 y2`` in continuous 0-based pixels (the
torchvision convention): a VOC box ``xmin..xmax`` (1-based, inclusive) is
``xmin - 1 .. xmax``, so its width is ``xmax - xmin + 1`` as the devkit counts it.

Training minibatches follow Fast R-CNN: ``images_per_batch`` images (2) at one random
scale of ``train_scales`` (the short side; the long side at most ``train_max_size``), each
flipped with probability 1/2, and per image ``rois_per_image`` RoIs (64) sampled from
its proposals plus its ground-truth boxes: up to ``fg_fraction`` (25%) foreground
(IoU >= ``fg_iou`` 0.5 with a ground-truth box, labelled with its class) and the rest
background (IoU in [``bg_iou_lo``, ``bg_iou_hi``) = [0.1, 0.5), label 0). Regression
targets are normalised as Fast R-CNN's (means 0, stds 0.1 0.1 0.2 0.2), i.e.
torchvision's ``BoxCoder`` with weights (10, 10, 5, 5).

Bad input is counted, never a crash: boxes outside the image are clipped, boxes with
no area left (and objects without a box or of an unknown class) are dropped, images
whose JPEG cannot be decoded are skipped, images without objects are left out of
training (they stay in the test set); ``build_records`` returns the counts.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import box_iou

from downstream.detection.proposals import ProposalConfig, cached_selective_search, file_proposals
from pretext.data.images import BadImage, BadSample, load_rgb
from pretext.data.voc import read_annotation, voc_ids

BOX_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))  # = Fast R-CNN's target stds 0.1, 0.1, 0.2, 0.2


@dataclass
class SampleConfig:
    images_per_batch: int = 2  # Fast R-CNN's minibatch: 2 images ...
    rois_per_image: int = 64  # ... x 64 RoIs
    fg_fraction: float = 0.25
    fg_iou: float = 0.5  # foreground: IoU >= 0.5 with a ground-truth box
    bg_iou_lo: float = 0.1  # background: IoU in [0.1, 0.5) (hard-ish negatives, as Fast R-CNN)
    bg_iou_hi: float = 0.5
    use_difficult: bool = False  # train on difficult objects too (Fast R-CNN: no)


@dataclass
class InputConfig:
    train_scales: list[int] = field(default_factory=lambda: [480, 576, 688, 864, 1200])  # multi-scale training
    test_scale: int = 600  # single-scale test (Fast R-CNN)
    max_size: int = 1000  # cap on the long side at test (Fast R-CNN's 1000) ...
    train_max_size: int = 2000  # ... and in multi-scale training (Fast R-CNN's 2000)
    flip: bool = True  # horizontal flips in training


@dataclass
class DetRecord:
    """One image: ``boxes`` float32 [G, 4], ``labels`` int64 [G] (1..K), ``difficult``
    bool [G], ``proposals`` float32 [P, 4], all in original pixels."""
    image_id: str
    path: str
    height: int
    width: int
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    proposals: np.ndarray


def voc_box_to_xyxy(box) -> np.ndarray:
    """VOC 1-based inclusive (xmin, ymin, xmax, ymax) -> continuous 0-based x1 y1 x2 y2."""
    return np.asarray(box, dtype=np.float32) - np.array([1, 1, 0, 0], dtype=np.float32)


def _image_size(path: str) -> tuple[int, int] | None:
    try:
        with Image.open(path) as im:  # the header only: no decoding
            return im.height, im.width
    except OSError:
        return None


def build_records(voc_dir: str, split: str, classes: list[str], proposals: ProposalConfig,
                  train: bool, use_difficult: bool = False, say=print) -> tuple[list[DetRecord], Counter]:
    """The records of ``split`` with their proposals, and the counts of what was clipped,
    dropped or skipped. ``train``: difficult objects dropped (unless ``use_difficult``),
    images without objects left out."""
    ids = voc_ids(voc_dir, split)
    items = [(i, f"{voc_dir}/JPEGImages/{i}.jpg") for i in ids]
    if proposals.source == "file":
        sizes = {}
        for image_id, path in items:
            ann = read_annotation(voc_dir, image_id)
            sizes[image_id] = (ann.height, ann.width) if ann.height and ann.width else _image_size(path)
        bad = {i: "unreadable header" for i, s in sizes.items() if s is None}
        boxes = file_proposals([it for it in items if it[0] not in bad], proposals, sizes, split)
    else:
        boxes, sizes, bad = cached_selective_search(items, proposals, voc_dir, say)
    index = {c: k + 1 for k, c in enumerate(classes)}
    counts, records = Counter(), []
    for image_id, path in items:
        if image_id in bad:
            counts["unreadable_image"] += 1
            say(f"{split}: skipping {image_id}: {bad[image_id]}")
            continue
        ann = read_annotation(voc_dir, image_id)
        for p in ann.problems:
            counts[p] += 1
        h, w = sizes[image_id]
        rec = _record(image_id, path, h, w, ann.objects, index, boxes[image_id], counts, train and not use_difficult)
        if train and len(rec.boxes) == 0:
            counts["train_images_without_objects"] += 1
            continue
        records.append(rec)
    return records, counts


def _record(image_id, path, h, w, objects, index, proposals, counts: Counter, drop_difficult: bool) -> DetRecord:
    boxes, labels, difficult = [], [], []
    for obj in objects:
        if obj.name not in index:
            counts["unknown_class_objects"] += 1
            continue
        if obj.bbox is None:
            counts["objects_without_box"] += 1
            continue
        if drop_difficult and obj.difficult:
            continue
        b = voc_box_to_xyxy(obj.bbox)
        c = b.copy()
        c[0::2], c[1::2] = c[0::2].clip(0, w), c[1::2].clip(0, h)
        if (c != b).any():
            counts["boxes_clipped"] += 1
        if c[2] <= c[0] or c[3] <= c[1]:
            counts["boxes_degenerate_dropped"] += 1
            continue
        boxes.append(c), labels.append(index[obj.name]), difficult.append(obj.difficult)
    return DetRecord(image_id, path, int(h), int(w), np.array(boxes, np.float32).reshape(-1, 4),
                     np.array(labels, np.int64), np.array(difficult, bool), proposals.astype(np.float32))


# ---------------------------------------------------------------------------- geometry

def image_scale(height: int, width: int, target: int, max_size: int) -> float:
    """Fast R-CNN's resize factor: short side to ``target``, long side at most ``max_size``."""
    s = target / min(height, width)
    return min(s, max_size / max(height, width))


def load_scaled(path: str, scale: float, flip: bool = False) -> torch.Tensor:
    """uint8 RGB [3, round(H * scale), round(W * scale)], optionally mirrored; raises BadImage."""
    im = load_rgb(path)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    if size != im.size:
        im = im.resize(size, Image.Resampling.BILINEAR)
    if flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror [K, 4] boxes in an image ``width`` wide."""
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


# ---------------------------------------------------------------------------- RoI sampling

def sample_rois(proposals: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, cfg: SampleConfig,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fast R-CNN's RoI sampling for one image. The candidates are the ground-truth boxes
    followed by the proposals ([G + P, 4]). Returns (rois [R, 4], labels int64 [R]: the
    class for foreground, 0 for background, normalised regression targets [R, 4]: zero
    for background), foreground first; R <= ``rois_per_image`` (fewer when there are not
    enough candidates in the IoU bands)."""
    cand = torch.cat([gt_boxes, proposals]).float()                              # [G+P, 4]
    if len(gt_boxes):
        best, match = box_iou(cand, gt_boxes.float()).max(dim=1)                 # [G+P]
    else:
        best, match = torch.zeros(len(cand)), torch.zeros(len(cand), dtype=torch.long)
    fg = torch.nonzero(best >= cfg.fg_iou).flatten()
    bg = torch.nonzero((best < cfg.bg_iou_hi) & (best >= cfg.bg_iou_lo)).flatten()
    n_fg = min(round(cfg.fg_fraction * cfg.rois_per_image), len(fg))
    fg = fg[torch.randperm(len(fg), generator=generator)[:n_fg]]
    bg = bg[torch.randperm(len(bg), generator=generator)[:cfg.rois_per_image - n_fg]]
    keep = torch.cat([fg, bg])
    rois = cand[keep]
    labels = torch.cat([gt_labels[match[fg]], torch.zeros(len(bg), dtype=torch.long)])
    targets = torch.zeros(len(keep), 4)
    if n_fg:
        targets[:n_fg] = BOX_CODER.encode_single(gt_boxes[match[fg]].float(), rois[:n_fg])
    return rois, labels, targets


# ---------------------------------------------------------------------------- datasets

class TrainSet(Dataset):
    """Key (record index, scale, flip, seed) -> {"image" uint8 [3, h, w], "rois" [R, 4]
    (scaled), "labels" [R], "targets" [R, 4], "image_id"}, or a BadSample."""

    def __init__(self, records: list[DetRecord], sample: SampleConfig, max_size: int):
        self.records, self.sample, self.max_size = records, sample, max_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: tuple[int, int, bool, int]):
        index, target, flip, seed = key
        r = self.records[index]
        s = image_scale(r.height, r.width, target, self.max_size)
        try:
            image = load_scaled(r.path, s, flip)
        except BadImage as exc:
            return BadSample(index, r.path, exc.reason, exc.detail)
        gt, props = torch.from_numpy(r.boxes) * s, torch.from_numpy(r.proposals) * s
        if flip:
            gt, props = flip_boxes(gt, image.shape[2]), flip_boxes(props, image.shape[2])
        g = torch.Generator().manual_seed(seed)
        rois, labels, targets = sample_rois(props, gt, torch.from_numpy(r.labels), self.sample, g)
        return {"image": image, "rois": rois, "labels": labels, "targets": targets, "image_id": r.image_id}


class TestSet(Dataset):
    """Index -> {"image" uint8 [3, h, w] at the test scale, "proposals" [P, 4] (scaled),
    "scale", "size" (H, W) of the original, "image_id"}, or a BadSample."""

    def __init__(self, records: list[DetRecord], scale: int, max_size: int):
        self.records, self.scale, self.max_size = records, scale, max_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        r = self.records[index]
        s = image_scale(r.height, r.width, self.scale, self.max_size)
        try:
            image = load_scaled(r.path, s)
        except BadImage as exc:
            return BadSample(index, r.path, exc.reason, exc.detail)
        return {"image": image, "proposals": torch.from_numpy(r.proposals) * s, "scale": s,
                "size": (r.height, r.width), "image_id": r.image_id}


class MinibatchSampler(Sampler[list[tuple[int, int, bool, int]]]):
    """Endless Fast R-CNN minibatches: each epoch a seeded shuffle of the records, cut
    into groups of ``images_per_batch``; one random scale per group, a random flip and
    a sampling seed per image. ``start`` skips that many minibatches (resume)."""

    def __init__(self, num_records: int, images_per_batch: int, scales: list[int], flip: bool, seed: int,
                 start: int = 0):
        if num_records < 1:
            raise ValueError("no training image with objects: nothing to train on")
        self.n, self.k, self.scales, self.flip, self.seed, self.start = (
            num_records, images_per_batch, list(scales), flip, seed, start)

    def __iter__(self):
        step, epoch = 0, 0
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
            for i in range(0, self.n - self.k + 1 if self.n >= self.k else 1, self.k):
                group = order[i:i + self.k]
                scale = self.scales[int(torch.randint(len(self.scales), (1,), generator=g))]
                flips = (torch.rand(len(group), generator=g) < 0.5).tolist() if self.flip else [False] * len(group)
                seeds = torch.randint(2**31 - 1, (len(group),), generator=g).tolist()
                if step >= self.start:
                    yield [(j, scale, f, s) for j, f, s in zip(group, flips, seeds)]
                step += 1
            epoch += 1


def collate_list(items: list) -> list:
    """Minibatches stay lists: images differ in size (the model pads them)."""
    return items
