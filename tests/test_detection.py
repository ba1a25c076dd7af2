"""Fast R-CNN harness (downstream.detection): the devkit's AP by hand, result files,
the proposal cache, RoI sampling, box targets, NMS, and one end-to-end run."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from downstream.detection import proposals as P
from downstream.detection.data import BOX_CODER, SampleConfig, flip_boxes, image_scale, sample_rois
from downstream.detection.engine import TestConfig as DetTestConfig
from downstream.detection.engine import fast_rcnn_loss, postprocess
from downstream.detection.voc_eval import (
    coco_ap,
    devkit_iou,
    eval_class,
    evaluate_results,
    load_ground_truth,
    read_results,
    write_results,
)
from downstream.metrics import ap_from_pr
from pretext.data.synthetic.voc_writer import VocObject, write_annotation


def write_devkit(root, images: dict, split: str = "test") -> str:
    """A minimal VOCdevkit/VOC2007 under ``root``: ``images`` {id: [(name, (xmin, ymin,
    xmax, ymax) 1-based, difficult)]}, 64 x 48 JPEGs of noise."""
    voc = os.path.join(root, "VOCdevkit", "VOC2007")
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(voc, sub), exist_ok=True)
    rng = np.random.default_rng(0)
    for image_id, objs in images.items():
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(f"{voc}/JPEGImages/{image_id}.jpg")
        write_annotation(f"{voc}/Annotations/{image_id}.xml", image_id, 64, 48,
                         [VocObject(n, b, False, d) for n, b, d in objs])
    with open(f"{voc}/ImageSets/Main/{split}.txt", "w") as f:
        f.write("".join(f"{i}\n" for i in images))
    return voc


# Hand-checked case (1-based boxes). npos = 3 (the difficult cat is not counted).
GT = {"a": [("cat", (1, 1, 10, 10), False), ("cat", (21, 21, 30, 30), True)],
      "b": [("cat", (1, 1, 20, 20), False), ("cat", (31, 1, 40, 10), False)],
      "c": []}  # an image without objects
DETS = [("a", 0.9, (1, 1, 10, 10)),    # TP (IoU 1)
        ("a", 0.8, (2, 2, 10, 10)),    # duplicate of the same cat (IoU 0.81): FP
        ("a", 0.7, (21, 21, 30, 30)),  # the difficult cat: ignored
        ("b", 0.6, (31, 1, 40, 10)),   # TP
        ("b", 0.5, (1, 1, 10, 10)),    # IoU 100 / 400 = 0.25 with the big cat: FP
        ("c", 0.4, (1, 1, 5, 5))]      # an image without cats: FP
# Ranked (ignored one left out): TP FP TP FP FP -> recall 1/3 1/3 2/3 2/3 2/3,
# precision 1 1/2 2/3 1/2 2/5.
# 11-point: t = 0 .. 0.3 -> 1 (4 points); t = 0.4 .. 0.6 -> 2/3 (3 points); t >= 0.7 -> 0: 6 / 11.
# area: recall 0 -> 1/3 at precision 1, 1/3 -> 2/3 at the envelope's 2/3: 1/3 + 2/9 = 5/9.


def _arrays(dets):
    return [d[0] for d in dets], np.array([d[1] for d in dets]), np.array([d[2] for d in dets], dtype=float)


@pytest.mark.parametrize("method, expected", [("11point", 6 / 11), ("area", 5 / 9)])
def test_devkit_ap_by_hand(tmp_path, method, expected):
    voc = write_devkit(tmp_path, GT)
    gt = load_ground_truth(voc, "test")
    r = eval_class(gt, "cat", *_arrays(DETS), method=method)
    assert (r["npos"], r["tp"], r["fp"]) == (3, 2, 3)
    assert r["ap"] == pytest.approx(expected, abs=1e-12)
    # the dog class has no ground truth: AP undefined (the devkit's 0/0), left out of mAP
    assert math.isnan(eval_class(gt, "dog", ["a"], np.array([0.5]), np.array([[1, 1, 5, 5.0]]))["ap"])


def test_ap_from_pr_rules():
    assert ap_from_pr([], [], "11point") == 0.0
    assert ap_from_pr([0.5, 1.0], [1.0, 0.5], "11point") == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    assert ap_from_pr([0.5, 1.0], [1.0, 0.5], "area") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="AP method"):
        ap_from_pr([1.0], [1.0], "101point")


def test_devkit_iou_counts_pixels_inclusively():
    # 10 x 5 pixels inside 10 x 10: IoU 0.5 exactly with the +1 convention (36/81 without it)
    assert devkit_iou(np.array([1, 1, 10, 5.0]), np.array([[1, 1, 10, 10.0]]))[0] == pytest.approx(0.5)
    assert devkit_iou(np.array([1, 1, 5, 5.0]), np.array([[6, 6, 9, 9.0]]))[0] == -np.inf  # no overlap


def test_result_files_round_trip_and_folder_evaluation(tmp_path):
    voc = write_devkit(tmp_path / "data", GT)
    # continuous 0-based boxes: VOC (xmin, ymin, xmax, ymax) = (x1 + 1, y1 + 1, x2, y2)
    dets = {"cat": [(i, s, (b[0] - 1, b[1] - 1, b[2], b[3])) for i, s, b in DETS], "dog": []}
    paths = write_results(tmp_path / "results", "test", dets)
    assert [p.name for p in paths] == ["comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    assert paths[0].read_text().splitlines()[0] == "a 0.900000 1.0 1.0 10.0 10.0"
    boxes = read_results(paths[0])[2]
    np.testing.assert_allclose(boxes, _arrays(DETS)[2])
    with pytest.warns(RuntimeWarning, match="left out: dog"):
        result = evaluate_results(voc, "test", tmp_path / "results", "11point")
    assert result["classes"]["cat"]["ap"] == pytest.approx(6 / 11)
    assert result["mAP"] == pytest.approx(6 / 11)  # dog has no ground truth: not averaged
    assert result["classes_without_ground_truth"] == ["dog"]


def test_malformed_result_line_names_file_and_line(tmp_path):
    path = tmp_path / "comp4_det_test_cat.txt"
    path.write_text("a 0.9 1 1 10 10\n\na 0.8 1 1 ten 10\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_cat.txt:3: malformed"):
        read_results(path)


def test_unknown_image_in_detections_is_an_error(tmp_path):
    gt = load_ground_truth(write_devkit(tmp_path, GT), "test")
    with pytest.raises(ValueError, match="'zz' is not in the evaluated split"):
        eval_class(gt, "cat", ["zz"], np.array([0.5]), np.array([[1, 1, 5, 5.0]]))


def test_coco_bridge_by_hand(tmp_path):
    gt = {"a": [("cat", np.array([1, 1, 10, 10.0]), False)]}   # COCO box [0, 0, 10, 10]
    exact = {"cat": (["a"], np.array([0.9]), np.array([[1, 1, 10, 10.0]]))}
    assert coco_ap(gt, exact, ["cat"]) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})
    # height 5.3 of 10: IoU 0.53 passes only the 0.5 threshold of the ten: AP 0.1
    half = {"cat": (["a"], np.array([0.9]), np.array([[1, 1, 10, 5.3]]))}
    assert coco_ap(gt, half, ["cat"]) == pytest.approx({"AP": 0.1, "AP50": 1.0, "AP75": 0.0})


# ---------------------------------------------------------------------------- proposals

def test_proposal_cache_is_resumable_and_atomic(tmp_path, monkeypatch):
    voc = write_devkit(tmp_path, {"a": [], "b": [], "c": [], "d": []})
    with open(f"{voc}/JPEGImages/d.jpg", "r+b") as f:  # truncate a JPEG: cached as unreadable
        f.truncate(300)
    cfg = P.ProposalConfig(mode="single", k=50, min_side=0, cache_dir=str(tmp_path / "cache"), workers=1)
    items = [(i, f"{voc}/JPEGImages/{i}.jpg") for i in "abcd"]
    calls, real, crash = [], P.selective_search, [True]

    def crash_on_b(rgb, **kw):  # the second image of the first run dies
        calls.append(1)
        if len(calls) == 2 and crash and crash.pop():
            raise RuntimeError("killed mid-run")
        return real(rgb, **kw)
    monkeypatch.setattr(P, "selective_search", crash_on_b)
    with pytest.raises(RuntimeError):
        P.cached_selective_search(items, cfg, voc, say=lambda s: None)
    folder = P.ProposalCache(cfg, voc).folder
    assert sorted(p.name for p in folder.iterdir()) == ["a.npz", "meta.json"]  # no temp file left
    calls.clear()
    boxes, sizes, bad = P.cached_selective_search(items, cfg, voc, say=lambda s: None)
    assert len(calls) == 2  # b and c only: a was cached, d is unreadable (searched never)
    assert sorted(boxes) == ["a", "b", "c"] and sizes["a"] == (48, 64) and bad["d"].startswith("truncated")
    calls.clear()
    again, _, _ = P.cached_selective_search(items, cfg, voc, say=lambda s: None)
    assert calls == [] and all(np.array_equal(again[i], boxes[i]) for i in boxes)


def test_user_proposal_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    np.savez(tmp_path / "p.npz", **{"000005": np.array([[1, 2, 10, 20], [5, 5, 4, 30]])})  # 1-based x1 y1 x2 y2
    got = P.load_proposal_file(tmp_path / "p.npz")["000005"]
    np.testing.assert_array_equal(got, [[0, 1, 10, 20], [4, 4, 4, 30]])
    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = np.array([[2, 1, 20, 10]])  # Fast R-CNN's .mat: 1-based y1 x1 y2 x2
    ids = np.empty((1, 1), dtype=object)
    ids[0, 0] = "000005"
    scipy_io.savemat(tmp_path / "p.mat", {"images": ids, "boxes": cells})
    np.testing.assert_array_equal(P.load_proposal_file(tmp_path / "p.mat")["000005"], [[0, 1, 10, 20]])
    # cleaning: clipped to the image, the zero-width box dropped
    np.testing.assert_array_equal(P.clean_boxes(got, 15, 64), [[0, 1, 10, 15]])


def test_records_clip_drop_and_count_bad_boxes(tmp_path):
    from downstream.detection.data import build_records

    voc = write_devkit(tmp_path, {"a": [("cat", (50, 40, 80, 60), False),     # past the 64 x 48 image: clipped
                                        ("cat", (30, 30, 20, 40), False),     # xmax < xmin: dropped
                                        ("dog", (1, 1, 10, 10), True),        # difficult: not trained on
                                        ("zebra", (1, 1, 5, 5), False)],      # not a class: dropped
                                  "b": []}, split="trainval")                 # no object: not trained on
    np.savez(tmp_path / "props.npz", a=np.array([[1, 1, 64, 48]]), b=np.array([[1, 1, 10, 10]]))
    cfg = P.ProposalConfig(source="file", file=str(tmp_path / "props.npz"))
    train, counts = build_records(voc, "trainval", ["cat", "dog"], cfg, train=True, say=lambda s: None)
    assert [r.image_id for r in train] == ["a"]
    np.testing.assert_array_equal(train[0].boxes, [[49, 39, 64, 48]])  # VOC (50, 40) 1-based -> 49, 39
    assert train[0].labels.tolist() == [1]
    assert counts == {"boxes_clipped": 1, "boxes_degenerate_dropped": 1, "unknown_class_objects": 1,
                      "train_images_without_objects": 1, "no_objects": 1}
    test, _ = build_records(voc, "trainval", ["cat", "dog"], cfg, train=False, say=lambda s: None)
    assert [r.image_id for r in test] == ["a", "b"] and test[0].difficult.tolist() == [False, True]


def test_truncated_jpeg_of_the_real_fixture_is_skipped_and_reported(tmp_path):
    from downstream.detection.data import build_records
    from tests.conftest import shared_path

    voc = str(shared_path("data", "voc_fixture", "VOCdevkit", "VOC2007"))
    cfg = P.ProposalConfig(mode="single", k=500, max_boxes=50, cache_dir=str(tmp_path), workers=1)
    said = []
    records, counts = build_records(voc, "trainval", ["chair", "dog", "person", "train", "car", "sofa"], cfg,
                                    train=True, say=said.append)
    assert counts["unreadable_image"] == 1 and any("000001" in s and "truncated" in s for s in said)
    assert "000001" not in [r.image_id for r in records]
    chairs = next(r for r in records if r.image_id == "000005")
    assert len(chairs.boxes) == 3  # its 2 difficult chairs are left out of training


# ---------------------------------------------------------------------------- RoIs and targets

def test_roi_sampling_bands():
    gt = torch.tensor([[0.0, 0, 10, 10]])
    # [0, 0, 10, h] against [0, 0, 10, 10]: IoU = h / 10 for h <= 10, 10 / h above
    fg = [torch.tensor([[0.0, 0, 10, 9 + i / 10]]) for i in range(30)]           # IoU >= 0.84: 30 boxes
    bg = [torch.tensor([[0.0, 0, 10, 1.5 + i / 10]]) for i in range(34)]         # IoU 0.15 .. 0.48: 34 boxes
    far = [torch.tensor([[50.0, 50, 60, 60]]) for _ in range(10)]                # IoU 0: never sampled
    props = torch.cat(fg + bg + far)
    cfg = SampleConfig(rois_per_image=64, fg_fraction=0.25)
    rois, labels, targets = sample_rois(props, gt, torch.tensor([3]), cfg, torch.Generator().manual_seed(0))
    best = box_iou(rois, gt)[:, 0]
    assert (labels[:16] == 3).all() and (labels[16:] == 0).all()
    assert len(rois) == 16 + 34  # 16 fg of 31 (30 + the gt box itself); all 34 bg (48 wanted)
    assert (best[:16] >= 0.5).all() and ((best[16:] >= 0.1) & (best[16:] < 0.5)).all()
    assert (targets[16:] == 0).all()
    np.testing.assert_allclose(BOX_CODER.decode_single(targets[:16], rois[:16]), gt.expand(16, 4), atol=1e-4)
    # no object: no foreground and nothing in the background band either
    rois, labels, _ = sample_rois(props, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), cfg, torch.Generator())
    assert len(rois) == 0


def test_target_normalisation_round_trip():
    roi = torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]])
    gt = torch.tensor([[1.0, 0, 11, 10], [0.0, 0, 20, 10]])
    t = BOX_CODER.encode_single(gt, roi)
    # (6 - 5) / 10 / 0.1 = 1; log(20 / 10) / 0.2 = 3.466; x of the second: (10 - 5) / 10 / 0.1 = 5
    np.testing.assert_allclose(t, [[1, 0, 0, 0], [5, 0, math.log(2) / 0.2, 0]], atol=1e-5)
    np.testing.assert_allclose(BOX_CODER.decode_single(t, roi), gt, atol=1e-5)


def test_geometry_helpers():
    assert image_scale(375, 500, 600, 1000) == 1.6
    assert image_scale(100, 1000, 600, 1000) == 1.0  # the long side caps it
    np.testing.assert_array_equal(flip_boxes(torch.tensor([[0.0, 1, 10, 5]]), 64), [[54, 1, 64, 5]])


def test_loss_uses_the_labelled_class_deltas_only():
    logits = torch.zeros(2, 3)
    deltas = torch.zeros(2, 12)
    deltas[0, 8:12] = torch.tensor([1.0, 0, 0, 0])   # class 2's deltas of the foreground RoI
    deltas[1] = 5.0                                  # a background RoI: no box loss
    cls, box = fast_rcnn_loss(logits, deltas, torch.tensor([2, 0]), torch.zeros(2, 4))
    assert cls.item() == pytest.approx(math.log(3))
    assert box.item() == pytest.approx(0.5 / 2)  # smooth L1(1) = 0.5, over 2 RoIs


def test_postprocess_nms_per_class_and_cap():
    props = torch.tensor([[0.0, 0, 10, 10], [0.5, 0, 10.5, 10], [30.0, 30, 40, 40]])
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.4], [0.1, 0.6, 0.3], [0.5, 0.1, 0.4]]))
    boxes, scores, labels = postprocess(logits, torch.zeros(3, 12), props, 1.0, (48, 64), DetTestConfig())
    np.testing.assert_array_equal(boxes[0], props[1])  # zero deltas: the proposal itself
    # class 1: the two overlapping boxes (IoU 0.9) -> the 0.6 one; class 2: 0.4 / 0.3 overlap -> 0.4 one,
    # plus the far box's 0.4; class 1's 0.1 on the far box stays (> 0.05)
    assert labels.tolist() == [1, 2, 2, 1] and scores.tolist() == pytest.approx([0.6, 0.4, 0.4, 0.1])
    capped = postprocess(logits, torch.zeros(3, 12), props, 1.0, (48, 64), DetTestConfig(max_per_image=2))
    assert capped[1].tolist() == pytest.approx([0.6, 0.4])


def test_fc6_fc7_from_a_colorization_checkpoint_fold_bn(tmp_path, one_thread):
    from downstream.detection.model import FastRCNN, HeadConfig, checkpoint_fc_state
    from downstream.trunks import encoder_trunk
    from pretext.encoders import build_encoder
    from pretext.engine.checkpoint import save_checkpoint, trunk_checkpoint
    from pretext.methods import build_method, method_payload

    torch.manual_seed(0)
    for head, grid in (("released", 6), ("fc", 3)):  # fc6 6x6 dilated, BN without affine / fc6 3x3, BN
        method = build_method("zhang", build_encoder("alexnet_cc", width=0.25), head=head)
        convs = [m for m in method.head if isinstance(m, torch.nn.Conv2d)]
        for bn in (m for m in method.head if isinstance(m, torch.nn.BatchNorm2d)):  # not the identity
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            if bn.affine:
                bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
        path = tmp_path / f"{head}.pt"
        save_checkpoint(path, method_payload(method, "alexnet_cc", {"width": 0.25}, {"head": head}, step=7))
        state, note = checkpoint_fc_state(str(path), 64, grid, 1024)
        assert state is not None and "step 7" in note
        model = FastRCNN(encoder_trunk("alexnet_cc", {"width": 0.25}), 8, HeadConfig(output_size=grid, fc_dim=1024),
                         state)
        model.eval(), method.eval()
        x = torch.randn(5, 64, grid, grid)  # pooled RoIs
        # reference: the head without pool5, its fc6 as a plain conv that sees exactly the grid: [5, 1024, 1, 1]
        fc6 = torch.nn.Conv2d(64, 1024, grid, bias=convs[0].bias is not None)
        fc6.load_state_dict(convs[0].state_dict())
        rest = [m for m in method.head if not isinstance(m, torch.nn.MaxPool2d)][1:6]  # BN ReLU fc7 BN ReLU
        with torch.no_grad():
            expected = torch.nn.Sequential(fc6, *rest).eval()(x)[:, :, 0, 0]
            np.testing.assert_allclose(model.head(x), expected, rtol=1e-4, atol=1e-4)
        assert model.describe()["head_source"] == "checkpoint"
    assert checkpoint_fc_state(str(path), 64, 6, 1024)[0] is None  # a 6 x 6 grid does not fit a 3 x 3 fc6
    save_checkpoint(tmp_path / "trunk.pt", trunk_checkpoint(method.trunk, "alexnet_cc", {"width": 0.25}))
    assert checkpoint_fc_state(str(tmp_path / "trunk.pt"), 64, 3, 1024) == (None, "new: the checkpoint holds a trunk only")


def test_user_errors_are_one_line(tmp_path, capsys):
    from benchmarks.cli import main as cli

    run = ["--run-dir", str(tmp_path / "run")]
    assert cli(["detect", "--init", "gaussian", "--set", "data.kind=imagefolder", *run]) == 2
    assert "data.kind must be 'voc'" in capsys.readouterr().err
    assert cli(["detect", "--init", "supervised", *run]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert cli(["detect", "--init", "gaussian", "--set", "proposals.mode=slow", *run]) == 2
    assert cli(["det-eval", "--voc-root", str(tmp_path), "--dets", str(tmp_path)]) == 2
    assert "no VOC2007 devkit" in capsys.readouterr().err


# ---------------------------------------------------------------------------- end to end

@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:mAP.*left out:RuntimeWarning")  # 12 test images need not show every class
def test_detect_then_det_eval_end_to_end(tmp_path, one_thread):
    from benchmarks.cli import main as cli
    from pretext.data.synthetic.generate import make_dataset

    make_dataset(tmp_path / "data", size=64, num_train=1, num_val=0, num_voc=24, verbose=False)
    voc = tmp_path / "data" / "VOCdevkit" / "VOC2007"
    run = tmp_path / "run"
    args = ["detect", "--config", "configs/downstream/det_tiny.yaml", "--init", "gaussian", "--run-dir", str(run),
            "--set", f"data.root={voc}", "--set", f"proposals.cache_dir={tmp_path / 'cache'}",
            "--set", "proposals.workers=1", "--set", "optim.iterations=12", "--set", "optim.milestones=[8]",
            "--set", "input.train_scales=[128]", "--set", "input.test_scale=128", "--set", "data.num_workers=0",
            "--set", "figure_images=2", "--set", "trunk.baseline.calib_images=16"]
    assert cli(args) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    head = [r for r in metrics["records"] if r["metric"] == "mAP"]
    assert len(head) == 1 and head[0]["protocol"] == "voc07_det" and head[0]["layer"] == ""
    assert head[0]["suite"] == "pascal" and head[0]["method"] == "gaussian"
    assert (run / "detections.png").is_file() and metrics["speed"]["test_images"] == 12
    results = sorted(p.name for p in (run / "results").iterdir())
    assert results[0] == "comp4_det_test_bar.txt" and len(results) == 8
    out = tmp_path / "ap.json"
    assert cli(["det-eval", "--voc-root", str(tmp_path / "data"), "--year", "2007", "--split", "test",
                "--dets", str(run / "results"), "--out", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    assert evaluated["mAP"] * 100 == pytest.approx(head[0]["value"])
    with_objects = sorted(c for c, v in evaluated["classes"].items() if v["npos"])  # AP rows: classes with objects
    assert sorted(r["layer"] for r in metrics["records"] if r["metric"] == "AP") == with_objects
    (run / "results" / "comp4_det_test_bar.txt").write_text("000002 0.5 1 1 5\n")
    assert cli(["det-eval", "--voc-root", str(tmp_path / "data"), "--dets", str(run / "results")]) == 2


def test_parallel_proposals_match_the_serial_ones(tmp_path):
    """Two worker processes (from a fork server: forking a process whose OpenMP pools hold a
    lock deadlocks) finish and cache valid boxes for every image, like one process.
    (OpenCV's segmentation is not bit-reproducible across processes, so boxes may differ.)"""
    torch.set_num_threads(2)  # the thread pools that made a forked worker hang
    torch.ones(64, 64) @ torch.ones(64, 64)
    voc = write_devkit(tmp_path, {"a": [], "b": [], "c": []})
    items = [(i, f"{voc}/JPEGImages/{i}.jpg") for i in "abc"]
    boxes = {}
    for workers in (1, 2):
        cfg = P.ProposalConfig(mode="single", k=50, min_side=0, cache_dir=str(tmp_path / f"cache{workers}"),
                               workers=workers)
        P.cached_selective_search(items, cfg, voc, say=lambda s: None)
        folder = P.ProposalCache(cfg, voc).folder
        boxes[workers] = {i: np.load(folder / f"{i}.npz")["boxes"] for i in "abc"}
    for i in "abc":
        for w in (1, 2):
            b = boxes[w][i]
            assert len(b) > 0 and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all() and b.min() >= 0
