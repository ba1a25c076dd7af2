"""``colorbench demo`` (what ``make demo`` runs): the whole suite on the built-in data.

    colorbench demo [--config configs/suites/demo.yaml] [--set key=value ...]
    colorbench demo --config configs/suites/methods.yaml      # every pretext method side by side

Steps (each is an ordinary colorbench command; a step whose outputs exist is reused,
so a second run only redoes what is missing):

 1. make-data   the built-in procedural benchmark                  -> data/builtin
 2. pretrain    the tiny colorization encoder (full loss), and each
                recipe of ``methods`` (the methods suite)           -> runs/demo/pretrain-*
 3. eval-color  Table 1: every model, its decoders and baselines    -> runs/demo/color
 4. probe       per-layer probes: colorization (each method), Gaussian,
                k-means, supervised                                 -> runs/demo/probe-*
 5. pascal      VOC07 classification (fine-tuning, linear SVM), Fast R-CNN
                detection and FCN segmentation on the built-in VOCdevkit, for the
                colorization trunk and the Gaussian one             -> runs/demo/<protocol>-*
 6. colorize    built-in and real photos (scikit-image's astronaut, coffee, chelsea,
                rocket); with methods, one grid with a row per method -> results/demo/colorized
 7. table       tables + plots from the records                     -> results/demo/tables
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pretext.engine.config import add_config_arguments, config_from_args, git_revision, load_config

REAL_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# protocol -> (command, config, extra arguments); each runs for every init of `pascal_inits`
PASCAL = {
    "voc_cls_finetune": ("voc-cls", "configs/downstream/voc_cls_tiny.yaml", ["--protocol", "finetune"]),
    "voc_cls_svm": ("voc-cls", "configs/downstream/voc_cls_tiny.yaml", ["--protocol", "svm"]),
    "detect": ("detect", "configs/downstream/det_tiny.yaml", []),
    "segment": ("segment", "configs/downstream/seg_tiny.yaml", []),
}


@dataclass
class DemoConfig:
    data_dir: str = "data/builtin"
    runs_dir: str = "runs/demo"
    results_dir: str = "results/demo"
    seed: int = 0
    make_data_args: list[str] = field(default_factory=list)  # e.g. ["--num-train", "50"]
    pretrain_config: str = "configs/pretext/tiny.yaml"  # Zhang's full loss: the suite's home method
    pretrain_overrides: list[str] = field(default_factory=list)  # applied to every pretext recipe
    methods: list[str] = field(default_factory=list)  # more pretext recipes (the methods suite)
    eval_config: str = "configs/downstream/eval_color_tiny.yaml"
    eval_overrides: list[str] = field(default_factory=list)  # eval-color config overrides (key=value)
    probe_config: str = "configs/downstream/probe_tiny.yaml"
    probe_overrides: list[str] = field(default_factory=lambda: ["data.augment=false", "cache.enabled=true"])
    probe_methods: list[str] = field(default_factory=lambda: ["checkpoint", "gaussian", "kmeans", "supervised"])
    pascal: list[str] = field(default_factory=lambda: list(PASCAL))  # protocols of PASCAL to run
    pascal_inits: list[str] = field(default_factory=lambda: ["checkpoint", "gaussian"])
    pascal_overrides: dict[str, list[str]] = field(default_factory=dict)  # protocol -> extra key=value


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


class Demo:
    def __init__(self, cfg: DemoConfig):
        unknown = sorted(set(cfg.pascal) - set(PASCAL))
        if unknown:
            raise ValueError(f"pascal: unknown protocols {unknown}; valid: {list(PASCAL)}")
        self.cfg = cfg
        self.runs, self.results = Path(cfg.runs_dir), Path(cfg.results_dir)
        self.data = Path(cfg.data_dir)
        self.timings: dict[str, float] = {}
        # run name -> pretext recipe: Zhang's tiny model first ("full"), then the methods suite
        self.recipes = {"full": cfg.pretrain_config, **{Path(m).stem: m for m in cfg.methods}}

    def checkpoint(self, name: str = "full") -> Path:
        return self.runs / f"pretrain-{name}" / "checkpoints" / "last.pt"

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
                Image.fromarray(getattr(data, name)()).convert("RGB").save(path)
        val = self.data / "imagefolder" / "val"
        for cls in sorted(p for p in val.iterdir() if p.is_dir()):
            first = sorted(cls.iterdir())[0]
            target = folder / f"builtin_{cls.name}{first.suffix}"
            if not target.exists():
                target.write_bytes(first.read_bytes())
        return folder

    # -- the steps -----------------------------------------------------------------------
    def pretrain(self, train_root: str) -> None:
        sets = [f"data.root={train_root}", f"prior.cache_dir={self.runs / 'cache'}", f"seed={self.cfg.seed}",
                *self.cfg.pretrain_overrides]
        for name, recipe in self.recipes.items():
            run = self.runs / f"pretrain-{name}"
            self.step(f"pretrain ({name})", run / "metrics.json",
                      ["pretrain", "--config", recipe, "--run-dir", str(run), *_sets(sets)])

    def eval_color(self, train_root: str) -> None:
        ckpts = [a for name in self.recipes for a in ("--checkpoint", str(self.checkpoint(name)))]
        self.step("eval-color", self.runs / "color" / "metrics.json",
                  ["eval-color", "--config", self.cfg.eval_config, *ckpts, "--data", train_root,
                   "--run-dir", str(self.runs / "color"),
                   *_sets([f"prior.cache_dir={self.runs / 'cache'}", f"classifier.cache_dir={self.runs / 'cache'}",
                           *self.cfg.eval_overrides])])

    def trunk_sets(self, name: str) -> list[str]:
        """A method's own trunk (its recipe's encoder) for the harnesses' checkpoint init."""
        from pretext.train import PretrainConfig

        recipe = load_config(PretrainConfig, self.recipes[name], self.cfg.pretrain_overrides)
        kwargs = ", ".join(f"{k}: {v}" for k, v in recipe.encoder_kwargs.items())
        return [f"trunk.encoder={recipe.encoder}", f"trunk.encoder_kwargs={{{kwargs}}}"]

    def probes(self, train_root: str) -> None:
        cfg = self.cfg
        sets = [f"data.root={train_root}", f"cache.dir={self.runs / 'cache' / 'features'}", *cfg.probe_overrides]
        jobs = [(m, "full") for m in cfg.probe_methods]
        jobs += [("checkpoint", name) for name in self.recipes if name != "full"]
        for init, name in jobs:
            label = ("colorization" if name == "full" else name) if init == "checkpoint" else init
            run = self.runs / f"probe-{label}"
            argv = ["probe", "--config", cfg.probe_config, "--init", init, "--run-dir", str(run)]
            extra = []
            if init == "checkpoint":
                argv += ["--checkpoint", str(self.checkpoint(name))]
                if name != "full":
                    argv += ["--method", name]
                    extra = self.trunk_sets(name)
            self.step(f"probe ({label})", run / "metrics.json", argv + _sets(sets + extra))

    def pascal(self) -> None:
        voc = str(self.data / "VOCdevkit" / "VOC2007")
        for protocol in self.cfg.pascal:
            command, config, extra = PASCAL[protocol]
            for init in self.cfg.pascal_inits:
                label = "colorization" if init == "checkpoint" else init
                run = self.runs / f"{protocol}-{label}"
                argv = [command, "--config", config, *extra, "--init", init, "--run-dir", str(run)]
                if init == "checkpoint":
                    argv += ["--checkpoint", str(self.checkpoint())]
                sets = [f"data.root={voc}", *self.cfg.pascal_overrides.get(protocol, [])]
                self.step(f"{protocol} ({label})", run / "metrics.json", argv + _sets(sets))

    def colorize(self) -> None:
        inputs = self.real_photos()
        for name in self.recipes:
            out = self.results / "colorized" / ("" if name == "full" else name)
            self.step(f"colorize ({name})", out / "astronaut.png",
                      ["colorize", str(inputs), "--checkpoint", str(self.checkpoint(name)), "--out", str(out),
                       "--grid", "--overwrite"])
        if len(self.recipes) > 1:
            method_grid(inputs, {n: self.results / "colorized" / ("" if n == "full" else n) for n in self.recipes},
                        self.results / "methods_grid.png")

    def run(self) -> None:
        cfg = self.cfg
        # make-data checks its own manifest (generator version, parameters): always ask it
        self.step("make-data", None, ["make-data", "--out", str(self.data), "--seed", str(cfg.seed),
                                      *cfg.make_data_args])
        train_root = str(self.data / "imagefolder")
        self.pretrain(train_root)
        self.eval_color(train_root)
        self.probes(train_root)
        self.pascal()
        self.colorize()
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


def method_grid(inputs: Path, outputs: dict[str, Path], path: Path, side: int = 160) -> Path:
    """One picture: a column per input photo, a row per method (its colorization), plus
    rows for the gray input and the original."""
    from PIL import Image, ImageDraw

    photos = sorted(p for p in inputs.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    rows = [("input (gray)", [Image.open(p).convert("L").convert("RGB") for p in photos])]
    for name, folder in outputs.items():
        rows.append((name, [Image.open(folder / f"{p.stem}.png").convert("RGB") for p in photos]))
    rows.append(("original", [Image.open(p).convert("RGB") for p in photos]))
    label_w = 120
    grid = Image.new("RGB", (label_w + side * len(photos), side * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (name, images) in enumerate(rows):
        draw.text((4, r * side + side // 2), name[:18], fill="black")
        for c, im in enumerate(images):
            grid.paste(im.resize((side, side)), (label_w + c * side, r * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/suites/demo.yaml (default settings) or configs/suites/methods.yaml")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(DemoConfig, args)
    print(f"colorbench demo | git {git_revision()} | args {sys.argv[1:]}")
    start = time.perf_counter()
    Demo(cfg).run()
    print(f"[demo] total {time.perf_counter() - start:.0f} s")
    return 0
