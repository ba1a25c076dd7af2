"""sRGB <-> YCbCr (ITU-R BT.601, full range, as JPEG / JFIF) and the quantised chroma of
PixColor (Guadarrama et al. 2017): Cb and Cr in 32 bins each.

Scale: RGB in [0, 1] [N,3,H,W] <-> YCbCr [N,3,H,W] = JFIF's 8-bit formulas divided by 255:
Y in [0, 1], Cb and Cr centred on 128/255 (a neutral grey), spanning 0.5 / 255 .. 255.5 / 255
(pure blue has Cb = 128 + 127.5). On the 8-bit scale:

    Y  =       0.299    R + 0.587    G + 0.114    B
    Cb = 128 - 0.168736 R - 0.331264 G + 0.5      B
    Cr = 128 + 0.5      R - 0.418688 G - 0.081312 B

Quantisation: ``bins`` cells of width 256 / bins on the 8-bit chroma axis (32: width 8),
centred so that grey (128) is a bin centre: bin b decodes to 128 + (b - bins // 2) * 256 / bins
(0, 8, ..., 128, ..., 248 for 32 bins); values are rounded to the nearest centre and clamped
to the end bins. Cells with 128 on an edge (centres 4, 12, ..., 252) would give every grey
pixel a +4 tint in both Cb and Cr, and grey is the most frequent chroma.
"""
from __future__ import annotations

import torch

from pretext.color.lab import check_image_batch

CHROMA_BINS = 32  # PixColor: 32 bins for each of Cb and Cr
OFFSET = 128.0 / 255.0  # the chroma of a grey
_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114],
                          [-0.168736, -0.331264, 0.5],
                          [0.5, -0.418688, -0.081312]], dtype=torch.float64)
_TO_RGB = torch.tensor([[1.0, 0.0, 1.402],
                        [1.0, -0.344136, -0.714136],
                        [1.0, 1.772, 0.0]], dtype=torch.float64)  # columns: Y, Cb - 128, Cr - 128


def _apply(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 3x3 colour matrix on the channel axis of x [N,3,H,W]."""
    return torch.einsum("ij,njhw->nihw", matrix.to(x), x)


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0,1] [N,3,H,W] -> (Y, Cb, Cr) [N,3,H,W] on the 8-bit JFIF scale / 255."""
    check_image_batch(rgb, "rgb_to_ycbcr")
    out = _apply(_TO_YCBCR, rgb)
    return out + torch.tensor([0.0, OFFSET, OFFSET], dtype=out.dtype, device=out.device).view(1, 3, 1, 1)


def ycbcr_to_rgb(ycbcr: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """(Y, Cb, Cr) [N,3,H,W] (this module's scale) -> sRGB [N,3,H,W], clipped to [0,1] unless
    ``clip=False`` (a YCbCr triple can lie outside the RGB cube)."""
    check_image_batch(ycbcr, "ycbcr_to_rgb")
    shift = torch.tensor([0.0, OFFSET, OFFSET], dtype=ycbcr.dtype, device=ycbcr.device).view(1, 3, 1, 1)
    rgb = _apply(_TO_RGB, ycbcr - shift)
    return rgb.clamp(0.0, 1.0) if clip else rgb


def quantize_chroma(chroma: torch.Tensor, bins: int = CHROMA_BINS) -> torch.Tensor:
    """Cb or Cr values (any shape, this module's scale) -> bin indices long, same shape, in [0, bins)."""
    _check_bins(bins)
    index = torch.round((chroma - OFFSET) * 255.0 / (256.0 / bins)) + bins // 2
    return index.clamp(0, bins - 1).long()


def chroma_centers(index: torch.Tensor, bins: int = CHROMA_BINS) -> torch.Tensor:
    """Bin indices (any shape) -> the cells' centre chroma, float32 on this module's scale."""
    _check_bins(bins)
    return OFFSET + (index.float() - bins // 2) * (256.0 / bins) / 255.0


def _check_bins(bins: int) -> None:
    if int(bins) != bins or bins < 2 or bins > 256:
        raise ValueError(f"chroma bins must be an integer in [2, 256], got {bins}")
