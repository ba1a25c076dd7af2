"""Zhang, Isola, Efros (ECCV 2016): colorization as classification over 313 ab bins.

Head (on the trunk's deepest tap, sized from ``feature_info``; 4096 scales with the
trunk's ``width``):

* ``released`` (the default for ``alexnet_cc``, as the released AlexNet pretext recipe):
  pool5 3/1/1 -> fc6 as a 6x6 convolution dilated by 2 (the fc6 window over pool5's
  stride-32 grid, kept at stride 16) -> BN without affine -> ReLU -> fc7 1x1 -> BN
  without affine -> ReLU -> fc8 1x1 to 313; the logits are bilinearly upsampled x2, so
  the loss is at stride 8;
* ``fc`` (the CPU recipe's head): conv3x3 4096 -> BN -> ReLU -> conv1x1 4096 -> BN ->
  ReLU -> conv1x1 313 at stride 16: a smaller receptive field, cheaper on 128-px crops;
* ``linear`` (the default elsewhere): one 1x1 conv to 313, as the ECCV16 colorizer's
  ``model8`` output on ``vgg_cc``'s conv8.

Targets: ab point-sampled at the head's output size, as the release's strided 1x1
convolution does (``target_sampling: area`` averages instead: a departure that lowers
chroma), soft-encoded over the K nearest bins (``pretext.color.bins``); the prior is
counted on the same grid. Losses (``loss``): ``full`` (multinomial cross-entropy, each
pixel's gradient scaled by the class-rebalancing weight of its target's argmax bin),
``class`` (no rebalancing), ``l2`` (ab regression: the head has 2 outputs). The
rebalancing prior is counted once on the training data (``pretext.color.prior``) and
checkpointed as the buffer ``prior``; ``class_weights`` follow from it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretext.color.bins import NUM_BINS, ab_centers, decode
from pretext.color.losses import LOSS_VARIANTS, colorization_loss
from pretext.color.rebalance import rebalance_weights
from pretext.color.targets import SAMPLINGS, prepare_batch
from pretext.encoders.registry import conv_bn_relu, scaled
from pretext.methods.base import Method, StepContext, ValidationOutput, register_method

HEADS = ("auto", "released", "fc", "linear")
DECODERS = ("mean", "mode", "annealed")


def colorization_head(trunk: nn.Module, out_channels: int, kind: str = "auto") -> nn.Module:
    """The head on the trunk's deepest tap: [N, C, h, w] -> [N, out_channels, h, w]."""
    kind = resolve_head(trunk, kind)
    cin = trunk.feature_info[trunk.taps[-1]]["channels"]
    if kind == "linear":
        return nn.Conv2d(cin, out_channels, 1)
    fc = scaled(4096, trunk.width, 2)
    if kind == "fc":
        return nn.Sequential(*conv_bn_relu(cin, fc, 3, padding=1, bias=False),
                             *conv_bn_relu(fc, fc, 1, bias=False),
                             nn.Conv2d(fc, out_channels, 1))
    return nn.Sequential(nn.MaxPool2d(3, 1, 1),                                   # pool5 3/1/1
                         nn.Conv2d(cin, fc, 6, padding=5, dilation=2),              # fc6: 6x6, dilation 2
                         nn.BatchNorm2d(fc, affine=False), nn.ReLU(inplace=True),
                         nn.Conv2d(fc, fc, 1), nn.BatchNorm2d(fc, affine=False), nn.ReLU(inplace=True),  # fc7
                         nn.Conv2d(fc, out_channels, 1))                            # fc8 (class8_313)


def resolve_head(trunk: nn.Module, kind: str) -> str:
    if kind not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
    if kind == "auto":
        return "released" if trunk.encoder_name == "alexnet_cc" else "linear"
    return kind


@register_method("zhang")
class Zhang(Method):
    summary = "Zhang et al. 2016 · multinomial CE over 313 ab bins (+ rebalancing; or l2) · 313-way distribution -> ab"

    def __init__(self, trunk: nn.Module, loss: str = "full", k: int = 5, sigma: float = 5.0,
                 head: str = "auto", lam: float = 0.5, prior_sigma: float = 5.0, target_sampling: str = "point"):
        super().__init__(trunk)
        if loss not in LOSS_VARIANTS:
            raise ValueError(f"loss must be one of {LOSS_VARIANTS}, got {loss!r}")
        if target_sampling not in SAMPLINGS:
            raise ValueError(f"target_sampling must be one of {SAMPLINGS}, got {target_sampling!r}")
        self.loss_name, self.k, self.sigma, self.lam, self.prior_sigma = loss, int(k), float(sigma), lam, prior_sigma
        self.target_sampling = target_sampling
        self.head = colorization_head(trunk, 2 if loss == "l2" else NUM_BINS, head)
        self.upsample = 2 if resolve_head(trunk, head) == "released" else 1  # released: loss at stride 8
        # the training prior p over the 313 bins and w = rebalance(p); uniform until setup()
        self.register_buffer("prior", torch.full((NUM_BINS,), 1.0 / NUM_BINS))
        self.register_buffer("class_weights", torch.ones(NUM_BINS))

    @property
    def decoders(self) -> tuple[str, ...]:
        return () if self.loss_name == "l2" else DECODERS  # l2 regresses ab: nothing to decode

    @property
    def record_name(self) -> str:
        return f"colorization-{self.loss_name}"  # the paper's rows: full / class / l2

    # -- set-up ------------------------------------------------------------------------
    def setup(self, ctx: StepContext) -> None:
        from pretext.color.prior import shared_prior
        crop = ctx.config.data.crop  # the prior is counted on the targets' grid for a training crop
        prior, where = shared_prior(ctx.config, ctx.device, self.output_size(crop, crop), self.target_sampling, ctx.say)
        self.set_prior(prior)
        ctx.stats["prior"] = where

    def set_prior(self, prior: torch.Tensor) -> None:
        self.prior.copy_(prior.to(self.prior))
        self.class_weights.copy_(rebalance_weights(self.prior, lam=self.lam, sigma=self.prior_sigma))

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        if "class_weights" not in state and "prior" in state:  # a colorbench 0.1 checkpoint
            state = dict(state, class_weights=rebalance_weights(state["prior"].float(), self.lam, self.prior_sigma))
        super().load_method_state(state)

    # -- forward -----------------------------------------------------------------------
    def logits(self, lightness: torch.Tensor) -> torch.Tensor:
        """Normalised L [N,1,H,W] -> logits [N,313,h,w] (or ab [N,2,h,w] for ``l2``)."""
        out = self.head(self.trunk(lightness))
        if self.upsample > 1:
            out = F.interpolate(out, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return out

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        th, tw = self.trunk.feature_size(h, w)
        return th * self.upsample, tw * self.upsample

    def _batch(self, images: torch.Tensor, device: torch.device):
        out_size = self.output_size(images.shape[2], images.shape[3])
        return prepare_batch(images, out_size, device, self.k, self.sigma, encode=self.loss_name != "l2",
                             sampling=self.target_sampling)

    def _loss(self, out: torch.Tensor, pb) -> torch.Tensor:
        return colorization_loss(self.loss_name, out.float(), pb.target_ab, pb.encoding, self.class_weights, pb.mask)

    def forward(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """uint8 RGB [n,3,H,W] -> (masked mean loss, {"colourful": images with colour})."""
        images = batch["image"]
        if images.shape[0] == 0:  # every file of this micro-batch was unreadable: one gray image, masked out
            images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
        pb = self._batch(images, ctx.device)
        x = pb.lightness.contiguous(memory_format=torch.channels_last) if ctx.channels_last else pb.lightness
        with ctx.autocast():
            out = self.logits(x)  # [n,313,h,w] logits (or [n,2,h,w] ab for l2)
        return self._loss(out, pb), {"colourful": int(pb.mask.sum())}

    # -- evaluation ----------------------------------------------------------------------
    def _to_ab(self, out: torch.Tensor, decoder: str) -> torch.Tensor:
        if self.loss_name == "l2":
            return out
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        return decode(out, decoder)

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, decoder: str = "annealed", **options) -> torch.Tensor:
        if options:
            raise ValueError(f"zhang: unknown colorize options {sorted(options)}")
        return self._to_ab(self.logits(lightness).float(), decoder)

    @torch.no_grad()
    def validation_step(self, batch: dict, ctx: StepContext) -> ValidationOutput | None:
        """Loss, the prior-only baseline loss (predicting the training prior everywhere:
        the bar to beat) and the annealed-mean colorization of the colourful images."""
        pb = self._batch(batch["image"], ctx.device)
        if not pb.mask.any():
            return None
        out = self.logits(pb.lightness).float()
        n = int(pb.mask.sum())
        sums = {"val_loss": float(self._loss(out, pb)) * n,
                "prior_baseline_loss": float(self._prior_baseline(out, pb)) * n}
        ab = F.interpolate(self._to_ab(out, "annealed"), size=pb.ab.shape[2:], mode="bilinear", align_corners=False)
        m = pb.mask
        return ValidationOutput(sums, n, pb.lightness[m], ab[m], pb.ab[m])

    def _prior_baseline(self, out: torch.Tensor, pb) -> torch.Tensor:
        if self.loss_name == "l2":
            mean_ab = (self.prior[:, None] * ab_centers(out.device)).sum(0)
            return colorization_loss("l2", mean_ab[None, :, None, None].expand_as(out), pb.target_ab, mask=pb.mask)
        logits = torch.log(self.prior.clamp_min(1e-12))[None, :, None, None].expand_as(out).contiguous()
        return self._loss(logits, pb)
