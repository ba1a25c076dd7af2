"""Hypercolumn colour heads, shared by Larsson et al. 2016 (``larsson``) and Dahl 2016 (``dahl``).

A pixel's hypercolumn (Hariharan et al. 2015) is the input L and every chosen tap of the
trunk (default: all of ``feature_info``, as Larsson's "data to fc7") read at that pixel by
bilinear interpolation, each tap's map spanning the whole image (``align_corners=False``
geometry, borders clamped). An MLP of 1x1 convolutions (Larsson: one hidden layer of 1024
units, then the predictors) maps it to the method's per-pixel output.

* Training is sparse (Larsson et al., Sec. 3.4): ``samples`` random pixel centres per image
  (128 in the paper), read with ``F.grid_sample``: hypercolumns [N,C,1,P], no dense
  upsampled map is ever built; gradients reach the four nearest cells of every tap.
* Test is dense: every tap is bilinearly resized (``F.interpolate``, the same weights) to
  the output grid (``output_stride``, the centres of s x s cells) -> [N,C,h,w]; the
  colorizer upsamples the ab to full resolution. At stride 1 dense and sparse give the same
  hypercolumn at every pixel (tested).

The trunks' taps follow BatchNorm, so the paper's hypercolumn balancing (rescaling each
layer of an un-normalised VGG-16 to unit second moment) is not needed.

Subclasses define ``loss(out, target_ab, mask)`` on outputs [N,K,h,w] with target ab
[N,2,h,w] (sparse: h = 1, w = P) and ``to_ab(out, decoder)``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pretext.color.losses import colorful_mask
from pretext.color.targets import to_lab
from pretext.encoders import normalize_l
from pretext.encoders.registry import scaled
from pretext.methods.base import Method, StepContext, ValidationOutput

VAL_SEED = 0  # validation losses are read at the same random pixels every time


def random_pixels(n: int, h: int, w: int, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``samples`` pixel indices per image, uniform with replacement: long [n, P] into h*w (CPU)."""
    return torch.randint(0, h * w, (n, samples), generator=generator)


def pixel_grid(index: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Flat pixel indices [N,P] -> grid_sample coordinates [N,1,P,2] (x, y in [-1,1]) of the pixel centres."""
    y, x = (index // w).float(), (index % w).float()
    return torch.stack([(x + 0.5) / w * 2 - 1, (y + 0.5) / h * 2 - 1], -1)[:, None]


def sample_features(maps: Sequence[torch.Tensor], grid: torch.Tensor) -> torch.Tensor:
    """Sparse hypercolumns: maps [N,C_i,h_i,w_i] at grid [N,1,P,2] -> [N,sum C_i,1,P] (bilinear)."""
    return torch.cat([F.grid_sample(m, grid.to(m.dtype), mode="bilinear", padding_mode="border",
                                    align_corners=False) for m in maps], 1)


def dense_features(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Dense hypercolumns: maps [N,C_i,h_i,w_i] -> [N,sum C_i,h,w] on the grid of ``size`` cells."""
    return torch.cat([m if tuple(m.shape[-2:]) == tuple(size) else
                      F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], 1)


def masked_mean(per_pixel: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-pixel losses [N,...] over the images with ``mask`` (bool [N]); a batch of gray
    images gives a zero that still backpropagates."""
    if not mask.any():
        return per_pixel.sum() * 0.0
    return per_pixel[mask].mean()


def gather_pixels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [N,C,H,W] at flat pixel indices [N,P] -> [N,C,1,P] (exact values, no interpolation)."""
    flat = x.flatten(2)  # [N,C,H*W]
    return flat.gather(2, index.to(x.device)[:, None].expand(-1, x.shape[1], -1))[:, :, None]


class HypercolumnHead(nn.Module):
    """MLP of 1x1 convolutions: [N,C,h,w] -> [N,out,h,w] (sparse hypercolumns are [N,C,1,P])."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, layers: int = 1):
        super().__init__()
        mlp: list[nn.Module] = []
        for i in range(layers):
            mlp += [nn.Conv2d(in_channels if i == 0 else hidden, hidden, 1), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*mlp)
        self.out = nn.Conv2d(hidden if layers else in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(x))


class HypercolumnMethod(Method):
    """A trunk + a hypercolumn MLP head, trained on sparse pixels, run densely."""

    def __init__(self, trunk: nn.Module, out_channels: int, taps: Sequence[str] | None = None,
                 hidden: int | None = None, layers: int = 1, samples: int = 128, output_stride: int = 4):
        super().__init__(trunk)
        self.taps = list(trunk.taps if taps is None else taps)
        unknown = [t for t in self.taps if t not in trunk.feature_info]
        if unknown or not self.taps:
            raise ValueError(f"{self.method_name}: unknown or no taps {unknown}; valid taps: {trunk.taps}")
        if int(samples) < 1 or int(output_stride) < 1 or int(layers) < 0:
            raise ValueError(f"{self.method_name}: samples and output_stride must be >= 1, layers >= 0; "
                             f"got {samples}, {output_stride}, {layers}")
        self.samples, self.output_stride = int(samples), int(output_stride)
        channels = 1 + sum(trunk.feature_info[t]["channels"] for t in self.taps)  # + the input L ("data")
        hidden = scaled(1024, trunk.width, 2) if hidden is None else int(hidden)  # the paper's fc 1024
        self.head = HypercolumnHead(channels, hidden, out_channels, layers)

    # -- what a subclass defines -------------------------------------------------------------
    def loss(self, out: torch.Tensor, target_ab: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """out [N,K,h,w], target ab [N,2,h,w], mask bool [N] -> scalar (masked mean)."""
        raise NotImplementedError

    def to_ab(self, out: torch.Tensor, decoder: str) -> torch.Tensor:
        """out [N,K,h,w] -> ab [N,2,h,w]."""
        raise NotImplementedError

    # -- hypercolumns --------------------------------------------------------------------------
    def maps(self, lightness: torch.Tensor) -> list[torch.Tensor]:
        """Normalised L [N,1,H,W] -> [L, tap_1, ...], each [N,C_i,h_i,w_i]."""
        feats = self.trunk.forward_features(lightness, self.taps)
        return [lightness] + [feats[t] for t in self.taps]

    def sparse(self, lightness: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Head outputs at flat pixel indices [N,P]: [N,K,1,P]."""
        h, w = lightness.shape[-2:]
        return self.head(sample_features(self.maps(lightness), pixel_grid(index, h, w).to(lightness.device)))

    def dense(self, lightness: torch.Tensor) -> torch.Tensor:
        """Head outputs on the output grid: [N,K,h,w] at ``output_size(H, W)``."""
        return self.head(dense_features(self.maps(lightness), self.output_size(*lightness.shape[-2:])))

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        s = self.output_stride
        return -(-h // s), -(-w // s)

    # -- training ----------------------------------------------------------------------------
    def _sparse_loss(self, lab: torch.Tensor, mask: torch.Tensor, ctx: StepContext,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = lab.shape
        index = random_pixels(n, h, w, self.samples, generator)  # [n,P]
        x = normalize_l(lab[:, :1])
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx.autocast():
            out = self.sparse(x, index)  # [n,K,1,P]
        return self.loss(out.float(), gather_pixels(lab[:, 1:], index), mask)

    def forward(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """uint8 RGB [n,3,H,W] -> (masked mean loss over the sampled pixels, {"colourful": n with colour})."""
        images = batch["image"]
        if images.shape[0] == 0:  # every file of this micro-batch was unreadable: one gray image, masked out
            images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
        lab = to_lab(images, ctx.device)  # [n,3,H,W]
        mask = colorful_mask(lab[:, 1:])
        return self._sparse_loss(lab, mask, ctx), {"colourful": int(mask.sum())}

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, decoder: str = "mean", **options) -> torch.Tensor:
        if options:
            raise ValueError(f"{self.method_name}: unknown colorize options {sorted(options)}")
        return self.to_ab(self.dense(lightness).float(), decoder)

    @torch.no_grad()
    def validation_step(self, batch: dict, ctx: StepContext) -> ValidationOutput | None:
        """The training loss at fixed random pixels (seed ``VAL_SEED``) and the dense
        colorization (first decoder, upsampled to full resolution) of the colourful images."""
        lab = to_lab(batch["image"], ctx.device)
        mask = colorful_mask(lab[:, 1:])
        if not mask.any():
            return None
        n = int(mask.sum())
        loss = self._sparse_loss(lab, mask, ctx, torch.Generator().manual_seed(VAL_SEED))
        x = normalize_l(lab[:, :1])
        ab = self.predict_ab(x, *self.decoders[:1])
        ab = F.interpolate(ab, size=lab.shape[-2:], mode="bilinear", align_corners=False)
        return ValidationOutput({"val_loss": float(loss) * n}, n, x[mask], ab[mask], lab[:, 1:][mask])
