"""``colorbench eval-color``: score colorizations the way the paper's Table 1 does.

    colorbench eval-color --data data/builtin/imagefolder --checkpoint runs/full/checkpoints/last.pt \
        runs/class/checkpoints/last.pt runs/l2/checkpoints/last.pt --decode mean,mode,annealed \
        --baselines ground_truth,gray,random,prior_mean --out runs/table1

Methods, all scored in one pass over the evaluation images:

* ``ground_truth`` (the true ab: AuC 100, the classifier's ceiling), ``gray`` (ab = 0),
  ``random`` (the ab of a random training image, resized bilinearly to the image; the
  pick is seeded per image), ``prior_mean`` (every pixel gets the mean colour of the
  training prior, sum_q p_q c_q);
* every ``--checkpoint`` (any registered encoder with a colorization head): 313-bin
  heads once per ``--decode`` (``colorization-full-annealed`` ...), l2 heads once
  (``colorization-l2``). The network sees the image at its working size (see
  ``pretext.colorize``); predicted ab is upsampled to the image's full resolution.

Metrics (DESIGN §3, "Colorization metrics"), pooled over all pixels of all images:

* ``auc``: area under the cumulative curve of per-pixel ab errors, t = 0..150, in %;
* ``rebalanced_auc``: the same with pixels weighted by the rebalancing weight with
  lam = 0 (w ∝ 1 / p~, p~ the Gaussian-smoothed training prior) at their true colour's
  bin. The prior: ``--prior FILE``, else the first checkpoint's (the prior it was trained
  with), else counted over the training split (cached). Weights are exact (float64);
  ``rebalance_top_bin_share`` reports the largest share of the total weight one bin
  carries, so a metric dominated by a colour the training prior barely has is visible;
* ``psnr``: mean over images of the per-image PSNR of the RGB result (not for the truth);
* ``classifier_top1``: semantic interpretability, top-1 of a fixed classifier on the
  recolorized images (``--classifier-weights`` with a torchvision ``--classifier-arch``,
  or the built-in classifier trained once and cached, see ``downstream.color_classifier``);
* for checkpoints (``Colorizer.costs``, on one square image of the working size):
  ``params_mb`` (float32, MiB); ``feature_mb`` (every leaf module's output in one forward
  pass, caught by hooks, in-place results once, float32, MiB); ``runtime_ms`` (median of
  network + decoding, batch 1, after 2 warm-up runs, CUDA synchronised).

Gray images (no |a| or |b| > 5) are left out: they have no colour to score. Unreadable
files are skipped and counted. The run directory gets ``metrics.json`` (records with
suite ``colorization``, protocol ``table1``), ``per_image.csv``, ``curves.png`` and
``curves.json``, ``config.yaml`` and ``log.jsonl``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from downstream.color_classifier import resolve_classifier
from pretext.color import ab_centers, lab_to_rgb, soft_encode
from pretext.color_metrics import AucAccumulator, auc_score, psnr
from pretext.colorize import DECODERS, Colorizer, load_colorizer
from pretext.config import git_revision
from pretext.losses import colorful_mask
from pretext.pipeline import to_lab
from pretext.rebalance import load_prior, smooth_prior
from pretext.runs import RunDir
from pretext.sources import SkipCounter, build_source, make_loader, val_transform

BASELINES = ("ground_truth", "gray", "random", "prior_mean")


@dataclass
class Method:
    """A way to colorize: ``predict(lab [N,3,H,W], index long [N]) -> ab [N,2,H,W]``."""

    name: str
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    encoder: str = ""
    colorizer: Colorizer | None = None
    decode: str = ""


@dataclass
class Scores:
    """Streaming results of one method."""

    plain: AucAccumulator = field(default_factory=AucAccumulator)
    rebalanced: AucAccumulator = field(default_factory=AucAccumulator)
    psnr: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    images: int = 0

    def add(self, ab, true_ab, pixel_w, image_psnr: list, pred: torch.Tensor | None, labels: torch.Tensor) -> None:
        """ab, true_ab [n,2,H,W]; pixel_w [n,H,W]; image_psnr [n] (None: not scored); pred, labels [n]."""
        self.images += len(image_psnr)
        self.plain.update(ab, true_ab)
        self.rebalanced.update(ab, true_ab, pixel_w)
        self.psnr += [p for p in image_psnr if p is not None]
        if pred is not None:
            self.correct += (pred == labels).tolist()


# ----------------------------------------------------------------------------- methods

class RandomColours:
    """The ab of a random training image (seeded per evaluation image), resized."""

    def __init__(self, pool, same_source: bool, device: torch.device, seed: int):
        self.pool, self.device, self.seed, self.same_source = pool, device, seed, same_source

    def ab_for(self, index: int, size: tuple[int, int]) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        for _ in range(20):  # unreadable picks are skipped; the evaluated image itself is not picked
            j = int(torch.randint(len(self.pool), (1,), generator=g))
            item = self.pool[j]
            if isinstance(item, dict) and not (self.same_source and j == index):
                ab = to_lab(item["image"][None], self.device)[:, 1:]  # [1,2,h,w]
                return F.interpolate(ab, size=size, mode="bilinear", align_corners=False)[0]
        raise ValueError("random baseline: could not read a training image in 20 tries")

    def __call__(self, lab: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.ab_for(int(i), tuple(lab.shape[-2:])) for i in index])


def baseline_methods(names: list[str], prior: torch.Tensor, random_colours: RandomColours | None) -> list[Method]:
    mean_ab = (prior.double()[:, None] * ab_centers().double()).sum(0).float()  # [2]
    table = {
        "ground_truth": lambda lab, idx: lab[:, 1:],
        "gray": lambda lab, idx: torch.zeros_like(lab[:, 1:]),
        "prior_mean": lambda lab, idx: mean_ab.to(lab.device)[None, :, None, None].expand_as(lab[:, 1:]),
        "random": random_colours,
    }
    return [Method(name, table[name]) for name in names]


def model_methods(colorizers: list[Colorizer], decoders: list[str]) -> list[Method]:
    """One method per (checkpoint, decoder); the network runs once per batch and checkpoint."""
    out = []
    for c in colorizers:
        cache: dict = {}

        def forward(lab, idx, c=c, cache=cache):
            if cache.get("lab") is not lab:  # holding `lab` keeps its identity unique
                cache.update(lab=lab, output=c.network_output(lab[:, :1]))
            return cache["output"]
        for d in ([""] if c.regression else decoders):
            out.append(Method(c.method(d or None), lambda lab, idx, c=c, d=d, f=forward: c.to_ab(f(lab, idx), lab.shape[-2:], d or None),
                              encoder=c.encoder, colorizer=c, decode=d or "regression"))
    return out


# ----------------------------------------------------------------------------- the pass

def uniform_groups(batch: dict):
    """(uint8 [n,3,H,W], labels [n], indices [n], paths) with one size per group."""
    images = batch["image"]
    if isinstance(images, torch.Tensor):
        if images.shape[0]:
            yield images, batch["label"], batch["index"], batch["path"]
        return
    for i, img in enumerate(images):  # mixed sizes: one image at a time
        yield img[None], batch["label"][i:i + 1], batch["index"][i:i + 1], batch["path"][i:i + 1]


def evaluate(methods: list[Method], loader, weights: torch.Tensor, device: torch.device, classifier=None,
             per_image: list | None = None, skipped: SkipCounter | None = None) -> tuple[dict[str, Scores], torch.Tensor]:
    """One pass over ``loader``; ``weights`` [313] are the lam = 0 rebalancing weights.
    Returns the scores and the ground truth's pixel count per bin [313]."""
    scores = {m.name: Scores() for m in methods}
    weights = weights.double().to(device)
    gt_counts = torch.zeros(weights.numel(), dtype=torch.float64)
    for batch in tqdm(loader, desc="eval-color", unit="batch"):
        if skipped is not None:
            skipped.update(batch)
        for images, labels, index, paths in uniform_groups(batch):
            lab = to_lab(images, device)  # [n,3,H,W]
            keep = colorful_mask(lab[:, 1:])
            if skipped is not None:
                skipped.add("grayscale_excluded", int((~keep).sum()))
            if not keep.any():
                continue
            keep_cpu = keep.cpu()
            lab, labels, index = lab[keep], labels[keep_cpu], index[keep_cpu]
            paths = [p for p, k in zip(paths, keep_cpu.tolist()) if k]
            bins = score_group(methods, scores, lab, labels, index, paths, weights, classifier, per_image)
            gt_counts += torch.bincount(bins.flatten().cpu(), minlength=gt_counts.numel()).double()
    return scores, gt_counts


def score_group(methods, scores, lab, labels, index, paths, weights, classifier, per_image) -> torch.Tensor:
    """Score every method on one group of same-size images; returns the true bins [n,H,W]."""
    true_ab = lab[:, 1:].contiguous()  # [n,2,H,W]
    bins = soft_encode(true_ab, k=1).indices[:, 0]  # [n,H,W] nearest bin of the true colour
    pixel_w = weights[bins]  # [n,H,W]
    if not torch.isfinite(pixel_w).all():
        ab = true_ab.permute(0, 2, 3, 1)[~torch.isfinite(pixel_w)][0].tolist()
        raise ValueError(f"rebalanced AuC (lam = 0) is undefined: the true colour ab = ({ab[0]:.0f}, {ab[1]:.0f}) of "
                         f"{paths[0]} has zero mass in the smoothed prior; pass --prior with a prior of broader data "
                         "(e.g. 'colorbench prior' over the evaluated images)")
    true_rgb = lab_to_rgb(lab)
    for m in methods:
        ab = m.predict(lab, index).to(lab.device)  # [n,2,H,W]
        truth = m.name == "ground_truth"
        rgb = true_rgb if truth else lab_to_rgb(torch.cat([lab[:, :1], ab], 1))
        image_psnr = [None] * len(paths) if truth else psnr(rgb, true_rgb).tolist()  # [n] (inf for the truth)
        pred = classifier.predict(rgb).cpu() if classifier is not None else None  # [n]
        scores[m.name].add(ab, true_ab, pixel_w, image_psnr, pred, labels)
        if per_image is not None:
            per_image += image_rows(m.name, ab, true_ab, pixel_w, paths, labels, image_psnr, pred)
    return bins


def image_rows(name, ab, true_ab, pixel_w, paths, labels, image_psnr, pred) -> list[dict]:
    """Per-image AuC, rebalanced AuC, PSNR and classifier prediction of one method."""
    return [{"method": name, "path": path, "label": int(labels[i]), "auc": auc_score(ab[i:i + 1], true_ab[i:i + 1]),
             "rebalanced_auc": auc_score(ab[i:i + 1], true_ab[i:i + 1], pixel_w[i:i + 1]), "psnr": image_psnr[i],
             "predicted": None if pred is None else int(pred[i])} for i, path in enumerate(paths)]


# ----------------------------------------------------------------------------- set-up

def csv_list(text: str, valid: tuple[str, ...], what: str) -> list[str]:
    items = [t.strip() for t in (text or "").split(",") if t.strip() and t.strip() != "none"]
    bad = [t for t in items if t not in valid]
    if bad:
        raise ValueError(f"unknown {what} {bad}; valid: {', '.join(valid)}")
    return items


def resolve_prior(args, colorizers: list[Colorizer], device, log) -> tuple[torch.Tensor, str]:
    """--prior FILE, else the first checkpoint's training prior, else counted (cached)."""
    if args.prior:
        return load_prior(args.prior), args.prior
    for c in colorizers:
        if isinstance(c.payload.get("prior"), torch.Tensor):
            return c.payload["prior"].float().cpu(), f"{c.path} (training prior)"
    from pretext.prior import get_or_compute_prior

    data = {"kind": args.kind, "root": args.data, "train_split": args.train_split, "list_file": None, "resize": None}
    return get_or_compute_prior(data, args.prior_crop, args.prior_images, args.cache_dir, device, log=log)


def random_pool(args, eval_source):
    """(pool, same_source): the training split when the data has one, else the evaluated split."""
    try:
        return build_source(args.kind, args.data, args.train_split), False
    except ValueError:
        return eval_source, True


# ----------------------------------------------------------------------------- outputs

def build_records(methods, scores, costs, base: dict) -> tuple[list[dict], dict]:
    records, curves = [], {}
    for m in methods:
        s = scores[m.name]
        row = {"suite": "colorization", "method": m.name, "encoder": m.encoder, "protocol": "table1", "layer": "",
               **base, "decode": m.decode, "checkpoint": m.colorizer.path if m.colorizer else ""}
        values = {"auc": s.plain.auc(), "rebalanced_auc": s.rebalanced.auc(), "images": s.images}
        if s.psnr:
            values["psnr"] = sum(s.psnr) / len(s.psnr)
        if s.correct:
            values["classifier_top1"] = 100.0 * sum(s.correct) / len(s.correct)
        values.update(costs.get(m.name, {}))
        records += [dict(row, metric=k, value=float(v)) for k, v in values.items() if v is not None]
        curves[m.name] = {"plain": s.plain.curve().tolist(), "rebalanced": s.rebalanced.curve().tolist()}
    return records, curves


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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(records: list[dict]) -> None:
    cols = ("params_mb", "feature_mb", "runtime_ms", "auc", "rebalanced_auc", "psnr", "classifier_top1")
    table: dict[str, dict] = {}
    for r in records:
        if r["method"]:  # method "" holds run-level numbers (skips, weight share)
            table.setdefault(r["method"], {})[r["metric"]] = r["value"]
    print(f"{'method':<30}" + "".join(f"{c:>16}" for c in cols))
    for name, v in table.items():
        print(f"{name:<30}" + "".join(f"{v[c]:>16.2f}" if c in v else f"{'-':>16}" for c in cols))


def lam0_weights(prior: torch.Tensor, sigma: float = 5.0) -> torch.Tensor:
    """Rebalancing weights with lam = 0, float64 [313]: w ∝ 1 / p~ with sum p~ w = 1.

    Exact in float64 (``rebalance_weights`` returns float32, where the weights of colours
    the prior barely has overflow). Bins whose smoothed prior is exactly 0 (farther than
    ~190 ab units from every colour of the prior) get +inf: scoring a pixel there raises."""
    p = prior.double() / prior.double().sum()
    smooth = smooth_prior(p, sigma)
    seen = smooth >= torch.finfo(torch.float64).tiny  # denormals count as zero mass (inexact)
    w = torch.full_like(smooth, float("inf"))
    w[seen] = 1.0 / (smooth[seen] * int(seen.sum()))
    return w


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="data root (e.g. data/builtin/imagefolder)")
    parser.add_argument("--kind", default="imagefolder", choices=("imagefolder", "folder", "filelist", "voc"),
                        help="layout of --data (labels for the classifier come from imagefolder / filelist)")
    parser.add_argument("--split", default="val", help="evaluated split (sub-folder, list or VOC image set; '' = root)")
    parser.add_argument("--train-split", default="train",
                        help="training split: the random baseline's colours, the prior and the built-in classifier")
    parser.add_argument("--list-file", help="filelist kind: the list of evaluated images")
    parser.add_argument("--limit", type=int, help="evaluate the first N images (paper: 10k of ImageNet val)")
    parser.add_argument("--crop", type=int, help="centre-crop evaluation images to CROP (default: native size)")
    parser.add_argument("--resize", type=int, help="with --crop: resize the short side first")
    parser.add_argument("--checkpoint", nargs="+", action="extend", default=[], metavar="C",
                        help="pretext checkpoints to score (full / class / l2 ...); repeatable")
    parser.add_argument("--decode", default="annealed", help="comma list of decoders for 313-bin heads: mean,mode,annealed "
                        "(annealed is the paper's method)")
    parser.add_argument("--T", type=float, default=0.38, help="annealing temperature (paper: 0.38)")
    parser.add_argument("--size", type=int, help="short side the network sees (default: each checkpoint's "
                        "training short side, else 256; 0 = native)")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help=f"comma list from {', '.join(BASELINES)} ('none' for none); default: all")
    parser.add_argument("--prior", help="prior file for rebalanced AuC and prior_mean (default: the first "
                        "checkpoint's training prior, else counted over --train-split)")
    parser.add_argument("--prior-crop", type=int, default=176, help="crop when counting the prior (paper crop)")
    parser.add_argument("--prior-images", type=int, default=2000, help="images counted for the prior (stable at 313 bins)")
    parser.add_argument("--classifier-weights", help="torchvision classifier weights (state dict, weights_only); "
                        "default: train the built-in classifier once on the colour training images and cache it")
    parser.add_argument("--classifier-arch", default="vgg16", help="torchvision architecture of --classifier-weights "
                        "(the paper used VGG-16)")
    parser.add_argument("--classifier-classes", type=int, help="classes of --classifier-weights (default: class folders)")
    parser.add_argument("--classifier-size", type=int, help="classifier input side (default 224 for given weights "
                        "(ImageNet); 32 for the built-in classifier: the 64 px images halved, 4x cheaper to train)")
    parser.add_argument("--classifier-epochs", type=int, default=6, help="built-in classifier epochs (6: 87%% val "
                        "top-1 on true colours, 20%% on gray, on the built-in data)")
    parser.add_argument("--no-classifier", action="store_true", help="skip semantic interpretability")
    parser.add_argument("--cache-dir", default="runs/cache", help="where the prior and the built-in classifier are cached")
    parser.add_argument("--out", default="runs/eval-color", help="run directory for records, curves and per-image scores")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    parser.add_argument("--dataset-name", help="dataset field of the records (default: the name of --data)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (same-size images are batched)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--timing-runs", type=int, default=10, help="timed forward passes per model (median reported)")
    parser.add_argument("--seed", type=int, default=0, help="random baseline picks and classifier training")
    parser.add_argument("--device", default="auto", help="'auto' picks CUDA when present, else CPU")


def run(args: argparse.Namespace) -> int:
    print(f"colorbench eval-color | git {git_revision()} | args {vars(args)}")
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"colorbench eval-color: {exc}", file=sys.stderr)
        return 2


def load_methods(args, source, device, log) -> tuple[list[Method], torch.Tensor, str]:
    """Baselines + (checkpoint, decoder) methods, the lam = 0 weights [313] and the prior's origin."""
    decoders = csv_list(args.decode, DECODERS, "decoders")
    baselines = csv_list(args.baselines, BASELINES, "baselines")
    colorizers = [load_colorizer(p, device, args.size, T=args.T) for p in args.checkpoint]
    if not colorizers and not baselines:
        raise ValueError("nothing to evaluate: give --checkpoint and/or --baselines")
    if any(not c.regression for c in colorizers) and not decoders:
        raise ValueError("--decode is empty but a checkpoint has a 313-bin head")
    prior, prior_source = resolve_prior(args, colorizers, device, log)
    log(f"rebalancing / prior_mean prior: {prior_source}")
    randoms = RandomColours(*random_pool(args, source), seed=args.seed, device=device) if "random" in baselines else None
    methods = baseline_methods(baselines, prior, randoms) + model_methods(colorizers, decoders)
    seen: dict[str, int] = {}
    for m in methods:  # two checkpoints of the same loss: name the second "...#2" (records keep the path)
        seen[m.name] = seen.get(m.name, 0) + 1
        m.name += f"#{seen[m.name]}" if seen[m.name] > 1 else ""
    return methods, lam0_weights(prior), prior_source


def run_records(share: torch.Tensor, skipped: SkipCounter, base: dict, log) -> list[dict]:
    """Run-level records (method ""): the largest bin's share of the rebalancing weight, skips."""
    share = share / share.sum()
    if share.max() > 0.5:
        log(f"warning: one colour bin carries {100 * share.max():.0f}% of the rebalanced AuC's weight; the training "
            "prior barely has the evaluated colours (consider --prior)")
    summary = {"suite": "colorization", "method": "", "encoder": "", "protocol": "table1", "layer": "", **base}
    return [dict(summary, metric="rebalance_top_bin_share", value=float(share.max()))] + \
        [dict(summary, metric=k, value=v) for k, v in skipped.as_dict().items()]


def _run(args: argparse.Namespace) -> int:
    from pretext.distributed import pick_device

    device, out = pick_device(args.device), Path(args.out)
    if (out / "metrics.json").exists() and not args.overwrite:
        raise ValueError(f"{out} already holds results (metrics.json); pass --overwrite or choose another --out")
    transform = val_transform(args.crop, args.resize) if args.crop else None
    source = build_source(args.kind, args.data, args.split or None, transform=transform, limit=args.limit,
                          list_file=args.list_file)
    run_dir = RunDir(out)
    run_dir.write_config(vars(args), sys.argv)

    def log(msg: str) -> None:
        tqdm.write(msg)
        run_dir.log("message", text=msg)
    methods, weights, prior_source = load_methods(args, source, device, log)
    classifier = None if args.no_classifier else resolve_classifier(
        source, args.kind, args.data, args.train_split, args.cache_dir, device, log, weights=args.classifier_weights,
        arch=args.classifier_arch, num_classes=args.classifier_classes, input_size=args.classifier_size,
        epochs=args.classifier_epochs, seed=args.seed, workers=args.workers)
    costs = {m.name: m.colorizer.costs(m.decode, args.timing_runs) for m in methods if m.colorizer is not None}
    per_image, skipped = [], SkipCounter()
    loader = make_loader(source, args.batch_size, num_workers=args.workers)
    scores, gt_counts = evaluate(methods, loader, weights, device, classifier, per_image, skipped)
    if scores[methods[0].name].images == 0:
        raise ValueError(f"no colourful, readable images to score in {source} ({skipped})")
    base = {"dataset": args.dataset_name or Path(args.data).name, "split": args.split or ""}
    records, curves = build_records(methods, scores, costs, base)
    records += run_records(gt_counts * weights.cpu(), skipped, base, log)
    run_dir.write_records(records, extra={"prior": prior_source, "classifier": classifier.source if classifier else None,
                                          "git_revision": git_revision()})
    with open(out / "per_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "path", "label", "auc", "rebalanced_auc", "psnr", "predicted"])
        writer.writeheader()
        writer.writerows(per_image)
    (out / "curves.json").write_text(json.dumps(curves))
    plot_curves(curves, out / "curves.png")
    print_table(records)
    log(f"{scores[methods[0].name].images} images scored, {skipped}; results in {out}")
    return 0
