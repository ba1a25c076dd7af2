"""Table 1's scoring pass: every row (a baseline, or a checkpoint with one decoder, or a
stochastic checkpoint's samples) scored on the same images in one pass (DESIGN §3,
"Colorization metrics").

* ``auc``: area under the cumulative curve of per-pixel ab errors, t = 0..150, in %;
* ``rebalanced_auc``: the same with pixels weighted by the rebalancing weight with
  lam = 0 (w ∝ 1 / p~, p~ the Gaussian-smoothed prior) at their true colour's bin;
* ``psnr``: mean over images of the per-image PSNR of the RGB result (not for the truth);
* ``classifier_top1``: top-1 of a fixed classifier on the recolorized images.

Gray images (no |a| or |b| > 5) are left out: they have no colour to score.

A stochastic checkpoint (``Method.stochastic``) is one row scored on each of its
``samples`` colorizations: every sample j is a complete set of predictions with its own
``Scores`` (``Scores.draws[j]``), so the row reports the mean over samples and their spread
(``records.build_records``). Sample j of a batch is drawn with the seed
``sample_seed * 1_000_003 + the batch's first image index`` (``batch_seed``): reruns with the
same config (batch size included) give the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pretext.color.bins import ab_centers, soft_encode
from pretext.color.lab import lab_to_rgb
from pretext.color.losses import colorful_mask
from pretext.color.metrics import AucAccumulator, auc_score, psnr
from pretext.color.rebalance import smooth_prior
from pretext.color.targets import to_lab
from pretext.colorize import Colorizer, method_label
from pretext.data.loader import SkipCounter


@dataclass
class Row:
    """One row of Table 1: ``predict(lab [N,3,H,W], index long [N]) -> ab [N,2,H,W]``, or
    ab [N,samples,2,H,W] when ``samples`` > 0 (a stochastic checkpoint's colorizations)."""

    name: str
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    encoder: str = ""
    colorizer: Colorizer | None = None
    decoder: str = ""
    samples: int = 0


@dataclass
class Scores:
    """Streaming results of one row."""

    plain: AucAccumulator = field(default_factory=AucAccumulator)
    rebalanced: AucAccumulator = field(default_factory=AucAccumulator)
    psnr: list = field(default_factory=list)
    correct: list = field(default_factory=list)
    images: int = 0
    draws: list = field(default_factory=list)  # a stochastic row: one Scores per sample (the fields above: unused)

    def draw(self, j: int) -> "Scores":
        while len(self.draws) <= j:
            self.draws.append(Scores())
        return self.draws[j]

    def add(self, ab, true_ab, pixel_w, image_psnr: list, pred: torch.Tensor | None, labels: torch.Tensor) -> None:
        """ab, true_ab [n,2,H,W]; pixel_w [n,H,W]; image_psnr [n] (None: not scored); pred, labels [n]."""
        self.images += len(image_psnr)
        self.plain.update(ab, true_ab)
        self.rebalanced.update(ab, true_ab, pixel_w)
        self.psnr += [p for p in image_psnr if p is not None]
        if pred is not None:
            self.correct += (pred == labels).tolist()


# ----------------------------------------------------------------------------- rows

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


def baseline_rows(names: list[str], prior: torch.Tensor, random_colours: RandomColours | None) -> list[Row]:
    """ground_truth (the true ab), gray (ab = 0), random, prior_mean (sum_q p_q c_q everywhere)."""
    mean_ab = (prior.double()[:, None] * ab_centers().double()).sum(0).float()  # [2]
    table = {
        "ground_truth": lambda lab, idx: lab[:, 1:],
        "gray": lambda lab, idx: torch.zeros_like(lab[:, 1:]),
        "prior_mean": lambda lab, idx: mean_ab.to(lab.device)[None, :, None, None].expand_as(lab[:, 1:]),
        "random": random_colours,
    }
    return [Row(name, table[name]) for name in names]


def batch_seed(sample_seed: int, index: torch.Tensor) -> int:
    """The seed of a batch's samples: fixed by the config's seed and the batch's first image."""
    return sample_seed * 1_000_003 + int(index[0])


def model_rows(colorizers: list[Colorizer], decoders: list[str], samples: int = 1, sample_seed: int = 0,
               say=print) -> list[Row]:
    """One row per (checkpoint, listed decoder it has); a method with one output gets one
    row; a stochastic method one row of its ``samples`` colorizations (plus rows for the
    listed decoders it may also have). Listed decoders a method lacks are skipped and said
    once per checkpoint; a method that has none of them is scored with its default decoder."""
    rows = []
    for c in colorizers:
        mine = [d for d in decoders if d in c.decoders]
        lacking = [d for d in decoders if d not in c.decoders]
        if c.decoders and lacking:
            say(f"{c.path}: {method_label(c.method)} has no decoder {', '.join(lacking)} (its decoders: "
                f"{', '.join(c.decoders)}); " + ("skipped" if mine else f"scored with its default, {c.decoder}"))
        if c.stochastic:
            rows.append(Row(c.record_name("sampled") if c.decoders else c.record_name(),
                            lambda lab, idx, c=c: c.sample_ab(lab[:, :1], samples, batch_seed(sample_seed, idx)),
                            encoder=c.encoder, colorizer=c, decoder="sampled", samples=samples))  # [n,S,2,H,W]
            if not mine:
                continue
        for d in (mine or [c.decoder]) if c.decoders else [""]:
            rows.append(Row(c.record_name(d or None),
                            lambda lab, idx, c=c, d=d: c.predict_ab(lab[:, :1], d or None),  # [n,2,H,W]
                            encoder=c.encoder, colorizer=c, decoder=d or "regression"))
    return rows


def name_uniquely(rows: list[Row]) -> None:
    """Two checkpoints of the same method: the second row is ``...#2`` (records keep the path)."""
    seen: dict[str, int] = {}
    for r in rows:
        seen[r.name] = seen.get(r.name, 0) + 1
        r.name += f"#{seen[r.name]}" if seen[r.name] > 1 else ""


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


def evaluate(rows: list[Row], loader, weights: torch.Tensor, device: torch.device, classifier=None,
             per_image: list | None = None, skipped: SkipCounter | None = None) -> tuple[dict[str, Scores], torch.Tensor]:
    """One pass over ``loader``; ``weights`` [313] are the lam = 0 rebalancing weights.
    Returns the scores per row and the ground truth's pixel count per bin [313]."""
    scores = {r.name: Scores() for r in rows}
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
            bins = score_group(rows, scores, lab, labels, index, paths, weights, classifier, per_image)
            gt_counts += torch.bincount(bins.flatten().cpu(), minlength=gt_counts.numel()).double()
    return scores, gt_counts


def score_group(rows, scores, lab, labels, index, paths, weights, classifier, per_image) -> torch.Tensor:
    """Score every row on one group of same-size images; returns the true bins [n,H,W]."""
    true_ab = lab[:, 1:].contiguous()  # [n,2,H,W]
    bins = soft_encode(true_ab, k=1).indices[:, 0]  # [n,H,W] nearest bin of the true colour
    pixel_w = weights[bins]  # [n,H,W]
    if not torch.isfinite(pixel_w).all():
        ab = true_ab.permute(0, 2, 3, 1)[~torch.isfinite(pixel_w)][0].tolist()
        raise ValueError(f"rebalanced AuC (lam = 0) is undefined: the true colour ab = ({ab[0]:.0f}, {ab[1]:.0f}) of "
                         f"{paths[0]} has zero mass in the smoothed prior; set prior.path to a prior of broader data "
                         "(e.g. 'colorbench prior' over the evaluated images)")
    true_rgb = lab_to_rgb(lab)
    for r in rows:
        out = r.predict(lab, index).to(lab.device)  # [n,2,H,W], or [n,S,2,H,W] for a stochastic row
        if r.samples:
            if out.dim() != 5 or out.shape[1] != r.samples:
                raise ValueError(f"{r.name}: expected {r.samples} samples [n,S,2,H,W], got {list(out.shape)}")
            scores[r.name].images += len(paths)
        for j, ab in enumerate(out.unbind(1) if r.samples else [out]):  # ab [n,2,H,W]
            truth = r.name == "ground_truth"
            rgb = true_rgb if truth else lab_to_rgb(torch.cat([lab[:, :1], ab], 1))
            image_psnr = [None] * len(paths) if truth else psnr(rgb, true_rgb).tolist()  # [n] (inf for the truth)
            pred = classifier.predict(rgb).cpu() if classifier is not None else None  # [n]
            (scores[r.name].draw(j) if r.samples else scores[r.name]).add(ab, true_ab, pixel_w, image_psnr, pred, labels)
            if per_image is not None:
                per_image += image_rows(r.name, ab, true_ab, pixel_w, paths, labels, image_psnr, pred,
                                        j if r.samples else "")
    return bins


def image_rows(name, ab, true_ab, pixel_w, paths, labels, image_psnr, pred, sample="") -> list[dict]:
    """Per-image AuC, rebalanced AuC, PSNR and classifier prediction of one row (``sample``:
    which colorization of a stochastic row, "" otherwise)."""
    return [{"method": name, "sample": sample, "path": path, "label": int(labels[i]),
             "auc": auc_score(ab[i:i + 1], true_ab[i:i + 1]),
             "rebalanced_auc": auc_score(ab[i:i + 1], true_ab[i:i + 1], pixel_w[i:i + 1]), "psnr": image_psnr[i],
             "predicted": None if pred is None else int(pred[i])} for i, path in enumerate(paths)]
