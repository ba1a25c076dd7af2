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


# --- VOC annotations: objects and per-class image labels (issue 11; detection reads the objects too) ---
# XML parsed by torchvision's ``VOCDetection.parse_voc_xml``. Bad input is counted, never
# a crash and never a silent label: a missing or unparsable XML drops its image, an
# object without a name is dropped, a missing / empty ``difficult`` reads as 0, a name
# outside the class list is ignored; each is counted under one of ``ANNOTATION_PROBLEMS``.
import xml.etree.ElementTree as ET  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402

ANNOTATION_PROBLEMS = ("missing_xml", "bad_xml", "no_objects", "object_without_name", "missing_difficult",
                       "unknown_class")


@dataclass(frozen=True)
class VocObject:
    name: str
    difficult: bool
    truncated: bool
    bbox: tuple[float, float, float, float] | None  # xmin, ymin, xmax, ymax as written (1-based); None if absent


@dataclass
class VocAnnotation:
    image_id: str
    width: int | None
    height: int | None
    objects: list[VocObject]
    problems: list[str] = field(default_factory=list)  # ANNOTATION_PROBLEMS met in this file


def voc_ids(root: str, split: str) -> list[str]:
    """Image ids of ``ImageSets/Main/<split>.txt`` (first token of each line)."""
    path = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(path):
        raise ValueError(f"VOC split file not found: {path} (root must be VOCdevkit/VOC20xx)")
    with open(path, encoding="utf-8") as f:
        return [ln.split()[0] for ln in f if ln.strip()]


def _flag(node: dict, key: str) -> bool | None:
    value = str(node.get(key, "")).strip()
    return bool(int(value)) if value.lstrip("-").isdigit() else None


def _int(value) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def parse_annotation(path: str, image_id: str = "") -> VocAnnotation:
    """One ``Annotations/<id>.xml`` (a missing / unparsable file: no objects, problem noted)."""
    from torchvision.datasets import VOCDetection

    image_id = image_id or os.path.splitext(os.path.basename(path))[0]
    if not os.path.isfile(path):
        return VocAnnotation(image_id, None, None, [], ["missing_xml"])
    try:
        ann = VOCDetection.parse_voc_xml(ET.parse(path).getroot()).get("annotation", {})
    except ET.ParseError:
        return VocAnnotation(image_id, None, None, [], ["bad_xml"])
    size = ann.get("size") if isinstance(ann.get("size"), dict) else {}
    nodes = ann.get("object", [])
    nodes = nodes if isinstance(nodes, list) else [nodes]
    objects, problems = [], []
    for node in (n for n in nodes if isinstance(n, dict)):
        name = str(node.get("name", "")).strip()
        if not name:
            problems.append("object_without_name")
            continue
        difficult = _flag(node, "difficult")
        if difficult is None:
            problems.append("missing_difficult")
        box = node.get("bndbox") if isinstance(node.get("bndbox"), dict) else {}
        try:
            bbox = tuple(float(box[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (KeyError, TypeError, ValueError):
            bbox = None
        objects.append(VocObject(name, bool(difficult), bool(_flag(node, "truncated")), bbox))
    if not objects:
        problems.append("no_objects")
    return VocAnnotation(image_id, _int(size.get("width")), _int(size.get("height")), objects, problems)


def read_annotation(root: str, image_id: str) -> VocAnnotation:
    return parse_annotation(os.path.join(root, "Annotations", f"{image_id}.xml"), image_id)


def image_labels(objects: list[VocObject], classes: list[str]) -> np.ndarray:
    """VOC image labels int8 [K]: 1 = a non-difficult object of the class, 0 = only
    difficult ones (left out of that class's AP), -1 = none."""
    out = np.full(len(classes), -1, dtype=np.int8)
    index = {c: k for k, c in enumerate(classes)}
    for obj in objects:
        k = index.get(obj.name)
        if k is not None:
            out[k] = max(out[k], 0 if obj.difficult else 1)
    return out


def _class_list_names(root: str) -> list[str]:
    main = os.path.join(root, "ImageSets", "Main")
    names = set()
    for fname in os.listdir(main) if os.path.isdir(main) else []:
        stem, _, split = fname[:-4].rpartition("_") if fname.endswith(".txt") else ("", "", "")
        if stem and split in ("train", "val", "trainval", "test"):
            names.add(stem)
    return sorted(names)


def voc_classes(root: str, splits: tuple[str, ...] = ("trainval", "test")) -> list[str]:
    """The class names of a VOCdevkit: from the per-class lists
    (``ImageSets/Main/<class>_<split>.txt``) when there are any, else the object names
    in the splits' XML (e.g. a fixture without per-class lists); sorted, so a real
    VOC2007 gives its 20 classes in the official order."""
    names = _class_list_names(root)
    if names:
        return names
    found = {obj.name for split in splits for i in voc_ids(root, split) for obj in read_annotation(root, i).objects}
    if not found:
        raise ValueError(f"no class names in {root}: no per-class lists in ImageSets/Main and no objects in "
                         f"the XML of {', '.join(splits)}")
    return sorted(found)


def class_list_labels(root: str, split: str, classes: list[str]) -> np.ndarray | None:
    """Labels int8 [N, K] from ``<class>_<split>.txt`` (rows in ``voc_ids`` order), or
    None when a list is absent; to check the XML-derived labels against."""
    ids = {i: r for r, i in enumerate(voc_ids(root, split))}
    out = np.zeros((len(ids), len(classes)), dtype=np.int8)
    for k, name in enumerate(classes):
        path = os.path.join(root, "ImageSets", "Main", f"{name}_{split}.txt")
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] in ids:
                    out[ids[parts[0]], k] = int(parts[1])
    return out


@dataclass
class VocLabels:
    """Per-class image labels of a split: ``labels`` int8 [N, K] (1 / 0 / -1) for
    ``ids`` (images whose XML could not be read are dropped and listed in ``dropped``);
    ``problems`` counts ``ANNOTATION_PROBLEMS``, ``examples`` holds a few ids of each."""
    root: str
    split: str
    ids: list[str]
    classes: list[str]
    labels: np.ndarray
    problems: Counter
    examples: dict[str, list[str]]
    dropped: list[str]

    def summary(self) -> str:
        pos = (self.labels == 1).sum(0)
        parts = [f"{self.split}: {len(self.ids)} images, {len(self.classes)} classes, "
                 f"positives per class {dict(zip(self.classes, pos.tolist()))}, "
                 f"difficult-only labels {int((self.labels == 0).sum())}"]
        if self.problems:
            parts.append("annotation problems " + ", ".join(f"{k} {v} (e.g. {self.examples[k][:3]})"
                                                            for k, v in sorted(self.problems.items())))
        return "; ".join(parts)


def classification_labels(root: str, split: str, classes: list[str] | None = None) -> VocLabels:
    """Per-class labels of ``split`` derived from the XML (works with or without the
    per-class lists). ``classes`` default: ``voc_classes(root)``."""
    for sub in ("JPEGImages", "Annotations"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise ValueError(f"VOC folder not found: {os.path.join(root, sub)} (root must be VOCdevkit/VOC20xx)")
    ids = voc_ids(root, split)
    if not ids:
        raise ValueError(f"VOC split {split} of {root} lists no image")
    classes = list(classes) if classes else voc_classes(root)
    known, problems, examples = set(classes), Counter(), {}
    keep, rows, dropped = [], [], []
    for image_id in ids:
        ann = read_annotation(root, image_id)
        unknown = ["unknown_class"] * sum(obj.name not in known for obj in ann.objects)
        for p in ann.problems + unknown:
            problems[p] += 1
            seen = examples.setdefault(p, [])
            if len(seen) < 5 and image_id not in seen:
                seen.append(image_id)
        if "missing_xml" in ann.problems or "bad_xml" in ann.problems:
            dropped.append(image_id)
            continue
        keep.append(image_id)
        rows.append(image_labels(ann.objects, classes))
    if not keep:
        raise ValueError(f"VOC split {split} of {root}: no readable annotation for any of its {len(ids)} images "
                         f"({dict(problems)})")
    return VocLabels(root, split, keep, classes, np.stack(rows), problems, examples, dropped)


# --- segmentation ---
# VOC SegmentationClass, laid out as torchvision's ``VOCSegmentation`` reads it:
# ``JPEGImages/<id>.jpg`` + ``SegmentationClass/<id>.png`` (a palette PNG whose pixel
# values are class indices: 0 background, 1-20 the classes, 255 the void border =
# ignore). Ids come from ``ImageSets/Segmentation/<split>.txt`` or a user list file
# (e.g. FCN's ``seg11valid.txt``, 736 ids). The built-in data's VOCdevkit has the same
# layout (classes 1..8). Images that cannot be decoded are ``BadSample`` records (counted
# by the consumer); a listed id without its mask is an error before any work.
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import Dataset  # noqa: E402
from torchvision import tv_tensors  # noqa: E402

from pretext.data.images import BadImage, BadSample, decode_image  # noqa: E402

SEG_IGNORE = 255
VOC_SEG_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                   "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
                   "train", "tvmonitor")


def seg_ids(root: str, split: str | None = "train", list_file: str | None = None) -> list[str]:
    """Ids of ``ImageSets/Segmentation/<split>.txt``, or of ``list_file`` (one id per
    line, first token; blank lines and ``#`` comments skipped) when given."""
    path = list_file or os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
    if not os.path.isfile(path):
        raise ValueError(f"VOC segmentation list not found: {path}" +
                         ("" if list_file else " (root must be VOCdevkit/VOC20xx)"))
    with open(path, encoding="utf-8") as f:
        ids = [ln.split()[0] for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    if not ids:
        raise ValueError(f"VOC segmentation list {path} names no image")
    return ids


def read_label_png(path: str) -> np.ndarray:
    """A label PNG -> uint8 [H, W] class indices. Palette ("P", VOC's files) and
    grayscale ("L") PNGs hold indices; an RGB rendering of the colours does not."""
    with Image.open(path) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"{path}: a label map must be a palette ('P') or grayscale ('L') PNG of class "
                             f"indices, got mode {im.mode}")
        return np.array(im, dtype=np.uint8)


class VocSegmentation(Dataset):
    """(image, mask) pairs of a VOC segmentation split. Item ``i`` is a dict

        image: tv_tensors.Image uint8 [3, H, W] RGB;  mask: tv_tensors.Mask uint8 [H, W]
        index: i;  id: str;  path: the JPEG

    after ``transforms(image, mask)`` (torchvision v2 ops transform both: a mask is
    resized with nearest neighbours), or a ``BadSample`` for an unreadable JPEG.
    ``root`` = ``VOCdevkit/VOC2012`` (or the built-in ``VOCdevkit/VOC2007``); ``masks``:
    the mask folder under it (e.g. ``SegmentationClassAug``, SBD's masks as PNGs)."""

    def __init__(self, root: str, split: str | None = "train", list_file: str | None = None,
                 transforms=None, limit: int | None = None, masks: str = "SegmentationClass"):
        self.root, self.transforms, self.masks = os.fspath(root), transforms, masks
        for sub in ("JPEGImages", masks):
            if not os.path.isdir(os.path.join(self.root, sub)):
                raise ValueError(f"VOC folder not found: {os.path.join(self.root, sub)} "
                                 f"(root must be VOCdevkit/VOC20xx with {masks})")
        self.ids = seg_ids(self.root, split, list_file)[:limit]
        self.name = list_file or f"{self.root}:{split}"
        missing = [i for i in self.ids if not os.path.isfile(self.mask_path(i))]
        if missing:
            raise ValueError(f"{len(missing)} of {len(self.ids)} ids of {self.name} have no mask, e.g. "
                             f"{self.mask_path(missing[0])}")

    def mask_path(self, image_id: str) -> str:
        return os.path.join(self.root, self.masks, f"{image_id}.png")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict | BadSample:
        image_id = self.ids[index]
        path = os.path.join(self.root, "JPEGImages", f"{image_id}.jpg")
        try:
            img, _ = decode_image(path)
        except BadImage as e:
            return BadSample(index, path, e.reason, e.detail)
        mask = read_label_png(self.mask_path(image_id))
        if mask.shape != (img.height, img.width):
            raise ValueError(f"mask {self.mask_path(image_id)} is {mask.shape[1]}x{mask.shape[0]} but its image "
                             f"{path} is {img.width}x{img.height}")
        image = tv_tensors.Image(img)  # uint8 [3, H, W]
        target = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return {"image": image, "mask": target, "index": index, "id": image_id, "path": path}
