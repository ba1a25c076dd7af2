"""PASCAL VOCdevkit layout: image ids of a split (``ImageSets/Main/<split>.txt``)."""
from __future__ import annotations

import os


def voc_samples(root: str, split: str) -> list[tuple[str, int]]:
    """JPEGs of a VOC split; ``root`` is ``VOCdevkit/VOC2007`` (or VOC2012)."""
    if not os.path.isdir(os.path.join(root, "JPEGImages")):
        raise ValueError(f"voc source: folder not found: {os.path.join(root, 'JPEGImages')} "
                         "(root must be VOCdevkit/VOC20xx)")
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise ValueError(f"voc source: split file not found: {split_file}")
    with open(split_file, encoding="utf-8") as f:
        ids = [ln.split()[0] for ln in f if ln.strip()]  # per-class lists: "id 1"
    return [(os.path.join(root, "JPEGImages", f"{i}.jpg"), -1) for i in ids]
