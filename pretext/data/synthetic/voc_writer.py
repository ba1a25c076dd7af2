"""PASCAL VOCdevkit writer for the built-in procedural benchmark (``pretext.synthetic``).

Given a rendered image and its instance map, this module derives what the VOC
annotators would have written and writes it in the real VOC 2007 layout, so the
same readers (torchvision's ``VOCDetection`` / ``VOCSegmentation``, the harnesses'
own XML parsing) serve both the real and the synthetic data:

    VOCdevkit/VOC2007/JPEGImages/000001.jpg
    VOCdevkit/VOC2007/Annotations/000001.xml
    VOCdevkit/VOC2007/ImageSets/Main/{train,val,trainval,test}.txt
    VOCdevkit/VOC2007/ImageSets/Main/<class>_{train,val,trainval,test}.txt   (1 / -1 / 0)
    VOCdevkit/VOC2007/ImageSets/Segmentation/{train,val,trainval,test}.txt
    VOCdevkit/VOC2007/SegmentationClass/000001.png    (palette PNG, 0 = background, 255 = ignore)
    VOCdevkit/VOC2007/SegmentationObject/000001.png

Nothing here knows how scenes are drawn; it imports nothing from the rest of the suite.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

VOC_SPLITS = ("train", "val", "trainval", "test")
IGNORE_INDEX = 255

# VOC's "difficult" flag marks objects the annotators judged hard to recognise
# without context; here: few visible pixels, or mostly hidden behind other objects.
DIFFICULT_MIN_AREA_FRAC = 0.015  # visible pixels / image pixels
DIFFICULT_MIN_VISIBLE_FRAC = 0.5  # visible pixels / the object's own in-image pixels


@dataclass(frozen=True)
class VocObject:
    name: str
    bbox: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax: 1-based, inclusive (VOC convention)
    truncated: bool
    difficult: bool


def voc_dir(root: str | os.PathLike) -> str:
    """``root/VOCdevkit/VOC2007``: where torchvision's VOC readers look for ``root``."""
    return os.path.join(os.fspath(root), "VOCdevkit", "VOC2007")


@lru_cache(maxsize=None)
def voc_palette() -> tuple[int, ...]:
    """The 256-entry VOC colour map, flattened to 768 ints (index i -> RGB): the bits of
    i are spread over the high bits of R, G and B, three at a time."""
    palette = []
    for index in range(256):
        rgb = [0, 0, 0]
        value = index
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        palette.extend(rgb)
    return tuple(palette)


def annotate(instances: np.ndarray, full_masks: list[np.ndarray], names: list[str]) -> list[VocObject]:
    """Objects as VOC annotates them. ``instances`` [H, W]: 0 = background, k + 1 = the
    k-th object where it is visible; ``full_masks[k]`` [H, W] bool: its whole in-image
    shape (also the occluded part). Boxes bound the visible pixels."""
    height, width = instances.shape
    objects = []
    for k, (mask, name) in enumerate(zip(full_masks, names)):
        ys, xs = np.nonzero(instances == k + 1)
        if len(xs) == 0:
            raise ValueError(f"object {k} ({name}) is not visible; drop it before annotating")
        # Truncated: the shape is cut by the image border (it touches the outermost pixels).
        truncated = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
        small = len(xs) < DIFFICULT_MIN_AREA_FRAC * height * width
        occluded = len(xs) < DIFFICULT_MIN_VISIBLE_FRAC * mask.sum()
        bbox = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(VocObject(name, bbox, truncated, bool(small or occluded)))
    return objects


def image_labels(objects: list[VocObject], classes: list[str]) -> dict[str, int]:
    """VOC per-class image label: 1 = a non-difficult instance is present, 0 = only
    difficult instances, -1 = none."""
    labels = {}
    for name in classes:
        present = [obj for obj in objects if obj.name == name]
        if any(not obj.difficult for obj in present):
            labels[name] = 1
        else:
            labels[name] = 0 if present else -1
    return labels


def write_annotation(path: str, image_id: str, width: int, height: int, objects: list[VocObject]) -> None:
    """One ``Annotations/<id>.xml`` in the VOC 2007 schema."""
    root = ET.Element("annotation")
    _text(root, "folder", "VOC2007")
    _text(root, "filename", f"{image_id}.jpg")
    source = ET.SubElement(root, "source")
    _text(source, "database", "colorbench synthetic")
    _text(source, "annotation", "colorbench make-data")
    _text(source, "image", "procedural")
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        _text(size, tag, value)
    _text(root, "segmented", 1)
    for obj in objects:
        node = ET.SubElement(root, "object")
        _text(node, "name", obj.name)
        _text(node, "pose", "Unspecified")
        _text(node, "truncated", int(obj.truncated))
        _text(node, "difficult", int(obj.difficult))
        box = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.bbox):
            _text(box, tag, value)
    ET.indent(root, space="\t")
    ET.ElementTree(root).write(path, encoding="utf-8")


def _text(parent: ET.Element, tag: str, value) -> None:
    ET.SubElement(parent, tag).text = str(value)


def segmentation_maps(instances: np.ndarray, class_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(SegmentationClass, SegmentationObject) uint8 [H, W] maps: class index = 1 +
    class id (instance index = 1 + k), 0 = background, and 255 on the object-side pixel
    of every boundary, like the ignore band VOC draws around each object."""
    lookup = np.array([0] + [c + 1 for c in class_ids], dtype=np.uint8)
    cls_map = lookup[instances]
    obj_map = instances.astype(np.uint8)
    border = _inner_boundary(instances)
    cls_map[border] = IGNORE_INDEX
    obj_map[border] = IGNORE_INDEX
    return cls_map, obj_map


def _inner_boundary(instances: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour of another label (background or object)."""
    padded = np.pad(instances, 1, mode="edge")  # the image border is not an object boundary
    centre = padded[1:-1, 1:-1]
    differs = np.zeros(instances.shape, dtype=bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        differs |= padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx] != centre
    return differs & (instances > 0)


def save_palette_png(path: str, labels: np.ndarray) -> None:
    """A mode "P" PNG with the VOC palette, as the official SegmentationClass files."""
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette(voc_palette())  # turns the "L" image into "P", pixel values unchanged
    image.save(path)


def split_of(index: int) -> str:
    """VOC 2007 split of the index-th image: half test, the rest half train / half val."""
    return ("train", "test", "val", "test")[index % 4]


def write_image_sets(root: str, splits: dict[str, str], labels: dict[str, dict[str, int]], classes: list[str]) -> None:
    """``ImageSets/Main`` (split lists and per-class 1/-1/0 lists) and
    ``ImageSets/Segmentation`` (every image here is segmented). ``splits``: id -> split
    (train / val / test); ``labels``: id -> {class: 1 / 0 / -1}."""
    members = {name: [] for name in VOC_SPLITS}
    for image_id in sorted(splits):
        split = splits[image_id]
        members[split].append(image_id)
        if split in ("train", "val"):
            members["trainval"].append(image_id)
    base = voc_dir(root)
    for kind in ("Main", "Segmentation"):
        os.makedirs(os.path.join(base, "ImageSets", kind), exist_ok=True)
        for split, ids in members.items():
            _write_lines(os.path.join(base, "ImageSets", kind, f"{split}.txt"), ids)
    for name in classes:
        for split, ids in members.items():
            # VOC pads the id and the label with spaces: "000005 -1" / "000007  1".
            lines = [f"{i} {labels[i][name]:2d}" for i in ids]
            _write_lines(os.path.join(base, "ImageSets", "Main", f"{name}_{split}.txt"), lines)


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="ascii", newline="\n") as handle:
        handle.write("".join(line + "\n" for line in lines))


def write_item(root: str, image_id: str, rgb: np.ndarray, instances: np.ndarray, masks: list[np.ndarray],
               class_ids: list[int], classes: list[str]) -> tuple[dict[str, int], int]:
    """All files of one image: JPEG, XML, class and object masks. ``rgb`` uint8
    [H, W, 3]; ``instances`` / ``masks`` as in ``annotate``. Returns the image's
    per-class labels (1 / 0 / -1) and its number of difficult objects."""
    base = voc_dir(root)
    height, width = instances.shape
    Image.fromarray(rgb).save(os.path.join(base, "JPEGImages", f"{image_id}.jpg"), quality=95)
    objects = annotate(instances, masks, [classes[c] for c in class_ids])
    write_annotation(os.path.join(base, "Annotations", f"{image_id}.xml"), image_id, width, height, objects)
    cls_map, obj_map = segmentation_maps(instances, class_ids)
    save_palette_png(os.path.join(base, "SegmentationClass", f"{image_id}.png"), cls_map)
    save_palette_png(os.path.join(base, "SegmentationObject", f"{image_id}.png"), obj_map)
    return image_labels(objects, classes), sum(obj.difficult for obj in objects)


def write_voc(root: str, items, classes: list[str]) -> dict[str, int]:
    """Write a whole VOCdevkit from ``items``: (image_id, rgb, instances, masks,
    class_ids) in order; the i-th item goes to split ``split_of(i)``. Returns counts."""
    base = voc_dir(root)
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        os.makedirs(os.path.join(base, sub), exist_ok=True)
    splits, labels, difficult = {}, {}, 0
    for index, (image_id, rgb, instances, masks, class_ids) in enumerate(items):
        labels[image_id], n_difficult = write_item(root, image_id, rgb, instances, masks, class_ids, classes)
        splits[image_id], difficult = split_of(index), difficult + n_difficult
    write_image_sets(root, splits, labels, classes)
    counts = {f"voc/{s}": sum(v == s for v in splits.values()) for s in ("train", "val", "test")}
    return {**counts, "voc/difficult_objects": difficult}
