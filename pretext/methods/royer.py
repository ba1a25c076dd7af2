"""Royer, Kolesnikov, Lampert ("Probabilistic Image Colorization", BMVC 2017): a
feed-forward embedding network on the gray image conditions an autoregressive model of
the chroma at reduced resolution; sampling it gives diverse colorizations
(``stochastic``: ``sample_ab``).

Networks (channel counts scale with the trunk's ``width``):

* embedding (``head_embed``): the gray image through the registry trunk; the input L and
  every tap of ``taps`` (default: all of ``feature_info``) bilinearly resized to the chroma
  grid (``hypercolumn.dense_features``), then 1x1 conv -> ReLU -> 3x3 conv -> ReLU -> 3x3
  conv dilated 2 -> ReLU (a wider view at the grid's resolution): the embedding
  [N, embed_channels, gh, gw]. The grid is the input at ``grid_stride`` (4: gh =
  ceil(H / 4)), a quarter of the resolution, where the chroma is modelled;
* the autoregressive model (``head_pixelcnn``): ``pixelcnn.ConditionalPixelCNN`` (gated,
  two stacks; the paper used PixelCNN++) over two channels, Lab a then b at each pixel,
  conditioned on the embedding at every gated layer.

Chroma quantisation (the documented choice, where the paper's PixelCNN++ uses a
discretised logistic mixture): ``bins`` (32) uniform cells per channel of width
220 / bins (6.875) on each of a and b, centred so that 0 (grey, the most frequent chroma)
is a bin centre: bin k decodes to (k - bins // 2) * 6.875, i.e. -110 .. 103.1, which holds
the sRGB gamut (a in [-86.2, 98.2], b in [-107.9, 94.5]); values round to the nearest
centre and clamp to the end bins (``quantize_ab`` / ``ab_bin_centers``).

Training (``forward``, teacher forcing): the PixelCNN's mean per-pixel cross-entropy of
the true (a, b) bins given the embedding (both channels' terms averaged). The target ab
on the grid (``pretext.color.targets.resample_ab``): ``target_sampling`` ``point`` (the
default, as every method's targets) or ``area`` (each cell's mean: less texture noise to
model, lower chroma only where a cell mixes colours). Images without colour
(``colorful_mask``) are left out. The paper's model is a plain likelihood, the defaults
(``aux_weight`` 0, ``rebalance`` ``none``). Two departures for short schedules:

* ``aux_weight`` > 0: + aux_weight x the CE of a 1x1 conv (``head_aux``) predicting each
  grid pixel's (a, b) bins from the embedding alone. Under teacher forcing the PixelCNN
  explains most pixels from their already-known neighbours, so the embedding (and the
  trunk, the representation this suite measures) gets little gradient; the auxiliary
  term gives it a direct one. Sampling never uses ``head_aux``;
* ``rebalance`` ``aux`` (the auxiliary term only) or ``all`` (both terms): each pixel's
  gradient is scaled by Zhang et al.'s class-rebalancing weight (lam 0.5, sigma 5) of
  its target's nearest of the 313 ab bins (the forward value unchanged, as Zhang's
  ``full`` loss), the prior counted on the training targets at the grid in ``setup`` and
  checkpointed as the buffer ``prior`` (eval-color then rebalances with it, as with
  Zhang's). ``aux`` teaches the embedding the rare, saturated colours sooner while the
  PixelCNN stays a likelihood; ``all`` also skews the samples toward saturated colours.

Sampling (``sample_ab``): the embedding and the per-layer PixelCNN terms are computed once
per image and repeated for the ``samples`` draws (one batch through the exact incremental
sampler); a private ``torch.Generator`` seeded with ``seed`` draws the uniforms sample by
sample ([N,2,gh,gw] each, sample 0 first), so sample j of a seed does not depend on how
many samples are asked for and the global RNG is untouched; the bins' centres are
bilinearly upsampled to the input's size (the method's output size, like PixColor's).
Out-of-gamut (L, ab) pairs are left to ``lab_to_rgb``'s clipping, as for the other methods.
``predict_ab(l, seed=s)`` is sample 0 of ``sample_ab(l, 1, s)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretext.color.bins import NUM_BINS, soft_encode
from pretext.color.losses import colorful_mask, scale_gradient
from pretext.color.rebalance import rebalance_weights
from pretext.color.targets import SAMPLINGS, resample_ab, to_lab
from pretext.encoders import normalize_l
from pretext.encoders.registry import scaled
from pretext.methods.base import Method, StepContext, ValidationOutput, register_method
from pretext.methods.hypercolumn import dense_features, masked_mean
from pretext.methods.pixelcnn import ConditionalPixelCNN

REBALANCE = ("none", "all", "aux")  # which cross-entropy terms are class-rebalanced
AB_EXTENT = 220.0  # the bins span 220 ab units per channel (-110 .. 110 minus one cell)
VAL_SEED = 0


def bin_width(bins: int) -> float:
    return AB_EXTENT / bins


def quantize_ab(ab: torch.Tensor, bins: int) -> torch.Tensor:
    """ab (any shape) -> bin indices long, same shape, in [0, bins): the nearest centre
    (k - bins // 2) * 220 / bins, clamped to the end bins."""
    return (torch.round(ab / bin_width(bins)) + bins // 2).clamp(0, bins - 1).long()


def ab_bin_centers(index: torch.Tensor, bins: int) -> torch.Tensor:
    """Bin indices (any shape) -> the centres' ab value, float32."""
    return (index.float() - bins // 2) * bin_width(bins)


@register_method("royer")
class Royer(Method):
    summary = ("Royer et al. 2017 · embedding net on the gray image + conditional gated PixelCNN over 32+32 "
               "(a, b) bins at 1/4 resolution · per-pixel CE · sampled colorizations (sample_ab)")
    stochastic = True
    decoders = ()

    def __init__(self, trunk: nn.Module, grid_stride: int = 4, bins: int = 32, taps: list[str] | None = None,
                 embed_channels: int | None = None, hidden: int | None = None, layers: int = 4, kernel: int = 5,
                 temperature: float = 1.0, target_sampling: str = "point", rebalance: str = "none",
                 lam: float = 0.5, prior_sigma: float = 5.0, aux_weight: float = 0.0):
        super().__init__(trunk)
        if target_sampling not in SAMPLINGS:
            raise ValueError(f"royer: target_sampling must be one of {SAMPLINGS}, got {target_sampling!r}")
        self.target_sampling = target_sampling
        self.taps = list(trunk.taps if taps is None else taps)
        unknown = [t for t in self.taps if t not in trunk.feature_info]
        if unknown or not self.taps:
            raise ValueError(f"royer: unknown or no taps {unknown}; valid taps: {trunk.taps}")
        if int(grid_stride) < 1 or int(bins) < 2 or not temperature > 0:
            raise ValueError(f"royer: grid_stride ({grid_stride}) must be >= 1, bins ({bins}) >= 2, temperature "
                             f"({temperature}) > 0")
        self.grid_stride, self.bins, self.temperature = int(grid_stride), int(bins), float(temperature)
        ec = scaled(256, trunk.width, 2) if embed_channels is None else int(embed_channels)
        cin = 1 + sum(trunk.feature_info[t]["channels"] for t in self.taps)  # + the input L
        self.head_embed = nn.Sequential(nn.Conv2d(cin, ec, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(ec, ec, 3, padding=1), nn.ReLU(inplace=True),
                                        nn.Conv2d(ec, ec, 3, padding=2, dilation=2), nn.ReLU(inplace=True))
        self.head_pixelcnn = ConditionalPixelCNN(2, self.bins, ec, scaled(128, trunk.width, 2) if hidden is None
                                                 else int(hidden), int(layers), int(kernel))
        if rebalance not in REBALANCE or aux_weight < 0 or (rebalance == "aux" and not aux_weight):
            raise ValueError(f"royer: rebalance must be one of {REBALANCE} ('aux' with aux_weight > 0) and aux_weight "
                             f">= 0, got {rebalance!r}, {aux_weight}")
        self.rebalance, self.lam, self.prior_sigma = rebalance, float(lam), float(prior_sigma)
        self.aux_weight = float(aux_weight)
        if self.aux_weight:  # the embedding's own per-pixel (a, b) bins (a training signal only)
            self.head_aux = nn.Conv2d(ec, 2 * self.bins, 1)
        if self.rebalance != "none":  # the training prior over the 313 bins and its weights; uniform until setup()
            self.register_buffer("prior", torch.full((NUM_BINS,), 1.0 / NUM_BINS))
            self.register_buffer("class_weights", torch.ones(NUM_BINS))

    def setup(self, ctx: StepContext) -> None:
        """``rebalance``: count the prior of the training targets on the grid of a crop (as Zhang)."""
        if self.rebalance == "none":
            return
        from pretext.color.prior import shared_prior
        crop = ctx.config.data.crop
        prior, where = shared_prior(ctx.config, ctx.device, self.grid_size(crop, crop), self.target_sampling, ctx.say)
        self.prior.copy_(prior.to(self.prior))
        self.class_weights.copy_(rebalance_weights(self.prior, lam=self.lam, sigma=self.prior_sigma))
        ctx.stats["prior"] = where

    def grid_size(self, h: int, w: int) -> tuple[int, int]:
        """The chroma grid of an h x w input: ceil(h / grid_stride), ceil(w / grid_stride)."""
        return math.ceil(h / self.grid_stride), math.ceil(w / self.grid_stride)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w  # the sampled grid is upsampled to the input's size

    def embed(self, lightness: torch.Tensor) -> torch.Tensor:
        """Normalised L [N,1,H,W] -> the embedding [N,embed_channels,gh,gw]."""
        feats = self.trunk.forward_features(lightness, self.taps)
        grid = self.grid_size(*lightness.shape[-2:])
        return self.head_embed(dense_features([lightness] + [feats[t] for t in self.taps], grid))

    def target_ab(self, ab: torch.Tensor) -> torch.Tensor:
        """Full-resolution ab [N,2,H,W] -> ab on the grid [N,2,gh,gw] (``target_sampling``)."""
        return resample_ab(ab, self.grid_size(*ab.shape[-2:]), self.target_sampling)

    def target_bins(self, ab: torch.Tensor) -> torch.Tensor:
        """Full-resolution ab [N,2,H,W] -> (a, b) bins on the grid, long [N,2,gh,gw]."""
        return quantize_ab(self.target_ab(ab), self.bins)

    def loss(self, cond: torch.Tensor, target_ab: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean per-pixel CE of the bins of ``target_ab`` [N,2,gh,gw] given cond [N,Cc,gh,gw], over
        the images of ``mask`` [N], + ``aux_weight`` x the embedding's own CE; ``rebalance``:
        each pixel's gradient x its weight."""
        bins = quantize_ab(target_ab, self.bins)  # [N,2,gh,gw]
        weights = None
        if self.rebalance != "none":
            nearest = soft_encode(target_ab.float().contiguous(), k=1).indices[:, 0]  # [N,gh,gw] of the 313 bins
            weights = self.class_weights[nearest][:, None]  # [N,1,gh,gw]
        total = self._ce(self.head_pixelcnn(bins, cond), bins, weights if self.rebalance == "all" else None, mask)
        if self.aux_weight:
            n, _, gh, gw = cond.shape
            aux = self.head_aux(cond).view(n, 2, self.bins, gh, gw)  # each pixel's bins from cond alone
            total = total + self.aux_weight * self._ce(aux, bins, weights, mask)
        return total

    @staticmethod
    def _ce(logits: torch.Tensor, bins: torch.Tensor, weights: torch.Tensor | None, mask: torch.Tensor):
        """logits [N,2,K,gh,gw], bins long [N,2,gh,gw] -> mean CE over the masked images (gradient x weights)."""
        ce = F.cross_entropy(logits.transpose(1, 2), bins, reduction="none")  # [N,2,gh,gw]
        return masked_mean(ce if weights is None else scale_gradient(ce, weights), mask)

    # -- training ------------------------------------------------------------------------
    def _loss(self, images: torch.Tensor, ctx: StepContext):
        """uint8 RGB [n,3,H,W] -> (CE of the true bins, Lab [n,3,H,W], colourful mask [n])."""
        lab = to_lab(images, ctx.device)
        mask = colorful_mask(lab[:, 1:])
        x = normalize_l(lab[:, :1])
        x = x.contiguous(memory_format=torch.channels_last) if ctx.channels_last else x
        with ctx.autocast():
            cond = self.embed(x)
        return self.loss(cond.float(), self.target_ab(lab[:, 1:]), mask), lab, mask

    def forward(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """uint8 RGB [n,3,H,W] -> (mean per-pixel CE over the colourful images, {"colourful"})."""
        images = batch["image"]
        if images.shape[0] == 0:  # every file of this micro-batch was unreadable: one gray image, masked out
            images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
        loss, _, mask = self._loss(images, ctx)
        return loss, {"colourful": int(mask.sum())}

    # -- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample_ab(self, lightness: torch.Tensor, samples: int, seed: int = 0, **options) -> torch.Tensor:
        """Normalised L [N,1,H,W] -> ab [N,samples,2,H,W]: ``samples`` draws per image (module doc)."""
        self.check_sample_request(samples, options)
        n, _, h, w = lightness.shape
        gh, gw = self.grid_size(h, w)
        terms = self.head_pixelcnn.condition(self.embed(lightness).float())  # once per image
        terms = [(v.repeat_interleave(samples, 0), hz.repeat_interleave(samples, 0)) for v, hz in terms]
        generator = torch.Generator().manual_seed(int(seed))
        draws = torch.stack([torch.rand((n, 2, gh, gw), generator=generator) for _ in range(samples)], 1)
        bins = self.head_pixelcnn.sample_with(terms, draws.flatten(0, 1).to(lightness.device), self.temperature)
        ab = ab_bin_centers(bins, self.bins)  # [N*S,2,gh,gw], rows (image, sample)
        ab = F.interpolate(ab, size=(h, w), mode="bilinear", align_corners=False)
        return ab.view(n, samples, 2, h, w)

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, decoder: str | None = None, seed: int = 0,
                   **options) -> torch.Tensor:
        """Sample 0 of ``sample_ab(lightness, 1, seed)``: ab [N,2,H,W] (``decoder``: none, ignored)."""
        return self.sample_ab(lightness, 1, seed, **options)[:, 0]

    @torch.no_grad()
    def validation_step(self, batch: dict, ctx: StepContext) -> ValidationOutput | None:
        """The loss (teacher forcing) and the seed-0 sample of the colourful images."""
        loss, lab, mask = self._loss(batch["image"], ctx)
        if not mask.any():
            return None
        n = int(mask.sum())
        x = normalize_l(lab[:, :1])[mask]
        return ValidationOutput({"val_loss": float(loss) * n}, n, x, self.predict_ab(x, seed=VAL_SEED),
                                lab[:, 1:][mask])
