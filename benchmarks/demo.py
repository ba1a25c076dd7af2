"""``colorbench demo`` (what ``make demo`` runs): the whole suite on the built-in data.

    colorbench demo [--config configs/suites/demo.yaml] [--set key=value ...]

Steps (each is an ordinary colorbench command; a step whose outputs exist is reused,
so a second run only redoes what is missing):

 1. make-data   the built-in procedural benchmark               -> data/builtin
 2. pretrain    the tiny colorization encoder (full loss)        -> runs/demo/pretrain-full
 3. eval-color  Table 1: the model, its decoders and baselines   -> runs/demo/color
 4. probe       per-layer probes: colorization, Gaussian,
                k-means, supervised                              -> runs/demo/probe-*
 5. colorize    a grid of built-in and real photos (scikit-image's astronaut, coffee,
                chelsea, rocket)                                 -> results/demo/colorized
 6. table       tables + plots from the records                  -> results/demo/tables
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pretext.engine.config import git_revision, load_config

REAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@dataclass
class DemoConfig:
    data_dir: str = "data/builtin"
    runs_dir: str = "runs/demo"
    results_dir: str = "results/demo"
    seed: int = 0
    make_data_args: list[str] = field(default_factory=list)  # e.g. ["--num-train", "50"]
    pretrain_config: str = "configs/pretext/tiny.yaml"
    pretrain_overrides: list[str] = field(default_factory=list)
    probe_config: str = "configs/downstream/probe_tiny.yaml"
    probe_overrides: list[str] = field(default_factory=lambda: ["data.augment=false", "cache.enabled=true"])
    probe_methods: list[str] = field(default_factory=lambda: ["checkpoint", "gaussian", "kmeans", "supervised"])
    eval_config: str = "configs/downstream/eval_color_tiny.yaml"
    eval_overrides: list[str] = field(default_factory=list)  # eval-color config overrides (key=value)


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


class Demo:
    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        self.runs, self.results = Path(cfg.runs_dir), Path(cfg.results_dir)
        self.data = Path(cfg.data_dir)
        self.checkpoint = self.runs / "pretrain-full" / "checkpoints" / "last.pt"
        self.timings: dict[str, float] = {}

    def step(self, name: str, done: Path | None, argv: list[str]) -> None:
        """Run ``colorbench argv`` unless ``done`` exists (a finished earlier run)."""
        from benchmarks.cli import main as cli

        if done is not None and done.exists():
            print(f"[demo] {name}: reusing {done}", flush=True)
            return
        print(f"\n[demo] {name}: colorbench {' '.join(argv)}", flush=True)
        start = time.perf_counter()
        code = cli(argv)
        self.timings[name] = time.perf_counter() - start
        if code:
            raise SystemExit(f"[demo] step '{name}' failed with exit code {code}")
        print(f"[demo] {name}: done in {self.timings[name]:.0f} s", flush=True)

    def real_photos(self) -> Path:
        """scikit-image's sample photos, written once as PNG inputs for colorize."""
        from PIL import Image
        from skimage import data

        folder = self.results / "inputs"
        folder.mkdir(parents=True, exist_ok=True)
        for name in REAL_PHOTOS:
            path = folder / f"{name}.png"
            if not path.exists():
                img = getattr(data, name)()
                Image.fromarray(img).convert("RGB").save(path)
        val = self.data / "imagefolder" / "val"
        for cls in sorted(p for p in val.iterdir() if p.is_dir()):
            first = sorted(cls.iterdir())[0]
            target = folder / f"builtin_{cls.name}{first.suffix}"
            if not target.exists():
                target.write_bytes(first.read_bytes())
        return folder

    def run(self) -> None:
        cfg = self.cfg
        # make-data checks its own manifest (generator version, parameters): always ask it
        self.step("make-data", None, ["make-data", "--out", str(self.data), "--seed", str(cfg.seed),
                                      *cfg.make_data_args])
        train_root = str(self.data / "imagefolder")
        self.step("pretrain", self.runs / "pretrain-full" / "metrics.json",
                  ["pretrain", "--config", cfg.pretrain_config, "--run-dir", str(self.runs / "pretrain-full"),
                   *_sets([f"data.root={train_root}", f"prior.cache_dir={self.runs / 'cache'}", f"seed={cfg.seed}",
                           *cfg.pretrain_overrides])])
        self.step("eval-color", self.runs / "color" / "metrics.json",
                  ["eval-color", "--config", cfg.eval_config, "--checkpoint", str(self.checkpoint), "--data", train_root,
                   "--run-dir", str(self.runs / "color"),
                   *_sets([f"prior.cache_dir={self.runs / 'cache'}", f"classifier.cache_dir={self.runs / 'cache'}",
                           *cfg.eval_overrides])])
        for method in cfg.probe_methods:
            label = "colorization" if method == "checkpoint" else method
            argv = ["probe", "--config", cfg.probe_config, "--init", method, "--run-dir", str(self.runs / f"probe-{label}"),
                    *_sets([f"data.root={train_root}", f"cache.dir={self.runs / 'cache' / 'features'}", *cfg.probe_overrides])]
            if method == "checkpoint":
                argv[3:3] = ["--checkpoint", str(self.checkpoint)]
            self.step(f"probe ({label})", self.runs / f"probe-{label}" / "metrics.json", argv)
        self.step("colorize", self.results / "colorized",
                  ["colorize", str(self.real_photos()), "--checkpoint", str(self.checkpoint), "--out",
                   str(self.results / "colorized"), "--grid"])
        from benchmarks.cli import main as cli

        cli(["table", "--runs", str(self.runs), "--out", str(self.results / "tables"), "--format", "md,csv,tex"])
        self.report()

    def report(self) -> None:
        print("\n[demo] finished. Where everything is:")
        for what, path in (("built-in data", self.data), ("runs (records, logs, checkpoints)", self.runs),
                           ("tables and plots", self.results / "tables"), ("colorized photos", self.results / "colorized"),
                           ("Table 1 curves", self.runs / "color")):
            print(f"  {what:<34} {path}")
        if self.timings:
            print("  step times: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.timings.items()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a demo config (default: the built-in settings; see configs/suites/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a demo setting, e.g. --set runs_dir=runs/demo2")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(DemoConfig, args.config, args.overrides)
    print(f"colorbench demo | git {git_revision()} | args {sys.argv[1:]}")
    start = time.perf_counter()
    Demo(cfg).run()
    print(f"[demo] total {time.perf_counter() - start:.0f} s")
    return 0
