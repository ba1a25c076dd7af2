"""The built-in procedural benchmark: determinism, layouts, VOC semantics, readers,
and the property that makes it meaningful (colour from shape, not from lightness)."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from pretext.data.synthetic import generate as synthetic
from pretext.data.synthetic import scenes

from pretext.data.synthetic import voc_writer as synthetic_voc

TINY = dict(size=32, num_train=3, num_val=2, num_voc=24)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.make_dataset(root, seed=3, verbose=False, **TINY)
    return str(root)


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = handle.read()
    return out


def _voc(root: str, *parts: str) -> str:
    return os.path.join(root, "VOCdevkit", "VOC2007", *parts)


def _objects(root: str, image_id: str) -> list[dict]:
    tree = ET.parse(_voc(root, "Annotations", f"{image_id}.xml")).getroot()
    return [{"name": o.findtext("name"), "difficult": int(o.findtext("difficult")),
             "box": [int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]}
            for o in tree.iter("object")]


def _ids(root: str, kind: str, split: str) -> list[str]:
    with open(_voc(root, "ImageSets", kind, f"{split}.txt")) as handle:
        return handle.read().split()


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    params = dict(size=32, num_train=2, num_val=1, num_voc=6, verbose=False)
    synthetic.make_dataset(tmp_path / "a", seed=5, **params)
    synthetic.make_dataset(tmp_path / "b", seed=5, **params)
    synthetic.make_dataset(tmp_path / "c", seed=6, **params)
    a, b, c = (_files(str(tmp_path / x)) for x in "abc")
    assert a == b
    images = [k for k in a if k.endswith((".png", ".jpg")) and "Segmentation" not in k]
    assert all(a[k] != c[k] for k in images)


def test_layout_and_manifest(tiny):
    with open(os.path.join(tiny, "dataset.json")) as handle:
        manifest = json.load(handle)
    assert manifest["complete"] and manifest["version"] == synthetic.GENERATOR_VERSION
    assert manifest["classes"] == scenes.CLASSES and len(scenes.CLASSES) >= 8
    assert manifest["params"] == dict(seed=3, class_colours=True, **TINY)
    for split, per_class in (("train", 3), ("val", 2)):
        assert sorted(os.listdir(os.path.join(tiny, "imagefolder", split))) == sorted(scenes.CLASSES)
        for name in scenes.CLASSES:
            files = os.listdir(os.path.join(tiny, "imagefolder", split, name))
            assert len(files) == per_class
            with Image.open(os.path.join(tiny, "imagefolder", split, name, files[0])) as image:
                assert image.mode == "RGB" and image.size == (32, 32)
    assert len(os.listdir(_voc(tiny, "JPEGImages"))) == 24
    counts = manifest["counts"]
    assert counts["voc/train"] + counts["voc/val"] + counts["voc/test"] == 24


def test_rerun_skips_and_changed_parameters_regenerate(tiny, tmp_path, capsys):
    synthetic.make_dataset(tiny, seed=3, **TINY)
    assert "skipping" in capsys.readouterr().out
    root = tmp_path / "d"
    synthetic.make_dataset(root, size=32, num_train=2, num_val=1, num_voc=4, verbose=False)
    synthetic.make_dataset(root, size=32, num_train=1, num_val=1, num_voc=2, verbose=False)
    assert len(os.listdir(root / "imagefolder" / "train" / "disc")) == 1
    assert len(os.listdir(root / "VOCdevkit" / "VOC2007" / "JPEGImages")) == 2


def test_refuses_to_overwrite_foreign_folders(tmp_path):
    (tmp_path / "VOCdevkit" / "VOC2007").mkdir(parents=True)
    with pytest.raises(FileExistsError):
        synthetic.make_dataset(tmp_path, size=32, num_train=1, num_val=1, num_voc=2, verbose=False)
    with pytest.raises(ValueError):
        synthetic.make_dataset(tmp_path / "x", size=8, verbose=False)


def test_voc_xml_boxes_inside_and_some_difficult(tiny):
    ids = _ids(tiny, "Main", "trainval") + _ids(tiny, "Main", "test")
    assert len(ids) == 24
    difficult = 0
    for image_id in ids:
        root = ET.parse(_voc(tiny, "Annotations", f"{image_id}.xml")).getroot()
        assert root.findtext("filename") == f"{image_id}.jpg"
        assert [int(root.find("size").findtext(k)) for k in ("width", "height", "depth")] == [32, 32, 3]
        objects = _objects(tiny, image_id)
        assert 1 <= len(objects) <= 4
        for obj in objects:
            xmin, ymin, xmax, ymax = obj["box"]
            assert obj["name"] in scenes.CLASSES
            assert 1 <= xmin <= xmax <= 32 and 1 <= ymin <= ymax <= 32  # VOC: 1-based, inclusive
            difficult += obj["difficult"]
    assert difficult > 0


def test_class_lists_follow_voc_convention(tiny):
    for split in synthetic_voc.VOC_SPLITS:
        ids = _ids(tiny, "Main", split)
        for name in scenes.CLASSES:
            with open(_voc(tiny, "ImageSets", "Main", f"{name}_{split}.txt")) as handle:
                rows = [line.split() for line in handle]
            assert [r[0] for r in rows] == ids
            for image_id, label in rows:
                present = [o for o in _objects(tiny, image_id) if o["name"] == name]
                expected = 1 if any(not o["difficult"] for o in present) else (0 if present else -1)
                assert int(label) == expected
    assert set(_ids(tiny, "Main", "trainval")) == set(_ids(tiny, "Main", "train")) | set(_ids(tiny, "Main", "val"))
    assert _ids(tiny, "Segmentation", "train") == _ids(tiny, "Main", "train")


def test_segmentation_pngs_use_voc_palette_and_labels(tiny):
    num_classes = len(scenes.CLASSES)
    for image_id in _ids(tiny, "Segmentation", "trainval"):
        with Image.open(_voc(tiny, "SegmentationClass", f"{image_id}.png")) as image:
            assert image.mode == "P" and image.size == (32, 32)
            assert tuple(image.getpalette()[:768]) == synthetic_voc.voc_palette()
            values = set(np.unique(np.asarray(image)).tolist())
        assert values <= set(range(num_classes + 1)) | {255}
        names = {o["name"] for o in _objects(tiny, image_id)}
        assert values - {0, 255} <= {1 + scenes.CLASSES.index(n) for n in names}
        assert 255 in values  # the ignore band around each object


def test_voc_palette_matches_known_entries():
    palette = synthetic_voc.voc_palette()
    assert palette[3:6] == (128, 0, 0) and palette[15 * 3:16 * 3] == (192, 128, 128)  # aeroplane, person
    assert palette[255 * 3:] == (224, 224, 192)  # the ignore colour


def test_torchvision_readers(tiny):
    datasets = pytest.importorskip("torchvision.datasets")
    detection = datasets.VOCDetection(root=tiny, year="2007", image_set="trainval", download=False)
    image, target = detection[0]
    assert len(detection) == len(_ids(tiny, "Main", "trainval")) and image.size == (32, 32)
    assert target["annotation"]["object"][0]["name"] in scenes.CLASSES
    assert len(datasets.VOCDetection(root=tiny, year="2007", image_set="test", download=False)) > 0
    segmentation = datasets.VOCSegmentation(root=tiny, year="2007", image_set="train", download=False)
    image, mask = segmentation[0]
    assert mask.mode == "P" and mask.size == image.size


def test_conversion_keeps_lightness():
    # Chroma is limited to the gamut, so sRGB (uint8) -> Lab gives back the L painted.
    from skimage.color import rgb2lab

    rng = np.random.default_rng(0)
    for _ in range(5):
        placements, masks, _ = scenes.voc_scene(rng, 48)
        lab = scenes.paint(rng, 48, placements, masks)
        back = rgb2lab(scenes.lab_to_srgb8(lab) / 255.0)
        assert np.abs(back[..., 0] - lab[..., 0]).max() < 1.0


def test_colour_comes_from_shape_not_lightness(tmp_path):
    """Linear probes on raw pixels: lightness near chance, Lab far above. With random
    object colours (the ablation) the same scenes lose the colour signal."""
    params = dict(size=32, num_train=60, num_val=20, num_voc=0, seed=1, verbose=False)
    synthetic.make_dataset(tmp_path / "typical", **params)
    typical = synthetic.self_check(tmp_path / "typical")
    assert typical["n_val"] == 160 and typical["chance"] == pytest.approx(1 / 8)
    assert typical["lightness_acc"] < typical["chance"] + 0.12
    assert typical["lab_acc"] > 0.4 and typical["lab_acc"] > typical["lightness_acc"] + 0.2
    synthetic.make_dataset(tmp_path / "random", class_colours=False, **params)
    shuffled = synthetic.self_check(tmp_path / "random")
    assert shuffled["lab_acc"] < typical["lab_acc"] - 0.15


def test_random_colours_keep_scenes_and_lightness(tmp_path):
    from skimage.color import rgb2lab

    params = dict(size=32, num_train=1, num_val=1, num_voc=0, verbose=False)
    synthetic.make_dataset(tmp_path / "a", **params)
    synthetic.make_dataset(tmp_path / "b", class_colours=False, **params)
    for name in scenes.CLASSES:
        rel = os.path.join("imagefolder", "train", name, f"{name}_00000.png")
        la, lb = (rgb2lab(np.asarray(Image.open(tmp_path / x / rel).convert("RGB")) / 255.0)[..., 0] for x in "ab")
        assert np.abs(la - lb).mean() < 0.5


def test_cli_make_data(tmp_path, capsys):
    from benchmarks.cli import main

    argv = ["make-data", "--out", str(tmp_path), "--size", "32", "--num-train", "2", "--num-val", "1", "--num-voc", "4"]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["params"]["num_voc"] == 4 and manifest["complete"]
    assert main(argv) == 0 and "skipping" in capsys.readouterr().out
    assert main(["make-data", "--out", str(tmp_path / "bad"), "--size", "4"]) == 2
