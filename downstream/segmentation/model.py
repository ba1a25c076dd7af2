"""FCN-32s / 16s / 8s (Long et al. 2015) on any trunk, sized from its ``feature_info``.

    model = FCN(trunk, num_classes=21, variant="fcn8s")
    logits = model(trunk.prepare(images, device))          # [N, 21, H, W]

* ``fcn32s``: a score head on the deepest tap (torchvision's ``FCNHead``: 3x3 conv to
  C/4 + BN + ReLU + dropout + 1x1 conv to the classes; it stands in for the fc6/fc7
  convolutions a head-free trunk does not have), resampled to the input's pixels.
* ``fcn16s`` / ``fcn8s``: plus 1x1 score layers on the deepest tap at 1/2 (and 1/4) of
  the deepest stride, added coarse to fine. They start at zero, as FCN's skip scores, so
  training starts from the coarse prediction (resampled through the finer grids). The names are VGG's strides (32 / 16 / 8); on
  a trunk whose deepest stride is 16 (alexnet_cc: conv5) the skips come from conv2
  (stride 8) and conv1 (stride 4).

Geometry: a tap of stride s and size h is taken to lie centred on the input (its cell
centres at (H - s (h - 1)) / 2 + s j): for a padded trunk that tiles the input (H = s h)
this is exactly torchvision's ``interpolate(..., align_corners=False)``; for an
unpadded one (alexnet_cc's conv1 has no padding, so conv5 covers less than the input) it
keeps the map's scale instead of stretching it over the image. ``feature_info`` gives no
offsets, so an asymmetric trunk is off by a few pixels (alexnet_cc conv5: ~6 px).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

VARIANTS = {"fcn32s": 0, "fcn16s": 1, "fcn8s": 2}  # variant -> number of skip taps


def fcn_taps(feature_info: dict[str, dict], variant: str) -> list[str]:
    """[deepest tap, skip at 1/2 its stride, skip at 1/4] as ``variant`` needs: for each
    stride, the deepest tap that has it (``feature_info`` lists taps shallow to deep)."""
    if variant not in VARIANTS:
        raise ValueError(f"FCN variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    taps = list(feature_info)
    deepest = taps[-1]
    chosen = [deepest]
    for k in range(1, VARIANTS[variant] + 1):
        stride = feature_info[deepest]["stride"] / 2 ** k
        have = [t for t in taps if feature_info[t]["stride"] == stride]
        if not have:
            strides = {t: feature_info[t]["stride"] for t in taps}
            raise ValueError(f"{variant} needs a tap of stride {stride:g} (1/{2 ** k} of {deepest}'s); this trunk's "
                             f"taps: {strides}")
        chosen.append(have[-1])
    return chosen


def _centred_axis(n_src: int, s_src: float, n_dst: int, s_dst: float, size: int, device) -> torch.Tensor:
    """grid_sample coordinates in [-1, 1] (align_corners=True) along one axis: where the
    ``n_dst`` centres of a grid of stride ``s_dst`` fall on a source grid of ``n_src``
    cells of stride ``s_src``, both centred on an input side of ``size`` pixels. [n_dst]"""
    dst = (size - s_dst * (n_dst - 1)) / 2 + s_dst * torch.arange(n_dst, device=device, dtype=torch.float32)
    u = (dst - (size - s_src * (n_src - 1)) / 2) / s_src       # in source cells
    return 2 * u / (n_src - 1) - 1 if n_src > 1 else torch.zeros_like(u)


def resample(x: torch.Tensor, stride: float, size: tuple[int, int], out_hw: tuple[int, int],
             out_stride: tuple[float, float] | None = None) -> torch.Tensor:
    """Bilinear resampling of a map ``x`` [N, C, h, w] of ``stride`` on an input of
    ``size`` (H, W) onto ``out_hw`` cells of ``out_stride`` (default: H / out_h, W /
    out_w, i.e. pixels of a possibly resized image) -> [N, C, out_h, out_w]."""
    (h, w), (oh, ow) = x.shape[-2:], out_hw
    sy, sx = out_stride or (size[0] / oh, size[1] / ow)
    gy = _centred_axis(h, stride, oh, sy, size[0], x.device)
    gx = _centred_axis(w, stride, ow, sx, size[1], x.device)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)  # [oh, ow, 2] as (x, y)
    grid = grid.to(x.dtype).expand(x.shape[0], oh, ow, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


class FCN(nn.Module):
    """The trunk (fine-tuned with the rest) + FCN head and skip scores."""

    def __init__(self, trunk: nn.Module, num_classes: int, variant: str = "fcn32s"):
        super().__init__()
        info = trunk.feature_info
        self.trunk, self.variant, self.num_classes = trunk, variant, num_classes
        self.taps = fcn_taps(info, variant)                     # deepest first
        self.strides = {t: float(info[t]["stride"]) for t in self.taps}
        self.head = FCNHead(info[self.taps[0]]["channels"], num_classes)
        self.skips = nn.ModuleDict({t: nn.Conv2d(info[t]["channels"], num_classes, 1) for t in self.taps[1:]})
        for conv in self.skips.values():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.head.parameters(), *self.skips.parameters()]

    def forward(self, x: torch.Tensor, out_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """``x``: the trunk's prepared input [N, Cin, H, W] -> class scores [N, K, out_h,
        out_w] (default: H, W; e.g. the original image's size when ``x`` was resized)."""
        size = tuple(x.shape[-2:])
        feats = self.trunk.forward_features(x, self.taps)       # {tap: [N, C, h, w]}
        score = self.head(feats[self.taps[0]])                  # [N, K, h5, w5]
        stride = self.strides[self.taps[0]]
        for tap in self.taps[1:]:                               # coarse to fine
            fine = feats[tap]
            s = self.strides[tap]
            score = resample(score, stride, size, fine.shape[-2:], (s, s)) + self.skips[tap](fine)
            stride = s
        return resample(score, stride, size, out_hw or size)
