"""PixColor (Guadarrama et al., "PixColor: Pixel Recursive Colorization", BMVC 2017):
an autoregressive model of low-resolution chroma, then a refinement network; several
diverse colorizations per image (``stochastic``: ``sample_ab``).

Networks (channel counts scale with the trunk's ``width``):

* conditioning (``head_cond``): the gray image resized to ``cond_size`` (224, the paper's
  input) runs through the trunk; the input L and every tap of ``taps`` (default: all of
  ``feature_info``) are bilinearly resized to the ``grid`` x ``grid`` chroma grid (28, the
  paper's), concatenated (``hypercolumn.dense_features``), then 1x1 conv -> ReLU -> 3x3 conv
  -> ReLU: cond [N, cond_channels, grid, grid];
* the autoregressive model (``head_pixelcnn``): ``pixelcnn.ConditionalPixelCNN`` over two
  channels, (Cr, Cb) in that order (Cr first at each pixel, as the paper), ``bins`` (32)
  classes each, conditioned on ``head_cond``'s output at every gated layer;
* auxiliary (``head_aux``, only when ``aux_weight`` > 0, training only): a hypercolumn MLP;
* refinement (``head_refine``): the gray L at the input size and the low-resolution
  (Cr, Cb), bilinearly upsampled to it, -> a small U-Net (two stride-2 convolutions, a
  decoder of bilinear x2 upsamplings with skip connections, BN + ReLU) -> ab / 100.

Colour spaces: the autoregressive model works in YCbCr (BT.601 full range,
``pretext.color.ycbcr``): the target is each crop's Cb and Cr area-averaged to the grid
(a downscale) and quantised to bin indices; the refinement network's input is the bins'
centre chroma. Its output is Lab ab directly (the contract's space): it learns the
conversion from (L, Cr, Cb) to ab, trained against the crop's true Lab ab at full
resolution, so YCbCr never has to be recombined with Lab's L.

Training (``forward``, teacher forcing, all parts jointly): loss = the PixelCNN's mean
per-pixel cross-entropy on the true bins + ``refine_weight`` x the refinement's
1/2 ||ab/100 - ab_true/100||^2 per pixel, its input the ground truth's low-resolution
chroma (bin centres, what a sample looks like), never a sample (the paper's recipe).
Images without colour (``colorful_mask``) are left out of every term. The parts are reported
apart: ``loss_pixelcnn``, ``loss_refine`` (and ``loss_aux``) in the step stats (means over
micro-batches), ``val_loss_*`` in validation.

``aux_weight`` > 0 (a departure; 0, the paper's, by default) adds an auxiliary loss: at
``aux_samples`` random pixels per image, the trunk's hypercolumn (the same L + taps the
conditioning reads, sampled at the pixel as Larsson et al.: ``methods/hypercolumn.py``) -> an
MLP (``aux_hidden`` units) -> the pixel's own (Cr, Cb) bins, cross-entropy. PixColor's
conditioning network starts from ImageNet classification weights; a trunk trained from
scratch gets little signal through the PixelCNN, which predicts most cells from their
already-sampled neighbours (teacher forcing), and a conditioning trained from scratch at the
coarse grid learns object colours far more slowly than per-pixel colour losses do (measured on
the built-in data: configs/pretext/pixcolor_tiny.yaml). The auxiliary head is used in training
only.

``refine_images``: only the first k images of a training micro-batch train the refinement
(a full-resolution network, the dearest part of a CPU step; the loader's order is already
random); validation uses all.

Sampling (``sample_ab``): the conditioning is computed once per image, its per-layer
PixelCNN terms repeated along N for the ``samples`` draws (one batch), a private
``torch.Generator`` seeded from ``seed`` draws the uniforms (the global RNG is untouched),
the refinement upsamples each sample, and the ab are fitted into the sRGB gamut
(``fit_to_gamut``): for a pixel whose (L, ab) falls outside sRGB, chroma is scaled
toward grey (hue and L kept) to the largest in-gamut factor found by bisection; so
``lab_to_rgb(L, ab, clip=False)`` is in [-1e-4, 1 + 1e-4] (``GAMUT_TOL``) for every sample.
``predict_ab(l, seed=0)`` is sample 0 of ``sample_ab(l, 1, seed)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretext.color.lab import lab_to_rgb
from pretext.color.losses import colorful_mask, l2_loss
from pretext.color.targets import to_lab
from pretext.color.ycbcr import OFFSET, chroma_centers, quantize_chroma, rgb_to_ycbcr
from pretext.encoders import normalize_l
from pretext.encoders.registry import conv_bn_relu, scaled
from pretext.methods.base import Method, StepContext, ValidationOutput, register_method
from pretext.methods.hypercolumn import (HypercolumnHead, dense_features, gather_pixels, masked_mean, pixel_grid,
                                         random_pixels, sample_features)
from pretext.methods.pixelcnn import ConditionalPixelCNN

AB_SCALE = 100.0  # the refinement predicts ab / 100 (about [-1.1, 1])
GAMUT_STEPS = 12  # bisection steps of fit_to_gamut: the chroma factor to within 2^-12
GAMUT_TOL = 1e-4  # sRGB within [-tol, 1 + tol] counts as in gamut (Lab -> sRGB of grey is exact only to ~1e-7)
VAL_SEED = 0


def in_gamut(rgb: torch.Tensor, tol: float = GAMUT_TOL) -> torch.Tensor:
    """Unclipped sRGB [N,3,H,W] -> bool [N,H,W]: every channel within [-tol, 1 + tol]."""
    return ((rgb >= -tol) & (rgb <= 1 + tol)).all(1)


def fit_to_gamut(lightness: torch.Tensor, ab: torch.Tensor, steps: int = GAMUT_STEPS) -> torch.Tensor:
    """L in [0,100] [N,1,H,W], ab [N,2,H,W] -> ab with every out-of-sRGB pixel's chroma scaled by
    the largest factor s in [0,1] found in gamut by ``steps`` bisection steps (s = 0, grey, is
    always in gamut), hue and L unchanged; in-gamut pixels are returned as they are."""
    # pixels within half the tolerance are left alone; fitted ones are strictly inside: either way a
    # caller's L that differs by rounding (e.g. through L / 100 - 0.5 and back) stays within GAMUT_TOL
    bad = ~in_gamut(lab_to_rgb(torch.cat([lightness, ab], 1), clip=False), GAMUT_TOL / 2)  # [N,H,W]
    if not bad.any():
        return ab
    lb = lightness[:, 0][bad]                     # [P]
    abb = ab.permute(0, 2, 3, 1)[bad]             # [P,2]
    lo, hi = torch.zeros_like(lb), torch.ones_like(lb)
    for _ in range(steps):
        mid = (lo + hi) / 2
        lab = torch.cat([lb[:, None], abb * mid[:, None]], 1).T[None, :, None]  # [1,3,1,P]
        ok = in_gamut(lab_to_rgb(lab, clip=False), 0.0)[0, 0]  # [P]
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    out = ab.permute(0, 2, 3, 1).clone()
    out[bad] = abb * lo[:, None]
    return out.permute(0, 3, 1, 2)


class RefinementNet(nn.Module):
    """(normalised L [N,1,H,W], chroma [N,2,H,W] centred: (C - 128/255) x 2) -> ab / 100 [N,2,H,W].
    Encoder: conv c (H) -> conv 2c stride 2 (H/2) -> conv 4c stride 2 (H/4) -> conv 4c;
    decoder: bilinear to H/2, concat the 2c skip, conv 2c; bilinear to H, concat the c skip,
    conv c; 1x1 -> 2. Any H, W."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels
        self.enc1 = conv_bn_relu(3, c, 3, padding=1, bias=False)
        self.enc2 = conv_bn_relu(c, 2 * c, 3, padding=1, stride=2, bias=False)
        self.enc3 = nn.Sequential(*conv_bn_relu(2 * c, 4 * c, 3, padding=1, stride=2, bias=False),
                                  *conv_bn_relu(4 * c, 4 * c, 3, padding=1, bias=False))
        self.dec2 = conv_bn_relu(6 * c, 2 * c, 3, padding=1, bias=False)
        self.dec1 = conv_bn_relu(3 * c, c, 3, padding=1, bias=False)
        self.out = nn.Conv2d(c, 2, 1)

    def forward(self, lightness: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(torch.cat([lightness, chroma], 1))  # [N,c,H,W]
        e2 = self.enc2(e1)                                  # [N,2c,H/2,W/2]
        e3 = self.enc3(e2)                                  # [N,4c,H/4,W/4]
        up = F.interpolate(e3, size=e2.shape[-2:], mode="bilinear", align_corners=False)
        d2 = self.dec2(torch.cat([up, e2], 1))
        up = F.interpolate(d2, size=e1.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.dec1(torch.cat([up, e1], 1)))


@register_method("pixcolor")
class PixColor(Method):
    summary = ("Guadarrama et al. 2017 · conditional gated PixelCNN over 32x32 (Cr, Cb) bins on a 28x28 grid "
               "+ refinement CNN · per-pixel CE + L2 on ab · sampled colorizations (sample_ab)")
    stochastic = True
    decoders = ()

    def __init__(self, trunk: nn.Module, grid: int = 28, bins: int = 32, cond_size: int = 224,
                 taps: list[str] | None = None, cond_channels: int | None = None, hidden: int | None = None,
                 layers: int = 4, kernel: int = 5, refine_channels: int | None = None,
                 refine_weight: float = 1.0, refine_images: int | None = None, aux_weight: float = 0.0,
                 aux_samples: int = 128, aux_hidden: int | None = None, temperature: float = 1.0):
        super().__init__(trunk)
        self.taps = list(trunk.taps if taps is None else taps)
        unknown = [t for t in self.taps if t not in trunk.feature_info]
        if unknown or not self.taps:
            raise ValueError(f"pixcolor: unknown or no taps {unknown}; valid taps: {trunk.taps}")
        if int(grid) < 1 or int(cond_size) < 1 or not temperature > 0 or refine_weight < 0 or aux_weight < 0:
            raise ValueError(f"pixcolor: grid ({grid}) and cond_size ({cond_size}) must be >= 1, temperature "
                             f"({temperature}) > 0, refine_weight ({refine_weight}) and aux_weight ({aux_weight}) >= 0")
        if int(aux_samples) < 1:
            raise ValueError(f"pixcolor: aux_samples must be >= 1, got {aux_samples}")
        self.aux_weight, self.aux_samples = float(aux_weight), int(aux_samples)
        self.grid, self.bins, self.cond_size = int(grid), int(bins), int(cond_size)
        self.temperature, self.refine_weight = float(temperature), float(refine_weight)
        if refine_images is not None and int(refine_images) < 1:
            raise ValueError(f"pixcolor: refine_images must be >= 1 or null (all), got {refine_images}")
        self.refine_images = None if refine_images is None else int(refine_images)
        quantize_chroma(torch.zeros(1), self.bins)  # validates bins
        cc = scaled(256, trunk.width, 2) if cond_channels is None else int(cond_channels)
        cin = 1 + sum(trunk.feature_info[t]["channels"] for t in self.taps)  # + the input L
        self.head_cond = nn.Sequential(nn.Conv2d(cin, cc, 1), nn.ReLU(inplace=True),
                                       nn.Conv2d(cc, cc, 3, padding=1), nn.ReLU(inplace=True))
        self.head_pixelcnn = ConditionalPixelCNN(2, self.bins, cc, scaled(128, trunk.width, 2) if hidden is None
                                                 else int(hidden), int(layers), int(kernel))
        # the auxiliary per-pixel classifier on sparse hypercolumns (aux_weight > 0; see the module doc)
        self.head_aux = HypercolumnHead(cin, scaled(1024, trunk.width, 2) if aux_hidden is None else int(aux_hidden),
                                        2 * self.bins) if self.aux_weight > 0 else None
        self.head_refine = RefinementNet(scaled(64, trunk.width, 2) if refine_channels is None
                                         else int(refine_channels))

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        return h, w  # the refinement works at the input's resolution

    # -- the three networks ---------------------------------------------------------------
    def maps(self, lightness: torch.Tensor) -> list[torch.Tensor]:
        """Normalised L [N,1,H,W] -> [L, tap_1, ...] of the gray image seen at cond_size x cond_size."""
        s = self.cond_size
        x = lightness if tuple(lightness.shape[-2:]) == (s, s) else F.interpolate(
            lightness, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        feats = self.trunk.forward_features(x, self.taps)
        return [x] + [feats[t] for t in self.taps]

    def condition(self, lightness: torch.Tensor, maps: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Normalised L [N,1,H,W] (or its ``maps``) -> cond [N,Cc,grid,grid]."""
        maps = self.maps(lightness) if maps is None else maps
        return self.head_cond(dense_features(maps, (self.grid, self.grid)))

    def aux_loss(self, maps: list[torch.Tensor], images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sparse auxiliary CE: at ``aux_samples`` random pixels per image, the hypercolumn of ``maps``
        (read at the pixel's place in the image) -> (Cr, Cb) bin logits, against the pixel's own bins."""
        n, _, h, w = images.shape
        index = random_pixels(n, h, w, self.aux_samples)  # [n,P]
        logits = self.head_aux(sample_features(maps, pixel_grid(index, h, w).to(images.device)))  # [n,2*bins,1,P]
        chroma = gather_pixels(rgb_to_ycbcr(images.float() / 255.0)[:, [2, 1]], index)  # [n,2,1,P]
        target = quantize_chroma(chroma, self.bins)
        ce = F.cross_entropy(logits.float().view(n, 2, self.bins, 1, -1).transpose(1, 2), target, reduction="none")
        return masked_mean(ce, mask)

    def low_res_bins(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 RGB [n,3,H,W] -> the target: (Cr, Cb) area-averaged to the grid, bins long [n,2,g,g]."""
        ycc = rgb_to_ycbcr(images.float() / 255.0)
        return quantize_chroma(F.adaptive_avg_pool2d(ycc[:, [2, 1]], self.grid), self.bins)

    def refine(self, lightness: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """Normalised L [N,1,H,W], (Cr, Cb) bins [N,2,g,g] -> ab / 100 [N,2,H,W]."""
        chroma = (chroma_centers(bins, self.bins).to(lightness) - OFFSET) * 2.0  # about [-1, 1]
        chroma = F.interpolate(chroma, size=lightness.shape[-2:], mode="bilinear", align_corners=False)
        return self.head_refine(lightness, chroma)

    # -- training ----------------------------------------------------------------------------
    def _losses(self, images: torch.Tensor, ctx: StepContext):
        """uint8 RGB [n,3,H,W] -> (total, {"pixelcnn": CE, "refine": L2[, "aux": CE]}, lab [n,3,H,W], mask [n])."""
        lab = to_lab(images, ctx.device)
        mask = colorful_mask(lab[:, 1:])
        x = normalize_l(lab[:, :1])
        target = self.low_res_bins(images.to(ctx.device))  # [n,2,g,g]
        r = slice(None) if self.refine_images is None or not self.training else slice(0, self.refine_images)
        with ctx.autocast():
            maps = self.maps(x)
            cond = self.condition(x, maps)
            pred = self.refine(x[r], target[r])  # teacher forcing: the true low-resolution chroma
        parts = {"pixelcnn": self.head_pixelcnn.loss(target, cond.float(), mask),
                 "refine": l2_loss(pred.float(), lab[r, 1:] / AB_SCALE, mask[r])}
        total = parts["pixelcnn"] + self.refine_weight * parts["refine"]
        if self.head_aux is not None:
            with ctx.autocast():
                parts["aux"] = self.aux_loss(maps, images.to(ctx.device), mask)
            total = total + self.aux_weight * parts["aux"]
        return total, parts, lab, mask

    def forward(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """uint8 RGB [n,3,H,W] -> (CE + refine_weight x L2 [+ aux_weight x aux CE],
        {"colourful", "loss_pixelcnn", "loss_refine"[, "loss_aux"]})."""
        images = batch["image"]
        if images.shape[0] == 0:  # every file of this micro-batch was unreadable: one gray image, masked out
            images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
        total, parts, _, mask = self._losses(images, ctx)
        return total, {"colourful": int(mask.sum()), **{f"loss_{k}": float(v.detach()) for k, v in parts.items()}}

    def training_step(self, micro_batches, model, optimizers, ctx) -> dict[str, float]:
        out = super().training_step(micro_batches, model, optimizers, ctx)  # stats are summed: average the parts
        return {k: v / len(micro_batches) if k.startswith("loss_") else v for k, v in out.items()}

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample_ab(self, lightness: torch.Tensor, samples: int, seed: int = 0, **options) -> torch.Tensor:
        """Normalised L [N,1,H,W] -> ab [N,samples,2,H,W]: ``samples`` draws per image (see the module doc)."""
        self.check_sample_request(samples, options)
        n, _, h, w = lightness.shape
        terms = self.head_pixelcnn.condition(self.condition(lightness))  # once per image
        terms = [(v.repeat_interleave(samples, 0), hz.repeat_interleave(samples, 0)) for v, hz in terms]
        generator = torch.Generator().manual_seed(int(seed))
        draws = torch.rand((n * samples, 2, self.grid, self.grid), generator=generator).to(lightness.device)
        bins = self.head_pixelcnn.sample_with(terms, draws, self.temperature).view(n, samples, 2, self.grid, self.grid)
        L = ((lightness + 0.5) * 100.0).clamp(0.0, 100.0)
        out = lightness.new_empty(n, samples, 2, h, w)
        for s in range(samples):  # one refinement pass per sample: memory of one colorization at a time
            ab = self.refine(lightness, bins[:, s]).float() * AB_SCALE
            out[:, s] = fit_to_gamut(L.float(), ab)
        return out

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, decoder: str | None = None, seed: int = 0,
                   **options) -> torch.Tensor:
        """Sample 0 of ``sample_ab(lightness, 1, seed)``: ab [N,2,H,W] (``decoder``: none, ignored)."""
        return self.sample_ab(lightness, 1, seed, **options)[:, 0]

    @torch.no_grad()
    def validation_step(self, batch: dict, ctx: StepContext) -> ValidationOutput | None:
        """The losses (teacher forcing) and the seed-0 sample of the colourful images."""
        total, parts, lab, mask = self._losses(batch["image"], ctx)
        if not mask.any():
            return None
        n = int(mask.sum())
        x = normalize_l(lab[:, :1])
        ab = self.predict_ab(x[mask], seed=VAL_SEED)
        sums = {"val_loss": float(total) * n, **{f"val_loss_{k}": float(v) * n for k, v in parts.items()}}
        return ValidationOutput(sums, n, x[mask], ab, lab[:, 1:][mask])
