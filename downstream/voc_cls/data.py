"""VOC 2007 classification data: labels, image sources, the protocol's crops, loaders.

Labels come from the XML (``pretext.data.voc.classification_labels``: 1 / 0 / -1 per
image and class, 0 = only difficult objects, left out of that class's AP and loss), so
a VOCdevkit with or without per-class lists (the ``../shared`` fixture) reads the same.
An image's row in the label matrix is its ``label`` in the ``ImageSource``, and the
loaders return ``batch["index"]`` = that row: targets are looked up, never copied.
Unreadable JPEGs (truncated, missing) are skipped by the loader and counted
(``SkipCounter``); their rows get no score and leave the AP (reported as such).

Crops (``v2``, uint8 [3, crop, crop]):
* training: short side -> ``resize``, random scale x[scale_min, scale_max] (uniform),
  random ``crop`` (padded with the ImageNet mean where the scaled image is smaller),
  horizontal flip (Krähenbühl et al.'s VOC fine-tuning);
* test: ``n`` random crops (+ random flip) of the resized image -> uint8 [n, 3, crop, crop],
  the same for every run (seeded per image);
* features (SVM): the probes' centre crop (``pretext.data.loader.val_transform``).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from downstream.metrics import mean_ap, sklearn_ap, voc_ap
from pretext.data.loader import SeededAugmentation, StepBatchSampler, collate_skip_bad
from pretext.data.sources import ImageSource
from pretext.data.voc import VocLabels, classification_labels

MEAN_FILL = (124, 116, 104)  # ImageNet mean (uint8): the padding of crops larger than the scaled image


def get_dataset(cfg) -> tuple[VocLabels, VocLabels]:
    """(train, test) labels of ``cfg.data`` (trainval / test); the test split uses the
    training split's classes (``cfg.classes``, else read from the data)."""
    d = cfg.data
    train = _limit(classification_labels(d.root, d.train_split, list(cfg.classes) or None), d.train_limit)
    test = _limit(classification_labels(d.root, d.val_split, train.classes), d.val_limit)
    if len(train.classes) < 1:
        raise ValueError(f"no classes in {d.root}")
    return train, test


def _limit(labels: VocLabels, limit: int | None) -> VocLabels:
    if limit is not None:
        labels.ids, labels.labels = labels.ids[:limit], labels.labels[:limit]
    return labels


def image_source(labels: VocLabels, transform) -> ImageSource:
    """The split's JPEGs; item ``label`` = the image's row in ``labels.labels``."""
    samples = [(os.path.join(labels.root, "JPEGImages", f"{i}.jpg"), row) for row, i in enumerate(labels.ids)]
    return ImageSource(samples, transform, name=f"voc:{labels.root}:{labels.split}")


class RandomScale:
    """Resize by a factor drawn uniformly from [lo, hi] (torch's RNG: seeded per item)."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi = lo, hi

    def __call__(self, img):
        s = float(torch.empty(()).uniform_(self.lo, self.hi))
        h, w = v2.functional.get_size(img)
        return v2.functional.resize(img, [max(1, round(h * s)), max(1, round(w * s))], antialias=True)


class RandomCrops:
    """``n`` random crops (+ random flips) of one image -> uint8 [n, 3, crop, crop]."""

    def __init__(self, n: int, crop: int, resize: int | None):
        self.n = n
        self.base = v2.Resize(resize, antialias=True) if resize else v2.Identity()
        self.one = v2.Compose([v2.RandomCrop(crop, pad_if_needed=True, fill=MEAN_FILL),
                               v2.RandomHorizontalFlip(), v2.PILToTensor()])

    def __call__(self, img):
        img = self.base(img)
        return torch.stack([self.one(img) for _ in range(self.n)])


def train_transform(crop: int, resize: int | None, scale_min: float, scale_max: float) -> v2.Compose:
    ops = [v2.Resize(resize, antialias=True)] if resize else []
    return v2.Compose(ops + [RandomScale(scale_min, scale_max),
                             v2.RandomCrop(crop, pad_if_needed=True, fill=MEAN_FILL),
                             v2.RandomHorizontalFlip(), v2.PILToTensor()])


def train_loader(source: ImageSource, batch_size: int, iterations: int, seed: int, num_workers: int) -> DataLoader:
    """``iterations`` batches of ``batch_size`` (epochs reshuffled by seed + epoch); crops
    depend on (seed, epoch, image) only, so runs are reproducible."""
    sampler = StepBatchSampler(len(source), batch_size, seed=seed, total_steps=iterations)
    return DataLoader(SeededAugmentation(source, seed), batch_sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_skip_bad, persistent_workers=num_workers > 0)


def eval_loader(source: ImageSource, batch_size: int, seed: int, num_workers: int) -> DataLoader:
    """Every image once, in order; random views seeded by (seed, image)."""
    keys = [(0, i) for i in range(len(source))]
    return DataLoader(SeededAugmentation(source, seed), batch_size=batch_size, sampler=keys,
                      num_workers=num_workers, collate_fn=collate_skip_bad)


def targets(labels: VocLabels, index: torch.Tensor, device) -> torch.Tensor:
    """int8 [B, K] labels (1 / 0 / -1) of the batch's rows."""
    return torch.from_numpy(labels.labels[index.numpy()]).to(device)


def class_aps(scores: np.ndarray, labels: VocLabels, kind: str) -> tuple[dict[str, float], float, int]:
    """({class: AP in percent}, mAP over the classes that have one, images without a
    score). ``scores`` float [N, K]: a NaN row is an image that was skipped (bad file),
    left out of every AP and counted; a NaN column a class that could not be trained.
    A class without a positive scored image (or untrained) has AP NaN, left out of the
    mAP with a warning. ``kind``: ``sklearn`` (fine-tuning) or ``area`` / ``11point``."""
    scored = np.isfinite(scores)
    if not scored.any():
        raise ValueError(f"no test image of {labels.root} could be scored (all skipped?)")
    aps = {}
    for k, name in enumerate(labels.classes):
        s, y = scores[scored[:, k], k], labels.labels[scored[:, k], k]
        ap = float("nan") if not len(s) else sklearn_ap(s, y) if kind == "sklearn" else voc_ap(s, y, kind)
        aps[name] = 100.0 * ap
    m = mean_ap(aps, what=f"VOC {labels.split} mAP")
    if np.isnan(m):
        raise ValueError(f"no class has a positive image among the scored {labels.split} images of {labels.root}")
    return aps, m, int((~scored.any(1)).sum())
