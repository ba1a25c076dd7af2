"""Larsson, Maire, Shakhnarovich (ECCV 2016), "Learning Representations for Automatic
Colorization": per-pixel colour histograms from hypercolumns (``pretext.methods.hypercolumn``).

Our reading of the paper (Sec. 3), and where colorbench departs from it:

* Hypercolumn: the input and every layer of the trunk (VGG-16 "data to fc7"), bilinearly
  interpolated at the pixel; one hidden layer of 1024 units (scaled with the trunk's
  width), then the predictors. Training reads 128 random pixels per image (sparse), test
  is dense. The paper's grayscale input is (R+G+B)/3; colorbench feeds every method the
  same Lab L.
* ``space: hc`` (the paper's best): marginal histograms of hue and chroma, 32 uniform bins
  each, one-hot targets (the paper finds no gain from smoothed histograms, R = 1), loss
  ``KL(y_C || f_C) + lambda_H * y_C * KL(y_H || f_H)``: the hue term is weighted by the
  target's chroma y_C in [0, 1] because hue is unstable near gray; lambda_H = 5 (roughly
  1 / E[y_C]). The paper's hue/chroma come from an HSL-like bicone; here they are Lab's
  LCh: chroma = |ab| / ``chroma_max`` (128 = 32 bins of 4 ab units; the few sRGB colours
  beyond it, saturated blues, fall in the last bin), hue = atan2(b, a) / 2 pi in [0, 1).
  With one-hot targets KL = cross-entropy.
* ``space: lab``: the paper's Lab histograms, on the 313 in-gamut ab bins of
  ``pretext.color.bins`` instead of its 16 x 16 Gaussian-quantile grid, with a ``hard``
  (nearest bin, the paper's R = 1) or ``soft`` (Zhang's K-nearest Gaussian, ``k``,
  ``sigma``) target; the loss is the cross-entropy (= KL + the target's entropy, which has
  no gradient); no class rebalancing.
* Decoders: ``mean`` (the paper's "expectation": chroma = E[C]; hue = arg z with
  z = sum_k p_k exp(i theta_k), the circular mean, so mass at 355 and 5 degrees gives 0,
  not 180; "chromatic fading" scales the chroma by min(|z| / eta, 1), eta = 0.03, since a
  spread hue histogram leaves the hue undefined); ``median`` (the paper's best for hc:
  the median chroma, linear interpolation of the cumulative histogram, hue as for mean;
  for lab the medians of the a and b marginals); ``mode`` (the most likely bins);
  ``annealed`` (colorbench's addition, for comparison with Zhang et al.: every histogram
  sharpened as softmax(logits / 0.38), then ``mean``). The paper's z carries a 1/K factor
  that would make |z| <= 1/32 ~ eta; we read z as the expectation of exp(i theta).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretext.color.bins import NUM_BINS, ab_centers, decode, soft_encode
from pretext.color.losses import class_loss
from pretext.methods.base import register_method
from pretext.methods.hypercolumn import HypercolumnMethod, masked_mean

SPACES = ("hc", "lab")
LAB_TARGETS = ("hard", "soft")
DECODERS = ("mean", "median", "mode", "annealed")


# -- LCh colour maths ------------------------------------------------------------------------
def hue_chroma(ab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ab [N,2,...] -> (hue in [0,1) [N,...], chroma = |ab| [N,...])."""
    a, b = ab[:, 0], ab[:, 1]
    return torch.atan2(b, a).div(2 * math.pi).remainder(1.0), torch.hypot(a, b)


def hc_bins(ab: torch.Tensor, bins: int, chroma_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ab [N,2,...] -> (hue bin, chroma bin), long [N,...] in [0, bins)."""
    hue, chroma = hue_chroma(ab)
    return ((hue * bins).long().clamp(0, bins - 1),
            (chroma / chroma_max * bins).long().clamp(0, bins - 1))


def histogram_median(probs: torch.Tensor, lo: float, width: float) -> torch.Tensor:
    """Median of histograms [N,K,...] over K uniform bins starting at ``lo``: the point where
    the cumulative sum, linear inside each bin, reaches 1/2 -> [N,...]."""
    cdf = probs.cumsum(1)
    k = (cdf < 0.5).sum(1, keepdim=True).clamp(max=probs.shape[1] - 1)  # the bin where it crosses
    p, before = probs.gather(1, k), cdf.gather(1, k) - probs.gather(1, k)
    frac = ((0.5 - before) / p.clamp_min(1e-12)).clamp(0.0, 1.0)
    return (lo + width * (k + frac)).squeeze(1)


def circular_mean(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hue histograms [N,K,...] (bin k centred at (k + 1/2) / K of the circle) -> (hue in
    radians [N,...], |z| in [0, 1]) with z = sum_k p_k exp(i theta_k)."""
    k = probs.shape[1]
    theta = (torch.arange(k, device=probs.device, dtype=probs.dtype) + 0.5) * (2 * math.pi / k)
    shape = (1, k) + (1,) * (probs.dim() - 2)
    re = (probs * theta.cos().view(shape)).sum(1)
    im = (probs * theta.sin().view(shape)).sum(1)
    return torch.atan2(im, re), torch.hypot(re, im)


def decode_hc(chroma_logits: torch.Tensor, hue_logits: torch.Tensor, decoder: str, chroma_max: float,
              eta: float = 0.03, temperature: float = 0.38) -> torch.Tensor:
    """Chroma and hue logits [N,K,h,w] each -> ab [N,2,h,w] (see the module docstring)."""
    k = chroma_logits.shape[1]
    width = chroma_max / k
    if decoder == "mode":
        chroma = (chroma_logits.argmax(1).to(chroma_logits.dtype) + 0.5) * width
        hue = (hue_logits.argmax(1).to(hue_logits.dtype) + 0.5) * (2 * math.pi / hue_logits.shape[1])
        return torch.stack([chroma * hue.cos(), chroma * hue.sin()], 1)
    t = temperature if decoder == "annealed" else 1.0
    pc, ph = torch.softmax(chroma_logits / t, 1), torch.softmax(hue_logits / t, 1)
    if decoder == "median":
        chroma = histogram_median(pc, 0.0, width)
    else:
        centres = (torch.arange(k, device=pc.device, dtype=pc.dtype) + 0.5) * width
        chroma = torch.einsum("nk...,k->n...", pc, centres)
    hue, r = circular_mean(ph)
    chroma = chroma * (r / eta).clamp(max=1.0)  # chromatic fading
    return torch.stack([chroma * hue.cos(), chroma * hue.sin()], 1)


def decode_lab(logits: torch.Tensor, decoder: str, temperature: float = 0.38) -> torch.Tensor:
    """313-bin logits [N,313,h,w] -> ab [N,2,h,w]; ``median``: medians of the a and b marginals."""
    if decoder != "median":
        return decode(logits, decoder, T=temperature)
    probs = torch.softmax(logits, 1)
    centres = ab_centers(logits.device)  # [313,2] on the 10-unit grid
    out = []
    for axis in (0, 1):
        lo = float(centres[:, axis].min())
        column = ((centres[:, axis] - lo) / 10).round().long()  # [313] marginal bin of each centre
        marginal = probs.new_zeros(probs.shape[0], int(column.max()) + 1, *probs.shape[2:])
        marginal.index_add_(1, column, probs)
        out.append(histogram_median(marginal, lo - 5.0, 10.0))
    return torch.stack(out, 1)


@register_method("larsson")
class Larsson(HypercolumnMethod):
    summary = ("Larsson et al. 2016 · KL of 32-bin hue/chroma histograms, hue term x target chroma (or 313 Lab "
               "bins), 128 sparse hypercolumns/image · per-pixel histograms -> ab (mean/median/mode/annealed)")
    decoders = DECODERS

    def __init__(self, trunk: nn.Module, space: str = "hc", bins: int = 32, hue_weight: float = 5.0,
                 chroma_max: float = 128.0, eta: float = 0.03, temperature: float = 0.38,
                 lab_target: str = "hard", k: int = 5, sigma: float = 5.0, taps: Sequence[str] | None = None,
                 hidden: int | None = None, layers: int = 1, samples: int = 128, output_stride: int = 4):
        if space not in SPACES:
            raise ValueError(f"larsson: space must be one of {SPACES}, got {space!r}")
        if lab_target not in LAB_TARGETS:
            raise ValueError(f"larsson: lab_target must be one of {LAB_TARGETS}, got {lab_target!r}")
        if int(bins) < 2 or not chroma_max > 0 or not eta > 0 or not temperature > 0:
            raise ValueError("larsson: bins must be >= 2 and chroma_max, eta, temperature > 0")
        super().__init__(trunk, 2 * int(bins) if space == "hc" else NUM_BINS, taps, hidden, layers, samples,
                         output_stride)
        self.space, self.bins, self.hue_weight, self.chroma_max = space, int(bins), float(hue_weight), float(chroma_max)
        self.eta, self.temperature = float(eta), float(temperature)
        self.lab_k = 1 if lab_target == "hard" else int(k)  # hard: the nearest bin only
        self.sigma = float(sigma)

    @property
    def record_name(self) -> str:
        return f"larsson-{self.space}"

    def loss(self, out: torch.Tensor, target_ab: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """hc: CE(chroma) + hue_weight * y_C * CE(hue) per pixel; lab: CE against the (soft)
        313-bin target; mean over the pixels of colourful images. out [N,K,h,w], ab [N,2,h,w]."""
        if self.space == "lab" and self.lab_k == 1:  # hard: the nearest of the 313 centres, by brute force
            nearest = torch.cdist(target_ab.movedim(1, -1).float(), ab_centers(out.device)).argmin(-1)  # [N,h,w]
            return masked_mean(F.cross_entropy(out, nearest, reduction="none"), mask)
        if self.space == "lab":
            return class_loss(out, soft_encode(target_ab.contiguous(), k=self.lab_k, sigma=self.sigma), mask)
        hue_bin, chroma_bin = hc_bins(target_ab, self.bins, self.chroma_max)  # [N,h,w] each
        y_c = (hue_chroma(target_ab)[1] / self.chroma_max).clamp(max=1.0)
        ce_c = F.cross_entropy(out[:, : self.bins], chroma_bin, reduction="none")  # [N,h,w]
        ce_h = F.cross_entropy(out[:, self.bins:], hue_bin, reduction="none")
        return masked_mean(ce_c + self.hue_weight * y_c * ce_h, mask)

    def to_ab(self, out: torch.Tensor, decoder: str) -> torch.Tensor:
        if decoder not in DECODERS:
            raise ValueError(f"larsson: decoder must be one of {DECODERS}, got {decoder!r}")
        if self.space == "lab":
            return decode_lab(out, decoder, self.temperature)
        return decode_hc(out[:, : self.bins], out[:, self.bins:], decoder, self.chroma_max, self.eta, self.temperature)
