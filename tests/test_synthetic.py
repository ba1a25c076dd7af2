"""The built-in procedural benchmark: layouts, determinism, readers, and that it measures
what it should (colour follows the class, lightness does not)."""
import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import VOCDetection, VOCSegmentation

from benchmarks.cli import main as cli
from pretext import synthetic

SMALL = dict(seed=3, size=48, num_train=4, num_val=2, num_voc=24, verbose=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return synthetic.make_dataset(tmp_path_factory.mktemp("synth") / "d", **SMALL)


def _digest(root: Path) -> str:
    h = hashlib.sha1()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "dataset.json"):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, small):
    again = synthetic.make_dataset(tmp_path / "again", **SMALL)
    assert _digest(Path(small["root"])) == _digest(Path(again["root"]))
    other = synthetic.make_dataset(tmp_path / "other", **{**SMALL, "seed": 4})
    assert _digest(Path(small["root"])) != _digest(Path(other["root"]))


def test_imagefolder_layout_and_manifest(small):
    root = Path(small["root"])
    for split, n in (("train", 4), ("val", 2)):
        classes = sorted(p.name for p in (root / "imagefolder" / split).iterdir())
        assert classes == sorted(synthetic.CLASSES) and len(classes) >= 8
        for cls in classes:
            files = list((root / "imagefolder" / split / cls).iterdir())
            assert len(files) == n
            with Image.open(files[0]) as im:
                assert im.size == (48, 48) and im.mode == "RGB"
    assert small["complete"] and small["params"]["seed"] == 3


def test_rerun_with_same_parameters_is_skipped(small, capsys):
    synthetic.make_dataset(small["root"], **{**SMALL, "verbose": True})
    assert "already holds this data set" in capsys.readouterr().out


def test_voc_xml_boxes_difficult_and_class_lists(small):
    voc = Path(small["root"]) / "VOCdevkit" / "VOC2007"
    ids = (voc / "ImageSets" / "Main" / "trainval.txt").read_text().split() + \
        (voc / "ImageSets" / "Main" / "test.txt").read_text().split()
    assert len(ids) == 24
    difficult, per_image = 0, {}
    for image_id in ids:
        tree = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
        w, h = int(tree.find("size/width").text), int(tree.find("size/height").text)
        assert (w, h) == (48, 48) and tree.find("filename").text == f"{image_id}.jpg"
        names = {}
        for obj in tree.findall("object"):
            box = [int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert 1 <= box[0] <= box[2] <= w and 1 <= box[1] <= box[3] <= h  # 1-based, inside the image
            d = int(obj.find("difficult").text)
            difficult += d
            name = obj.find("name").text
            names[name] = max(names.get(name, -1), 0 if d else 1)
        assert 1 <= len(tree.findall("object")) <= 4
        per_image[image_id] = names
    assert difficult > 0  # some objects are flagged difficult
    # per-class lists: 1 = a non-difficult instance, 0 = only difficult ones, -1 = absent
    for cls in synthetic.CLASSES:
        for line in (voc / "ImageSets" / "Main" / f"{cls}_trainval.txt").read_text().splitlines():
            image_id, flag = line.split()
            assert int(flag) == per_image[image_id].get(cls, -1), (cls, image_id)


def test_segmentation_masks_are_voc_palette_pngs(small):
    voc = Path(small["root"]) / "VOCdevkit" / "VOC2007"
    ids = (voc / "ImageSets" / "Segmentation" / "train.txt").read_text().split()
    with Image.open(voc / "SegmentationClass" / f"{ids[0]}.png") as im:
        assert im.mode == "P"
        assert im.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1
        values = set(np.unique(np.asarray(im)).tolist())
    assert values <= set(range(len(synthetic.CLASSES) + 1)) | {255} and 255 in values and len(values) > 2


def test_torchvision_readers_accept_it(small):
    det = VOCDetection(small["root"], year="2007", image_set="trainval", download=False)
    image, target = det[0]
    assert image.size == (48, 48) and target["annotation"]["object"]
    seg = VOCSegmentation(small["root"], year="2007", image_set="train", download=False)
    image, mask = seg[0]
    assert mask.mode == "P" and mask.size == image.size


def test_self_check_colour_is_predictive_lightness_is_not(tmp_path):
    # 40 train / 20 val images per class at 32 px: Lab pixels separate the classes,
    # lightness pixels barely beat chance (1/8)
    summary = synthetic.make_dataset(tmp_path / "check", seed=0, size=32, num_train=40, num_val=20, num_voc=0,
                                     verbose=False)
    check = synthetic.self_check(summary["root"], side=8)
    assert check["lab_acc"] > 3 * check["chance"]
    assert check["lightness_acc"] < 2 * check["chance"]
    assert check["lab_acc"] > check["lightness_acc"] + 0.2


def test_cli_make_data(tmp_path):
    assert cli(["make-data", "--out", str(tmp_path / "cli"), "--size", "32", "--num-train", "1", "--num-val", "1",
                "--num-voc", "4"]) == 0
    assert (tmp_path / "cli" / "dataset.json").is_file()
    assert cli(["make-data", "--out", str(tmp_path / "bad"), "--size", "4"]) == 2
