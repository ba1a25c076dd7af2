"""``colorbench eval-color``: AuC by hand, baselines, records, the fixed classifier."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from benchmarks.cli import main as cli
from downstream.color_classifier import BUILTIN_ARCH, build_classifier, load_classifier
from downstream.color_eval import Method, RandomColours, Scores, lam0_weights, score_group
from pretext.color import NUM_BINS, soft_encode
from pretext.colorize import feature_memory_mb
from pretext.sources import build_source
from tests.test_colorize import tiny_checkpoint, tiny_data


def _lab(ab_pixels: list[tuple[float, float]], lightness: float = 50.0) -> torch.Tensor:
    """One 1 x P image: Lab [1,3,1,P] with the given ab per pixel."""
    ab = torch.tensor(ab_pixels, dtype=torch.float32).T[None, :, None, :]  # [1,2,1,P]
    return torch.cat([torch.full_like(ab[:, :1], lightness), ab], 1)


def _score(method: Method, lab: torch.Tensor, weights: torch.Tensor | None = None) -> Scores:
    scores = {method.name: Scores()}
    weights = torch.ones(NUM_BINS, dtype=torch.float64) if weights is None else weights
    score_group([method], scores, lab, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                ["x"], weights, None, None)
    return scores[method.name]


def test_auc_of_ground_truth_is_100_and_of_gray_by_hand():
    # |ab| = 0, 10, 50, 200: gray's error per pixel is exactly |ab|
    lab = _lab([(0, 0), (6, 8), (30, 40), (120, 160)])
    truth = _score(Method("ground_truth", lambda lab, idx: lab[:, 1:]), lab)
    assert truth.plain.auc() == pytest.approx(100.0) and truth.rebalanced.auc() == pytest.approx(100.0)
    assert truth.psnr == []  # infinite by definition: not averaged
    gray = _score(Method("gray", lambda lab, idx: torch.zeros_like(lab[:, 1:])), lab)
    # curve c(t) = 1/4 (t < 10), 2/4 (10 <= t < 50), 3/4 (t >= 50); trapezoids on t = 0..150:
    # 9 x 0.25 + 0.375 + 39 x 0.5 + 0.625 + 100 x 0.75 = 97.75 -> 97.75 / 150 = 65.1667 %
    assert gray.plain.auc() == pytest.approx(97.75 / 150 * 100)
    assert gray.rebalanced.auc() == pytest.approx(gray.plain.auc())  # uniform weights: the same
    # weighting the saturated pixel's bin x3 moves the rebalanced AuC by hand too:
    # its pixel counts 3 of 6, so c(t) = 1/6, 2/6, 3/6 -> (9/6 + 1.5/6 + 39 x 2/6 + 2.5/6 + 100 x 3/6) / 150
    weights = torch.ones(NUM_BINS, dtype=torch.float64)
    weights[soft_encode(lab[:, 1:].contiguous(), k=1).indices[0, 0, 0, 3]] = 3.0
    expected = (9 / 6 + 1.5 / 6 + 39 * 2 / 6 + 2.5 / 6 + 100 * 3 / 6) / 150 * 100
    assert _score(Method("gray", lambda lab, idx: torch.zeros_like(lab[:, 1:])), lab, weights).rebalanced.auc() == pytest.approx(expected)


def test_lam0_weights_are_exact_and_normalised():
    prior = torch.zeros(NUM_BINS)
    prior[:20] = torch.rand(20, generator=torch.Generator().manual_seed(0)) + 0.1  # a narrow prior
    w = lam0_weights(prior)
    from pretext.rebalance import rebalance_weights, smooth_prior
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
        _score(Method("gray", lambda lab, idx: torch.zeros_like(lab[:, 1:])), lab, lam0_weights(prior))


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


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    """One eval-color run on the mini built-in data: baselines + the tiny full model, 3 decoders."""
    data = tiny_data(tmp_path_factory)
    ckpt = tiny_checkpoint(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval") / "run"
    cache = tmp_path_factory.getbasetemp() / "colorbench_cache"
    args = ["eval-color", "--data", str(data), "--checkpoint", str(ckpt), "--decode", "mean,mode,annealed",
            "--out", str(out), "--cache-dir", str(cache), "--classifier-epochs", "3", "--timing-runs", "2"]
    assert cli(args) == 0
    return out, args


def _values(out) -> dict:
    payload = json.loads((out / "metrics.json").read_text())
    return {(r["method"], r["metric"]): r for r in payload["records"]}


def test_eval_color_writes_table1_records(eval_run):
    out, _ = eval_run
    values = _values(out)
    methods = {m for m, _ in values if m}
    assert methods == {"ground_truth", "gray", "random", "prior_mean", "colorization-full-mean",
                       "colorization-full-mode", "colorization-full-annealed"}
    rec = values[("colorization-full-annealed", "rebalanced_auc")]
    assert rec["suite"] == "colorization" and rec["protocol"] == "table1" and rec["encoder"] == "alexnet_cc"
    assert rec["dataset"] == "imagefolder" and rec["split"] == "val" and rec["decode"] == "annealed"
    for metric in ("params_mb", "feature_mb", "runtime_ms", "auc", "rebalanced_auc", "psnr", "classifier_top1"):
        assert values[("colorization-full-annealed", metric)]["value"] > 0
    assert values[("ground_truth", "auc")]["value"] == pytest.approx(100.0)
    assert values[("ground_truth", "rebalanced_auc")]["value"] == pytest.approx(100.0)
    assert values[("gray", "images")]["value"] == 24 and values[("", "skipped/total")]["value"] == 0
    for m in ("gray", "random"):  # the trained model beats the baselines on rare colours
        assert values[("colorization-full-annealed", "rebalanced_auc")]["value"] > values[(m, "rebalanced_auc")]["value"]
    assert (out / "curves.png").stat().st_size > 0
    curves = json.loads((out / "curves.json").read_text())
    assert len(curves["gray"]["plain"]) == 151 and curves["ground_truth"]["plain"][0] == pytest.approx(1.0)
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert len(rows) == 7 * 24 and {r["method"] for r in rows} == methods


def test_eval_color_reuses_the_cached_classifier_and_keeps_results(eval_run, tmp_path, capsys):
    out, args = eval_run
    assert cli(args) == 2 and "--overwrite" in capsys.readouterr().err  # results are not silently replaced
    again = [*args[:args.index("--out") + 1], str(tmp_path / "again"), *args[args.index("--out") + 2:],
             "--baselines", "gray", "--decode", "annealed"]
    assert cli(again) == 0
    assert "classifier: using cached" in capsys.readouterr().out
    first, second = _values(out), _values(tmp_path / "again")
    for metric in ("auc", "rebalanced_auc", "classifier_top1"):  # same checkpoint, same data: same numbers
        key = ("colorization-full-annealed", metric)
        assert second[key]["value"] == pytest.approx(first[key]["value"])


def test_eval_color_refuses_a_checkpoint_without_head(tmp_path, tmp_path_factory, capsys):
    from pretext.runs import load_checkpoint, save_checkpoint

    payload = load_checkpoint(tiny_checkpoint(tmp_path_factory))
    save_checkpoint(tmp_path / "trunk.pt", {**payload, "model": {k: v for k, v in payload["model"].items()
                                                                 if not k.startswith("head.")}})
    rc = cli(["eval-color", "--data", str(tiny_data(tmp_path_factory)), "--checkpoint", str(tmp_path / "trunk.pt"),
              "--out", str(tmp_path / "o"), "--no-classifier"])
    assert rc == 2 and "no colorization head" in capsys.readouterr().err


def test_baselines_alone_count_and_cache_the_prior(tmp_path, tmp_path_factory):
    data = tiny_data(tmp_path_factory)
    args = ["eval-color", "--data", str(data), "--baselines", "gray,prior_mean", "--limit", "8", "--no-classifier",
            "--cache-dir", str(tmp_path / "cache"), "--prior-crop", "48", "--prior-images", "16"]
    assert cli([*args, "--out", str(tmp_path / "a")]) == 0
    assert len(list((tmp_path / "cache").glob("prior-*.json"))) == 1  # counted over the training split, cached
    payload = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert payload["prior"].startswith(str(tmp_path / "cache"))
    values = {(r["method"], r["metric"]): r["value"] for r in payload["records"]}
    assert values[("gray", "images")] == 8 and 0 < values[("prior_mean", "auc")] < 100
    assert not any(m == "gray" and k in ("runtime_ms", "params_mb") for m, k in values)  # no costs for baselines
