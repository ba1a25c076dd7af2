"""Colorization metrics (Zhang et al. 2016, Table 1), streamed over batches.

AuC: the fraction of pixels whose predicted ab lies within L2 distance t of the ground
truth, swept over t = 0, 1, ..., 150; the area under that cumulative curve divided by
the area of a perfect curve (150), in percent. The ground truth scores 100.
Rebalanced AuC: each pixel weighted by the rebalancing weight with lam = 0
(w ∝ 1 / p~ at the bin of its ground-truth colour), so rare colours count as much as
common ones.
"""
from __future__ import annotations

import torch

MAX_THRESHOLD = 150


class AucAccumulator:
    """Weighted histogram of per-pixel ab errors in unit bins; ``curve()`` is cumulative."""

    def __init__(self, max_threshold: int = MAX_THRESHOLD):
        self.max_threshold = max_threshold
        # bin t holds the mass of errors in (t-1, t]; bin 0 holds exact hits;
        # the last bin holds everything beyond max_threshold
        self.mass = torch.zeros(max_threshold + 2, dtype=torch.float64)

    def update(self, pred_ab: torch.Tensor, true_ab: torch.Tensor, pixel_weights: torch.Tensor | None = None) -> None:
        """pred_ab, true_ab: [N,2,H,W]; pixel_weights: [N,H,W] (default 1)."""
        if pred_ab.shape != true_ab.shape or pred_ab.dim() != 4 or pred_ab.shape[1] != 2:
            raise ValueError(f"AuC: expected matching [N,2,H,W], got {list(pred_ab.shape)} and {list(true_ab.shape)}")
        err = (pred_ab.double() - true_ab.double()).pow(2).sum(1).sqrt()  # [N,H,W]
        if not torch.isfinite(err).all():
            raise ValueError("AuC: predictions or ground truth contain NaN or inf")
        bins = err.ceil().clamp(max=self.max_threshold + 1).long().flatten()
        w = torch.ones_like(err) if pixel_weights is None else pixel_weights.double().expand_as(err)
        self.mass += torch.bincount(bins.cpu(), weights=w.flatten().cpu(), minlength=self.mass.numel())

    def merge(self, other: "AucAccumulator") -> None:
        self.mass += other.mass

    def curve(self) -> torch.Tensor:
        """[max_threshold + 1]: fraction of (weighted) pixels with error <= t, t = 0..max."""
        total = self.mass.sum()
        if total <= 0:
            raise ValueError("AuC: no pixels were accumulated")
        return self.mass.cumsum(0)[: self.max_threshold + 1] / total

    def auc(self) -> float:
        """Area under ``curve()`` over [0, max_threshold] (trapezoids), in percent."""
        c = self.curve()
        return float(torch.trapezoid(c, dx=1.0) / self.max_threshold * 100.0)


def auc_score(pred_ab: torch.Tensor, true_ab: torch.Tensor, pixel_weights: torch.Tensor | None = None) -> float:
    """AuC (percent) of one batch, all pixels pooled."""
    acc = AucAccumulator()
    acc.update(pred_ab, true_ab, pixel_weights)
    return acc.auc()


def psnr(pred_rgb: torch.Tensor, true_rgb: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of RGB in [0,1], [N,3,H,W] -> [N] (inf for identical images)."""
    mse = (pred_rgb.double() - true_rgb.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)
