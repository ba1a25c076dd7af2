"""``colorbench eval-color``: score colorizations the way the paper's Table 1 does.

    colorbench eval-color --config configs/downstream/eval_color_tiny.yaml \
        --checkpoint runs/full/checkpoints/last.pt --checkpoint runs/l2/checkpoints/last.pt \
        --run-dir runs/table1 [--set decoders=[mean,mode,annealed]] [--set baselines=[gray]]

The config (``config.EvalColorConfig``; YAML + ``--set``, unknown keys are errors) names
the data, the checkpoints, the decoders, the baselines, the prior and the classifier.
``--checkpoint`` (repeatable), ``--data`` and ``--run-dir`` are short for the config keys
``checkpoints``, ``data.root`` and ``out_dir``.

Rows, all scored in one pass over the evaluation images (``scoring``):

* ``ground_truth`` (the true ab: AuC 100, the classifier's ceiling), ``gray`` (ab = 0),
  ``random`` (the ab of a random training image, resized bilinearly to the image; the
  pick is seeded per image), ``prior_mean`` (every pixel gets the mean colour of the
  prior, sum_q p_q c_q);
* every checkpoint (any pretext method, ``pretext.methods.load_method``), through its
  ``predict_ab`` once per listed decoder it has (``colorization-full-annealed``,
  ``larsson-hc-median`` ...; listed decoders it lacks are skipped and logged once), or once
  for a method with one output (``colorization-l2``); a stochastic method (``royer`` ...)
  once on each of its ``samples`` colorizations (seeded by ``sample_seed``), its row the
  mean over samples with ``*_std`` records of their spread. The network sees the image at
  its working size (see ``pretext.colorize``); ab is upsampled to full resolution.

Metrics: ``auc``, ``rebalanced_auc`` (lam = 0 weights from the prior: ``prior.path``,
else the first checkpoint's training prior (its method's ``prior`` buffer), else counted
over the training split and cached; ``rebalance_top_bin_share`` reports the largest share
of the total weight one bin carries), ``psnr``, ``classifier_top1`` (``classifier``: the
user's torchvision weights, or the built-in classifier trained once and cached), and for
checkpoints the cost columns of ``costs.colorizer_costs`` (``params_mb``, ``feature_mb``,
``runtime_ms``, on one square image of the working size).

Unreadable files are skipped and counted. The run directory gets ``metrics.json``,
``per_image.csv``, ``curves.png`` / ``curves.json``, ``config.yaml`` and ``log.jsonl``.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from downstream.color_quality.classifier import resolve_classifier
from downstream.color_quality.config import EvalColorConfig, check_config
from downstream.color_quality.costs import colorizer_costs
from downstream.color_quality.records import build_records, format_table, run_records, write_curves, write_per_image
from downstream.color_quality.scoring import (RandomColours, Row, baseline_rows, evaluate, lam0_weights, model_rows,
                                              name_uniquely)
from pretext.colorize import Colorizer, load_colorizer
from pretext.data.loader import SkipCounter, make_loader, val_transform
from pretext.data.sources import source_for
from pretext.engine.config import add_config_arguments, config_from_args, git_revision
from pretext.engine.runs import RunDir

# a prior counted here (no checkpoint carries one) samples ab every 4 pixels of the centre
# crops: the ECCV16 colorizer's output stride, dense enough for a stable histogram
PRIOR_STRIDE = 4


def get_dataset(cfg: EvalColorConfig):
    """The evaluated images: the val split, native size unless ``image_crop``."""
    transform = val_transform(cfg.image_crop, cfg.image_resize) if cfg.image_crop else None
    return source_for(cfg.data, "val", transform=transform)


def random_pool(cfg: EvalColorConfig, eval_source):
    """(pool, same_source): the training split when the data has one, else the evaluated split."""
    try:
        return source_for(cfg.data, "train"), False
    except ValueError:
        return eval_source, True


def resolve_prior(cfg: EvalColorConfig, colorizers: list[Colorizer], device, say) -> tuple[torch.Tensor, str]:
    """prior.path, else the first checkpoint's training prior, else counted over the
    training split's centre crops (data.crop / data.resize), cached under prior.cache_dir."""
    from pretext.color.prior import get_or_compute_prior

    if not cfg.prior.path:
        for c in colorizers:
            prior = getattr(c.method, "prior", None)  # Zhang's training prior (a buffer)
            # imported released weights carry no prior (a uniform placeholder): count one instead
            if isinstance(prior, torch.Tensor) and not str(c.payload.get("prior_source", "")).startswith("uniform"):
                return prior.float().cpu(), f"{c.path} (training prior)"
    grid = (math.ceil(cfg.data.crop / PRIOR_STRIDE),) * 2  # ab point-sampled every PRIOR_STRIDE pixels
    return get_or_compute_prior(cfg.data, cfg.prior, device, grid, "point", num_workers=cfg.data.num_workers,
                                log=say)


def load_rows(cfg: EvalColorConfig, source, device, say) -> tuple[list[Row], torch.Tensor, str]:
    """Baselines + (checkpoint, decoder) rows, the lam = 0 weights [313] and the prior's origin."""
    colorizers = [load_colorizer(p, device, cfg.size, seed=cfg.sample_seed) for p in cfg.checkpoints]
    if any(c.decoders for c in colorizers) and not cfg.decoders:
        raise ValueError("decoders is empty but a checkpoint predicts a distribution over colours")
    prior, prior_source = resolve_prior(cfg, colorizers, device, say)
    say(f"rebalancing / prior_mean prior: {prior_source}")
    randoms = None
    if "random" in cfg.baselines:
        pool, same_source = random_pool(cfg, source)
        if same_source:
            say("random baseline: the data has no readable training split; colours come from the other evaluated images")
        randoms = RandomColours(pool, same_source, device, cfg.seed)
    rows = baseline_rows(cfg.baselines, prior, randoms) + model_rows(colorizers, cfg.decoders, cfg.samples,
                                                                     cfg.sample_seed, say)
    name_uniquely(rows)
    return rows, lam0_weights(prior), prior_source


def main(cfg: EvalColorConfig, argv: list[str] | None = None) -> dict:
    """Score every row on ``cfg.data``'s val split; returns {"records", "run_dir"}."""
    from pretext.engine.dist import pick_device

    check_config(cfg)
    device, out = pick_device(cfg.device), Path(cfg.out_dir)
    if (out / "metrics.json").exists() and not cfg.overwrite:
        raise ValueError(f"{out} already holds results (metrics.json); set overwrite=true or choose another "
                         "--run-dir")
    source = get_dataset(cfg)  # a wrong data root fails before the run directory exists
    run = RunDir(out)
    run.write_config(cfg, argv)
    run.say(f"colorbench eval-color | git {git_revision()} | {len(cfg.checkpoints)} checkpoint(s) on {source}")
    rows, weights, prior_source = load_rows(cfg, source, device, run.say)
    classifier = resolve_classifier(source, cfg.data, cfg.classifier, device, cfg.seed, run.say)
    costs = {r.name: colorizer_costs(r.colorizer, r.decoder, cfg.timing_runs) for r in rows if r.colorizer is not None}
    per_image, skipped = ([] if cfg.per_image else None), SkipCounter()
    loader = make_loader(source, cfg.batch_size, num_workers=cfg.data.num_workers)
    scores, gt_counts = evaluate(rows, loader, weights, device, classifier, per_image, skipped)
    if scores[rows[0].name].images == 0:
        raise ValueError(f"no colourful, readable images to score in {source} ({skipped})")
    base = {"dataset": cfg.data.dataset_name, "split": cfg.data.val_split or ""}
    records, curves = build_records(rows, scores, costs, base)
    records += run_records(gt_counts * weights.cpu(), skipped, base, run.say)
    run.write_records(records, extra={"prior": prior_source, "git_revision": git_revision(),
                                      "classifier": classifier.source if classifier else None})
    if per_image is not None:
        write_per_image(per_image, out / "per_image.csv")
    write_curves(curves, out)
    run.say(format_table(records))
    run.say(f"{scores[rows[0].name].images} images scored, {skipped}; results in {out}")
    return {"records": records, "run_dir": out}


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/downstream/eval_color_tiny.yaml")
    parser.add_argument("--checkpoint", action="append", default=None, metavar="C",
                        help="a pretext checkpoint to score (repeatable; replaces the config's checkpoints)")
    parser.add_argument("--data", help="data root (the config key data.root), e.g. data/builtin/imagefolder")
    parser.add_argument("--run-dir", "--out", dest="run_dir",
                        help="run directory for records, curves and per-image scores (the config key out_dir)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(EvalColorConfig, args, **{"checkpoints": args.checkpoint, "data.root": args.data,
                                                         "out_dir": args.run_dir})
        main(cfg, sys.argv)
    except (ValueError, FileNotFoundError) as exc:  # ConfigError, CheckpointError and other user errors
        print(f"colorbench eval-color: {exc}", file=sys.stderr)
        return 2
    return 0
