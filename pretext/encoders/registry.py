"""The encoder registry: head-free trunks that take the L channel (DESIGN §2).

Input: ``[N, 1, H, W]`` normalised as ``L / 100 - 0.5`` (L in [0, 100] -> [-0.5, 0.5];
the same as the released ECCV16 model's ``(L - 50) / 100``); ``normalize_l`` does it.
A tensor with another channel count raises ``ValueError``.

``register_encoder(name)`` (class decorator), ``build_encoder(name, **kw)``,
``list_encoders()``: an unknown or duplicate name raises with the valid ones. Every
encoder takes ``width`` (channel multiplier, default 1.0, so tiny variants train on a
CPU) and exposes

* ``feature_info``: ``{tap: {"channels": C, "stride": S}}`` (timm's FeatureInfo is the
  model), ordered shallow to deep; ``taps``: the tap names in that order;
* ``forward_features(x, taps) -> {tap: Tensor}``: exactly the requested taps, running
  only as far as the deepest of them;
* ``feature_size(H, W, tap=None) -> (h, w)``: the exact spatial size of a tap (the
  deepest when ``tap`` is None) for an ``H x W`` input.

Encoders carry no pretext head: a method (``pretext.methods``) builds its heads on
``feature_info``. One file per family: ``alexnet.py``, ``vgg.py``, ``resnet.py``.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["register_encoder", "build_encoder", "list_encoders", "normalize_l", "ColorEncoder"]

_REGISTRY: dict[str, Callable[..., "ColorEncoder"]] = {}


def register_encoder(name: str) -> Callable:
    """Class decorator adding an encoder to the registry; a taken name raises ValueError."""
    if name in _REGISTRY:
        raise ValueError(f"encoder {name!r} is already registered; registered: {list_encoders()}")

    def add(cls):
        _REGISTRY[name] = cls
        cls.encoder_name = name
        return cls
    return add


def list_encoders() -> list[str]:
    return sorted(_REGISTRY)


def build_encoder(name: str, **kw) -> "ColorEncoder":
    """Build a registered encoder, e.g. ``build_encoder("vgg_cc", width=0.25)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; valid names: {list_encoders()}")
    return _REGISTRY[name](**kw)


def normalize_l(l: torch.Tensor) -> torch.Tensor:
    """L in [0, 100] -> the encoders' input range [-0.5, 0.5]."""
    return l / 100.0 - 0.5


def scaled(channels: int, width: float, divisor: int = 1) -> int:
    """``channels * width`` rounded to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(channels * width / divisor + 0.5) * divisor)


def conv_bn_relu(cin: int, cout: int, k: int, padding: int = 0, stride: int = 1,
                  groups: int = 1, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ColorEncoder(nn.Module):
    """Shared plumbing of a head-free trunk. A subclass sets ``feature_info`` (ordered
    shallow to deep), one attribute module per tap name, and in ``_pre`` the name of a
    (parameter-free) pooling module to run before a tap's module."""

    encoder_name = "?"  # set by register_encoder
    min_size = 1        # smallest H, W the arithmetic accepts
    _pre: dict[str, str] = {}

    input_kind = "L"    # what a harness feeds it: the normalised L channel

    def __init__(self, width: float):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.width = float(width)

    @property
    def taps(self) -> list[str]:
        return list(self.feature_info)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 1:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.encoder_name} expects the L channel as [N, 1, H, W] "
                             f"(L/100 - 0.5), got {got}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"{self.encoder_name} needs H, W >= {self.min_size}, "
                             f"got {list(x.shape[-2:])}")

    def _resolve_taps(self, taps: Iterable[str] | None) -> list[str]:
        taps = self.taps if taps is None else list(taps)
        unknown = [t for t in taps if t not in self.feature_info]
        if unknown or not taps:
            raise ValueError(f"{self.encoder_name}: unknown or no taps {unknown}; "
                             f"valid taps: {self.taps}")
        return taps

    def _finish(self, name: str, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return x  # hook for a subclass (VGG crops conv8)

    def forward_features(self, x: torch.Tensor, taps: Iterable[str] | None = None
                         ) -> dict[str, torch.Tensor]:
        """``x`` [N, 1, H, W] -> {tap: [N, C_tap, h, w]} for exactly ``taps``."""
        self._check_input(x)
        wanted = self._resolve_taps(taps)
        order = self.taps
        last = max(order.index(t) for t in wanted)
        size = (x.shape[-2], x.shape[-1])
        out = {}
        for name in order[: last + 1]:
            if name in self._pre:
                x = getattr(self, self._pre[name])(x)
            x = self._finish(name, getattr(self, name)(x), size)
            if name in wanted:
                out[name] = x
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [N, 1, H, W] -> the deepest tap [N, C, h, w]."""
        deepest = self.taps[-1]
        return self.forward_features(x, [deepest])[deepest]

    def feature_size(self, h: int, w: int, tap: str | None = None) -> tuple[int, int]:
        """Default rule: ceil(H / stride) x ceil(W / stride)."""
        s = self.feature_info[tap or self.taps[-1]]["stride"]
        return math.ceil(h / s), math.ceil(w / s)


