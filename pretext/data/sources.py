"""Image data sources for pretext training and probes.

Four layouts, one ``ImageSource`` dataset (built by ``build_source``):

* ``imagefolder``  ImageNet / Places class folders (torchvision's ``find_classes`` /
  ``make_dataset``); label = class index in sorted folder order.
* ``folder``       every image file under a folder, recursively; label -1.
* ``filelist``     a text file, one ``path`` or ``path label`` per line, relative
  paths resolved against ``root`` (Caffe ``ImageData`` style, ImageNet val lists).
* ``voc``          ``<root>/JPEGImages`` + ``<root>/ImageSets/Main/<split>.txt``,
  root = ``VOCdevkit/VOC2007``; label -1 (the pretext needs no labels).

Samples are uint8 RGB tensors [3, H, W]: Lab, the non-gray rule and soft encoding are
done batched on the training device (``pretext.color``), never per image here.

Bad files never crash a run: ``load_rgb`` raises ``BadImage`` with a reason, the
dataset turns it into a ``BadSample`` record, ``collate_skip_bad`` drops those and
lists them under ``batch["skipped"]``. Collation runs inside DataLoader workers (other
processes), so nothing is counted there: the consumer (the trainer, main process)
feeds every batch to a ``SkipCounter``, which sums counts by reason.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset
from torchvision.transforms import v2

from pretext.data.images import GRAY_MODES, BadImage, BadSample, decode_image
from pretext.data.voc import voc_samples

log = logging.getLogger(__name__)

KINDS = ("imagefolder", "folder", "filelist", "voc")


def check_disjoint_splits(d: "DataConfig") -> None:
    """Refuse a validation split that is the training split (results would be on training images)."""
    def where(name, lst):
        if d.kind == "filelist":
            return os.path.abspath(lst) if lst else os.path.abspath(os.path.join(d.root, f"{name}.txt"))
        return (os.path.abspath(d.root), name)
    if d.kind == "filelist" and d.train_list and not d.val_list and d.val_split is None:
        raise ValueError("filelist data: set data.val_list (a list of held-out images); "
                         "validating on data.train_list would score training images")
    if where(d.train_split, d.train_list) == where(d.val_split, d.val_list):
        raise ValueError(f"data: the validation split is the training split ({d.kind} {d.root} "
                         f"{d.val_list or d.val_split}): set data.val_split / data.val_list to held-out images")


@dataclass
class DataConfig:
    """Where images come from: the one data section of every run kind's config."""

    name: str = ""  # the dataset name in run records (default: the root folder's name)
    kind: str = "imagefolder"  # imagefolder | folder | filelist | voc
    root: str = "data/builtin/imagefolder"
    train_split: Optional[str] = "train"  # sub-folder (imagefolder / folder), <root>/<split>.txt, or VOC set
    val_split: Optional[str] = "val"
    train_list: Optional[str] = None  # filelist kind: a list file ("path" or "path label" lines)
    val_list: Optional[str] = None
    train_limit: Optional[int] = None  # keep the first N images of the split
    val_limit: Optional[int] = None
    crop: int = 176  # the paper's pretext crop (AlexNet probes: 227, ResNet-50: 224)
    resize: Optional[int] = None  # short side before cropping (e.g. 256, or to upscale small images)
    augment: bool = True  # training: random crop + flip; false: centre crop
    num_workers: int = 2

    @property
    def dataset_name(self) -> str:
        return self.name or os.path.basename(os.path.normpath(self.root))


def source_for(d: DataConfig, split: str, transform: Callable | None = None, limit: int | None = None,
               **kw) -> "ImageSource":
    """The ``train`` or ``val`` source of a ``DataConfig`` (its split, list and limit).
    Validation on the training images is refused (same folder, list or VOC set)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if split == "val":
        check_disjoint_splits(d)
    name, lst = (d.train_split, d.train_list) if split == "train" else (d.val_split, d.val_list)
    own = d.train_limit if split == "train" else d.val_limit
    limits = [n for n in (own, limit) if n is not None]
    return build_source(d.kind, d.root, name, transform=transform, list_file=lst,
                        limit=min(limits) if limits else None, **kw)


# ----------------------------------------------------------------------------- listing

class _PathTable:
    """Paths packed into one byte buffer. A list of 1.3 M Python strings would be
    copied page by page into every forked DataLoader worker as refcounts are touched."""

    def __init__(self, paths: Sequence[str]):
        enc = [os.fsencode(p) for p in paths]
        self._buf = np.frombuffer(b"".join(enc), dtype=np.uint8)
        self._off = np.cumsum([0] + [len(b) for b in enc], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i: int) -> str:
        return os.fsdecode(self._buf[self._off[i]:self._off[i + 1]].tobytes())


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise ValueError(f"{what}: folder not found: {path}")


def imagefolder_samples(root: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, class index) pairs and the class names of an ImageFolder tree."""
    _require_dir(root, "imagefolder source")
    try:
        classes, class_to_idx = find_classes(root)
        # allow_empty: an empty class folder keeps its index (labels stay aligned with
        # the folder list); a tree with no image at all is refused by ImageSource.
        samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    except FileNotFoundError as e:
        raise ValueError(f"imagefolder source {root}: {e}") from None
    return samples, classes


def folder_samples(root: str) -> list[tuple[str, int]]:
    """Every image file under ``root`` (recursive, sorted by path), label -1. Dot files
    are left out: macOS ``._x.jpg`` resource forks carry image extensions but no image."""
    _require_dir(root, "folder source")
    paths = [os.path.join(d, name) for d, _, files in os.walk(root, followlinks=True)
             for name in files
             if not name.startswith(".") and has_file_allowed_extension(name, IMG_EXTENSIONS)]
    return [(p, -1) for p in sorted(paths)]


def _parse_line(line: str) -> tuple[str, int]:
    # "path label" when the last token is an integer, else the whole line is a path
    # (paths may contain spaces).
    parts = line.rsplit(maxsplit=1)
    if len(parts) == 2 and parts[1].lstrip("-").isdigit():
        return parts[0], int(parts[1])
    return line, -1


def filelist_samples(list_file: str, root: str) -> list[tuple[str, int]]:
    """Lines ``path`` or ``path label``; blank lines and ``#`` comments ignored;
    relative paths are joined to ``root`` (absolute ones kept)."""
    if not os.path.isfile(list_file):
        raise ValueError(f"filelist source: list file not found: {list_file}")
    with open(list_file, encoding="utf-8") as f:
        lines = [ln.strip() for ln in f]
    pairs = [_parse_line(ln) for ln in lines if ln and not ln.startswith("#")]
    return [(os.path.join(root, p), label) for p, label in pairs]


# ----------------------------------------------------------------------------- dataset

class ImageSource(Dataset):
    """Images from a list of (path, label). Item ``i`` is a dict

        image: uint8 [3, H, W] RGB (after ``transform``), label: int (-1 = none),
        index: i, path: str, gray_file: bool (the file's own mode was grayscale)

    or a ``BadSample`` when the file cannot be used. ``skip_gray_files`` drops files
    whose mode is grayscale before any work (reason ``grayscale_excluded``); RGB files
    with no colour are caught later by the batched on-device rule.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable | None = None,
                 classes: Sequence[str] | None = None, skip_gray_files: bool = False,
                 name: str = "images"):
        if len(samples) == 0:
            raise ValueError(f"no image files in {name} (extensions: {', '.join(IMG_EXTENSIONS)})")
        self._paths = _PathTable([str(p) for p, _ in samples])
        self.labels = np.asarray([int(label) for _, label in samples], dtype=np.int64)
        self.classes = list(classes) if classes is not None else None
        self.transform, self.skip_gray_files, self.name = transform, skip_gray_files, name

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, index: int) -> str:
        return self._paths[index]

    def __repr__(self) -> str:
        return f"ImageSource({self.name}, {len(self)} images)"

    def __getitem__(self, index: int) -> dict | BadSample:
        path = self._paths[index]
        try:
            img, mode = decode_image(path)
        except BadImage as e:
            return BadSample(index, path, e.reason, e.detail)
        gray = mode in GRAY_MODES
        if gray and self.skip_gray_files:
            return BadSample(index, path, "grayscale_excluded", f"mode {mode}")
        out = self.transform(img) if self.transform is not None else img
        if isinstance(out, Image.Image):
            out = v2.functional.pil_to_tensor(out)
        return {"image": out, "label": int(self.labels[index]), "index": index,
                "path": path, "gray_file": gray}


def build_source(kind: str, root: str, split: str | None = None, *, transform: Callable | None = None,
                 list_file: str | None = None, limit: int | None = None,
                 skip_gray_files: bool = False) -> ImageSource:
    """An ``ImageSource`` over one of ``KINDS``.

    ``split`` selects: a sub-folder for ``imagefolder`` / ``folder`` (``train``,
    ``val``); the list ``<root>/<split>.txt`` for ``filelist`` (unless ``list_file`` is
    given); ``ImageSets/Main/<split>.txt`` for ``voc`` (default ``trainval``).
    ``limit`` keeps the first N images by file name across classes for
    ``imagefolder`` / ``folder`` (an ImageFolder lists class by class, so "the first N
    listed" would be the first classes only; ImageNet's ``ILSVRC2012_val_%08d`` names
    give the official order, so ``limit=10000`` is the paper's validation set), and the
    first N lines of a ``filelist`` / ``voc`` list (the user's order, e.g. the paper's
    10k list). Empty sources and missing files -> ValueError.
    """
    root = os.fspath(root)
    classes = None
    if kind in ("imagefolder", "folder"):
        where = os.path.join(root, split) if split else root
        if kind == "imagefolder":
            samples, classes = imagefolder_samples(where)
        else:
            samples = folder_samples(where)
    elif kind == "filelist":
        if list_file is None and split is None:
            raise ValueError("filelist source needs list_file or split (<root>/<split>.txt)")
        where = os.fspath(list_file) if list_file is not None else os.path.join(root, f"{split}.txt")
        samples = filelist_samples(where, root)
    elif kind == "voc":
        where = os.path.join(root, "ImageSets", "Main", f"{split or 'trainval'}.txt")
        samples = voc_samples(root, split or "trainval")
    else:
        raise ValueError(f"unknown source kind {kind!r}; valid: {', '.join(KINDS)}")
    if limit is not None:
        if kind in ("imagefolder", "folder"):  # by file name across classes, not the first classes
            samples = sorted(samples, key=lambda s: (os.path.basename(s[0]), s[0]))
        samples = samples[:limit]
    # Lists name files that may not exist: check the first one so a wrong root fails
    # now, with a clear message, rather than as a run of 100% "missing" skips.
    if kind in ("filelist", "voc") and samples and not os.path.exists(samples[0][0]):
        raise ValueError(f"{kind} source: first listed image not found: {samples[0][0]} "
                         f"(listed in {where}; is root {root} right?)")
    return ImageSource(samples, transform, classes, skip_gray_files, name=f"{kind}:{where}")


# ----------------------------------------------------------------------------- transforms


# ----------------------------------------------------------------------------- batching


