"""``alexnet_cc``: the Zhang / VISSL colorization AlexNet (1-channel conv1, BN, no LRN).

conv1 1->96 k11 s4 p0, conv2 256 k5 p2 groups 2, conv3 384 k3, conv4 384 k3 groups 2,
conv5 256 k3 groups 2; each conv (with bias) -> BN -> ReLU; max-pool 3/2 after conv1
and conv2. Taps are the post-ReLU maps before pooling: 55, 27, 13, 13, 13 at a 227
input, as DESIGN §4's probe pools expect. 2,313,600 parameters at width 1.

Unpadded (Caffe/VISSL) size arithmetic: conv1 ``a = (H - 11) // 4 + 1``, conv2
``b = (a - 3) // 2 + 1``, conv3-5 ``(b - 3) // 2 + 1`` (227 -> 55, 27, 13; 64 -> 14, 6,
2; needs H, W >= 35).
"""
from __future__ import annotations

from torch import nn

from pretext.encoders.registry import ColorEncoder, conv_bn_relu, register_encoder, scaled


@register_encoder("alexnet_cc")
class AlexNetCC(ColorEncoder):
    """Zhang / VISSL colorization AlexNet (BN, no LRN, 1-channel conv1)."""

    min_size = 35  # conv1 must give >= 7 cells so that pool2 has a 3x3 window
    _pre = {"conv2": "pool1", "conv3": "pool2"}

    def __init__(self, width: float = 1.0):
        super().__init__(width)
        c1, c2, c3, c4, c5 = (scaled(c, width, 2) for c in (96, 256, 384, 384, 256))
        self.conv1 = conv_bn_relu(1, c1, 11, stride=4)            # [N, 96, 55, 55] at 227
        self.pool1 = nn.MaxPool2d(3, 2)
        self.conv2 = conv_bn_relu(c1, c2, 5, padding=2, groups=2)  # [N, 256, 27, 27]
        self.pool2 = nn.MaxPool2d(3, 2)
        self.conv3 = conv_bn_relu(c2, c3, 3, padding=1)            # [N, 384, 13, 13]
        self.conv4 = conv_bn_relu(c3, c4, 3, padding=1, groups=2)  # [N, 384, 13, 13]
        self.conv5 = conv_bn_relu(c4, c5, 3, padding=1, groups=2)  # [N, 256, 13, 13]
        strides = {"conv1": 4, "conv2": 8, "conv3": 16, "conv4": 16, "conv5": 16}
        self.feature_info = {n: {"channels": getattr(self, n)[0].out_channels, "stride": s}
                             for n, s in strides.items()}

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
        return (n - 3) // 2 + 1         # pool2 3/2; conv3-5 keep it
