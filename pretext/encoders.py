"""Colorization encoders: a small registry of trunks, each with a 313-way colour head.

Input: the L channel only, ``[N, 1, H, W]`` normalised as ``L / 100 - 0.5`` (L in
[0, 100] -> [-0.5, 0.5]; the same as the released ECCV16 model's ``(L - 50) / 100``).
``normalize_l`` does it. A tensor with another channel count raises ``ValueError``.

Registry: ``register_encoder(name)`` (class decorator), ``build_encoder(name, **kw)``,
``list_encoders()``. Every encoder takes ``width`` (channel multiplier, default 1.0, so
tiny variants train on a CPU) and ``num_bins`` (default 313), and exposes:

* ``feature_info``: ``{tap: {"channels": C, "stride": S}}``, computed from the layers
  built; ``taps``: the tap names, shallow to deep (the default of ``forward_features``);
* ``forward_features(x, taps) -> {tap: Tensor}``: exactly the requested taps, running
  only as far as the deepest of them;
* ``forward(x)``: colour logits ``[N, num_bins, h, w]`` at ``output_stride``, from the
  submodule ``head`` (drop ``head.*`` keys to load a trunk alone);
* ``feature_size(H, W, tap=None) -> (h, w)``: the exact spatial size of a tap (or of
  the logits when ``tap`` is None) for an ``H x W`` input.

Encoders (weight keys read ``conv3.0.weight``, ``res4.2.conv1.weight``, ``head.0.weight``):

=============  ==========================  =================  ==========  ==========
name           taps (stride)               output stride      trunk       head
=============  ==========================  =================  ==========  ==========
alexnet_cc     conv1 (4), conv2 (8),       16                  2,313,600  27,513,145
               conv3-conv5 (16)
vgg_cc         conv1 (2), conv2 (4),       4                  32,154,944      80,441
               conv3-conv7 (8), conv8 (4)
resnet50_cc    conv1 (2), res2 (4), res3   32 (16 with        23,501,760     641,337
               (8), res4 (16), res5 (32)   last_stride1)
=============  ==========================  =================  ==========  ==========

(parameter counts at width 1 with 313 bins; the tests derive each layer by layer.)

* ``alexnet_cc``: the VISSL / Zhang colorization AlexNet: conv1 1->96 k11 s4 p0, conv2
  256 k5 p2 groups 2, conv3 384 k3, conv4 384 k3 groups 2, conv5 256 k3 groups 2; each
  conv (with bias) -> BN -> ReLU; max-pool 3/2 after conv1 and conv2; no LRN. Taps are
  the post-ReLU maps before pooling: 55, 27, 13, 13, 13 at a 227 input, as DESIGN §4's
  probe pools expect. Head (ours, fully convolutional, stride 16): conv3x3 4096 -> BN ->
  ReLU -> conv1x1 4096 -> BN -> ReLU -> conv1x1 313.
* ``vgg_cc``: the ECCV16 colorizer as released (``colorizers/eccv16.py``): blocks 1-7 of
  (conv3x3 + ReLU) x 2 or 3 then one BN; strides 2, 2, 2 in blocks 1-3; dilation 2 in
  blocks 5-6; block 8 = ConvTranspose 4/2 + two convs (ReLU, no BN), part of the trunk.
  Head = the final 1x1 conv to 313 (``model8.6`` in the release; its 313->2 ``model_out``
  is not built: decoding lives in ``pretext.color.decode``). Key layout matches the
  release with ``model{i}`` -> ``conv{i}`` and ``model8.6`` -> ``head``.
* ``resnet50_cc``: ``timm.models.resnet.ResNet`` (Bottleneck, [3, 4, 6, 3]) with a
  1-channel stem and no classifier; ``conv1`` = stem conv+BN+ReLU (before the max-pool),
  ``res2``-``res5`` = timm ``layer1``-``layer4``. ``last_stride1=True`` dilates res5
  (timm ``output_stride=16``). ``width`` scales the four stages; timm's 7x7 stem has a
  fixed 64 channels. zero-init of each block's last BN is timm's default.

Output size rule: ``vgg_cc`` and ``resnet50_cc`` give ``ceil(H / s) x ceil(W / s)`` for
every tap and the logits (VGG's block 8 upsamples ``ceil(H/8)`` by 2 and is cropped to
``ceil(H/4)``). ``alexnet_cc`` uses unpadded (Caffe/VISSL) arithmetic: conv1
``a = (H - 11) // 4 + 1``, conv2 ``b = (a - 3) // 2 + 1``, conv3-5 and logits
``(b - 3) // 2 + 1`` (227 -> 55, 27, 13; 64 -> 14, 6, 2; needs H, W >= 35).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import nn
from timm.models.resnet import Bottleneck, ResNet

__all__ = ["register_encoder", "build_encoder", "list_encoders", "normalize_l",
           "ColorEncoder", "AlexNetCC", "VGGCC", "ResNet50CC"]

NUM_BINS = 313
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


def _conv_bn_relu(cin: int, cout: int, k: int, padding: int = 0, stride: int = 1,
                  groups: int = 1, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ColorEncoder(nn.Module):
    """Shared plumbing. A subclass sets ``feature_info`` (ordered shallow to deep), one
    attribute module per tap name, ``head``, ``output_stride``, and in ``_pre`` the name
    of a (parameter-free) pooling module to run before a tap's module."""

    encoder_name = "?"  # set by register_encoder
    min_size = 1        # smallest H, W the arithmetic accepts
    _pre: dict[str, str] = {}

    def __init__(self, width: float, num_bins: int):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.width, self.num_bins = float(width), int(num_bins)

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
        """``x`` [N, 1, H, W] -> logits [N, num_bins, *feature_size(H, W)]."""
        deepest = self.taps[-1]
        return self.head(self.forward_features(x, [deepest])[deepest])

    def feature_size(self, h: int, w: int, tap: str | None = None) -> tuple[int, int]:
        """Default rule: ceil(H / stride) x ceil(W / stride)."""
        s = self.output_stride if tap is None else self.feature_info[tap]["stride"]
        return math.ceil(h / s), math.ceil(w / s)


@register_encoder("alexnet_cc")
class AlexNetCC(ColorEncoder):
    """Zhang / VISSL colorization AlexNet (BN, no LRN, 1-channel conv1)."""

    min_size = 35  # conv1 must give >= 7 cells so that pool2 has a 3x3 window
    _pre = {"conv2": "pool1", "conv3": "pool2"}

    def __init__(self, width: float = 1.0, num_bins: int = NUM_BINS):
        super().__init__(width, num_bins)
        c1, c2, c3, c4, c5, fc = (scaled(c, width, 2) for c in (96, 256, 384, 384, 256, 4096))
        self.conv1 = _conv_bn_relu(1, c1, 11, stride=4)            # [N, 96, 55, 55] at 227
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = _conv_bn_relu(c1, c2, 5, padding=2, groups=2)  # [N, 256, 27, 27]
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = _conv_bn_relu(c2, c3, 3, padding=1)            # [N, 384, 13, 13]
        self.conv4 = _conv_bn_relu(c3, c4, 3, padding=1, groups=2)  # [N, 384, 13, 13]
        self.conv5 = _conv_bn_relu(c4, c5, 3, padding=1, groups=2)  # [N, 256, 13, 13]
        self.head = nn.Sequential(                                 # [N, 313, 13, 13]
            *_conv_bn_relu(c5, fc, 3, padding=1, bias=False),
            *_conv_bn_relu(fc, fc, 1, bias=False),
            nn.Conv2d(fc, num_bins, 1))
        strides = {"conv1": 4, "conv2": 8, "conv3": 16, "conv4": 16, "conv5": 16}
        self.feature_info = {n: {"channels": getattr(self, n)[0].out_channels, "stride": s}
                             for n, s in strides.items()}
        self.output_stride = 16

    def feature_size(self, h: int, w: int, tap: str | None = None) -> tuple[int, int]:
        return self._side(h, tap), self._side(w, tap)

    @staticmethod
    def _side(n: int, tap: str | None) -> int:
        n = (n - 11) // 4 + 1           # conv1, k11 s4 p0
        if tap == "conv1":
            return n
        n = (n - 3) // 2 + 1            # pool1 3/2; conv2 keeps the size
        if tap == "conv2":
            return n
        return (n - 3) // 2 + 1         # pool2 3/2; conv3-5 and the head keep it


# ECCV16 blocks 1-7: (channels, convs, stride of the last conv, dilation)
_VGG_BLOCKS = ((64, 2, 2, 1), (128, 2, 2, 1), (256, 3, 2, 1), (512, 3, 1, 1),
               (512, 3, 1, 2), (512, 3, 1, 2), (512, 3, 1, 1))


def _vgg_block(cin: int, cout: int, convs: int, stride: int, dilation: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        s = stride if i == convs - 1 else 1
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, s, dilation, dilation),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.BatchNorm2d(cout))


@register_encoder("vgg_cc")
class VGGCC(ColorEncoder):
    """The ECCV16 colorizer (Zhang et al. 2016, Fig. 2), logits at 1/4 resolution."""

    def __init__(self, width: float = 1.0, num_bins: int = NUM_BINS):
        super().__init__(width, num_bins)
        self.feature_info = {}
        cin, stride = 1, 1
        for i, (c, convs, s, d) in enumerate(_VGG_BLOCKS, start=1):
            cout, stride = scaled(c, width), stride * s
            setattr(self, f"conv{i}", _vgg_block(cin, cout, convs, s, d))
            self.feature_info[f"conv{i}"] = {"channels": cout, "stride": stride}
            cin = cout
        c8 = scaled(256, width)                                    # [N, 256, H/4, W/4]
        self.conv8 = nn.Sequential(nn.ConvTranspose2d(cin, c8, 4, 2, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(c8, c8, 3, 1, 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(c8, c8, 3, 1, 1), nn.ReLU(inplace=True))
        self.feature_info["conv8"] = {"channels": c8, "stride": stride // 2}
        self.head = nn.Conv2d(c8, num_bins, 1)                     # [N, 313, H/4, W/4]
        self.output_stride = stride // 2

    def _finish(self, name: str, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if name != "conv8":
            return x
        # the transposed conv gives 2 * ceil(H/8) >= ceil(H/4): drop the row/column past the image
        h, w = self.feature_size(*size, tap="conv8")
        return x[..., :h, :w]


@register_encoder("resnet50_cc")
class ResNet50CC(ColorEncoder):
    """timm ResNet-50 with a 1-channel stem; taps conv1, res2-res5."""

    _pre = {"res2": "maxpool"}

    def __init__(self, width: float = 1.0, num_bins: int = NUM_BINS, last_stride1: bool = False):
        super().__init__(width, num_bins)
        net = ResNet(block=Bottleneck, layers=(3, 4, 6, 3), in_chans=1, num_classes=0,
                     global_pool="", output_stride=16 if last_stride1 else 32,
                     channels=tuple(scaled(c, width) for c in (64, 128, 256, 512)))
        self.conv1 = nn.Sequential(net.conv1, net.bn1, net.act1)  # [N, 64, H/2, W/2]
        self.maxpool = net.maxpool                                # [N, 64, H/4, W/4]
        self.res2, self.res3 = net.layer1, net.layer2             # [N, 256, H/4], [N, 512, H/8]
        self.res4, self.res5 = net.layer3, net.layer4             # [N, 1024, H/16], [N, 2048, H/32]
        names = {"act1": "conv1", "layer1": "res2", "layer2": "res3", "layer3": "res4",
                 "layer4": "res5"}
        self.feature_info = {names[f["module"]]: {"channels": f["num_chs"],
                                                  "stride": f["reduction"]}
                             for f in net.feature_info}
        c5 = self.feature_info["res5"]["channels"]
        self.head = nn.Conv2d(c5, num_bins, 1)                    # [N, 313, H/32, W/32]
        self.output_stride = self.feature_info["res5"]["stride"]
        self.last_stride1 = last_stride1
