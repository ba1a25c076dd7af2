"""``liang_cc``: the patch networks of Liang, Su, Xiao, Guo, Luo, "Deep patch-wise
colorization model for grayscale images" (SIGGRAPH Asia 2016 Technical Briefs).

The paper trains two networks of the same design on the lightness of 64 x 64 patches,
one predicting U and one V (YUV). Both run here side by side as one module, as
AlexNet's two towers do: conv1 maps the shared 1-channel input to 2 x c1 maps (the
first c1 are the U network's filters, the rest the V network's: a 1-input convolution
to 2c outputs is exactly two independent convolutions), and conv2 / conv3 are grouped
(groups = 2), so no weight ever mixes the two networks. Layers (each conv -> BN ->
ReLU, stride 1, "same" padding so a tap is H x W):

    conv1 11x11, 2 x 64 | conv2 4x4, 2 x 64 (zero padding 1 before, 2 after) | conv3 3x3, 2 x 32

The fourth layer of each network, a 1x1 conv to its channel (U or V), is the method's
head (``pretext.methods.liang_patch``), as are the patch sampling, the losses and the
tiling of full images. Channel counts: only the paper's abstract and introduction were
readable here (see the method's notes), so 64 / 64 / 32 follow the SRCNN-style three-layer networks the design
resembles (documented choice). BN after each conv is ours (the CPU recipe trains in
minutes). 184,064 parameters at width 1 (convs without bias: BN follows each).
``width`` scales every channel count.
Taps: conv1, conv2, conv3, all stride 1 (the probe pools them to its feature budget).
"""
from __future__ import annotations

from torch import nn

from pretext.encoders.registry import ColorEncoder, register_encoder, scaled

KERNELS = (11, 4, 3)  # conv1-3; conv4 (1x1) is the method's head
CHANNELS = (64, 64, 32)  # per network (U or V)


def _same(k: int) -> nn.Module:
    """Zero padding keeping H x W for a stride-1 k x k conv (an even k pads one more after)."""
    before = (k - 1) // 2
    return nn.ZeroPad2d((before, k - 1 - before, before, k - 1 - before))


def _block(cin: int, cout: int, k: int, groups: int) -> nn.Sequential:
    return nn.Sequential(_same(k), nn.Conv2d(cin, cout, k, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_encoder("liang_cc")
class LiangCC(ColorEncoder):
    """Liang et al. 2016: the U and V patch networks (conv1-3) side by side, stride 1."""

    def __init__(self, width: float = 1.0):
        super().__init__(width)
        c1, c2, c3 = (scaled(c, width) for c in CHANNELS)
        self.conv1 = _block(1, 2 * c1, KERNELS[0], groups=1)       # [N, 2*64, H, W]: U | V filters
        self.conv2 = _block(2 * c1, 2 * c2, KERNELS[1], groups=2)  # [N, 2*64, H, W]
        self.conv3 = _block(2 * c2, 2 * c3, KERNELS[2], groups=2)  # [N, 2*32, H, W]
        self.feature_info = {n: {"channels": getattr(self, n)[1].out_channels, "stride": 1}
                             for n in ("conv1", "conv2", "conv3")}

    def feature_size(self, h: int, w: int, tap: str | None = None) -> tuple[int, int]:
        return h, w
