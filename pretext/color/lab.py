"""sRGB (D65) <-> CIE Lab, batched torch on any device ([N,3,H,W], L in [0,100])."""
from __future__ import annotations

import kornia.color
import torch


def check_image_batch(x: torch.Tensor, name: str, channels: int = 3) -> None:
    """Raise ValueError unless ``x`` is a finite floating [N, channels, H, W] tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor [N,{channels},H,W], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name}: expected shape [N,{channels},H,W], got {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    # aminmax propagates NaN: one fast reduction instead of an elementwise isfinite pass
    if x.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all()):
        raise ValueError(f"{name}: input contains NaN or inf")


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0,1] [N,3,H,W] -> Lab [N,3,H,W] (L in [0,100], D65 white)."""
    check_image_batch(rgb, "rgb_to_lab")
    return kornia.color.rgb_to_lab(rgb.clamp(0.0, 1.0))


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Lab [N,3,H,W] -> sRGB [N,3,H,W], clipped to [0,1] unless ``clip=False``."""
    check_image_batch(lab, "lab_to_rgb")
    return kornia.color.lab_to_rgb(lab, clip=clip)
