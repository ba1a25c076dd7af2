"""``iizuka_cc``: the trunk of Iizuka, Simo-Serra, Ishikawa, "Let there be Color!"
(SIGGRAPH 2016): the shared low-level features network plus the mid-level network.

Low-level (Table 1 of the paper), every conv 3x3 padding 1 -> BN -> ReLU:
conv1 64 s2, conv2 128, conv3 128 s2, conv4 256, conv5 256 s2, conv6 512
(1 x H x W -> 512 x H/8 x W/8); mid-level: conv7 512, conv8 256 (-> 256 x H/8 x W/8).
Taps are the post-ReLU maps, strides 2, 2, 4, 4, 8, 8, 8, 8; every tap is
``ceil(H / stride)`` (a k3 s2 p1 conv maps n to ceil(n / 2)). The global features
network reads the low-level output ``conv6`` (``global_tap``) of a 224 x 224 copy of the
image; it, the fusion layer and the colorization network are the method's heads
(``pretext.methods.iizuka``). 5,829,312 parameters at width 1 (low-level 2,288,832,
mid-level 3,540,480; convs without bias, each followed by BN). ``width`` scales every channel count (the CPU recipe uses 0.25).
"""
from __future__ import annotations

from pretext.encoders.registry import ColorEncoder, conv_bn_relu, register_encoder, scaled

# (name, output channels, stride of this conv): low-level conv1-6, mid-level conv7-8
_LAYERS = (("conv1", 64, 2), ("conv2", 128, 1), ("conv3", 128, 2), ("conv4", 256, 1),
           ("conv5", 256, 2), ("conv6", 512, 1), ("conv7", 512, 1), ("conv8", 256, 1))


@register_encoder("iizuka_cc")
class IizukaCC(ColorEncoder):
    """Iizuka et al. 2016: low-level (conv1-6, stride 8) + mid-level (conv7-8) networks."""

    global_tap = "conv6"  # the low-level output the global features network reads (at 224 x 224)

    def __init__(self, width: float = 1.0):
        super().__init__(width)
        self.feature_info = {}
        cin, stride = 1, 1
        for name, channels, s in _LAYERS:
            cout, stride = scaled(channels, width, 2), stride * s
            setattr(self, name, conv_bn_relu(cin, cout, 3, padding=1, stride=s, bias=False))
            self.feature_info[name] = {"channels": cout, "stride": stride}  # [N, C, ceil(H/s), ceil(W/s)]
            cin = cout
