"""FCN segmentation (issue 13): the confusion matrix and its scores on hand-computed
cases, seg-eval's errors, the VOC segmentation reader (built-in data, the real fixture),
the FCN geometry, and an end-to-end ``segment`` then ``seg-eval`` run on built-in data."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.cli import main as cli
from downstream.metrics import ConfusionMatrix, confusion_matrix, segmentation_scores
from downstream.segmentation.model import FCN, fcn_taps, resample
from downstream.segmentation.outputs import save_label_png
from downstream.segmentation.seg_eval import evaluate_folders
from downstream.trunks import encoder_trunk
from pretext.data.voc import VocSegmentation, read_label_png, seg_ids
from tests.conftest import shared_path

# truth (255 = void) and prediction, 3 classes; counted pixels (truth, prediction):
# (0,0) (1,2) (2,2) (2,0) (1,1); the void pixel and the truth 7 (>= n) are not counted.
GT = np.array([[0, 1, 255, 7], [2, 2, 1, 0]], dtype=np.uint8)
PRED = np.array([[0, 2, 1, 1], [2, 0, 1, 0]], dtype=np.uint8)
HAND = [[2, 0, 0],   # truth 0: (0,0) twice
        [0, 1, 1],   # truth 1: one right, one called 2
        [1, 0, 1]]   # truth 2: one called 0, one right


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_confusion_matrix_by_hand(kind):
    p, g = (PRED, GT) if kind == "numpy" else (torch.from_numpy(PRED), torch.from_numpy(GT))
    assert confusion_matrix(p, g, 3).tolist() == HAND


def test_confusion_matrix_counts_signed_truth_and_batches():
    g = torch.tensor([[[-1, 0], [1, 1]], [[255, 1], [0, 0]]])  # [N=2, 2, 2], int64 with a negative value
    p = torch.tensor([[[1, 0], [1, 0]], [[0, 1], [0, 1]]])
    assert confusion_matrix(p, g, 2).tolist() == [[2, 1], [1, 2]]


def test_scores_by_hand():
    conf = torch.tensor([[3, 1, 0], [2, 4, 0], [0, 0, 0]])  # class 2: absent from truth and prediction
    s = segmentation_scores(conf)
    iu = s["IU"].tolist()
    assert iu[0] == pytest.approx(50.0) and iu[1] == pytest.approx(400 / 7) and math.isnan(iu[2])
    assert s["mIU"] == pytest.approx((50 + 400 / 7) / 2)          # nanmean: the absent class is not a 0
    assert s["pixel_acc"] == pytest.approx(70.0)                     # 7 of 10
    assert s["mean_acc"] == pytest.approx((75 + 400 / 6) / 2)        # 3/4 and 4/6
    assert s["fwIU"] == pytest.approx(0.4 * 50 + 0.6 * 400 / 7)      # truth frequencies 4/10, 6/10


def test_a_class_only_predicted_scores_zero_not_nan():
    s = segmentation_scores(torch.tensor([[2, 1], [0, 0]]))
    assert s["IU"].tolist() == pytest.approx([200 / 3, 0.0])
    assert s["mIU"] == pytest.approx(100 / 3)
    assert s["mean_acc"] == pytest.approx(200 / 3)                   # accuracy of truth classes only
    assert s["fwIU"] == pytest.approx(200 / 3)


def test_bad_prediction_and_size_mismatch_name_the_file():
    with pytest.raises(ValueError, match=r"found 0\.\.3 in a/b\.png"):
        confusion_matrix(np.array([[0, 3]]), np.array([[0, 1]]), 3, where="a/b.png")
    with pytest.raises(ValueError, match=r"\(1, 2\) != ground truth size \(2, 1\) in x\.png"):
        confusion_matrix(np.zeros((1, 2)), np.zeros((2, 1)), 3, where="x.png")


def test_accumulator_sums_images():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    cm.update(PRED[:, :2], GT[:, :2])  # (0,0) (1,2) (2,2) (2,0) once more
    assert cm.reduce().mat.tolist() == [[3, 0, 0], [0, 1, 2], [2, 0, 2]]  # no process group: unchanged


# ---------------------------------------------------------------------------- seg-eval

def _folders(tmp_path, pred=PRED, gt=GT, name="2007_000033"):
    (tmp_path / "pred").mkdir(exist_ok=True)
    (tmp_path / "gt").mkdir(exist_ok=True)
    save_label_png(tmp_path / "pred" / f"{name}.png", pred)
    save_label_png(tmp_path / "gt" / f"{name}.png", gt)
    return str(tmp_path / "pred"), str(tmp_path / "gt")


def test_seg_eval_command_writes_the_hand_scores(tmp_path):
    pred, gt = _folders(tmp_path)
    out = tmp_path / "scores.json"
    assert cli(["seg-eval", "--pred", pred, "--gt", gt, "--num-classes", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["confusion"] == [row + [0] for row in HAND] + [[0, 0, 0, 0]]
    assert res["IU"]["class3"] is None                               # absent from both: NaN -> null
    # HAND: diag 2, 1, 1; rows 2, 2, 2; columns 3, 1, 2 -> IU 2/3, 1/2, 1/3 (class 3: NaN, left out)
    assert res["IU"]["class0"] == pytest.approx(200 / 3, abs=1e-3) and res["IU"]["class2"] == pytest.approx(100 / 3, abs=1e-3)
    assert res["mIU"] == pytest.approx((2 / 3 + 1 / 2 + 1 / 3) / 3 * 100, abs=1e-3)
    assert res["pixel_acc"] == pytest.approx(4 / 6 * 100, abs=1e-3) and res["images"] == 1
    assert res["mean_acc"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 3 * 100, abs=1e-3)


@pytest.mark.parametrize("case, pred, message", [
    ("value", np.where(PRED == 2, 9, PRED).astype(np.uint8), r"found 0\.\.9 in .*pred/2007_000033\.png"),
    ("size", PRED[:, :3], r"size \(2, 3\) != ground truth size \(2, 4\) in .*pred/2007_000033\.png"),
])
def test_seg_eval_errors_name_the_file(tmp_path, capsys, case, pred, message):
    p, g = _folders(tmp_path, pred=np.ascontiguousarray(pred))
    with pytest.raises(ValueError, match=message):
        evaluate_folders(p, g, 3)
    assert cli(["seg-eval", "--pred", p, "--gt", g, "--num-classes", "3"]) == 2
    assert "2007_000033.png" in capsys.readouterr().err


def test_seg_eval_missing_truth_and_rgb_png(tmp_path):
    p, g = _folders(tmp_path)
    os.remove(os.path.join(g, "2007_000033.png"))
    with pytest.raises(FileNotFoundError, match="ground truth not found for id 2007_000033"):
        evaluate_folders(p, g, 3)
    Image.new("RGB", (4, 2)).save(os.path.join(g, "2007_000033.png"))
    with pytest.raises(ValueError, match=r"2007_000033\.png: a label map must be a palette"):
        evaluate_folders(p, g, 3)


# ---------------------------------------------------------------------------- reader

@pytest.fixture(scope="module")
def builtin_voc(tmp_path_factory):
    from pretext.data.synthetic.generate import make_dataset

    root = tmp_path_factory.mktemp("seg_builtin")
    make_dataset(root, size=64, num_train=1, num_val=1, num_voc=64, verbose=False)  # 16 train, 16 val, 32 test
    return root / "VOCdevkit" / "VOC2007"


def test_reader_on_builtin_data(builtin_voc, tmp_path):
    ds = VocSegmentation(str(builtin_voc), "val")
    item = ds[0]
    assert len(ds) == 16 and item["image"].dtype == torch.uint8 and item["image"].shape == (3, 64, 64)
    assert item["mask"].shape == (64, 64)
    assert set(item["mask"].unique().tolist()) <= set(range(9)) | {255}
    lst = tmp_path / "seg11valid.txt"
    lst.write_text(f"# a user list\n{ds.ids[3]}\n\n{ds.ids[1]}\n")
    assert VocSegmentation(str(builtin_voc), list_file=str(lst)).ids == [ds.ids[3], ds.ids[1]]
    lst.write_text("no_such_id\n")
    with pytest.raises(ValueError, match="1 of 1 ids .* have no mask, e.g. .*no_such_id.png"):
        VocSegmentation(str(builtin_voc), list_file=str(lst))


def test_reader_on_the_real_fixture():
    root = shared_path("data", "voc_seg_fixture", "VOCdevkit", "VOC2012")
    ds = VocSegmentation(str(root), "trainval")
    assert ds.ids == ["2011_000003", "2011_000006", "2011_000025"]
    item = ds[0]
    assert item["image"].shape == (3, 338, 500) and item["mask"].shape == (338, 500)
    assert sorted(item["mask"].unique().tolist()) == [0, 5, 15, 255]  # background, bottle, person, void
    assert read_label_png(str(root / "SegmentationClass" / "2011_000025.png")).max() == 7
    with pytest.raises(ValueError, match="VOC segmentation list not found: .*val.txt"):
        seg_ids(str(root), "val")


# ---------------------------------------------------------------------------- FCN

def test_fcn_taps_from_feature_info():
    info = encoder_trunk("alexnet_cc", {"width": 0.25}).feature_info  # strides 4, 8, 16, 16, 16
    assert fcn_taps(info, "fcn32s") == ["conv5"]
    assert fcn_taps(info, "fcn8s") == ["conv5", "conv2", "conv1"]
    with pytest.raises(ValueError, match="fcn16s needs a tap of stride 16"):
        fcn_taps({"a": {"stride": 8}, "b": {"stride": 32}}, "fcn16s")


def test_resample_is_torchvision_interpolate_when_the_map_tiles_the_input():
    x = torch.randn(2, 3, 7, 5)
    ref = F.interpolate(x, (224, 160), mode="bilinear", align_corners=False)
    assert torch.allclose(resample(x, 32, (224, 160), (224, 160)), ref, atol=1e-5)


def test_fcn_skips_start_at_zero_and_every_parameter_learns(one_thread):
    torch.manual_seed(0)
    m8 = FCN(encoder_trunk("alexnet_cc", {"width": 0.25}), 5, "fcn8s")
    assert all(not p.any() for p in m8.skips.parameters())   # FCN's skip scores start at zero
    x = torch.randn(2, 1, 96, 80)
    assert m8(x, (40, 30)).shape == (2, 5, 40, 30)            # any output size (the truth's)
    F.cross_entropy(m8(x), torch.randint(0, 5, (2, 96, 80))).backward()
    assert [n for n, p in m8.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


# ---------------------------------------------------------------------------- end to end

@pytest.mark.slow
def test_segment_then_seg_eval(builtin_voc, tmp_path):
    from pretext.encoders import build_encoder
    from pretext.engine.checkpoint import save_checkpoint
    from pretext.methods import build_method, method_payload

    torch.manual_seed(0)
    t = build_encoder("alexnet_cc", width=0.25)
    ckpt = tmp_path / "color.pt"
    save_checkpoint(ckpt, method_payload(build_method("zhang", t), "alexnet_cc", {"width": 0.25}, {"loss": "full"},
                                         step=0))
    run = tmp_path / "run"
    assert cli(["segment", "--config", "configs/downstream/seg_tiny.yaml", "--checkpoint", str(ckpt),
                "--run-dir", str(run), "--set", f"data.root={builtin_voc}", "--set", "optim.phase_iters=[3,2,1]",
                "--set", "batch_size=8", "--set", "data.num_workers=0", "--set", "variant=fcn16s"]) == 0
    gt = builtin_voc / "SegmentationClass"
    preds = sorted(os.listdir(run / "predictions"))
    assert preds == sorted(f"{i}.png" for i in seg_ids(str(builtin_voc), "test"))  # seg_tiny scores test: names kept
    assert Image.open(run / "predictions" / preds[0]).mode == "P"
    assert Image.open(run / "examples.png").size[0] >= 3 * 128
    metrics = json.loads((run / "metrics.json").read_text())
    head = {r["metric"]: r for r in metrics["records"] if r["layer"] == ""}
    assert set(head) == {"mIU", "pixel_acc", "mean_acc", "fwIU"}
    assert head["mIU"]["suite"] == "pascal" and head["mIU"]["protocol"] == "voc12_seg"
    assert head["mIU"]["method"] == "colorization" and metrics["iterations"] == 6
    out = tmp_path / "eval.json"
    assert cli(["seg-eval", "--pred", str(run / "predictions"), "--gt", str(gt), "--num-classes", "9",
                "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["confusion"] == metrics["confusion"]
    assert again["mIU"] == pytest.approx(head["mIU"]["value"], abs=1e-3)



def test_seg_eval_shards_files_over_ranks_and_sums_through_the_dist_module(tmp_path, monkeypatch):
    """Two ranks played in turn: each reads every other file, and its matrix goes through
    ``pretext.engine.dist.all_reduce_sum`` (the one collective; identity here, so what it
    receives is the rank's share): the shares add up to the one-process matrix."""
    from pretext.engine import dist as dist_utils

    rng = np.random.default_rng(0)
    for k in range(3):
        gt = rng.integers(0, 3, (6, 7)).astype(np.uint8)
        gt[0] = 255
        folders = _folders(tmp_path, pred=rng.integers(0, 3, (6, 7)).astype(np.uint8), gt=gt, name=f"im{k}")
    single = evaluate_folders(*folders, 3)[0].mat
    assert int(single.sum()) == 3 * 5 * 7
    reduced = []
    monkeypatch.setattr(dist_utils, "world_size", lambda: 2)
    monkeypatch.setattr(dist_utils, "all_reduce_sum", lambda t: reduced.append(t.clone()) or t.clone())
    shares = []
    for rank in (0, 1):
        monkeypatch.setattr(dist_utils, "rank", lambda rank=rank: rank)
        shares.append(evaluate_folders(*folders, 3)[0].mat)
    assert reduced[1].equal(shares[0]) and reduced[3].equal(shares[1])  # [error flag, matrix] per rank
    assert not shares[0].equal(single) and (shares[0] + shares[1]).equal(single)
