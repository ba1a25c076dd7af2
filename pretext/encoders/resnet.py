"""``resnet50_cc``: timm's ResNet-50 with a 1-channel stem and no classifier.

``conv1`` = stem conv+BN+ReLU (before the max-pool), ``res2``-``res5`` = timm
``layer1``-``layer4``. ``last_stride1=True`` dilates res5 (timm ``output_stride=16``).
``width`` scales the four stages; timm's 7x7 stem keeps 64 channels. Zero-init of each
block's last BN is timm's default. 23,501,760 parameters at width 1.
"""
from __future__ import annotations

from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from pretext.encoders.registry import ColorEncoder, register_encoder, scaled


@register_encoder("resnet50_cc")
class ResNet50CC(ColorEncoder):
    """timm ResNet-50 with a 1-channel stem; taps conv1, res2-res5."""

    _pre = {"res2": "maxpool"}

    def __init__(self, width: float = 1.0, last_stride1: bool = False):
        super().__init__(width)
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
        self.last_stride1 = last_stride1
