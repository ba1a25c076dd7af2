"""colorbench study create with a stochastic method's sampled colorizations (the folder
``colorize --samples N`` writes: ``<name>_s<j>.png``): each sample a separate fake, pooled
per method in the report, or one chosen sample (``--sample J``)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from benchmarks.cli import main as cli
from downstream.study.design import load_manifest, rater_plan
from downstream.study.report import method_results
from tests.test_study import make_folders

SAMPLES = 3


def sampled_folder(real, root, n: int = SAMPLES):
    """royer/: <key>_s<j>.png per real photo (sample j: the photo with its green scaled by
    0.5 + 0.2 j, so every sample differs) and <key>_grid.png, as colorize --samples --grid writes."""
    out = root / "royer"
    for path in sorted(real.rglob("*.jpg")):
        rel = path.relative_to(real).with_suffix("")
        rgb = np.asarray(Image.open(path).convert("RGB")).astype(float)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.fromarray(np.clip(rgb * [1.0, 0.5 + 0.2 * j, 1.0], 0, 255).astype(np.uint8)).save(
                out / f"{rel}_s{j}.png")
        Image.new("RGB", (5, 5)).save(out / f"{rel}_grid.png")  # ignored
    return out


def _create(tmp_path, *extra):
    real, dirs = make_folders(tmp_path, methods=("warm",))
    royer = sampled_folder(real, tmp_path)
    return cli(["study", "create", "--real", str(real), "--method", f"warm={dirs['warm']}", "--method",
                f"royer={royer}", "--out", str(tmp_path / "study"), *extra]), real, royer


def _fake_pixels(study, pair) -> np.ndarray:
    return np.asarray(Image.open(study / pair[pair["fake"]]))


def test_each_sample_is_a_separate_fake_pooled_per_method(tmp_path, capsys):
    rc, real, royer = _create(tmp_path)
    assert rc == 0
    assert ("6 photos x 2 method(s) (royer: 3 sample(s), each a separate fake) = 24 test pairs"
            in capsys.readouterr().out)
    study = tmp_path / "study"
    m = load_manifest(study)
    assert m["methods"] == ["warm", "royer"] and m["samples"] == {"royer": [0, 1, 2]}
    assert m["conditions"] == 4 and m["blocks"] == 4  # latin: warm, royer s0, s1, s2 rotate
    tests = [p for p in m["pairs"] if p["kind"] == "test"]
    assert sorted((p["method"], p.get("sample")) for p in tests) == sorted(
        [("warm", None)] * 6 + [("royer", j) for j in range(SAMPLES) for _ in range(6)])
    for p in tests:  # the fake shown is that sample's file (no resizing at 40 x 30)
        if p["method"] == "royer":
            source = np.asarray(Image.open(royer / f"{p['photo']}_s{p['sample']}.png"))
            assert np.array_equal(_fake_pixels(study, p), source)
    for k in range(4):  # each rater: every photo once
        plan = [p for p in m["pairs"] if p["id"] in set(rater_plan(m, k)) and p["kind"] == "test"]
        assert sorted(p["photo"] for p in plan) == sorted(m["photos"])
    # the report pools a method's samples: every royer judgement counts for "royer"
    judgements = [{"kind": "test", "method": p["method"], "rater": "r1", "correct": p.get("sample") != 0,
                   "response_ms": 600} for p in tests]
    results = {r.method: r for r in method_results(m, judgements, {"r1"}, 0.95)}
    assert results["royer"].judgements == 18 and results["royer"].labelled_real == 6  # sample 0 fooled the rater
    assert results["warm"].judgements == 6


def test_one_chosen_sample(tmp_path):
    rc, _, royer = _create(tmp_path, "--sample", "1")
    assert rc == 0
    m = load_manifest(tmp_path / "study")
    assert m["conditions"] == m["blocks"] == 2 and m["samples"] == {"royer": [1]}
    royer_pairs = [p for p in m["pairs"] if p["kind"] == "test" and p["method"] == "royer"]
    assert len(royer_pairs) == 6 and {p["sample"] for p in royer_pairs} == {1}
    p = royer_pairs[0]
    assert np.array_equal(_fake_pixels(tmp_path / "study", p),
                          np.asarray(Image.open(royer / f"{p['photo']}_s1.png")))


@pytest.mark.parametrize("breaker, extra, expected", [
    (lambda royer: (royer / "sub" / "img3_s2.png").unlink(), [], "different numbers of samples (2 for sub/img3"),
    (lambda royer: None, ["--sample", "3"], "--sample 3: method 'royer' has samples 0..2"),
    (lambda royer: None, ["--sample", "-1"], "--sample must be >= 0"),
    (lambda royer: [p.unlink() for p in royer.glob("img0_s*.png")], [], "none of 1 photo(s): img0"),
])
def test_bad_sampled_folders_give_one_line(tmp_path, capsys, breaker, extra, expected):
    real, dirs = make_folders(tmp_path, methods=("warm",))
    royer = sampled_folder(real, tmp_path)
    breaker(royer)
    assert cli(["study", "create", "--real", str(real), "--method", f"royer={royer}", "--out",
                str(tmp_path / "study"), *extra]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "study").exists()
