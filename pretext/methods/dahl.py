"""Dahl (2016), "Automatic Colorization" (tinyclouds.org/colorize): the regression colorizer
of Zhang et al.'s Table 1, on hypercolumns (``pretext.methods.hypercolumn``).

Dahl's model reads VGG-16 features at every scale, upsampled to the pixel and fused (his
"residual encoder": 1x1 projections added across scales, which is a linear map of the
hypercolumn), and regresses the colour of each pixel with a Euclidean loss. colorbench
keeps that and trains it like Larsson's head, so the two differ only in the loss:

* output: ab per pixel, the head's two linear outputs x ``ab_scale`` (100: the head starts
  at unit scale while ab spans about +-110);
* loss: 1/2 ||ab_hat - ab||^2 per pixel (``pretext.color.losses.l2_loss``), mean over the
  sampled pixels of colourful images. Dahl worked in YUV and blurred both sides before the
  distance; here the target is the pixel's exact Lab ab, as for every other method;
* no decoding: ``decoders = ()`` (colorize and eval-color score one row).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from pretext.color.losses import l2_loss
from pretext.methods.base import register_method
from pretext.methods.hypercolumn import HypercolumnMethod


@register_method("dahl")
class Dahl(HypercolumnMethod):
    summary = "Dahl 2016 · per-pixel L2 regression of ab at 128 sparse hypercolumns/image · ab (no decoding)"
    decoders = ()

    def __init__(self, trunk: nn.Module, ab_scale: float = 100.0, taps: Sequence[str] | None = None,
                 hidden: int | None = None, layers: int = 1, samples: int = 128, output_stride: int = 4):
        if not ab_scale > 0:
            raise ValueError(f"dahl: ab_scale must be > 0, got {ab_scale}")
        super().__init__(trunk, 2, taps, hidden, layers, samples, output_stride)
        self.ab_scale = float(ab_scale)

    def loss(self, out: torch.Tensor, target_ab: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """out [N,2,h,w] (ab / ab_scale), target ab [N,2,h,w] -> masked mean of 1/2 ||.||^2."""
        return l2_loss(out * self.ab_scale, target_ab, mask)

    def to_ab(self, out: torch.Tensor, decoder: str) -> torch.Tensor:
        return out * self.ab_scale  # one deterministic output: ``decoder`` names nothing here
