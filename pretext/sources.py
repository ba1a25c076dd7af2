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
from collections import Counter
from contextlib import contextmanager
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset
from torchvision.transforms import v2

log = logging.getLogger(__name__)

# Skip reasons (stable metric keys). ``grayscale_excluded`` is also added by the
# trainer when its batched on-device non-gray rule drops an image.
REASONS = ("truncated", "corrupt", "empty", "missing", "unsupported", "grayscale_excluded")
KINDS = ("imagefolder", "folder", "filelist", "voc")

# Modes that carry no colour at all (the file itself is grayscale).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class BadImage(Exception):
    """A file that cannot be used as an image; ``reason`` is one of ``REASONS``."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        super().__init__(f"{path}: {reason} ({detail})" if detail else f"{path}: {reason}")
        self.path, self.reason, self.detail = str(path), reason, detail


class BadSample(NamedTuple):
    """What the dataset returns instead of a sample; plain data, so it pickles across workers."""
    index: int
    path: str
    reason: str
    detail: str = ""


# ----------------------------------------------------------------------------- decoding

@contextmanager
def _strict_truncation():
    # Some libraries set ImageFile.LOAD_TRUNCATED_IMAGES = True globally; PIL then pads
    # a truncated JPEG with grey and we would train on it silently. Force it off while
    # we decode, and restore whatever the caller had.
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _classify(err: Exception) -> str:
    # PIL reports truncation as OSError("image file is truncated ...") or
    # OSError("Truncated File Read"), sometimes EOFError; anything else is corruption.
    if isinstance(err, Image.DecompressionBombError):
        return "unsupported"
    if isinstance(err, EOFError) or "truncat" in str(err).lower():
        return "truncated"
    return "corrupt"


def _sixteen_to_l(im: Image.Image) -> Image.Image:
    # PIL's own I -> L conversion clips at 255; 16-bit data must be scaled instead.
    # Rounded v / 257 maps 0..65535 exactly onto 0..255 (65535 -> 255, 32896 -> 128).
    # Mode I (32-bit) is read as 16-bit data; values outside 0..65535 are clipped.
    a = np.asarray(im).astype(np.int64)
    a = np.clip((a + 128) // 257, 0, 255).astype(np.uint8)
    return Image.fromarray(a, "L")


def _on_white(im: Image.Image) -> Image.Image:
    # Transparent pixels have undefined colour (often black or junk); compositing on
    # white gives them neutral ab = 0 instead of inventing colour, and matches how
    # viewers show them. Opaque pixels keep their exact values.
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")


def _to_rgb(im: Image.Image, path: str) -> Image.Image:
    """8-bit RGB from any PIL mode. CMYK uses PIL's naive (no ICC) conversion,
    R = (255 - C)(255 - K) / 255; 48-bit RGB PNGs arrive as RGB already (PIL keeps
    the high byte, within 1 of v / 257)."""
    if im.mode == "F":
        # Float images have no agreed range (0..1? 0..255? HDR?): refuse, don't guess.
        raise BadImage(path, "unsupported", "32-bit float image")
    if im.mode in _SIXTEEN_BIT:
        im = _sixteen_to_l(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        return _on_white(im)
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError as e:  # e.g. LAB, exotic modes PIL cannot map to RGB
        raise BadImage(path, "unsupported", f"mode {im.mode}: {e}") from None


def _decode(path: str) -> tuple[Image.Image, str]:
    """(RGB image, the file's own PIL mode); raises ``BadImage``."""
    try:
        f = open(path, "rb")
    except OSError as e:  # not found, permission denied, a directory...
        raise BadImage(path, "missing", str(e)) from None
    with f, _strict_truncation():
        if os.fstat(f.fileno()).st_size == 0:
            raise BadImage(path, "empty", "zero-byte file")
        try:
            im = Image.open(f)
            im.load()  # decode now, inside the strict block, so truncation raises here
        except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:
            raise BadImage(path, _classify(e), f"{type(e).__name__}: {e}") from None
    return _to_rgb(im, path), im.mode


def load_rgb(path: str) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB PIL image or raise ``BadImage``.

    Conversions: gray / 1-bit -> replicated channels; 16-bit (I;16*, I) -> v / 257,
    rounded; alpha (RGBA, LA, PA, P or RGB with a transparency key) -> composited on
    white; CMYK -> PIL's naive formula (no colour management; ICC profiles ignored).
    """
    return _decode(path)[0]


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


def voc_samples(root: str, split: str) -> list[tuple[str, int]]:
    """JPEGs of a VOC split; ``root`` is ``VOCdevkit/VOC2007`` (or VOC2012)."""
    _require_dir(os.path.join(root, "JPEGImages"), "voc source (root must be VOCdevkit/VOC20xx)")
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise ValueError(f"voc source: split file not found: {split_file}")
    with open(split_file, encoding="utf-8") as f:
        ids = [ln.split()[0] for ln in f if ln.strip()]  # per-class lists: "id 1"
    return [(os.path.join(root, "JPEGImages", f"{i}.jpg"), -1) for i in ids]


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
            img, mode = _decode(path)
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
    ``limit`` keeps the first N items in listing order (e.g. the paper's validation
    set: the first 10k of ImageNet val). Empty sources and missing files -> ValueError.
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
    samples = samples[:limit] if limit is not None else samples
    # Lists name files that may not exist: check the first one so a wrong root fails
    # now, with a clear message, rather than as a run of 100% "missing" skips.
    if kind in ("filelist", "voc") and samples and not os.path.exists(samples[0][0]):
        raise ValueError(f"{kind} source: first listed image not found: {samples[0][0]} "
                         f"(listed in {where}; is root {root} right?)")
    return ImageSource(samples, transform, classes, skip_gray_files, name=f"{kind}:{where}")


# ----------------------------------------------------------------------------- transforms

class ShortSideAtLeast:
    """Resize (keeping aspect) so the short side is at least ``size``; larger images
    are left alone, so random crops keep the image's own scale."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):
        h, w = v2.functional.get_size(img)
        return v2.functional.resize(img, [self.size]) if min(h, w) < self.size else img


def train_transform(crop: int = 176, resize: int | None = None) -> v2.Compose:
    """Paper recipe: random ``crop`` x ``crop`` (176) + horizontal flip -> uint8 [3, crop, crop].
    ``resize`` first sets the short side (256 mimics the original's 256-pixel LMDB)."""
    ops = [v2.Resize(resize)] if resize else []
    ops += [ShortSideAtLeast(crop), v2.RandomCrop(crop), v2.RandomHorizontalFlip(), v2.PILToTensor()]
    return v2.Compose(ops)


def val_transform(crop: int = 176, resize: int | None = None) -> v2.Compose:
    """Short side -> ``resize`` (default ``crop``), centre ``crop`` -> uint8 [3, crop, crop]."""
    return v2.Compose([v2.Resize(resize or crop), v2.CenterCrop(crop), v2.PILToTensor()])


# ----------------------------------------------------------------------------- batching

def collate_skip_bad(items: list) -> dict:
    """Batch the good items, list the bad ones. Returns

        image: uint8 [N, 3, H, W] (a list of [3, H_i, W_i] when sizes differ,
               uint8 [0, 3, 0, 0] when every item was bad)
        label, index: int64 [N];  gray_file: bool [N];  path: list[str]
        skipped: list[BadSample]  (to feed a SkipCounter in the consumer)

    N may be smaller than the batch size, or 0.
    """
    good = [s for s in items if not isinstance(s, BadSample)]
    images = [s["image"] for s in good]
    if not images:
        image = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    elif len({tuple(i.shape) for i in images}) == 1:
        image = torch.stack(images)
    else:
        image = images  # full-resolution images (e.g. colorize) cannot be stacked
    return {
        "image": image,
        "label": torch.tensor([s["label"] for s in good], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in good], dtype=torch.int64),
        "gray_file": torch.tensor([s["gray_file"] for s in good], dtype=torch.bool),
        "path": [s["path"] for s in good],
        "skipped": [s for s in items if isinstance(s, BadSample)],
    }


class SkipCounter:
    """Counts skipped items by reason, in the process that consumes the batches.

    Counts are occurrences: a bad file is counted once per epoch it is drawn. The
    first ``log_examples`` of each reason are logged with path and detail.
    """

    def __init__(self, log_examples: int = 5):
        self.counts: Counter = Counter()
        self.log_examples = log_examples

    def update(self, batch_or_records) -> None:
        """Add ``batch["skipped"]`` (pass the batch) or an iterable of ``BadSample``."""
        records = batch_or_records["skipped"] if isinstance(batch_or_records, dict) else batch_or_records
        for r in records:
            self.add(r.reason, path=r.path, detail=r.detail)

    def add(self, reason: str, n: int = 1, path: str | None = None, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; valid: {', '.join(REASONS)}")
        if path is not None and self.counts[reason] < self.log_examples:
            log.warning("skipped %s: %s %s", reason, path, detail)
        self.counts[reason] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self, prefix: str = "skipped/", counts: Counter | None = None) -> dict[str, int]:
        """Every reason (zeros included, so metric keys are stable) plus the total."""
        counts = self.counts if counts is None else counts
        out = {f"{prefix}{r}": int(counts[r]) for r in REASONS}
        return {**out, f"{prefix}total": sum(out.values())}

    def all_reduce(self, device: torch.device | str = "cpu") -> dict[str, int]:
        """``as_dict()`` summed over DDP ranks (every rank must call it; NCCL needs a
        CUDA ``device``). Without an initialised process group: this rank's counts."""
        import torch.distributed as dist
        if not (dist.is_available() and dist.is_initialized()):
            return self.as_dict()
        t = torch.tensor([self.counts[r] for r in REASONS], dtype=torch.int64, device=device)
        dist.all_reduce(t)
        return self.as_dict(counts=Counter(dict(zip(REASONS, t.tolist()))))

    def __str__(self) -> str:
        parts = ", ".join(f"{r} {self.counts[r]}" for r in REASONS if self.counts[r])
        return f"skipped {self.total}" + (f" ({parts})" if parts else "")


def make_loader(source: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                seed: int = 0, drop_last: bool = False, sampler: Sampler | None = None,
                pin_memory: bool = False) -> DataLoader:
    """DataLoader with the skip-aware collate and a seeded generator.

    The order (shuffle) and the workers' RNG seeds come from ``seed``, so a given seed
    gives the same batches. With ``num_workers=0`` crops and flips use the global torch
    RNG: call ``torch.manual_seed`` for reproducible augmentation. For DDP pass a
    ``DistributedSampler(source, shuffle=..., seed=...)`` as ``sampler`` (and call its
    ``set_epoch`` each epoch); ``shuffle`` must then be False, the sampler owns order.
    """
    if sampler is not None and shuffle:
        raise ValueError("pass shuffle to the sampler (e.g. DistributedSampler(shuffle=True)), "
                         "not to make_loader, when a sampler is given")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(source, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate_skip_bad,
                      drop_last=drop_last, generator=generator, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)
