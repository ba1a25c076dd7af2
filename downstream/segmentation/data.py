"""Segmentation data: joint image + mask transforms, batching, the train / val sets.

Training (torchvision's segmentation reference): short side -> ``data.resize`` (when
set), a random scale, a random ``data.crop`` square padded where the image is smaller
(image 0, mask 255 = ignore), a horizontal flip. Validation keeps the mask as it is
(scores are computed at the ground truth's own resolution); only the image is resized
(short side -> ``data.resize``) before the network, and the scores are resampled back.
"""
from __future__ import annotations

import os

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from pretext.data.images import BadSample
from pretext.data.sources import DataConfig
from pretext.data.voc import SEG_IGNORE, VocSegmentation


class RandomScale(torch.nn.Module):
    """Resize image and mask by one factor drawn uniformly from [lo, hi] (nearest
    neighbours for the mask: v2 treats a ``tv_tensors.Mask`` so)."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, image, mask):
        f = self.lo + (self.hi - self.lo) * torch.rand(()).item()
        h, w = image.shape[-2:]
        size = [max(1, round(h * f)), max(1, round(w * f))]
        return v2.functional.resize(image, size, antialias=True), v2.functional.resize(mask, size)


def train_transforms(crop: int, resize: int | None, scale: tuple[float, float], flip: bool = True) -> v2.Compose:
    ops = [v2.Resize(resize, antialias=True)] if resize else []
    ops += [RandomScale(*scale)] if tuple(scale) != (1.0, 1.0) else []
    ops += [v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: SEG_IGNORE})]
    return v2.Compose(ops + ([v2.RandomHorizontalFlip()] if flip else []))


def segmentation_set(d: DataConfig, split: str, transforms=None, masks: str = "SegmentationClass") -> VocSegmentation:
    """The ``train`` or ``val`` set of ``d`` (kind voc; its split or list file, and limit)."""
    if d.kind != "voc":
        raise ValueError(f"segmentation reads a VOCdevkit: data.kind must be 'voc', got {d.kind!r}")
    name, lst = (d.train_split, d.train_list) if split == "train" else (d.val_split, d.val_list)
    limit = d.train_limit if split == "train" else d.val_limit
    return VocSegmentation(d.root, name, lst, transforms, limit, masks)


def split_label(d: DataConfig) -> str:
    """The val split's name in records: the list file's stem (seg11valid) or the split."""
    return os.path.splitext(os.path.basename(d.val_list))[0] if d.val_list else str(d.val_split)


def collate(items: list) -> dict:
    """image uint8 [N, 3, H, W] and mask uint8 [N, H, W] when sizes agree (training
    crops), else lists of [3, H_i, W_i] / [H_i, W_i]; id, path: lists; skipped: the
    ``BadSample`` records (for a ``SkipCounter``)."""
    good = [s for s in items if not isinstance(s, BadSample)]
    images = [s["image"].as_subclass(torch.Tensor) for s in good]
    masks = [s["mask"].as_subclass(torch.Tensor) for s in good]
    same = len({tuple(i.shape) for i in images}) == 1
    return {"image": torch.stack(images) if same else images,
            "mask": torch.stack(masks) if same else masks,
            "id": [s["id"] for s in good], "path": [s["path"] for s in good],
            "skipped": [s for s in items if isinstance(s, BadSample)]}
