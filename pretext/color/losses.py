"""Colorization losses (the paper's ablation rows), pure functions.

* ``full``  : multinomial cross-entropy against the soft-encoded target, each pixel's
              gradient scaled by the rebalancing weight of its target's argmax bin
              (as the original Caffe layer did: the forward value is unchanged).
* ``class`` : the same cross-entropy, no rebalancing.
* ``l2``    : regression on ab (the head predicts 2 channels instead of 313).

Images with no colour (no |a| or |b| > 5 anywhere) are masked out of every loss.
The dense [N,313,H,W] target is never built: the soft target has K non-zeros per
pixel, so CE = logsumexp(z) - sum_k w_k z[idx_k].
"""
from __future__ import annotations

import torch

from pretext.color.bins import SoftEncoding

LOSS_VARIANTS = ("full", "class", "l2")
GRAY_THRESHOLD = 5.0


def _check_finite(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; refusing to compute a NaN loss")


def colorful_mask(ab: torch.Tensor, threshold: float = GRAY_THRESHOLD) -> torch.Tensor:
    """bool [N]: True for images with some |a| or |b| above ``threshold`` (ab [N,2,H,W])."""
    if ab.dim() != 4 or ab.shape[1] != 2:
        raise ValueError(f"colorful_mask: expected ab [N,2,H,W], got {list(ab.shape)}")
    return (ab.abs() > threshold).flatten(1).any(1)


def scale_gradient(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``scale``."""
    return x.detach() + scale * (x - x.detach())


def soft_cross_entropy(logits: torch.Tensor, target: SoftEncoding) -> torch.Tensor:
    """Per-pixel CE between logits [N,Q,H,W] and a soft target -> [N,H,W]."""
    if logits.dim() != 4 or logits.shape[0] != target.indices.shape[0] or logits.shape[2:] != target.indices.shape[2:]:
        raise ValueError(f"logits {list(logits.shape)} do not match the target {list(target.indices.shape)} "
                         "(expected [N,Q,H,W] with the target's N,H,W)")
    _check_finite(logits, "logits")
    log_z = torch.logsumexp(logits, dim=1)  # [N,H,W]
    picked = logits.gather(1, target.indices)  # [N,K,H,W]
    return log_z - (target.weights * picked).sum(1)


def _masked_mean(per_pixel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_pixel.mean()
    if not mask.any():  # a batch of gray images: zero loss that still backpropagates
        return per_pixel.sum() * 0.0
    return per_pixel[mask].mean()


def class_loss(logits: torch.Tensor, target: SoftEncoding, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multinomial CE without rebalancing, mean over the pixels of unmasked images."""
    return _masked_mean(soft_cross_entropy(logits, target), mask)


def full_loss(logits: torch.Tensor, target: SoftEncoding, class_weights: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """CE with class rebalancing: pixel gradient x w[argmax bin of its target].

    ``class_weights``: [Q] from ``pretext.rebalance.rebalance_weights``."""
    if class_weights.dim() != 1 or class_weights.shape[0] != logits.shape[1]:
        raise ValueError(f"class_weights: expected [{logits.shape[1]}], got {list(class_weights.shape)}")
    _check_finite(class_weights, "class_weights")
    per_pixel = soft_cross_entropy(logits, target)  # [N,H,W]
    pixel_w = class_weights.to(per_pixel.device, per_pixel.dtype)[target.argmax()]  # [N,H,W]
    return _masked_mean(scale_gradient(per_pixel, pixel_w), mask)


def l2_loss(pred_ab: torch.Tensor, target_ab: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean loss 1/2 ||y - y_hat||^2 per pixel on ab [N,2,H,W], mean over pixels."""
    if pred_ab.shape != target_ab.shape or pred_ab.dim() != 4 or pred_ab.shape[1] != 2:
        raise ValueError(f"l2_loss: expected matching [N,2,H,W], got {list(pred_ab.shape)} and {list(target_ab.shape)}")
    _check_finite(pred_ab, "pred_ab")
    _check_finite(target_ab, "target_ab")
    return _masked_mean(0.5 * (pred_ab - target_ab).pow(2).sum(1), mask)


def colorization_loss(variant: str, output: torch.Tensor, target_ab: torch.Tensor,
                      encoding: SoftEncoding | None = None, class_weights: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch on the variant name (``full``, ``class``, ``l2``)."""
    if variant == "full":
        if encoding is None or class_weights is None:
            raise ValueError("the 'full' loss needs the soft encoding and the class weights")
        return full_loss(output, encoding, class_weights, mask)
    if variant == "class":
        if encoding is None:
            raise ValueError("the 'class' loss needs the soft encoding")
        return class_loss(output, encoding, mask)
    if variant == "l2":
        return l2_loss(output, target_ab, mask)
    raise ValueError(f"unknown loss variant {variant!r}; choose from {', '.join(LOSS_VARIANTS)}")
