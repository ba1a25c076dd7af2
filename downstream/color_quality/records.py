"""Table 1's outputs: run records (suite ``colorization``, protocol ``table1``), the AuC
curves (``curves.json`` / ``curves.png``), ``per_image.csv`` and the console table.

A stochastic checkpoint's row (``Scores.draws``: one set of scores per sample) records
the mean over its samples of ``auc``, ``rebalanced_auc``, ``psnr`` and ``classifier_top1``,
their standard deviation over samples (``auc_std`` ...; the n - 1 estimate of the spread
between colorizations, 0 for one sample) and ``samples``; its curves are the samples'
mean curve (whose area is the mean AuC). A deterministic row has no ``*_std`` records:
there is no spread to report, and Table 1 prints its numbers as before.
"""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

import torch

from downstream.color_quality.config import BASELINES
from downstream.color_quality.scoring import Row, Scores
from pretext.data.loader import SkipCounter
from pretext.engine.checkpoint import atomic_write_bytes, atomic_write_text

PER_IMAGE_FIELDS = ["method", "sample", "path", "label", "auc", "rebalanced_auc", "psnr", "predicted"]
TABLE_COLUMNS = ("params_mb", "feature_mb", "runtime_ms", "auc", "rebalanced_auc", "psnr", "classifier_top1")
SPREAD_METRICS = ("auc", "rebalanced_auc", "psnr", "classifier_top1")  # mean ± std over a stochastic row's samples


def quality(s: Scores) -> dict[str, float]:
    """AuC, rebalanced AuC, mean PSNR and classifier top-1 of one set of predictions."""
    values = {"auc": s.plain.auc(), "rebalanced_auc": s.rebalanced.auc()}
    if s.psnr:
        values["psnr"] = sum(s.psnr) / len(s.psnr)
    if s.correct:
        values["classifier_top1"] = 100.0 * sum(s.correct) / len(s.correct)
    return values


def spread(draws: list[Scores]) -> dict[str, float]:
    """Mean over samples of each metric, its std (n - 1; 0 for one sample; none when a value
    is infinite, e.g. the PSNR of a sample equal to the truth) and ``samples``."""
    per = [quality(d) for d in draws]
    values: dict[str, float] = {"samples": len(per)}
    for k in (k for k in SPREAD_METRICS if k in per[0]):
        xs = [v[k] for v in per]
        values[k] = statistics.fmean(xs)
        if all(math.isfinite(x) for x in xs):
            values[f"{k}_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return values


def build_records(rows: list[Row], scores: dict[str, Scores], costs: dict, base: dict) -> tuple[list[dict], dict]:
    """Flat records per row (metric, value) and the curves {row: {"plain", "rebalanced"}}."""
    records, curves = [], {}
    for r in rows:
        s = scores[r.name]
        row = {"suite": "colorization", "method": r.name, "encoder": r.encoder, "protocol": "table1", "layer": "",
               **base, "decode": r.decoder, "checkpoint": r.colorizer.path if r.colorizer else ""}
        values = {**(spread(s.draws) if s.draws else quality(s)), "images": s.images}
        values.update(costs.get(r.name, {}))
        records += [dict(row, metric=k, value=float(v)) for k, v in values.items() if v is not None]
        draws = s.draws or [s]  # [S] sets of scores; the mean curve of a stochastic row
        curves[r.name] = {kind: torch.stack([getattr(d, kind).curve() for d in draws]).mean(0).tolist()
                          for kind in ("plain", "rebalanced")}
    return records, curves


def run_records(share: torch.Tensor, skipped: SkipCounter, base: dict, say) -> list[dict]:
    """Run-level records (method ""): the largest bin's share of the rebalancing weight
    (``share`` [313]: the true pixels' weight per bin), and the skip counts."""
    share = share / share.sum()
    if share.max() > 0.5:
        say(f"warning: one colour bin carries {100 * share.max():.0f}% of the rebalanced AuC's weight; the training "
            "prior barely has the evaluated colours (consider prior.path)")
    summary = {"suite": "colorization", "method": "", "encoder": "", "protocol": "table1", "layer": "", **base}
    return [dict(summary, metric="rebalance_top_bin_share", value=float(share.max()))] + \
        [dict(summary, metric=k, value=v) for k, v in skipped.as_dict().items()]


def write_per_image(rows: list[dict], path: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=PER_IMAGE_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_curves(curves: dict, out: Path) -> None:
    atomic_write_text(out / "curves.json", json.dumps(curves))
    plot_curves(curves, out / "curves.png")


def plot_curves(curves: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, kind, title in zip(axes, ("plain", "rebalanced"), ("AuC", "rebalanced AuC (lam = 0)")):
        for i, (name, c) in enumerate(curves.items()):
            area = 100 * (sum(c[kind]) - (c[kind][0] + c[kind][-1]) / 2) / (len(c[kind]) - 1)
            ax.plot(range(len(c[kind])), [100 * v for v in c[kind]], label=f"{name} ({area:.1f})",
                    color=plt.cm.tab20(i % 20), linestyle="--" if name in BASELINES else "-")
        ax.set(title=title, xlabel="ab distance threshold t", xlim=(0, len(c[kind]) - 1), ylim=(0, 100.5))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("% pixels within t")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def format_table(records: list[dict]) -> str:
    """The console table: one line per row, Table 1's columns (mean ± std over samples for
    a stochastic row)."""
    table: dict[str, dict] = {}
    for r in records:
        if r["method"]:  # method "" holds run-level numbers (skips, weight share)
            table.setdefault(r["method"], {})[r["metric"]] = r["value"]

    def cell(v: dict, c: str) -> str:
        if c not in v:
            return f"{'-':>16}"
        return f"{v[c]:.2f} ± {v[c + '_std']:.2f}".rjust(16) if c + "_std" in v else f"{v[c]:>16.2f}"
    lines = [f"{'method':<30}" + "".join(f"{c:>16}" for c in TABLE_COLUMNS)]
    for name, v in table.items():
        lines.append(f"{name:<30}" + "".join(cell(v, c) for c in TABLE_COLUMNS))
    return "\n".join(lines)
