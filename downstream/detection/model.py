"""Fast R-CNN (Girshick 2015) on a colorbench trunk.

    x [N, C_in, H, W] --trunk--> last tap [N, C, H/16, W/16]
      --RoI pool (6 x 6; torchvision.ops.roi_pool, or roi_align)--> [R, C, 6, 6]
      --fc6 / fc7--> [R, D] --> class scores [R, K + 1] (0 = background)
                            --> box deltas  [R, 4 (K + 1)] (class-specific, normalised)

The RoI grid maps image pixels to the tap with ``spatial_scale = 1 / stride`` (the
tap's ``feature_info`` stride; Fast R-CNN's 1/16 for CaffeNet and VGG16).

fc6 / fc7: Linear C*s*s -> D -> D with ReLU and dropout (Fast R-CNN's head). They
start from the checkpoint (``from_checkpoint``) when its method's head is compatible:
its first two convolutions are a fc6 whose kernel equals the RoI grid
(``output_size``) and a 1x1 fc7, both ``fc_dim`` wide. Zhang's released AlexNet head
(``pretext.methods.zhang``, the default on ``alexnet_cc``: pool5 3/1/1, fc6 6x6 dilation
2, BN, fc7 1x1, BN, fc8 313) fits Fast R-CNN's 6 x 6 grid, as when the paper moved its
fc6 / fc7 into Fast R-CNN; the 3x3 ``fc`` head variant fits ``output_size: 3``. A
BatchNorm after a convolution (with or without affine) is folded into the Linear weight
and bias (eps 1e-5). Anything else (a trunk-only checkpoint, another grid or width, a
baseline trunk) starts fc6 / fc7 fresh (PyTorch's default init); the log and
``describe()`` say which.

``cls_score`` ~ N(0, 0.01) and ``bbox_pred`` ~ N(0, 0.001), biases 0, as Fast R-CNN.
BatchNorm layers train by default: a 2-image minibatch still gives every conv5
channel thousands of positions at 600 px (hundreds at the tiny recipe's 192 px).
``freeze_bn`` keeps their statistics fixed (the habit of detection codebases for deep
ResNets); with a Gaussian trunk, whose data-derived BN scales 1/sqrt(var) are large,
SGD then diverges within a few dozen steps (measured on the built-in data).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.ops import RoIAlign, RoIPool

from pretext.engine.checkpoint import load_checkpoint, load_state_strict

POOLS = ("roi_pool", "roi_align")
BN_EPS = 1e-5  # nn.BatchNorm2d's default, as the colorization heads are built


@dataclass
class HeadConfig:
    pool: str = "roi_pool"  # roi_pool (Fast R-CNN) | roi_align (bilinear, no quantisation)
    output_size: int = 6  # CaffeNet's pool5 grid (VGG16: 7)
    sampling_ratio: int = 2  # roi_align: samples per bin side
    fc_dim: int = 4096  # fc6 / fc7 width (Fast R-CNN's 4096)
    dropout: float = 0.5  # fc head, as Fast R-CNN
    from_checkpoint: bool = True  # fc6 / fc7 from the checkpoint's head when compatible (see the module doc)
    freeze_bn: bool = False  # true: BN statistics fixed (diverges with Gaussian trunks; see the module doc)
    freeze: list[str] = field(default_factory=list)  # trunk taps not trained (Fast R-CNN kept CaffeNet's conv1)


def check_head_config(cfg: HeadConfig) -> None:
    if cfg.pool not in POOLS:
        raise ValueError(f"model.pool must be one of {POOLS}, got {cfg.pool!r}")
    if cfg.output_size < 1:
        raise ValueError("model.output_size must be >= 1")


def fc_head(in_features: int, dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Dropout(dropout))


def _folded(state: dict, i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``head.{i}`` conv (+ the BN at ``head.{i+1}``, if any) -> Linear (weight [D, C*k*k], bias [D])."""
    w = state[f"head.{i}.weight"].float()
    b = state.get(f"head.{i}.bias", torch.zeros(w.shape[0])).float()
    bn = f"head.{i + 1}."
    if bn + "running_mean" in state:
        scale = state.get(bn + "weight", torch.ones_like(b)).float() / torch.sqrt(state[bn + "running_var"].float() + BN_EPS)
        w = w * scale[:, None, None, None]
        b = (b - state[bn + "running_mean"].float()) * scale + state.get(bn + "bias", torch.zeros_like(b)).float()
    return w.flatten(1), b


def checkpoint_fc_state(path: str, channels: int, output_size: int, fc_dim: int) -> tuple[dict | None, str]:
    """fc6 / fc7 of a checkpoint's method head as the state of ``fc_head`` (BN folded),
    or None and the reason they are not compatible."""
    payload = load_checkpoint(path)
    state = payload.get("method_state")
    if not isinstance(state, dict):
        return None, "new: the checkpoint holds a trunk only"
    convs = sorted(int(k.split(".")[1]) for k, v in state.items()
                   if k.startswith("head.") and k.endswith(".weight") and k.count(".") == 2 and v.dim() == 4)
    shapes = [tuple(state[f"head.{i}.weight"].shape) for i in convs[:2]]
    want = [(fc_dim, channels, output_size, output_size), (fc_dim, fc_dim, 1, 1)]
    if shapes != want:
        return None, (f"new: the checkpoint's {payload.get('method')} head starts with convolutions {shapes}, "
                      f"not fc6 / fc7 {want} (model.output_size / model.fc_dim)")
    (w6, b6), (w7, b7) = _folded(state, convs[0]), _folded(state, convs[1])
    return ({"1.weight": w6, "1.bias": b6, "4.weight": w7, "4.bias": b7},
            f"from {path} ({payload.get('method')} head, BN folded, step {payload.get('step')})")


class FastRCNN(nn.Module):
    def __init__(self, trunk: nn.Module, num_classes: int, cfg: HeadConfig, head_state: dict | None = None):
        """``num_classes`` = K object classes (the background class is added here)."""
        super().__init__()
        check_head_config(cfg)
        self.trunk, self.cfg, self.num_classes = trunk, cfg, num_classes
        self.tap = trunk.taps[-1]
        info = trunk.feature_info[self.tap]
        channels, stride, s = info["channels"], info["stride"], cfg.output_size
        if cfg.pool == "roi_pool":
            self.pool = RoIPool((s, s), 1.0 / stride)
        else:
            self.pool = RoIAlign((s, s), 1.0 / stride, cfg.sampling_ratio, aligned=True)
        dim = cfg.fc_dim
        self.head = fc_head(channels * s * s, dim, cfg.dropout)
        self.head_source = "new"
        if head_state is not None:
            load_state_strict(self.head, head_state)
            self.head_source = "checkpoint"
        self.cls_score = nn.Linear(dim, num_classes + 1)
        self.bbox_pred = nn.Linear(dim, 4 * (num_classes + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        for tap in cfg.freeze:
            if tap not in trunk.taps:
                raise ValueError(f"model.freeze: {tap!r} is not a tap of this trunk ({', '.join(trunk.taps)})")
            for p in getattr(trunk.net, tap).parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.cfg.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor, rois: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``x``: the trunk's input [N, C_in, H, W]; ``rois``: per image [R_i, 4] in input
        pixels -> (class logits [R, K + 1], box deltas [R, 4 (K + 1)]), R = sum R_i."""
        feats = self.trunk.forward_features(x, [self.tap])[self.tap]      # [N, C, h, w]
        pooled = self.pool(feats, [r.to(feats.dtype) for r in rois])       # [R, C, s, s]
        h = self.head(pooled)                                              # [R, D]
        return self.cls_score(h), self.bbox_pred(h)

    def describe(self) -> dict:
        return {"fc_dim": self.cfg.fc_dim, "head_source": self.head_source, "pool": self.cfg.pool,
                "output_size": self.cfg.output_size, "tap": self.tap,
                "spatial_scale": 1.0 / self.trunk.feature_info[self.tap]["stride"]}


def param_groups(model: nn.Module, lr: float, weight_decay: float, bias_lr_factor: float) -> list[dict]:
    """Caffe's convention in Fast R-CNN: biases at ``bias_lr_factor`` x lr without weight decay."""
    weights = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("bias")]
    return [{"params": weights, "lr": lr, "weight_decay": weight_decay},
            {"params": biases, "lr": lr * bias_lr_factor, "weight_decay": 0.0}]
