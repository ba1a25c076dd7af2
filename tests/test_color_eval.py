"""``colorbench eval-color``: AuC by hand, baselines, records, the config, the fixed classifier."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

import downstream.color_quality.evaluate as eval_color
from downstream.color_quality.classifier import BUILTIN_ARCH, build_classifier, load_classifier
from downstream.color_quality.config import EvalColorConfig, check_config
from downstream.color_quality.scoring import RandomColours, Row, Scores, lam0_weights, score_group
from pretext.color.bins import NUM_BINS, soft_encode
from pretext.color.targets import to_lab
from downstream.color_quality.costs import feature_memory_mb
from pretext.colorize import load_colorizer
from pretext.data.sources import build_source
from pretext.encoders import build_encoder
from pretext.engine.checkpoint import save_checkpoint, trunk_checkpoint
from pretext.engine.config import ConfigError, load_config
from pretext.methods import build_method, load_method, method_payload
from tests.conftest import REPO
from tests.test_colorize import command, tiny_checkpoint, tiny_data

TINY_CONFIG = str(REPO / "configs" / "downstream" / "eval_color_tiny.yaml")


def _lab(ab_pixels: list[tuple[float, float]], lightness: float = 50.0) -> torch.Tensor:
    """One 1 x P image: Lab [1,3,1,P] with the given ab per pixel."""
    ab = torch.tensor(ab_pixels, dtype=torch.float32).T[None, :, None, :]  # [1,2,1,P]
    return torch.cat([torch.full_like(ab[:, :1], lightness), ab], 1)


def _score(row: Row, lab: torch.Tensor, weights: torch.Tensor | None = None) -> Scores:
    scores = {row.name: Scores()}
    weights = torch.ones(NUM_BINS, dtype=torch.float64) if weights is None else weights
    score_group([row], scores, lab, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                ["x"], weights, None, None)
    return scores[row.name]


def _gray() -> Row:
    return Row("gray", lambda lab, idx: torch.zeros_like(lab[:, 1:]))


def test_auc_of_ground_truth_is_100_and_of_gray_by_hand():
    # |ab| = 0, 10, 50, 200: gray's error per pixel is exactly |ab|
    lab = _lab([(0, 0), (6, 8), (30, 40), (120, 160)])
    truth = _score(Row("ground_truth", lambda lab, idx: lab[:, 1:]), lab)
    assert truth.plain.auc() == pytest.approx(100.0) and truth.rebalanced.auc() == pytest.approx(100.0)
    assert truth.psnr == []  # infinite by definition: not averaged
    gray = _score(_gray(), lab)
    # curve c(t) = 1/4 (t < 10), 2/4 (10 <= t < 50), 3/4 (t >= 50); trapezoids on t = 0..150:
    # 9 x 0.25 + 0.375 + 39 x 0.5 + 0.625 + 100 x 0.75 = 97.75 -> 97.75 / 150 = 65.1667 %
    assert gray.plain.auc() == pytest.approx(97.75 / 150 * 100)
    assert gray.rebalanced.auc() == pytest.approx(gray.plain.auc())  # uniform weights: the same
    # weighting the saturated pixel's bin x3 moves the rebalanced AuC by hand too:
    # its pixel counts 3 of 6, so c(t) = 1/6, 2/6, 3/6 -> (9/6 + 1.5/6 + 39 x 2/6 + 2.5/6 + 100 x 3/6) / 150
    weights = torch.ones(NUM_BINS, dtype=torch.float64)
    weights[soft_encode(lab[:, 1:].contiguous(), k=1).indices[0, 0, 0, 3]] = 3.0
    expected = (9 / 6 + 1.5 / 6 + 39 * 2 / 6 + 2.5 / 6 + 100 * 3 / 6) / 150 * 100
    assert _score(_gray(), lab, weights).rebalanced.auc() == pytest.approx(expected)


def test_lam0_weights_are_exact_and_normalised():
    prior = torch.zeros(NUM_BINS)
    prior[:20] = torch.rand(20, generator=torch.Generator().manual_seed(0)) + 0.1  # a narrow prior
    w = lam0_weights(prior)
    from pretext.color.rebalance import rebalance_weights, smooth_prior
    smooth = smooth_prior(prior.double() / prior.sum())
    finite = torch.isfinite(w)
    assert w.dtype == torch.float64 and finite[:20].all() and not finite.all()  # far bins: zero mass, inf
    assert float((smooth[finite] * w[finite]).sum()) == pytest.approx(1.0)
    broad = torch.rand(NUM_BINS, generator=torch.Generator().manual_seed(1)) + 0.01  # agrees with the trainer's code
    assert torch.allclose(lam0_weights(broad).float(), rebalance_weights(broad, lam=0.0), rtol=1e-5)


def test_rebalanced_auc_refuses_colours_outside_the_prior():
    prior = torch.zeros(NUM_BINS)
    prior[0] = 1.0  # only ab = (-90, 50)
    lab = _lab([(-90, 50), (100, -90)])
    with pytest.raises(ValueError, match="zero mass in the smoothed prior"):
        _score(_gray(), lab, lam0_weights(prior))


def test_feature_memory_counts_in_place_results_once():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1))
    mb = feature_memory_mb(model, torch.zeros(1, 1, 8, 8))
    assert mb * 2**20 == pytest.approx((4 * 64 + 2 * 64) * 4)  # conv1 (+ its in-place ReLU) and conv2


def test_random_baseline_is_seeded_and_never_the_image_itself(tmp_path_factory):
    source = build_source("imagefolder", tiny_data(tmp_path_factory), "val")
    lab = torch.zeros(2, 3, 20, 30)
    picks = [RandomColours(source, True, torch.device("cpu"), seed=s)(lab, torch.tensor([0, 1])) for s in (0, 0, 1)]
    assert torch.equal(picks[0], picks[1]) and not torch.equal(picks[0], picks[2])
    assert picks[0].shape == (2, 2, 20, 30)
    one = RandomColours(build_source("imagefolder", tiny_data(tmp_path_factory), "val"), True, torch.device("cpu"), 0)
    one.pool = [None, {"image": torch.zeros(3, 4, 4, dtype=torch.uint8)}]  # index 0: unreadable; itself: refused
    with pytest.raises(ValueError, match="could not read a training image"):
        one.ab_for(1, (4, 4))


def test_user_classifier_weights_load_strictly(tmp_path):
    model = build_classifier(BUILTIN_ARCH, 5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    clf = load_classifier(tmp_path / "w.pt", BUILTIN_ARCH, 5, input_size=32)
    assert clf.predict(torch.rand(3, 3, 40, 50)).shape == (3,)
    state = model.state_dict()
    state.pop("fc.bias")
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="does not fit"):
        load_classifier(tmp_path / "partial.pt", BUILTIN_ARCH, 5)
    torch.save({"fn": build_classifier}, tmp_path / "pickle.pt")  # not loadable with weights_only
    with pytest.raises(ValueError, match="weights_only"):
        load_classifier(tmp_path / "pickle.pt", BUILTIN_ARCH, 5)


# ----------------------------------------------------------------------------- the config

def test_unknown_config_key_is_an_error_naming_it(tmp_path, capsys):
    with pytest.raises(ConfigError, match="data.rooot"):
        load_config(EvalColorConfig, TINY_CONFIG, ["data.rooot=/x"])
    (tmp_path / "bad.yaml").write_text("classifier:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="classifier.epoch"):
        load_config(EvalColorConfig, tmp_path / "bad.yaml")
    assert command(eval_color, ["--config", str(tmp_path / "bad.yaml"), "--run-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "classifier.epoch" in err and "Traceback" not in err and not (tmp_path / "o").exists()


def test_shipped_configs_load_and_check(tmp_path):
    tiny = load_config(EvalColorConfig, TINY_CONFIG)
    assert tiny.data.name == "builtin" and tiny.data.val_split == "val" and tiny.decoders == ["annealed"]
    check_config(tiny)
    imagenet = load_config(EvalColorConfig, REPO / "configs" / "downstream" / "eval_color_imagenet.yaml")
    assert (imagenet.data.val_limit, imagenet.image_crop, imagenet.classifier.arch) == (10000, 256, "vgg16")
    with pytest.raises(FileNotFoundError, match="classifier.weights"):  # the VGG-16 weights must be filled in
        check_config(imagenet)
    for bad, match in ((["decoders=[sepia]"], "decoders: unknown"), (["baselines=[sepia]"], "baselines: unknown"),
                       (["baselines=[]"], "nothing to evaluate")):
        with pytest.raises(ConfigError, match=match):
            check_config(load_config(EvalColorConfig, TINY_CONFIG, bad))


# ----------------------------------------------------------------------------- end to end

def _eval_args(tmp_path_factory, out, *sets: str) -> list[str]:
    cache = tmp_path_factory.getbasetemp() / "colorbench_cache"
    args = ["--config", TINY_CONFIG, "--data", str(tiny_data(tmp_path_factory)), "--run-dir", str(out),
            "--set", f"prior.cache_dir={cache}", "--set", f"classifier.cache_dir={cache}"]
    return args + [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """One eval-color run on the mini built-in data: baselines + the tiny full model, 3 decoders."""
    ckpt = tiny_checkpoint(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval") / "run"
    args = ["--checkpoint", str(ckpt), *_eval_args(tmp_path_factory, out, "decoders=[mean,mode,annealed]",
                                                   "classifier.epochs=3", "timing_runs=2")]
    assert command(eval_color, args) == 0
    return out, args, ckpt, tiny_data(tmp_path_factory)


def _values(out) -> dict:
    payload = json.loads((out / "metrics.json").read_text())
    return {(r["method"], r["metric"]): r for r in payload["records"]}


@pytest.mark.slow
def test_eval_color_writes_table1_records(eval_run):
    out, _, ckpt, data = eval_run
    values = _values(out)
    methods = {m for m, _ in values if m}
    assert methods == {"ground_truth", "gray", "random", "prior_mean", "colorization-full-mean",
                       "colorization-full-mode", "colorization-full-annealed"}
    rec = values[("colorization-full-annealed", "rebalanced_auc")]
    assert rec["suite"] == "colorization" and rec["protocol"] == "table1" and rec["encoder"] == "alexnet_cc"
    assert rec["dataset"] == "builtin" and rec["split"] == "val" and rec["decode"] == "annealed"
    assert rec["checkpoint"] == str(ckpt)
    method, _ = load_method(str(ckpt))
    params = sum(p.numel() for p in method.parameters()) * 4 / 2**20
    assert values[("colorization-full-annealed", "params_mb")]["value"] == pytest.approx(params)
    assert values[("colorization-full-annealed", "working_size")]["value"] == 48  # the training resize
    for m in ("gray", "random", "prior_mean", "ground_truth"):  # cost columns are the checkpoints' only
        assert not any((m, k) in values for k in ("params_mb", "feature_mb", "runtime_ms"))
    assert values[("ground_truth", "auc")]["value"] == pytest.approx(100.0)
    assert values[("ground_truth", "rebalanced_auc")]["value"] == pytest.approx(100.0)
    assert ("ground_truth", "psnr") not in values  # infinite: not reported
    assert values[("gray", "images")]["value"] == 24 and values[("", "skipped/total")]["value"] == 0
    # the model's AuC, recomputed independently (numpy) from its predictions at full resolution:
    # the fraction of pixels within t = 0..150 of the true ab, trapezoids, in % of 150
    colorizer = load_colorizer(ckpt)
    source = build_source("imagefolder", data, "val")
    lab = to_lab(torch.stack([source[i]["image"] for i in range(len(source))]), "cpu")  # [24,3,48,48], all colourful
    err = (colorizer.predict_ab(lab[:, :1], "annealed") - lab[:, 1:]).double().pow(2).sum(1).sqrt().numpy().ravel()
    curve = np.array([(err <= t).mean() for t in range(151)])
    auc = float(((curve[1:] + curve[:-1]) / 2).sum() / 150 * 100)
    assert values[("colorization-full-annealed", "auc")]["value"] == pytest.approx(auc, abs=0.05)
    assert values[("colorization-full-annealed", "auc")]["value"] != pytest.approx(values[("gray", "auc")]["value"])
    assert (out / "curves.png").stat().st_size > 0
    curves = json.loads((out / "curves.json").read_text())
    assert len(curves["gray"]["plain"]) == 151 and curves["ground_truth"]["plain"][0] == pytest.approx(1.0)
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 * 24 and {r["method"] for r in rows} == methods
    gray_rows = [r for r in rows if r["method"] == "gray"]  # the record is the per-image PSNRs' mean
    assert values[("gray", "psnr")]["value"] == pytest.approx(sum(float(r["psnr"]) for r in gray_rows) / 24)
    top1 = 100 * sum(r["predicted"] == r["label"] for r in gray_rows) / 24
    assert values[("gray", "classifier_top1")]["value"] == pytest.approx(top1)


@pytest.mark.slow
def test_eval_color_reuses_the_cached_classifier_and_keeps_results(eval_run, tmp_path, capsys):
    out, args, _, _ = eval_run
    assert command(eval_color, args) == 2 and "overwrite" in capsys.readouterr().err  # never silently replaced
    again = [*args[:args.index("--run-dir") + 1], str(tmp_path / "again"), *args[args.index("--run-dir") + 2:],
             "--set", "baselines=[gray]", "--set", "decoders=[annealed]"]
    assert command(eval_color, again) == 0
    assert "classifier: using cached" in capsys.readouterr().out
    first, second = _values(out), _values(tmp_path / "again")
    for metric in ("auc", "rebalanced_auc", "classifier_top1"):  # same checkpoint, same data: same numbers
        key = ("colorization-full-annealed", metric)
        assert second[key]["value"] == pytest.approx(first[key]["value"])


def test_eval_color_refuses_a_trunk_only_checkpoint(tmp_path, tmp_path_factory, capsys):
    trunk = build_encoder("alexnet_cc", width=0.125)
    save_checkpoint(tmp_path / "trunk.pt", trunk_checkpoint(trunk, "alexnet_cc", {"width": 0.125}))
    args = ["--checkpoint", str(tmp_path / "trunk.pt"), *_eval_args(tmp_path_factory, tmp_path / "o",
                                                                      "classifier.enabled=false")]
    assert command(eval_color, args) == 2
    err = capsys.readouterr().err
    assert "trunk only" in err and "Traceback" not in err and not (tmp_path / "o" / "metrics.json").exists()


def test_a_regression_method_is_one_row_whatever_the_decoders(tmp_path, tmp_path_factory):
    torch.manual_seed(0)
    method = build_method("zhang", build_encoder("alexnet_cc", width=0.125), loss="l2")
    save_checkpoint(tmp_path / "l2.pt", method_payload(method, "alexnet_cc", {"width": 0.125}, {"loss": "l2"}))
    args = ["--checkpoint", str(tmp_path / "l2.pt"),
            *_eval_args(tmp_path_factory, tmp_path / "o", "decoders=[mean,mode,annealed]", "baselines=[gray]",
                        "classifier.enabled=false", "data.val_limit=4", "timing_runs=1", "per_image=false")]
    assert command(eval_color, args) == 0
    values = _values(tmp_path / "o")
    assert {m for m, _ in values if m} == {"gray", "colorization-l2"}
    assert values[("colorization-l2", "auc")]["decode"] == "regression"
    assert values[("colorization-l2", "images")]["value"] == 4 and not (tmp_path / "o" / "per_image.csv").exists()


def test_baselines_alone_count_and_cache_the_prior(tmp_path, tmp_path_factory):
    args = _eval_args(tmp_path_factory, tmp_path / "a", "baselines=[gray,prior_mean]", "data.val_limit=8",
                      "classifier.enabled=false", f"prior.cache_dir={tmp_path / 'cache'}", "data.crop=48",
                      "data.resize=null", "prior.max_images=16")
    assert command(eval_color, args) == 0
    assert len(list((tmp_path / "cache").glob("prior-*.json"))) == 1  # counted over the training split, cached
    payload = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert payload["prior"].startswith(str(tmp_path / "cache"))
    values = {(r["method"], r["metric"]): r["value"] for r in payload["records"]}
    assert values[("gray", "images")] == 8 and 0 < values[("prior_mean", "auc")] < 100
    assert not any(m == "gray" and k in ("runtime_ms", "params_mb") for m, k in values)  # no costs for baselines


def test_imagenet_classifier_sees_short_side_256_then_centre_224():
    """torchvision's ImageNet evaluation transform: a 512 x 768 image -> 256 x 384 -> the
    central 224 x 224 (not a 224 short side, which would keep more of the border)."""
    from downstream.color_quality.classifier import FixedClassifier
    clf = FixedClassifier(torch.nn.Identity(), "identity", 224, resize=256, mean=(0, 0, 0), std=(1, 1, 1))
    rgb = torch.zeros(1, 3, 512, 768)
    rgb[..., :, :64] = 1.0  # a left border band: 32 px wide at 256 x 384, cropped away by (384-224)/2 = 80
    out = clf.preprocess(rgb)
    assert out.shape == (1, 3, 224, 224)
    assert out.max() == 0.0
    direct = FixedClassifier(torch.nn.Identity(), "identity", 224, resize=None, mean=(0, 0, 0), std=(1, 1, 1))
    assert direct.preprocess(rgb).max() == 0.0 and direct.preprocess(torch.ones(1, 3, 224, 300)).shape[-1] == 224
