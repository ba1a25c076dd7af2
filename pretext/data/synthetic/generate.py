"""The built-in procedural benchmark (DESIGN section 6): ``colorbench make-data``.

Writes, from a seed, a small data set in the real layouts the harnesses read:

    DIR/dataset.json                              manifest (classes, seed, size, counts, version)
    DIR/imagefolder/{train,val}/<class>/*.png     one dominant object per image, plus clutter
    DIR/VOCdevkit/VOC2007/...                     1-4 objects per image: XML boxes, lists, masks

Why it is meaningful for colorization: an object's colour is predictable from its
shape (class-typical hue, jittered, a minority off-colour) but not from its lightness,
which is drawn per object independently of the class and patterned (flat, shading,
stripes, blotches). Backgrounds have typical colours (blue-ish sky gradient above a
random horizon, green or brown textured ground) that say nothing about the class.
Colours are built in Lab (L fixed per pixel, ab from the hue, chroma limited to the
sRGB gamut at that L) so converting to sRGB does not move the lightness.
``self_check`` measures it: linear probes on raw L pixels score near chance, on raw Lab
pixels far above.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image

from pretext.data.synthetic import voc_writer as voc

GENERATOR_VERSION = 2  # bump whenever the same seed would give other bytes
MANIFEST = "dataset.json"


@dataclass(frozen=True)
class ShapeClass:
    name: str
    hue: float  # class-typical Lab hue angle atan2(b, a), degrees
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray]  # unit-radius local (u, v) -> bool


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    return rho <= 0.4 + 0.6 * ((1.0 + np.cos(5.0 * phi)) / 2.0) ** 2


# Hues 45 degrees apart, so a jittered hue (sd 8) still points at its own class.
# Every shape fits in the unit disc, so a placement's radius bounds its extent.
SHAPE_CLASSES = (
    ShapeClass("disc", 45.0, lambda u, v: u * u + v * v <= 1.0),
    ShapeClass("square", 90.0, lambda u, v: np.maximum(abs(u), abs(v)) <= 0.7),
    ShapeClass("triangle", 135.0, lambda u, v: (v >= -0.5) & (np.sqrt(3) * abs(u) + v <= 1.0)),
    ShapeClass("star", 180.0, _star),
    ShapeClass("ring", 225.0, lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3)),
    ShapeClass("cross", 270.0, lambda u, v: (np.minimum(abs(u), abs(v)) <= 0.28) & (np.maximum(abs(u), abs(v)) <= 0.95)),
    ShapeClass("ellipse", 315.0, lambda u, v: u * u + (v / 0.5) ** 2 <= 1.0),
    ShapeClass("bar", 0.0, lambda u, v: (abs(u) <= 0.95) & (abs(v) <= 0.28)),
)
CLASSES = [c.name for c in SHAPE_CLASSES]

OFF_COLOUR_P = 0.12   # share of objects whose hue ignores their class (real objects vary too)
HUE_JITTER_SD = 8.0   # degrees
SIZE_RANGE = (16, 256)


# ---------------------------------------------------------------- colour ----------
_XYZ_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])
_XYZ_TO_LINEAR_RGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                               [-0.9692660, 1.8760108, 0.0415560],
                               [0.0556434, -0.2040259, 1.0572252]])


def lab_to_linear_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab [..., 3] (D65) -> unclipped linear sRGB [..., 3]; outside [0, 1] = out of gamut."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f ** 3, 3 * delta ** 2 * (f - 4.0 / 29.0)) * _XYZ_WHITE_D65
    return xyz @ _XYZ_TO_LINEAR_RGB.T


def lab_to_srgb8(lab: np.ndarray) -> np.ndarray:
    """Lab [H, W, 3] -> uint8 sRGB [H, W, 3]."""
    lin = np.clip(lab_to_linear_rgb(lab), 0.0, 1.0)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.round(srgb * 255.0).astype(np.uint8)


@lru_cache(maxsize=None)
def _max_chroma_table() -> np.ndarray:
    """[100, 180] largest in-gamut chroma for L in [i, i+1], hue in [2j, 2j+2] degrees.
    Limiting chroma (never lightness) keeps every pixel in gamut, so sRGB clipping cannot
    shift L by hue, which would leak the class into the lightness channel."""
    hues = np.deg2rad(np.arange(0.0, 362.0, 2.0))[:, None]   # [181, 1]
    chromas = np.arange(0.0, 151.0)[None, :]                  # [1, 151]
    cmax = np.empty((101, hues.shape[0]))
    for i in range(101):
        lab = np.stack(np.broadcast_arrays(float(i), chromas * np.cos(hues), chromas * np.sin(hues)), axis=-1)
        rgb = lab_to_linear_rgb(lab)
        ok = np.logical_and.accumulate(np.all((rgb >= -1e-6) & (rgb <= 1 + 1e-6), axis=-1), axis=-1)
        cmax[i] = ok.sum(-1) - 1
    # the gamut is curved between grid nodes: take the smallest corner, minus a margin
    corners = np.minimum(np.minimum(cmax[:-1, :-1], cmax[1:, :-1]), np.minimum(cmax[:-1, 1:], cmax[1:, 1:]))
    return np.maximum(corners - 1.0, 0.0)


def gamut_chroma(lightness: np.ndarray, hue_deg: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    table = _max_chroma_table()
    li = np.clip(lightness.astype(np.int64), 0, 99)
    hj = np.clip((np.mod(hue_deg, 360.0) / 2.0).astype(np.int64), 0, 179)
    return np.minimum(chroma, table[li, hj])


# ---------------------------------------------------------------- geometry --------
@dataclass(frozen=True)
class Placement:
    cls: int
    cx: float  # centre, pixels
    cy: float
    r: float  # radius of the disc that holds the shape, pixels
    angle: float  # radians


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    return ys, xs


def shape_mask(p: Placement, size: int) -> np.ndarray:
    """bool [size, size]: pixels whose centre lies inside the placed shape."""
    ys, xs = _grid(size)
    dx, dy = (xs - p.cx) / p.r, (ys - p.cy) / p.r
    c, s = np.cos(p.angle), np.sin(p.angle)
    return SHAPE_CLASSES[p.cls].inside(c * dx + s * dy, -s * dx + c * dy)


def _random_placement(rng: np.random.Generator, size: int, radius: tuple[float, float],
                      centre: tuple[float, float] = (0.0, 1.0), cls: int | None = None) -> Placement:
    kind = int(rng.integers(len(CLASSES))) if cls is None else cls
    cx, cy = size * rng.uniform(*centre, size=2)
    return Placement(kind, float(cx), float(cy), float(size * rng.uniform(*radius)), float(rng.uniform(0, 2 * np.pi)))


def imagefolder_scene(rng: np.random.Generator, size: int, cls: int) -> list[Placement]:
    """Small clutter of random classes behind one large, central-ish object of ``cls``;
    sometimes one more clutter object in front, so the main object is not always whole."""
    behind = [_random_placement(rng, size, (0.06, 0.13)) for _ in range(int(rng.integers(0, 4)))]
    main = _random_placement(rng, size, (0.22, 0.34), centre=(0.35, 0.65), cls=cls)
    front = [_random_placement(rng, size, (0.06, 0.12))] if rng.random() < 0.2 else []
    return behind + [main] + front


def voc_scene(rng: np.random.Generator, size: int) -> tuple[list[Placement], list[np.ndarray], np.ndarray]:
    """1-4 objects anywhere (some cut by the border, some hiding others). Objects left
    with almost no visible pixels are dropped: nobody could annotate them."""
    min_visible = max(4, int(0.003 * size * size))
    while True:
        count = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15]))
        placements = [_random_placement(rng, size, (0.08, 0.3), centre=(0.1, 0.9)) for _ in range(count)]
        masks = [shape_mask(p, size) for p in placements]
        visible = np.bincount(instance_map(masks).ravel(), minlength=count + 1)[1:]
        keep = [k for k in range(count) if visible[k] >= min_visible]
        if keep:  # dropping an object only uncovers others, so one pass is enough
            masks = [masks[k] for k in keep]
            return [placements[k] for k in keep], masks, instance_map(masks)


def instance_map(masks: list[np.ndarray]) -> np.ndarray:
    """int32 [H, W]: 0 = background, k + 1 = the k-th mask where it is on top."""
    inst = np.zeros(masks[0].shape, dtype=np.int32)
    for k, mask in enumerate(masks):
        inst[mask] = k + 1
    return inst


# ---------------------------------------------------------------- painting --------
def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a cells x cells random grid, bicubically upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L, hue, chroma) [size, size]: sky gradient above a tilted, wavy horizon,
    textured green or brown ground below. Drawn without looking at the objects."""
    ys, xs = _grid(size)
    horizon = size * (rng.uniform(0.3, 0.7) + rng.uniform(-0.15, 0.15) * (xs / size - 0.5)
                      + rng.uniform(0.0, 0.05) * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * xs / size + rng.uniform(0, 2 * np.pi)))
    t = np.clip(ys / horizon, 0.0, 1.0)  # 0 at the top, 1 at the horizon
    sky_chroma = rng.uniform(0.0, 6.0) if rng.random() < 0.15 else rng.uniform(15.0, 40.0)  # overcast or blue
    sky = (rng.uniform(50.0, 72.0) + rng.uniform(4.0, 12.0) * t, np.full_like(t, rng.uniform(225.0, 265.0)),
           sky_chroma * (1.0 - 0.5 * t))  # lighter and greyer towards the horizon
    green = rng.random() < 0.6
    hue = rng.uniform(120.0, 145.0) if green else rng.uniform(60.0, 80.0)
    chroma = rng.uniform(15.0, 35.0) if green else rng.uniform(10.0, 28.0)
    cells = int(rng.integers(4, 9))
    ground = (rng.uniform(30.0, 60.0) + rng.uniform(5.0, 12.0) * _value_noise(rng, size, cells)
              + rng.normal(0.0, 1.5, size=(size, size)),  # blotches + grain
              hue + 6.0 * _value_noise(rng, size, cells), chroma * (1.0 + 0.25 * _value_noise(rng, size, cells)))
    is_sky = ys < horizon
    return tuple(np.where(is_sky, s, g) for s, g in zip(sky, ground))


def _object_lightness(rng: np.random.Generator, p: Placement, size: int, base: float) -> np.ndarray:
    """[size, size] lightness of an object: flat, shaded, striped or blotchy, chosen
    independently of the class so lightness patterns do not name the class."""
    ys, xs = _grid(size)
    kind = int(rng.integers(4))
    theta = rng.uniform(0, 2 * np.pi)
    along = ((xs - p.cx) * np.cos(theta) + (ys - p.cy) * np.sin(theta)) / p.r  # ~[-1, 1] on the object
    if kind == 1:  # shading
        return base + rng.uniform(8.0, 22.0) * along
    if kind == 2:  # stripes, at least 3 px a period so they survive at small sizes
        cycles = min(rng.uniform(1.0, 3.0), p.r / 3.0)
        return base + rng.uniform(5.0, 12.0) * np.sin(2 * np.pi * cycles * along + rng.uniform(0, 2 * np.pi))
    if kind == 3:  # blotches about half the object's radius across
        cells = int(np.clip(2 * size / p.r, 3, 16))
        return base + rng.uniform(8.0, 18.0) * _value_noise(rng, size, cells)
    return np.full((size, size), base)


def _base_lightness(rng: np.random.Generator, local: float) -> float:
    """An object's mean lightness: the mean lightness of what it hides, moved up
    or down with equal odds by the same amount. Symmetric, so on average an object is
    as light as what it hides: otherwise its area (which depends on the class) would
    show in the mean lightness of its pixels, a linear cue to the class."""
    room = float(np.clip(min(local - 8.0, 95.0 - local), 6.0, 40.0))
    return local + (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(0.4, 1.0) * room


def _object_colour(rng: np.random.Generator, cls: int, class_colours: bool) -> tuple[float, float]:
    """(hue, chroma). The same draws happen either way, so with ``class_colours=False``
    a seed gives the same scenes and lightness, only the hues change (the ablation)."""
    off_colour, jitter, any_hue = rng.random() < OFF_COLOUR_P, rng.normal(0.0, HUE_JITTER_SD), rng.uniform(0, 360)
    chroma = rng.uniform(30.0, 70.0)
    if off_colour or not class_colours:
        return float(any_hue), float(chroma)
    return float((SHAPE_CLASSES[cls].hue + np.clip(jitter, -20, 20)) % 360.0), float(chroma)


def paint(rng: np.random.Generator, size: int, placements: list[Placement], masks: list[np.ndarray],
          class_colours: bool = True) -> np.ndarray:
    """Lab float [size, size, 3] of a scene; later placements cover earlier ones."""
    lightness, hue, chroma = _background(rng, size)
    for p, mask in zip(placements, masks):
        hidden = float(lightness[mask].mean()) if mask.any() else float(lightness.mean())
        obj_l = _object_lightness(rng, p, size, _base_lightness(rng, hidden))
        obj_hue, obj_chroma = _object_colour(rng, p.cls, class_colours)
        lightness[mask], hue[mask], chroma[mask] = obj_l[mask], obj_hue, obj_chroma
    lightness = np.clip(lightness, 3.0, 97.0)
    chroma = gamut_chroma(lightness, hue, np.maximum(chroma, 0.0))
    rad = np.deg2rad(hue)
    return np.stack([lightness, chroma * np.cos(rad), chroma * np.sin(rad)], axis=-1)


# ---------------------------------------------------------------- writing ---------
_STREAMS = {"train": 1, "val": 2, "voc": 3}


def _rng(seed: int, stream: str, *index: int) -> np.random.Generator:
    # One generator per file: a file depends only on (seed, stream, index), never on order.
    return np.random.default_rng([seed, _STREAMS[stream], *index])


def _write_imagefolder_item(root: str, split: str, cls: int, i: int, p: dict) -> None:
    rng = _rng(p["seed"], split, cls, i)
    placements = imagefolder_scene(rng, p["size"], cls)
    lab = paint(rng, p["size"], placements, [shape_mask(q, p["size"]) for q in placements], p["class_colours"])
    name = CLASSES[cls]
    Image.fromarray(lab_to_srgb8(lab)).save(os.path.join(root, "imagefolder", split, name, f"{name}_{i:05d}.png"))


def _voc_items(p: dict, bar):
    """Rendered VOC scenes, (id, rgb, instances, masks, class ids), for ``voc.write_voc``."""
    for index in range(p["num_voc"]):
        rng = _rng(p["seed"], "voc", index)
        placements, masks, inst = voc_scene(rng, p["size"])
        rgb = lab_to_srgb8(paint(rng, p["size"], placements, masks, p["class_colours"]))
        yield f"{index + 1:06d}", rgb, inst, masks, [q.cls for q in placements]
        bar.update()


def _generate(root: str, p: dict, verbose: bool) -> dict:
    from tqdm import tqdm

    per_class = {"train": p["num_train"], "val": p["num_val"]}
    with tqdm(total=len(CLASSES) * sum(per_class.values()) + p["num_voc"], desc="make-data", unit="img",
              disable=not verbose) as bar:
        for split, count in per_class.items():
            for cls, name in enumerate(CLASSES):
                os.makedirs(os.path.join(root, "imagefolder", split, name), exist_ok=True)
                for i in range(count):
                    _write_imagefolder_item(root, split, cls, i, p)
                    bar.update()
        counts = voc.write_voc(root, _voc_items(p, bar), CLASSES)
    return {**{f"imagefolder/{s}": len(CLASSES) * n for s, n in per_class.items()}, **counts}


# ---------------------------------------------------------------- manifest --------
def _read_manifest(root: str) -> dict | None:
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _write_manifest(root: str, manifest: dict) -> None:
    tmp = os.path.join(root, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, os.path.join(root, MANIFEST))  # never a half-written manifest


def _is_complete(root: str, manifest: dict) -> bool:
    """Manifest says complete and the expected number of files is still on disk."""
    if not manifest.get("complete"):
        return False
    p = manifest["params"]
    for split, count in (("train", p["num_train"]), ("val", p["num_val"])):
        for name in manifest["classes"]:
            folder = os.path.join(root, "imagefolder", split, name)
            if not os.path.isdir(folder) or len(os.listdir(folder)) != count:
                return False
    images = os.path.join(voc.voc_dir(root), "JPEGImages")
    return os.path.isdir(images) and len(os.listdir(images)) == p["num_voc"]


def _clear_previous(root: str, manifest: dict | None) -> None:
    """Remove an earlier generated set; refuse to touch folders this command did not write."""
    ours = manifest is not None and manifest.get("generator") == __name__
    for sub in ("imagefolder", "VOCdevkit"):
        path = os.path.join(root, sub)
        if os.path.exists(path) and os.listdir(path):
            if not ours:
                raise FileExistsError(f"{path} exists and was not written by 'colorbench make-data' "
                                      f"(no {MANIFEST}); choose an empty --out")
            shutil.rmtree(path)


def _summary(root: str, manifest: dict) -> dict:
    """The manifest plus absolute paths for the readers (torchvision's VOC readers take ``voc_root``)."""
    paths = {key: os.path.join(root, rel) for key, rel in manifest["paths"].items()}
    return {**manifest, "root": root, "abs_paths": paths}


def make_dataset(out_dir: str | os.PathLike, seed: int = 0, size: int = 64, num_train: int = 300,
                 num_val: int = 50, num_voc: int = 400, class_colours: bool = True,
                 force: bool = False, verbose: bool = True) -> dict:
    """Write the procedural benchmark under ``out_dir`` and return its summary (the
    manifest plus absolute paths). ``num_train`` / ``num_val`` are per class. A folder
    that already holds a complete set with the same parameters is left as it is."""
    if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
        raise ValueError(f"size must be in {SIZE_RANGE[0]}..{SIZE_RANGE[1]} pixels, got {size}")
    if min(num_train, num_val, num_voc) < 0 or num_train == 0:
        raise ValueError("counts must be >= 0 and num_train >= 1")
    root = os.path.abspath(os.fspath(out_dir))
    params = {"seed": int(seed), "size": int(size), "num_train": int(num_train), "num_val": int(num_val),
              "num_voc": int(num_voc), "class_colours": bool(class_colours)}
    previous = _read_manifest(root)
    if (not force and previous is not None and previous.get("version") == GENERATOR_VERSION
            and previous.get("params") == params and _is_complete(root, previous)):
        if verbose:
            print(f"make-data: {root} already holds this data set (same parameters); skipping")
        return _summary(root, previous)
    os.makedirs(root, exist_ok=True)
    _clear_previous(root, previous)
    manifest = {
        "generator": __name__, "version": GENERATOR_VERSION, "params": params, "classes": CLASSES,
        "class_hues_deg": {c.name: c.hue for c in SHAPE_CLASSES}, "off_colour_p": OFF_COLOUR_P,
        "paths": {"imagefolder_train": "imagefolder/train", "imagefolder_val": "imagefolder/val",
                  "voc_root": ".", "voc_dir": "VOCdevkit/VOC2007"},
        "complete": False,
    }
    _write_manifest(root, manifest)  # marks the folders as ours even if this run is interrupted
    start = time.perf_counter()
    manifest["counts"] = _generate(root, params, verbose)
    manifest["complete"] = True
    _write_manifest(root, manifest)
    if verbose:
        print(f"make-data: wrote {root} in {time.perf_counter() - start:.1f} s: {manifest['counts']}")
    return _summary(root, manifest)


# ---------------------------------------------------------------- self-check ------
def _load_lab(root: str, split: str, classes: list[str], side: int, limit: int | None):
    """Images of an ImageFolder split, box-downsampled to side x side, as Lab [N, side, side, 3]."""
    from skimage.color import rgb2lab  # an independent Lab implementation checks ours

    images, labels = [], []
    for cls, name in enumerate(classes):
        folder = os.path.join(root, "imagefolder", split, name)
        for file in sorted(os.listdir(folder))[:limit]:
            with Image.open(os.path.join(folder, file)) as image:
                images.append(np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BOX)))
            labels.append(cls)
    return rgb2lab(np.stack(images).astype(np.float64) / 255.0), np.array(labels)


def self_check(root: str | os.PathLike, side: int = 8, limit_per_class: int | None = None, C: float = 1e-3) -> dict:
    """Linear probes (logistic regression) on raw pixels of the ImageFolder part, trained
    on train, scored on val: lightness only should be near chance, Lab far above it.
    Defaults: 8 x 8 pixels and strong regularisation (C) keep the probes from fitting
    noise with a few hundred images, and fit in seconds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = os.fspath(root)
    manifest = _read_manifest(root)
    if manifest is None or not manifest.get("complete"):
        raise FileNotFoundError(f"{root} holds no complete data set ({MANIFEST} missing or incomplete)")
    classes = manifest["classes"]
    train_x, train_y = _load_lab(root, "train", classes, side, limit_per_class)
    val_x, val_y = _load_lab(root, "val", classes, side, limit_per_class)
    result = {"chance": 1.0 / len(classes), "n_train": len(train_y), "n_val": len(val_y), "side": side}
    for name, channels in (("lightness", [0]), ("lab", [0, 1, 2])):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
        probe.fit(train_x[..., channels].reshape(len(train_y), -1), train_y)
        result[f"{name}_acc"] = float(probe.score(val_x[..., channels].reshape(len(val_y), -1), val_y))
    return result


# ---------------------------------------------------------------- command line ----
def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output folder: imagefolder/, VOCdevkit/VOC2007/, dataset.json")
    parser.add_argument("--seed", type=int, default=0, help="every file is a function of the seed (same seed, same bytes)")
    parser.add_argument("--size", type=int, default=64,
                        help="image side in pixels (default 64: the design's prototype size, a CPU pretext run "
                             "takes minutes; 128 for GPU runs)")
    parser.add_argument("--num-train", type=int, default=300,
                        help="training images per class (default 300: 2400 in all, enough for CPU linear probes)")
    parser.add_argument("--num-val", type=int, default=50, help="validation images per class (default 50)")
    parser.add_argument("--num-voc", type=int, default=400,
                        help="VOCdevkit images (default 400; half test, a quarter each train and val, as VOC 2007)")
    parser.add_argument("--random-colours", action="store_true",
                        help="object hues uniform instead of class-typical: the ablation (same scenes and "
                             "lightness for the same seed, only the hues differ)")
    parser.add_argument("--force", action="store_true", help="regenerate even if --out holds the same data set")
    parser.add_argument("--self-check", action="store_true",
                        help="then fit linear probes on raw L vs raw Lab pixels and print their accuracy")


def run(args) -> int:
    print(f"colorbench make-data (generator v{GENERATOR_VERSION}): {vars(args)}")
    try:
        summary = make_dataset(args.out, seed=args.seed, size=args.size, num_train=args.num_train,
                               num_val=args.num_val, num_voc=args.num_voc,
                               class_colours=not args.random_colours, force=args.force)
        if args.self_check:
            check = self_check(summary["root"])
            print(f"self-check (logistic regression on {check['side']}x{check['side']} raw pixels, val accuracy): "
                  f"lightness {check['lightness_acc']:.3f}, Lab {check['lab_acc']:.3f}, chance {check['chance']:.3f} "
                  f"({check['n_train']} train / {check['n_val']} val images)")
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"colorbench make-data: {exc}", file=sys.stderr)
        return 2
    return 0
