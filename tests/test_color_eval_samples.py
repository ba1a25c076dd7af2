"""eval-color on stochastic methods (mean and spread over samples) and on the decoders of
each loaded method (any registered method's, skipped where a checkpoint lacks them)."""
from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch

import downstream.color_quality.evaluate as eval_color
from downstream.color_quality.config import EvalColorConfig, check_config
from downstream.color_quality.records import build_records, format_table
from downstream.color_quality.scoring import Row, Scores, model_rows, score_group
from pretext.color.bins import NUM_BINS
from pretext.color.targets import to_lab
from pretext.colorize import load_colorizer
from pretext.data.sources import build_source
from pretext.encoders import build_encoder
from pretext.engine.checkpoint import save_checkpoint
from pretext.engine.config import ConfigError, load_config
from pretext.methods import build_method, method_payload
from tests.test_color_eval import TINY_CONFIG, _eval_args, _lab, _values
from tests.test_colorize import command, tiny_checkpoint, tiny_data
from tests.test_colorize_samples import fake_checkpoint, registered_fake


def test_a_stochastic_row_reports_the_mean_and_std_over_its_samples_by_hand():
    """Two samples of the 4-pixel image with |ab| = 0, 10, 50, 200: sample 0 gray (AuC
    97.75 / 150 = 65.1667%, worked out in test_color_eval), sample 1 the truth (100%)."""
    lab = _lab([(0, 0), (6, 8), (30, 40), (120, 160)])
    row = Row("royer", lambda lab, idx: torch.stack([torch.zeros_like(lab[:, 1:]), lab[:, 1:]], 1), samples=2)
    scores, per_image = {row.name: Scores()}, []
    score_group([row], scores, lab, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long), ["x"],
                torch.ones(NUM_BINS, dtype=torch.float64), None, per_image)
    assert scores["royer"].images == 1 and len(scores["royer"].draws) == 2
    records, curves = build_records([row], scores, {}, {"dataset": "d", "split": "val"})
    values = {r["metric"]: r["value"] for r in records}
    gray_auc = 97.75 / 150 * 100
    assert values["auc"] == pytest.approx((gray_auc + 100) / 2)
    assert values["auc_std"] == pytest.approx(abs(100 - gray_auc) / 2 ** 0.5)  # n - 1: |x1 - x2| / sqrt(2)
    assert values["rebalanced_auc_std"] == pytest.approx(values["auc_std"])  # uniform weights
    assert values["samples"] == 2 and values["images"] == 1
    # PSNR: the truth's sample is infinite, so the mean is too, and no std is claimed
    assert values["psnr"] == float("inf") and "psnr_std" not in values
    # the curve is the samples' mean: c(0) = (1/4 + 1) / 2 (one exact pixel of gray, all of the truth)
    assert curves["royer"]["plain"][0] == pytest.approx((0.25 + 1.0) / 2)
    assert [r["sample"] for r in per_image] == [0, 1]
    assert "± " in format_table(records)


def test_config_accepts_any_registered_decoder_and_checks_samples():
    check_config(load_config(EvalColorConfig, TINY_CONFIG, ["decoders=[median,annealed]"]))
    with pytest.raises(ConfigError, match=r"decoders: unknown \['sepia'\]; valid: .*median"):
        check_config(load_config(EvalColorConfig, TINY_CONFIG, ["decoders=[sepia]"]))
    with pytest.raises(ConfigError, match="samples must be >= 1"):
        check_config(load_config(EvalColorConfig, TINY_CONFIG, ["samples=0"]))
    cfg = load_config(EvalColorConfig, TINY_CONFIG)
    assert (cfg.samples, cfg.sample_seed) == (3, 0)


def test_each_checkpoint_gets_the_listed_decoders_it_has(tmp_path_factory, tmp_path):
    zhang = load_colorizer(tiny_checkpoint(tmp_path_factory))
    torch.manual_seed(0)
    larsson = build_method("larsson", build_encoder("alexnet_cc", width=0.125))
    save_checkpoint(tmp_path / "l.pt", method_payload(larsson, "alexnet_cc", {"width": 0.125}, {}))
    larsson = load_colorizer(tmp_path / "l.pt")
    said = []
    rows = model_rows([zhang, larsson], ["median", "annealed"], say=said.append)
    assert [(r.name, r.decoder) for r in rows] == [("colorization-full-annealed", "annealed"),
                                                   ("larsson-hc-median", "median"), ("larsson-hc-annealed", "annealed")]
    assert len(said) == 1 and "has no decoder median" in said[0] and "skipped" in said[0]  # once, for zhang
    said.clear()
    rows = model_rows([zhang], ["median"], say=said.append)  # none of the listed: its default
    assert [(r.name, r.decoder) for r in rows] == [("colorization-full-annealed", "annealed")]
    assert "scored with its default, annealed" in said[0]


def _independent_sample_aucs(ckpt, data, samples: int, sample_seed: int) -> list[float]:
    """Per-sample AuC of the fake method on the mini val images (all colourful, 48 px, one
    batch), with numpy: the seed a batch gets is sample_seed * 1_000_003 + its first index."""
    colorizer = load_colorizer(ckpt, size=0)
    source = build_source("imagefolder", data, "val")
    lab = to_lab(torch.stack([source[i]["image"] for i in range(len(source))]), "cpu")
    ab = colorizer.method.sample_ab(lab[:, :1], samples, sample_seed * 1_000_003 + 0)  # [n,S,2,48,48]
    aucs = []
    for j in range(samples):
        err = (ab[:, j] - lab[:, 1:]).double().pow(2).sum(1).sqrt().numpy().ravel()
        curve = np.array([(err <= t).mean() for t in range(151)])
        aucs.append(float(((curve[1:] + curve[:-1]) / 2).sum() / 150 * 100))
    return aucs


@pytest.mark.slow
def test_eval_color_scores_every_sample_of_a_stochastic_checkpoint(tmp_path_factory, tmp_path):
    data = tiny_data(tmp_path_factory)
    with registered_fake():
        ckpt = fake_checkpoint(tmp_path / "noisy.pt")
        sets = ["baselines=[gray]", "samples=3", "sample_seed=4", "size=0", "batch_size=32", "timing_runs=1",
                "classifier.epochs=3"]
        for out in ("a", "b"):
            assert command(eval_color, ["--checkpoint", str(ckpt), *_eval_args(tmp_path_factory, tmp_path / out,
                                                                                 *sets)]) == 0
        aucs = _independent_sample_aucs(ckpt, data, 3, 4)
    first, second = _values(tmp_path / "a"), _values(tmp_path / "b")
    measured = lambda values: {k: r["value"] for k, r in values.items() if k[1] != "runtime_ms"}  # noqa: E731
    assert measured(first) == measured(second)  # seeds fixed: a rerun gives the same numbers
    v = {m: r["value"] for (name, m), r in first.items() if name == "noisy_gray_test"}
    assert v["samples"] == 3 and v["images"] == 24 and first[("noisy_gray_test", "auc")]["decode"] == "sampled"
    assert v["auc"] == pytest.approx(statistics.fmean(aucs), abs=0.05)
    assert v["auc_std"] == pytest.approx(statistics.stdev(aucs), abs=0.02) and v["auc_std"] > 0
    for metric in ("rebalanced_auc", "psnr", "classifier_top1"):
        assert metric in v and f"{metric}_std" in v
    gray = {m for (name, m) in first if name == "gray"}  # a deterministic row: unchanged, no spread
    assert {"auc", "rebalanced_auc", "psnr", "classifier_top1"} <= gray and not any(m.endswith("_std") for m in gray)
    rows = (tmp_path / "a" / "per_image.csv").read_text().splitlines()
    assert rows[0].startswith("method,sample,path") and len(rows) == 1 + 24 + 3 * 24
    curves = json.loads((tmp_path / "a" / "curves.json").read_text())
    area = 100 * (sum(curves["noisy_gray_test"]["plain"]) - (curves["noisy_gray_test"]["plain"][0]
                                                             + curves["noisy_gray_test"]["plain"][-1]) / 2) / 150
    assert area == pytest.approx(v["auc"])  # the mean curve's area is the mean AuC
