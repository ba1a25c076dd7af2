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

import numpy as np
from PIL import Image

from pretext.data.synthetic import voc_writer as voc
from pretext.data.synthetic.scenes import (CLASSES, OFF_COLOUR_P, SHAPE_CLASSES, imagefolder_scene, lab_to_srgb8, paint,
                                           shape_mask, voc_scene)

GENERATOR_VERSION = 2  # bump whenever the same seed would give other bytes
MANIFEST = "dataset.json"


SIZE_RANGE = (16, 256)



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
