"""``colorbench table``: comparison tables and plots from run records only.

    colorbench table [--runs DIR ...] [--format md,csv,tex] [--out DIR]

Reads every ``metrics.json`` under the given folders (default ``runs/``), adds the
published reference rows (``benchmarks.reference``), and writes one table per
(suite, data set): Table 1 (colorization), per-layer probe tables, the PASCAL table.
A row says where it comes from: ``published (source)`` or ``run <id>, <date>``.
Data sets are never mixed: a built-in-data result only appears in the built-in table.
Records of another schema or half-written runs are reported and skipped.

A stochastic method's Table 1 row (eval-color scores each of its sampled colorizations)
carries ``auc_std`` ... beside the means: the md and tex tables print such cells as
``mean ± std``; the csv keeps the means and the ``*_std`` columns as numbers. Rows without
a spread (deterministic methods, baselines, published rows) print as before.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.reference import PASCAL_PROTOCOLS, published_records
from pretext.engine.runs import RECORD_FIELDS, RECORD_SCHEMA

TABLE1_COLUMNS = ("params_mb", "feature_mb", "runtime_ms", "auc", "rebalanced_auc", "psnr", "classifier_top1")
STD_COLUMNS = tuple(f"{c}_std" for c in ("auc", "rebalanced_auc", "psnr", "classifier_top1"))  # stochastic rows
FORMATS = ("md", "csv", "tex")


@dataclass
class Loaded:
    records: list[dict]
    skipped: list[tuple[str, str]]  # (path, why)


def load_records(roots: list[Path]) -> Loaded:
    records, skipped = [], []
    for root in roots:
        for path in sorted(Path(root).rglob("metrics.json")):
            try:
                payload = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                skipped.append((str(path), f"unreadable ({exc.__class__.__name__}): half-written run?"))
                continue
            if not isinstance(payload, dict) or payload.get("schema") != RECORD_SCHEMA:
                skipped.append((str(path), f"schema {payload.get('schema') if isinstance(payload, dict) else '?'!r}, "
                                           f"expected {RECORD_SCHEMA!r}"))
                continue
            good = [r for r in payload.get("records", []) if all(f in r for f in RECORD_FIELDS)]
            if len(good) != len(payload.get("records", [])):
                skipped.append((str(path), f"{len(payload['records']) - len(good)} records lack fields"))
            records += [dict(r, run_dir=str(path.parent)) for r in good]
    return Loaded(records, skipped)


def row_source(r: dict) -> str:
    """Where a row comes from: the paper for published numbers, the run otherwise."""
    if r.get("run_id") == "published":
        return f"published: {r.get('source', '')}"
    return f"run {r.get('run_id', '?')} ({r.get('date', '')})"


def _pivot(records: list[dict], columns: list[str], column_key: str) -> pd.DataFrame:
    """Rows (method, source, encoder) x ``columns``; our runs first, published rows after."""
    index = ["method", "source", "encoder"]
    frame = pd.DataFrame([{"method": r["method"], "source": row_source(r), "encoder": r["encoder"],
                           column_key: r[column_key], "value": r["value"]} for r in records])
    if frame.empty:
        return pd.DataFrame(columns=index + columns).set_index(index)
    table = frame.pivot_table(index=index, columns=column_key, values="value", aggfunc="last")
    table = table.reindex(columns=[c for c in columns if c in table.columns] or list(table.columns))
    order = sorted(table.index, key=lambda idx: (idx[1].startswith("published"), idx[0], idx[1]))
    return table.reindex(order)


def probe_tables(records: list[dict]) -> dict[str, pd.DataFrame]:
    """One top-1 table per data set, columns = layers in network order."""
    probe = [r for r in records if r["suite"] == "probe" and r["metric"] == "top1" and r["protocol"] == "linear_probe"]
    tables = {}
    for dataset in sorted({r["dataset"] for r in probe}):
        rows = [r for r in probe if r["dataset"] == dataset]
        layers = list(dict.fromkeys(r["layer"] for r in rows))
        order = sorted(layers, key=_layer_order)
        tables[f"probe_{dataset}"] = _pivot(rows, order, "layer")
    return tables


def _layer_order(layer: str) -> tuple:
    digits = "".join(ch for ch in layer if ch.isdigit())
    return (0 if layer.startswith("conv") else 1, int(digits) if digits else 0, layer)


def table1(records: list[dict]) -> dict[str, pd.DataFrame]:
    rows = [r for r in records if r["suite"] == "colorization" and r["protocol"] == "table1"
            and r["metric"] in TABLE1_COLUMNS + STD_COLUMNS + ("amt_fooled_pct",) and r["method"]]
    # a realism study's "labelled real %" (colorbench study report) is the paper's AMT "fooled" column
    rows += [dict(r, metric="amt_fooled_pct") for r in records if r["suite"] == "colorization"
             and r["protocol"] == "realism_2afc" and r["metric"] == "labelled_real" and r["method"]]
    columns = list(TABLE1_COLUMNS) + ["amt_fooled_pct", *STD_COLUMNS]
    return {f"table1_{d}": _pivot([r for r in rows if r["dataset"] == d], columns, "metric")
            for d in sorted({r["dataset"] for r in rows})}


def with_spread(table: pd.DataFrame, digits: int = 2, pm: str = "±") -> pd.DataFrame:
    """Columns ``c`` with a ``c_std`` beside them printed as ``mean ± std`` where the std is
    known (a stochastic row), as the plain mean elsewhere; the ``*_std`` columns dropped."""
    spread = [c for c in table.columns if f"{c}_std" in table.columns]
    if not spread:
        return table
    out = table.drop(columns=[f"{c}_std" for c in spread])
    for c in spread:
        out[c] = [v if pd.isna(v) else f"{v:.{digits}f}" if pd.isna(sd) else f"{v:.{digits}f} {pm} {sd:.{digits}f}"
                  for v, sd in zip(table[c], table[f"{c}_std"])]
    return out


def best_layer_table(records: list[dict]) -> dict[str, pd.DataFrame]:
    """Best-layer linear top-1 (Goyal et al. 2019 report one number per encoder)."""
    rows = [r for r in records if r["suite"] == "probe" and r["metric"] == "top1"]
    best = {}
    for r in rows:  # our runs: the best layer of each run; published: as given
        key = (r["method"], r.get("run_id"), r["encoder"], r["dataset"])
        if key not in best or r["value"] > best[key]["value"]:
            best[key] = dict(r, layer="best", protocol="best_layer")
    by_dataset = {}
    for r in best.values():
        by_dataset.setdefault(r["dataset"], []).append(r)
    return {f"probe_best_layer_{d}": _pivot(v, ["best"], "layer") for d, v in sorted(by_dataset.items())}


# the harnesses' protocol names (run records) -> the PASCAL table's columns
PASCAL_COLUMNS = {"voc07_cls_fc6-8": "cls_fc6-8", "voc07_cls_all": "cls_all", "voc07_svm": "svm",
                  "voc07_det": "det", "voc12_seg": "seg"}


def pascal_table(records: list[dict]) -> dict[str, pd.DataFrame]:
    """cls fc6-8 / cls all / SVM / det / seg, one column per protocol (VOC07 and VOC12 side by side)."""
    rows = [r for r in records if r["suite"] == "pascal" and r["metric"] in ("mAP", "mIU") and r["layer"] in ("", "all")]
    # the classic table puts VOC07 cls/det and VOC12 seg together, one column per protocol
    rows = [dict(r, dataset="pascal", protocol=PASCAL_COLUMNS.get(r["protocol"], r["protocol"])) for r in rows]
    if not rows:
        return {"pascal": _pivot([], list(PASCAL_PROTOCOLS), "protocol")}
    return {"pascal": _pivot(rows, ["cls_fc6-8", "cls_all", "svm", "det", "seg"], "protocol")}


def to_markdown(table: pd.DataFrame, title: str) -> str:
    names = list(table.index.names) if table.index.nlevels > 1 else [table.index.name or "method"]
    cols = [*names, *map(str, table.columns)]
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in table.iterrows():
        keys = list(idx) if isinstance(idx, tuple) else [idx]
        cells = [str(k) for k in keys] + ["" if pd.isna(v) else (f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_probe(table: pd.DataFrame, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(table.columns)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (method, source, encoder), row in table.iterrows():
        style = "--" if source.startswith("published") else "-"
        label = f"{method} ({'published' if source.startswith('published') else source})"
        ax.plot(layers, [row[c] for c in layers], style, marker="o", label=label[:60])
    ax.set_xlabel("layer")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_tables(roots: list[Path], out: Path, formats: tuple[str, ...]) -> tuple[dict[str, pd.DataFrame], Loaded]:
    loaded = load_records(roots)
    records = loaded.records + published_records()
    tables = {**table1(records), **probe_tables(records), **best_layer_table(records), **pascal_table(records)}
    out.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        if "md" in formats:
            (out / f"{name}.md").write_text(to_markdown(with_spread(table), name))
        if "csv" in formats:
            table.to_csv(out / f"{name}.csv")
        if "tex" in formats:
            shown = with_spread(table, 1, "$\\pm$")
            (out / f"{name}.tex").write_text(shown.to_latex(float_format="%.1f", na_rep="--"))
        if name.startswith("probe_") and not name.startswith("probe_best") and len(table):
            plot_probe(table, f"Linear probes per layer ({name[6:]})", out / f"{name}.png")
    return tables, loaded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", nargs="*", default=["runs"], help="folders searched for metrics.json (recursively)")
    parser.add_argument("--format", default="md,csv", help=f"comma-separated subset of {','.join(FORMATS)}")
    parser.add_argument("--out", default="results/tables", help="where tables and plots are written")


def run(args: argparse.Namespace) -> int:
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        print(f"colorbench table: unknown format(s) {bad}; choose from {FORMATS}", file=sys.stderr)
        return 2
    roots = [Path(r) for r in args.runs]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing and len(missing) == len(roots):
        raise FileNotFoundError(f"no runs folder found: {', '.join(missing)} (pass --runs DIR ...)")
    if missing:
        print(f"colorbench table: no such folder(s): {missing}; showing what the others hold", file=sys.stderr)
    tables, loaded = build_tables([r for r in roots if r.is_dir()], Path(args.out), formats)
    for path, why in loaded.skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    ours = len({r["run_id"] for r in loaded.records})
    print(f"{len(loaded.records)} records from {ours} run(s) + published rows -> {len(tables)} tables in {args.out}")
    if "md" in formats:
        for name in tables:
            print("\n" + (Path(args.out) / f"{name}.md").read_text())
    return 0
