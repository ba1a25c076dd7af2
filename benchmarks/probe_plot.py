"""Top-1 per layer for every method: the papers' linear-probe figure, from run records.

    python -m benchmarks.probe_plot runs/probe_tiny-* --out runs/probe_top1.png

Reads ``metrics.json`` of each given run directory (or the file itself), keeps the
records with suite "probe", split "val", metric "top1" (or ``--metric top5``), and draws
one line per method: x = the encoder's taps (in the order the run wrote them, shallow to
deep), y = accuracy in percent. One panel per (dataset, encoder); several runs of the
same method are averaged (the legend says how many). Only our own runs are drawn:
published rows are the tables' business (DESIGN §5).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path


def load_records(paths: list[str | Path]) -> list[dict]:
    """Records of every ``metrics.json`` (run directories or the files themselves)."""
    out = []
    for p in map(Path, paths):
        f = p / "metrics.json" if p.is_dir() else p
        if not f.is_file():
            raise FileNotFoundError(f"no metrics.json at {p}")
        out += json.loads(f.read_text())["records"]
    return out


def probe_curves(records: list[dict], metric: str = "top1") -> dict[tuple[str, str], dict[str, dict]]:
    """{(dataset, encoder): {method: {"layers": [...], "values": [...], "runs": n}}}."""
    acc: dict = defaultdict(lambda: defaultdict(lambda: {"layers": [], "sums": defaultdict(float),
                                                         "counts": defaultdict(int), "runs": set()}))
    for r in records:
        if r.get("suite") != "probe" or r.get("split") != "val" or r.get("metric") != metric:
            continue
        c = acc[(r["dataset"], r["encoder"])][r["method"]]
        if r["layer"] not in c["layers"]:
            c["layers"].append(r["layer"])
        c["sums"][r["layer"]] += float(r["value"])
        c["counts"][r["layer"]] += 1
        c["runs"].add(r.get("run_id"))
    return {panel: {m: {"layers": c["layers"], "values": [c["sums"][t] / c["counts"][t] for t in c["layers"]],
                        "runs": len(c["runs"])} for m, c in methods.items()}
            for panel, methods in acc.items()}


def plot_probe(records: list[dict], out: str | Path, metric: str = "top1") -> Path:
    """Write the figure (PNG) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = probe_curves(records, metric)
    if not curves:
        raise ValueError(f"no probe records with metric {metric!r} and split 'val'")
    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.2), squeeze=False)
    for ax, ((dataset, encoder), methods) in zip(axes[0], sorted(curves.items())):
        layers = max((c["layers"] for c in methods.values()), key=len)
        for method, c in sorted(methods.items()):
            xs = [layers.index(t) for t in c["layers"] if t in layers]
            label = method + (f" ({c['runs']} runs)" if c["runs"] > 1 else "")
            ax.plot(xs, c["values"][:len(xs)], marker="o", label=label)
        ax.set_xticks(range(len(layers)), layers)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{metric} accuracy (%)")
        ax.set_title(f"linear probe: {dataset}, {encoder}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_plot", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="probe run directories (or their metrics.json)")
    parser.add_argument("--out", default="probe_top1.png", help="PNG to write")
    parser.add_argument("--metric", default="top1", choices=("top1", "top5"), help="the papers plot top-1")
    args = parser.parse_args(argv)
    try:
        path = plot_probe(load_records(args.runs), args.out, args.metric)
    except (FileNotFoundError, ValueError) as exc:
        print(f"probe_plot: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
