"""PASCAL VOC 2007 classification (issue 11): AP, labels, both protocols end to end."""
import json
import math
import os

import numpy as np
import pytest
import torch

from downstream.metrics import mean_ap, pr_curve, sklearn_ap, voc_ap
from pretext.data.voc import class_list_labels, classification_labels, voc_classes
from tests.conftest import shared_path

# ---------------------------------------------------------------------------- average precision

def test_ap_hand_computed_with_a_tie():
    # ranked: 0.9 (+) | 0.8 (-), 0.8 (+) tied | 0.1 (-); 2 positives
    # points per distinct score: (R, P) = (1/2, 1), (1, 2/3), (1, 1/2)
    rec, prec = pr_curve([0.9, 0.8, 0.8, 0.1], [1, -1, 1, -1])
    assert rec.tolist() == [0.5, 1.0, 1.0] and np.allclose(prec, [1, 2 / 3, 1 / 2])
    assert voc_ap([0.9, 0.8, 0.8, 0.1], [1, -1, 1, -1], "area") == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # 11 points: t = 0 .. 0.5 -> 1, t = 0.6 .. 1 -> 2/3
    assert voc_ap([0.9, 0.8, 0.8, 0.1], [1, -1, 1, -1], "11point") == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_tied_scores_enter_together_whatever_their_order():
    # one negative and one positive at the same score: a single point (R 1, P 1/2) -> AP 1/2;
    # a stable sort would give 1 when the positive comes first and 1/2 otherwise
    assert voc_ap([0.5, 0.5], [1, -1], "area") == pytest.approx(0.5)
    assert voc_ap([0.5, 0.5], [-1, 1], "area") == pytest.approx(0.5)


def test_envelope_area_differs_from_sklearn_where_precision_recovers():
    # ranked -, +, +: (R, P) = (0, 0), (1/2, 1/2), (1, 2/3); the envelope lifts R <= 1/2 to 2/3
    scores, labels = [0.9, 0.8, 0.7], [-1, 1, 1]
    assert voc_ap(scores, labels, "area") == pytest.approx(2 / 3)
    assert sklearn_ap(scores, labels) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert voc_ap(scores, labels, "11point") == pytest.approx(2 / 3)


def test_difficult_only_image_is_left_out():
    # the top-scored image has only difficult objects (label 0): ignored, so AP = 1; counted
    # as a negative it would be 1/2
    assert voc_ap([0.9, 0.8, 0.3], [0, 1, -1], "area") == 1.0
    assert voc_ap([0.9, 0.8, 0.3], [0, 1, -1], "11point") == 1.0
    assert sklearn_ap([0.9, 0.8, 0.3], [0, 1, -1]) == 1.0
    assert voc_ap([0.9, 0.8, 0.3], [-1, 1, -1], "area") == 0.5


def test_class_without_positives_is_nan_and_left_out_of_the_mean_with_a_warning():
    assert math.isnan(voc_ap([0.3, 0.2], [-1, 0], "area"))
    assert math.isnan(sklearn_ap([0.3, 0.2], [-1, -1]))
    with pytest.warns(RuntimeWarning, match="without a positive image left out: cow"):
        assert mean_ap({"cat": 50.0, "cow": float("nan"), "dog": 100.0}) == 75.0
    with pytest.warns(RuntimeWarning):
        assert math.isnan(mean_ap([float("nan")]))


def test_bad_ap_input_is_an_error():
    with pytest.raises(ValueError, match="1 / 0 / -1"):
        voc_ap([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="AP method"):
        voc_ap([0.1], [1], "auc")
    with pytest.raises(ValueError, match="differ in length"):
        voc_ap([0.1, 0.2], [1])


# ---------------------------------------------------------------------------- labels

def test_labels_of_the_real_fixture_come_from_the_xml():
    root = str(shared_path("data", "voc_fixture", "VOCdevkit", "VOC2007"))
    assert voc_classes(root) == ["car", "chair", "dog", "person", "sofa", "train"]  # no per-class lists
    lbl = classification_labels(root, "trainval")
    assert lbl.ids == ["000001", "000002", "000003", "000004", "000005"]
    row = dict(zip(lbl.classes, lbl.labels[lbl.ids.index("000005")].tolist()))
    assert row == {"car": -1, "chair": 1, "dog": -1, "person": -1, "sofa": -1, "train": -1}  # 3 chairs not difficult
    assert not lbl.problems and class_list_labels(root, "trainval", lbl.classes) is None


@pytest.mark.parametrize("year,bad", [("VOC2007", "000001.jpg"), ("VOC2012", "2007_000027.jpg")])
def test_truncated_fixture_jpegs_are_skipped_and_counted(year, bad):
    from downstream.voc_cls.data import image_source
    from pretext.data.loader import SkipCounter, collate_skip_bad, val_transform

    lbl = classification_labels(str(shared_path("data", "voc_fixture", "VOCdevkit", year)), "trainval")
    src = image_source(lbl, val_transform(64))
    batch = collate_skip_bad([src[i] for i in range(len(src))])
    skips = SkipCounter()
    skips.update(batch)
    assert skips.counts == {"truncated": 1} and batch["skipped"][0].path.endswith(bad)
    assert len(batch["index"]) == 4


def _write_voc(root, xmls: dict, split_ids):
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, body in xmls.items():
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(f"<annotation><size><width>8</width><height>8</height></size>{body}</annotation>")
    with open(os.path.join(root, "ImageSets", "Main", "trainval.txt"), "w") as f:
        f.write("".join(f"{i}\n" for i in split_ids))


def test_bad_annotations_are_counted_not_fatal(tmp_path):
    obj = "<object><name>{}</name><difficult>{}</difficult></object>"
    _write_voc(tmp_path, {
        "a": obj.format("cat", 1) + obj.format("dog", 0),           # cat difficult only -> 0
        "b": "",                                                      # no objects -> all -1
        "c": "<object><difficult>0</difficult></object>" + obj.format("cat", ""),  # no name; empty difficult
        "d": obj.format("zebra", 0),                                  # not in the class list
        "e": "<object><name>dog",                                     # unparsable
    }, ["a", "b", "c", "d", "e", "f"])                                # f: no XML at all
    lbl = classification_labels(str(tmp_path), "trainval", ["cat", "dog"])
    assert lbl.ids == ["a", "b", "c", "d"] and lbl.dropped == ["e", "f"]
    assert lbl.labels.tolist() == [[0, 1], [-1, -1], [1, -1], [-1, -1]]
    assert dict(lbl.problems) == {"no_objects": 1, "object_without_name": 1, "missing_difficult": 1,
                                  "unknown_class": 1, "bad_xml": 1, "missing_xml": 1}
    assert "missing_xml 1" in lbl.summary()


def test_missing_voc_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="VOC folder not found: .*JPEGImages"):
        classification_labels(str(tmp_path), "trainval")
    _write_voc(tmp_path, {}, [])
    with pytest.raises(ValueError, match="split file not found: .*test.txt"):
        classification_labels(str(tmp_path), "test")
    with pytest.raises(ValueError, match="lists no image"):
        classification_labels(str(tmp_path), "trainval", ["cat"])


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    """A small built-in data set: 8 classes, 24 trainval / 24 test VOC images (64 px)."""
    from pretext.data.synthetic.generate import make_dataset

    out = tmp_path_factory.mktemp("builtin")
    make_dataset(out, num_train=1, num_val=0, num_voc=48, verbose=False)
    return out


def test_builtin_labels_match_its_per_class_lists(builtin):
    root = str(builtin / "VOCdevkit" / "VOC2007")
    manifest = json.loads((builtin / "dataset.json").read_text())
    assert voc_classes(root) == sorted(manifest["classes"])        # read from the data, not VOC's 20
    for split in ("trainval", "test"):
        lbl = classification_labels(root, split)
        assert len(lbl.ids) == 24 and not lbl.problems
        assert (lbl.labels == class_list_labels(root, split, lbl.classes)).all()
    assert (classification_labels(root, "test").labels == 0).any()  # difficult-only labels occur


# ---------------------------------------------------------------------------- fine-tuning parts

def test_frozen_layers_follow_train_from():
    from downstream.trunks import encoder_trunk
    from downstream.voc_cls.finetune import frozen_names

    trunk = encoder_trunk("alexnet_cc", {"width": 0.25})
    everything = {n for n, _ in trunk.named_parameters()}
    assert frozen_names(trunk, "fc6", 96, "cpu") == everything
    assert frozen_names(trunk, "conv1", 96, "cpu") == set()
    assert frozen_names(trunk, "conv3", 96, "cpu") == {n for n in everything if n.split(".")[1] in ("conv1", "conv2")}
    with pytest.raises(ValueError, match="train_from must be fc6 or a tap"):
        frozen_names(trunk, "fc7", 96, "cpu")


def test_zhang_conv_fc6_fc7_load_as_fully_connected_layers(tmp_path, one_thread):
    """At 227 px the released head's dilated 6x6 fc6 at the centre of conv5 reads the 6x6
    pool5 grid: the loaded fc6 / fc7 give its fc7 activations there exactly."""
    from downstream.trunks import TrunkConfig, checkpoint_trunk
    from downstream.voc_cls.config import HeadConfig
    from downstream.voc_cls.finetune import build_head, checkpoint_head_state
    from pretext.encoders import build_encoder
    from pretext.engine.checkpoint import save_checkpoint
    from pretext.methods import build_method
    from pretext.methods.base import method_payload

    torch.manual_seed(0)
    method = build_method("zhang", build_encoder("alexnet_cc", width=0.25))
    for m in method.head.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics to fold
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(tmp_path / "c.pt", method_payload(method, "alexnet_cc", {"width": 0.25}, {"loss": "full"}, step=0))
    trunk = checkpoint_trunk(tmp_path / "c.pt", "alexnet_cc").eval()
    state = checkpoint_head_state(TrunkConfig(checkpoint=str(tmp_path / "c.pt")))
    head, info = build_head(trunk, 227, 5, HeadConfig(), state)
    assert info["fc6_fc7"] == "checkpoint" and info["fc6_in"] == 64 * 36
    x = torch.randn(2, 1, 227, 227)
    conv5 = trunk.forward_features(x, ["conv5"])["conv5"]                     # [2, 64, 13, 13]
    method.eval()
    with torch.no_grad():
        want = method.head[:7](conv5)[:, :, 6, 6]                             # relu7 at the centre
        got = head[:-2].eval()(conv5)                                          # pool5 .. relu7 (drop7, fc8 cut)
    assert torch.allclose(got, want, atol=1e-4)
    _, info = build_head(trunk, 128, 5, HeadConfig(), state)
    assert info["fc6_fc7"] == "new" and "pool5 4 cells" in info["fc6_fc7_note"]


def test_rescaling_keeps_the_function_and_evens_out_change_rates(builtin, one_thread):
    from downstream.trunks import encoder_trunk
    from downstream.voc_cls.config import HeadConfig, RescaleConfig
    from downstream.voc_cls.data import image_source, train_transform
    from downstream.voc_cls.finetune import ClsNet, build_head, multilabel_loss
    from downstream.voc_cls.rescale import krahenbuhl_rescale

    torch.manual_seed(0)
    lbl = classification_labels(str(builtin / "VOCdevkit" / "VOC2007"), "trainval")
    trunk = encoder_trunk("alexnet_cc", {"width": 0.25})
    net = ClsNet(trunk, build_head(trunk, 96, len(lbl.classes), HeadConfig())[0]).eval()
    x = trunk.prepare(torch.randint(0, 256, (4, 3, 96, 96), dtype=torch.uint8), "cpu")
    with torch.no_grad():
        before = net(x)
    src = image_source(lbl, train_transform(96, 108, 0.5, 2.0))
    rcfg = RescaleConfig(images=16, iterations=4, alpha=0.5)
    info = krahenbuhl_rescale(net, src, lbl, multilabel_loss, rcfg, "cpu", 0, lambda s: None)
    with torch.no_grad():
        assert torch.allclose(net(x), before, rtol=1e-3, atol=1e-4)
    assert len(info["layers"]) == 7 and info["change_rate_spread_after"] < info["change_rate_spread_before"]


# ---------------------------------------------------------------------------- end to end

def _cli(*args):
    from benchmarks.cli import main

    return main(["voc-cls", *args])


def _tiny_args(builtin, tmp_path, protocol, *extra, init="gaussian"):
    return ["--config", "configs/downstream/voc_cls_tiny.yaml", "--protocol", protocol, "--init", init,
            "--run-dir", str(tmp_path / protocol), "--set", f"data.root={builtin}/VOCdevkit/VOC2007",
            "--set", "data.crop=64", "--set", "data.resize=72", "--set", f"svm.cache_dir={tmp_path}/cache",
            "--set", "trunk.baseline.calib_images=24", *extra]


@pytest.mark.slow
def test_finetune_fc6_8_end_to_end_leaves_the_trunk_alone(builtin, tmp_path, one_thread):
    args = _tiny_args(builtin, tmp_path, "finetune", "--set", "train_from=fc6", "--set", "finetune.iterations=12",
                      "--set", "finetune.batch_size=8", "--set", "finetune.test_crops=2")
    assert _cli(*args) == 0
    out = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    heads = [r for r in out["records"] if r["metric"] == "mAP"]
    assert len(heads) == 1 and heads[0]["protocol"] == "voc07_cls_fc6-8" and heads[0]["layer"] == ""
    assert heads[0]["suite"] == "pascal" and 0 <= heads[0]["value"] <= 100
    assert {r["metric"] for r in out["records"]} == {"mAP", *(f"AP/{c}" for c in out["classes"])}
    assert out["trunk_unchanged"] is True and out["iterations"] == 12  # TrunkGuard: weights and BN statistics
    assert (tmp_path / "finetune" / "checkpoints" / "finetuned.pt").is_file()


@pytest.mark.slow
def test_parallel_cost_search_equals_a_sequential_sklearn_loop(tmp_path):
    """Worker processes, memory-mapped features: the same costs, CV APs and test scores as
    nested loops over the features in memory (liblinear is seeded; one BLAS thread each)."""
    from types import SimpleNamespace

    from downstream.voc_cls.svm import train_svms
    from downstream.voc_cls.svm_speed import sequential, synthetic

    x, labels = synthetic(150, 64, 3, seed=1)
    np.save(tmp_path / "f.npy", x)
    costs = [0.01, 1.0, 100.0]
    cfg = SimpleNamespace(svm=SimpleNamespace(costs=costs, folds=3, pos_weight=2.0, max_iter=2000, n_jobs=2))
    lbl = SimpleNamespace(labels=labels, classes=["a", "b", "c"])
    out = train_svms(cfg, {"t": str(tmp_path / "f.npy")}, np.arange(150), lbl, {"t": str(tmp_path / "f.npy")},
                     np.arange(40), 40, lambda s: None)["t"]
    ref, ref_scores = sequential(x, labels, x[:40], costs, 3, 2.0, 2000)
    for k, name in enumerate(lbl.classes):
        best = max((ref[(k, c)], -i, c) for i, c in enumerate(costs))
        assert out["costs"][name] == best[2] and out["cv_ap"][name] == pytest.approx(100 * best[0])
    assert np.array_equal(out["scores"], ref_scores)


@pytest.mark.slow
def test_svm_end_to_end_one_record_set_per_tap(builtin, tmp_path, one_thread):
    assert _cli(*_tiny_args(builtin, tmp_path, "svm", "--set", "svm.costs=[0.1,10.0]")) == 0
    out = json.loads((tmp_path / "svm" / "metrics.json").read_text())
    maps = {r["layer"]: r["value"] for r in out["records"] if r["metric"] == "mAP"}
    assert set(maps) == {"conv1", "conv2", "conv3", "conv4", "conv5", ""}
    assert maps[""] == maps[out["headline_tap"]] and all(r["protocol"] == "voc07_svm" for r in out["records"])
    assert len(list((tmp_path / "cache").glob("*/test/done.json"))) == 1  # features cached once


def test_bad_input_exits_2_with_one_line(builtin, tmp_path, capsys):
    assert _cli(*_tiny_args(builtin, tmp_path, "svm", "--set", f"data.root={tmp_path}/nowhere")) == 2
    assert "VOC folder not found" in capsys.readouterr().err
    args = _tiny_args(builtin, tmp_path, "svm")
    assert _cli(*args[:2], *args[4:], "--set", "protocol=linear") == 2  # no --protocol flag: the config's
    assert "protocol must be one of finetune, svm" in capsys.readouterr().err
    assert _cli(*_tiny_args(builtin, tmp_path, "svm", init="checkpoint")) == 2
    assert "needs --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "svm").exists()  # nothing written for a run that could not start
    with pytest.raises(SystemExit) as exc:
        _cli("--protocol", "linear")
    assert exc.value.code == 2
