"""Iizuka, Simo-Serra, Ishikawa, "Let there be Color!: Joint End-to-end Learning of Global
and Local Image Priors for Automatic Image Colorization with Simultaneous Classification"
(SIGGRAPH 2016): ab regression from local features fused with a global image vector.

Networks (designed on the ``iizuka_cc`` trunk, ``pretext.encoders.iizuka``; channel
counts scale with the trunk's ``width``):

* low-level features (one set of weights, run twice): the trunk up to its ``global_tap``
  (iizuka_cc: conv6, 512 x H/8 x W/8);
* mid-level features: the trunk's deepest tap (iizuka_cc: conv8, 256 x H/8 x W/8);
* global features (``head_global``) on the low-level output of a copy of the image
  resized to 224 x 224 (bilinear, antialiased; the paper's fixed global input, so any
  input size works): conv 3x3 512 s2, 512, 512 s2, 512 (BN + ReLU; 28 -> 7), flatten,
  FC 1024 -> 512 -> 256 (ReLU; no BN, so a micro-batch of one trains);
* classification (``head_class``, only when ``num_classes`` > 0): FC 256 -> num_classes
  on the global network's 512-d layer;
* fusion (``head_fusion``): the 256-d global vector concatenated at every position of
  the mid-level map, a 1x1 conv to 256 (BN + ReLU);
* colorization (``head_color``): conv 128, nearest x2, conv 64, conv 64, nearest x2,
  conv 32, conv 2 + sigmoid: normalised ab at 4x the mid-level size (H/2 x W/2 on
  iizuka_cc: half resolution); ``colorize`` upsamples it to the input bilinearly.

Loss: MSE between the sigmoid output and the normalised ab, ``(ab + 128) / 255`` (the
8-bit Lab encoding, so [0, 1] covers every sRGB colour), point-sampled at the output's
size (``pretext.color.targets.resample_ab``), averaged over pixels and channels, over
the images with colour (``colorful_mask``); plus ``alpha`` (1/300, the paper's) times
the classification cross-entropy over the images with a label (label -1: none).

Other trunks: their deepest tap serves as both the low- and the mid-level features, and
an adaptive average pool brings the global map to 7 x 7 (the identity on iizuka_cc);
the output is 4x the deepest tap's size, so a trunk of stride < 4 (``liang_cc``) is
refused. Style transfer (the paper's Fig. 9): ``predict_ab(l, global_lightness=g)``
takes the global vector from another image ``g`` (``colorbench colorize --global-from``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretext.color.losses import colorful_mask
from pretext.color.targets import resample_ab, to_lab
from pretext.encoders import normalize_l
from pretext.encoders.registry import conv_bn_relu, scaled
from pretext.methods.base import Method, StepContext, ValidationOutput, register_method

AB_SHIFT, AB_SCALE = 128.0, 255.0  # normalised ab = (ab + 128) / 255, the 8-bit Lab encoding
OPTIONS = ("global_lightness",)


def normalise_ab(ab: torch.Tensor) -> torch.Tensor:
    return (ab + AB_SHIFT) / AB_SCALE


def denormalise_ab(y: torch.Tensor) -> torch.Tensor:
    return y * AB_SCALE - AB_SHIFT


def iizuka_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, logits: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, alpha: float = 1 / 300) -> tuple[torch.Tensor, dict]:
    """MSE (pred, target: normalised ab [N,2,h,w]; mean over pixels and channels, then over
    the images where ``mask`` [N] is True) + alpha x cross-entropy (logits [N,K], labels
    [N], mean over labels >= 0). Returns (loss, {"mse", "class_ce"} as tensors)."""
    per_image = (pred - target).pow(2).mean((1, 2, 3))  # [N]
    mse = per_image[mask].mean() if mask.any() else pred.sum() * 0.0  # all gray: 0 that backpropagates
    ce = mse.new_zeros(())
    if logits is not None:
        labelled = labels >= 0
        ce = F.cross_entropy(logits[labelled], labels[labelled]) if labelled.any() else logits.sum() * 0.0
    return mse + alpha * ce, {"mse": mse.detach(), "class_ce": ce.detach()}


class GlobalFeatures(nn.Module):
    """Low-level features of the 224 copy [N,C,28,28] -> (global vector [N,256], the
    512-d layer the classifier reads [N,512])."""

    def __init__(self, cin: int, width: float):
        super().__init__()
        c, f1, f2, f3 = (scaled(n, width, 2) for n in (512, 1024, 512, 256))
        self.convs = nn.Sequential(*conv_bn_relu(cin, c, 3, padding=1, stride=2, bias=False),  # [N,512,14,14]
                                   *conv_bn_relu(c, c, 3, padding=1, bias=False),
                                   *conv_bn_relu(c, c, 3, padding=1, stride=2, bias=False),    # [N,512,7,7]
                                   *conv_bn_relu(c, c, 3, padding=1, bias=False),
                                   nn.AdaptiveAvgPool2d(7))  # the identity on iizuka_cc; other trunks' sizes
        self.fc1 = nn.Sequential(nn.Linear(c * 49, f1), nn.ReLU(inplace=True))  # [N,1024]
        self.fc2 = nn.Sequential(nn.Linear(f1, f2), nn.ReLU(inplace=True))      # [N,512]
        self.fc3 = nn.Sequential(nn.Linear(f2, f3), nn.ReLU(inplace=True))      # [N,256]
        self.out_features, self.hidden_features = f3, f2
        for fc in (self.fc1, self.fc2, self.fc3):  # He init: the global vector keeps its scale through 3 ReLU layers
            nn.init.kaiming_normal_(fc[0].weight, nonlinearity="relu")
            nn.init.zeros_(fc[0].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.fc2(self.fc1(self.convs(x).flatten(1)))
        return self.fc3(hidden), hidden


def colorization_net(cin: int, width: float) -> nn.Sequential:
    """Fused features [N,256,h,w] -> normalised ab in [0,1] [N,2,4h,4w]."""
    c1, c2, c3 = (scaled(n, width, 2) for n in (128, 64, 32))
    return nn.Sequential(*conv_bn_relu(cin, c1, 3, padding=1, bias=False),
                         nn.Upsample(scale_factor=2, mode="nearest"),                  # [N,128,2h,2w]
                         *conv_bn_relu(c1, c2, 3, padding=1, bias=False),
                         *conv_bn_relu(c2, c2, 3, padding=1, bias=False),
                         nn.Upsample(scale_factor=2, mode="nearest"),                  # [N,64,4h,4w]
                         *conv_bn_relu(c2, c3, 3, padding=1, bias=False),
                         nn.Conv2d(c3, 2, 3, padding=1), nn.Sigmoid())                # [N,2,4h,4w]


@register_method("iizuka")
class Iizuka(Method):
    summary = ("Iizuka et al. 2016 · MSE on normalised ab + 1/300 x class CE on the global branch (when labels) "
               "· sigmoid ab at 1/2 resolution, fused global + mid-level features")
    decoders = ()  # ab regression: one deterministic output

    def __init__(self, trunk: nn.Module, num_classes: int = 0, alpha: float = 1 / 300, global_size: int = 224):
        super().__init__(trunk)
        if trunk.feature_info[trunk.taps[-1]]["stride"] < 4:
            raise ValueError(f"iizuka upsamples its fused map x4 to a half-resolution output: it needs a trunk whose "
                             f"deepest tap has stride >= 4 ({trunk.encoder_name} has "
                             f"{trunk.feature_info[trunk.taps[-1]]['stride']}); use iizuka_cc")
        if num_classes < 0 or global_size < getattr(trunk, "min_size", 1):
            raise ValueError(f"iizuka: num_classes must be >= 0 and global_size >= the trunk's minimum input, "
                             f"got {num_classes}, {global_size}")
        self.num_classes, self.alpha, self.global_size = int(num_classes), float(alpha), int(global_size)
        self.low_tap = getattr(trunk, "global_tap", trunk.taps[-1])  # what the global network reads
        self.mid_tap = trunk.taps[-1]                                 # what the fusion layer reads
        self.head_global = GlobalFeatures(trunk.feature_info[self.low_tap]["channels"], trunk.width)
        fused = scaled(256, trunk.width, 2)
        cmid = trunk.feature_info[self.mid_tap]["channels"]
        self.head_fusion = nn.Sequential(nn.Conv2d(cmid + self.head_global.out_features, fused, 1, bias=False),
                                         nn.BatchNorm2d(fused), nn.ReLU(inplace=True))
        self.head_color = colorization_net(fused, trunk.width)
        if self.num_classes:
            hidden = self.head_global.hidden_features
            self.head_class = nn.Sequential(nn.Linear(hidden, scaled(256, trunk.width, 2)), nn.ReLU(inplace=True),
                                            nn.Linear(scaled(256, trunk.width, 2), self.num_classes))

    # -- the network ---------------------------------------------------------------------
    def output_size(self, h: int, w: int) -> tuple[int, int]:
        fh, fw = self.trunk.feature_size(h, w)
        return 4 * fh, 4 * fw

    def global_features(self, lightness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised L [N,1,H,W] (any size) -> (global [N,256], hidden [N,512]), from the
        low-level features of the image resized to global_size x global_size."""
        size = (self.global_size, self.global_size)
        if tuple(lightness.shape[-2:]) != size:
            lightness = F.interpolate(lightness, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.head_global(self.trunk.forward_features(lightness, [self.low_tap])[self.low_tap])

    def network(self, lightness: torch.Tensor, global_lightness: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised L [N,1,H,W] -> (normalised ab [N,2,h,w] at output_size, hidden [N,512]
        of the global network). ``global_lightness`` [1 or N,1,H',W']: the global vector's
        image (default: the input itself)."""
        feats = self.trunk.forward_features(lightness, dict.fromkeys([self.low_tap, self.mid_tap]))
        square = tuple(lightness.shape[-2:]) == (self.global_size,) * 2
        if global_lightness is None and square:  # the paper's shared low-level pass at 224 x 224
            glob, hidden = self.head_global(feats[self.low_tap])
        else:
            glob, hidden = self.global_features(lightness if global_lightness is None else global_lightness)
        mid = feats[self.mid_tap]  # [N,256,h/4,w/4]
        glob = glob.expand(mid.shape[0], -1)  # a single style image's vector serves the whole batch
        fused = self.head_fusion(torch.cat([mid, glob[:, :, None, None].expand(-1, -1, *mid.shape[-2:])], 1))
        return self.head_color(fused), hidden

    # -- training ------------------------------------------------------------------------
    def _inputs(self, batch: dict, device: torch.device):
        images, labels = batch["image"], batch.get("label")
        if labels is None:
            labels = torch.full((images.shape[0],), -1, dtype=torch.long)
        if images.shape[0] == 0:  # every file of this micro-batch was unreadable: one gray image, masked out
            images, labels = torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.full((1,), -1, dtype=torch.long)
        labels = labels.to(device)
        if self.num_classes and int(labels.max()) >= self.num_classes:
            raise ValueError(f"iizuka: label {int(labels.max())} >= num_classes {self.num_classes}; set "
                             "method_kwargs.num_classes to the data's class count")
        lab = to_lab(images, device)  # [n,3,H,W]
        return normalize_l(lab[:, :1]), lab[:, 1:], labels

    def _outputs(self, lightness: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(normalised ab [n,2,h,w], class logits [n,K] or None)."""
        pred, hidden = self.network(lightness)
        return pred, (self.head_class(hidden) if self.num_classes else None)

    def _loss(self, pred: torch.Tensor, logits: torch.Tensor | None, ab: torch.Tensor, labels: torch.Tensor):
        target = normalise_ab(resample_ab(ab, tuple(pred.shape[-2:])))  # [n,2,h,w]
        logits = None if logits is None else logits.float()
        return iizuka_loss(pred.float(), target, colorful_mask(ab), logits, labels, self.alpha)

    def forward(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        lightness, ab, labels = self._inputs(batch, ctx.device)
        x = lightness.contiguous(memory_format=torch.channels_last) if ctx.channels_last else lightness
        with ctx.autocast():
            pred, logits = self._outputs(x)
        loss, _ = self._loss(pred, logits, ab, labels)
        return loss, {"colourful": int(colorful_mask(ab).sum())}

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, decoder: str = "annealed", **options) -> torch.Tensor:
        """Normalised L [N,1,H,W] -> ab [N,2,h,w] (``decoder`` is ignored: a regression).
        ``global_lightness``: normalised L [1 or N,1,H',W'] of the image whose global
        features to use (style transfer)."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"iizuka: unknown colorize options {unknown}; valid: {list(OPTIONS)}")
        g = options.get("global_lightness")
        if g is not None and (g.dim() != 4 or g.shape[1] != 1 or g.shape[0] not in (1, lightness.shape[0])):
            raise ValueError(f"iizuka: global_lightness must be normalised L [1 or N,1,H,W], got {list(g.shape)}")
        pred, _ = self.network(lightness, None if g is None else g.to(lightness))
        return denormalise_ab(pred.float())

    @torch.no_grad()
    def validation_step(self, batch: dict, ctx: StepContext) -> ValidationOutput | None:
        """Loss, its MSE part, and the gray baseline's MSE (ab = 0 everywhere: the bar to beat)."""
        lightness, ab, labels = self._inputs(batch, ctx.device)
        mask = colorful_mask(ab)
        if not mask.any():
            return None
        pred, logits = self._outputs(lightness)
        loss, parts = self._loss(pred, logits, ab, labels)
        gray, _ = iizuka_loss(torch.full_like(pred, AB_SHIFT / AB_SCALE).float(),
                              normalise_ab(resample_ab(ab, tuple(pred.shape[-2:]))), mask)
        n = int(mask.sum())
        sums = {"val_loss": float(loss) * n, "val_mse": float(parts["mse"]) * n, "gray_baseline_mse": float(gray) * n}
        full = F.interpolate(denormalise_ab(pred.float()), size=ab.shape[2:], mode="bilinear", align_corners=False)
        return ValidationOutput(sums, n, lightness[mask], full[mask], ab[mask])
