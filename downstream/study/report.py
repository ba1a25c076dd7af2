"""``colorbench study report``: "labelled real %" per method, from the stored judgements.

A judgement of a test pair counts as *labelled real* when the rater called the ground
truth fake, i.e. the method's colorization passed for the real photo. 50% means raters
could not tell; the paper's full method reached 32% (AMT, 1 s exposure).

Raters are screened before anything is counted: a rater who misses more than
``max_sanity_errors`` sanity pairs (real vs obviously wrong colours) is excluded, and so
is one who has not finished (their sanity pairs may still be ahead of them), unless
``include_unfinished``. Both are counted in the report. Practice pairs never count.

Uncertainty: the binomial standard error sqrt(p(1-p)/n) and a Wilson score interval
(scipy), both over judgements; and a between-rater standard error (the spread of the
raters' own percentages / sqrt(raters)), which also reflects that raters differ.
"""
from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from downstream.study import StudyError
from downstream.study.design import load_manifest, rater_plan
from downstream.study.store import Store


@dataclass
class RaterSummary:
    rater: str
    index: int
    block: int
    answered: int
    total: int
    sanity_answered: int
    sanity_errors: int
    status: str  # included | failed_sanity | unfinished
    median_response_ms: float | None
    viewport: str


@dataclass
class MethodResult:
    method: str
    judgements: int
    labelled_real: int
    pct: float
    se: float
    ci_low: float
    ci_high: float
    raters: int
    se_raters: float  # NaN with fewer than 2 raters
    median_response_ms: float


def screen_raters(manifest: dict, raters: list[dict], judgements: list[dict], max_sanity_errors: int,
                  include_unfinished: bool) -> list[RaterSummary]:
    by_rater: dict[str, list[dict]] = {}
    for j in judgements:
        by_rater.setdefault(j["rater"], []).append(j)
    out = []
    for r in raters:
        index = r["num"] - 1
        mine = by_rater.get(r["id"], [])
        sanity = [j for j in mine if j["kind"] == "sanity"]
        errors = sum(not j["correct"] for j in sanity)
        total = len(rater_plan(manifest, index))
        if errors > max_sanity_errors:
            status = "failed_sanity"
        elif len(mine) < total and not (include_unfinished and sanity):
            status = "unfinished"  # an unfinished rater with no sanity pair yet is unscreened
        else:
            status = "included"
        times = [j["response_ms"] for j in mine if j["kind"] != "practice"]
        out.append(RaterSummary(r["id"], index, index % manifest["blocks"], len(mine), total, len(sanity), errors,
                                status, statistics.median(times) if times else None, r["viewport"] or ""))
    return out


def method_results(manifest: dict, judgements: list[dict], included: set[str], confidence: float) -> list[MethodResult]:
    from scipy.stats import binomtest

    results = []
    for method in manifest["methods"]:
        rows = [j for j in judgements if j["kind"] == "test" and j["method"] == method and j["rater"] in included]
        if not rows:
            continue
        n, k = len(rows), sum(not j["correct"] for j in rows)
        p = k / n
        ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
        per_rater: dict[str, list[int]] = {}
        for j in rows:
            per_rater.setdefault(j["rater"], []).append(0 if j["correct"] else 1)
        shares = [100 * sum(v) / len(v) for v in per_rater.values()]
        se_raters = statistics.stdev(shares) / math.sqrt(len(shares)) if len(shares) > 1 else float("nan")
        results.append(MethodResult(method, n, k, 100 * p, 100 * math.sqrt(p * (1 - p) / n), 100 * ci.low,
                                    100 * ci.high, len(per_rater), se_raters,
                                    statistics.median(j["response_ms"] for j in rows)))
    return results


def records(manifest: dict, results: list[MethodResult], summaries: list[RaterSummary], sanity_accuracy: float) -> list[dict]:
    """Run records: ``labelled_real`` (percent) per method feeds Table 1's realism column."""
    base = {"suite": "colorization", "encoder": "", "protocol": "realism_2afc", "dataset": manifest["dataset"],
            "split": "test", "layer": ""}
    rows = []
    for r in results:
        for metric, value in (("labelled_real", r.pct), ("labelled_real_se", r.se), ("labelled_real_ci_low", r.ci_low),
                              ("labelled_real_ci_high", r.ci_high), ("judgements", r.judgements), ("raters", r.raters)):
            rows.append({**base, "method": r.method, "metric": metric, "value": round(float(value), 4)})
    counts = {s: sum(x.status == s for x in summaries) for s in ("included", "failed_sanity", "unfinished")}
    run_level = {"raters_consented": len(summaries), **{f"raters_{s}": c for s, c in counts.items()}}
    if not math.isnan(sanity_accuracy):  # NaN when the study has no sanity pairs (JSON has no NaN)
        run_level["sanity_accuracy"] = round(100 * sanity_accuracy, 4)
    rows += [{**base, "method": "", "metric": m, "value": v} for m, v in run_level.items()]
    return rows


def _fmt(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render(manifest: dict, study: Path, results: list[MethodResult], summaries: list[RaterSummary],
           max_sanity_errors: int, confidence: float, sanity_accuracy: float) -> str:
    n_sanity = sum(p["kind"] == "sanity" for p in manifest["pairs"])
    count = {s: sum(x.status == s for x in summaries) for s in ("included", "failed_sanity", "unfinished")}
    finished = sum(x.answered == x.total for x in summaries)
    level = f"{100 * confidence:g}%"
    lines = [
        f"# Realism study {study.name}: labelled real %",
        "",
        f"dataset {manifest['dataset']}, design {manifest['design']}, exposure {manifest['exposure_ms'] / 1000:g} s, "
        f"{len(manifest['photos'])} photos, {n_sanity} sanity pairs per rater",
        f"raters: {len(summaries)} consented, {finished} finished; included {count['included']}; excluded "
        f"{count['failed_sanity']} who missed more than {max_sanity_errors} sanity pair(s) and "
        f"{count['unfinished']} unfinished",
        f"sanity pairs answered correctly by included raters: {_fmt(100 * sanity_accuracy)}%",
        "",
        f"| method | judgements | labelled real | labelled real % | SE | {level} CI (Wilson) | raters | SE between raters "
        "| median response ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.method} | {r.judgements} | {r.labelled_real} | {r.pct:.1f} | {r.se:.1f} | "
                     f"{r.ci_low:.1f} - {r.ci_high:.1f} | {r.raters} | {_fmt(r.se_raters)} | {r.median_response_ms:.0f} |")
    lines += ["", "50% = raters could not tell the colorization from the photo; the paper's full method: 32% "
              "(Zhang et al. 2016, AMT, 1 s)."]
    return "\n".join(lines) + "\n"


def report(study: Path, out: Path | None = None, max_sanity_errors: int = 0, include_unfinished: bool = False,
           confidence: float = 0.95, argv: list[str] | None = None) -> tuple[str, Path]:
    """Screen raters, count, write the run directory; returns (the report as text, the run dir)."""
    study = Path(study)
    manifest = load_manifest(study)
    if not 0 < confidence < 1:
        raise StudyError(f"--confidence {confidence}: expected a level between 0 and 1, e.g. 0.95")
    db = study / "answers.sqlite"
    if not db.is_file():
        raise StudyError(f"{study}: no answers yet ({db.name} does not exist); run 'colorbench study serve {study}' first")
    store = Store(db)
    raters, judgements = store.raters(), store.judgements()
    summaries = screen_raters(manifest, raters, judgements, max_sanity_errors, include_unfinished)
    included = {s.rater for s in summaries if s.status == "included"}
    results = method_results(manifest, judgements, included, confidence)
    if not results:
        raise StudyError(f"{study}: no test judgements from included raters yet ({len(raters)} rater(s), "
                         f"{len(judgements)} judgement(s) stored); nothing to report")
    sanity = [j for j in judgements if j["kind"] == "sanity" and j["rater"] in included]
    sanity_accuracy = sum(j["correct"] for j in sanity) / len(sanity) if sanity else float("nan")
    text = render(manifest, study, results, summaries, max_sanity_errors, confidence, sanity_accuracy)

    from pretext.engine.runs import RunDir  # imports torch: only once there is something to write

    run = RunDir(out or study / f"realism-{study.resolve().name}")
    run.write_config({"study": str(study.resolve()), "max_sanity_errors": max_sanity_errors,
                      "include_unfinished": include_unfinished, "confidence": confidence,
                      "design": manifest["design"], "exposure_ms": manifest["exposure_ms"]}, argv)
    run.write_records(records(manifest, results, summaries, sanity_accuracy))
    (run.path / "report.md").write_text(text)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(RaterSummary.__dataclass_fields__))
    writer.writeheader()
    writer.writerows(asdict(s) for s in summaries)
    (run.path / "raters.csv").write_text(buf.getvalue())
    run.log("realism_report", raters=len(summaries), included=len(included), judgements=len(judgements))
    return text, run.path
