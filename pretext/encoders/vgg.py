"""``vgg_cc``: the ECCV16 colorizer's trunk (Zhang et al. 2016, Fig. 2), as released.

Blocks 1-7 of (conv3x3 + ReLU) x 2 or 3 then one BN; strides 2, 2, 2 in blocks 1-3;
dilation 2 in blocks 5-6; block 8 = ConvTranspose 4/2 + two convs (ReLU, no BN), ending
at 1/4 resolution. The final 1x1 conv to 313 bins (``model8.6`` in the release) is
Zhang's head (``pretext.methods.zhang``). Key layout = the release's with ``model{i}``
-> ``conv{i}``. 32,154,944 parameters at width 1. Every tap is ``ceil(H / s)``: block 8
upsamples ``ceil(H/8)`` by 2 and is cropped to ``ceil(H/4)``.
"""
from __future__ import annotations

import torch
from torch import nn

from pretext.encoders.registry import ColorEncoder, register_encoder, scaled


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
    """The ECCV16 colorizer (Zhang et al. 2016, Fig. 2), conv8 at 1/4 resolution."""

    def __init__(self, width: float = 1.0):
        super().__init__(width)
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

    def _finish(self, name: str, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if name != "conv8":
            return x
        # the transposed conv gives 2 * ceil(H/8) >= ceil(H/4): drop the row/column past the image
        h, w = self.feature_size(*size, tap="conv8")
        return x[..., :h, :w]
