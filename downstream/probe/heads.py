"""Linear-probe heads on frozen taps: the pooling table, the heads, the trunk guard.

Pooling (DESIGN §4). Each tap is average-pooled to about 9,000 dims, then BatchNorm
without affine, then a Linear layer. The published pools live in ``POOL_TABLES``, one
table per encoder: the input size it was written for, and per tap the map side it
expects and (kernel, stride, padding) of ``nn.AvgPool2d``:

    alexnet_cc @ 227: conv1 55 -> k19 s4 -> 96x10x10 = 9600,  conv2 27 -> k12 s3 -> 256x6x6 = 9216,
                      conv3/conv4 13 -> k9 s1 -> 384x5x5 = 9600, conv5 13 -> k8 s1 -> 256x6x6 = 9216
    resnet50_cc @ 224: conv1 112 -> k10 s10 p4 -> 64x12x12 = 9216, res2 56 -> k16 s8 -> 256x6x6 = 9216,
                       res3 28 -> k13 s5 -> 512x4x4 = 8192, res4 14 -> k8 s3 -> 1024x3x3 = 9216,
                       res5 7 -> k6 s1 -> 2048x2x2 = 8192

A trunk names its table with ``pool_table`` (``downstream.trunks``: a colorbench
encoder's own name; a user's timm / torchvision ResNet-50 takes the ResNet-50 table, as
Goyal et al. 2019 did for RGB ResNet-50s), else its ``encoder_name`` is looked up.
The table is checked against the encoder's real shapes (``feature_info`` channels and
``feature_size``) when the pools are built, and every batch's tap shapes are checked in
``ProbeHeads.pool``. A ``width`` multiplier keeps the spatial pools (the dims scale with
the channels).

Adaptive rule (every other encoder, input size or width, e.g. the built-in 64 px data):
for a tap of C channels on an h x w map, side ``s = max(1, round(sqrt(target_dim / C)))``
and ``nn.AdaptiveAvgPool2d((min(s, h), min(s, w)))``: about ``target_dim`` dims (9,000
by default) and never more cells than the map has (small maps are kept whole).
``mode``: ``auto`` (the table when the encoder, input size and map sides match, else
adaptive), ``table`` (the table or an error), ``adaptive``.

BatchNorm is per channel (``BatchNorm2d(C, affine=False)`` before flattening, as VISSL's
``eval_mlp`` head that these tables come from).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

POOL_MODES = ("auto", "table", "adaptive")

# encoder -> {"input": side, "taps": {tap: (expected map side, kernel, stride, padding)}}
POOL_TABLES: dict[str, dict] = {
    "alexnet_cc": {"input": 227, "taps": {
        "conv1": (55, 19, 4, 0), "conv2": (27, 12, 3, 0), "conv3": (13, 9, 1, 0),
        "conv4": (13, 9, 1, 0), "conv5": (13, 8, 1, 0)}},
    "resnet50_cc": {"input": 224, "taps": {
        "conv1": (112, 10, 10, 4), "res2": (56, 16, 8, 0), "res3": (28, 13, 5, 0),
        "res4": (14, 8, 3, 0), "res5": (7, 6, 1, 0)}},
}


@dataclass(frozen=True)
class PoolSpec:
    """How one tap is pooled: ``in_shape`` (C, h, w) -> ``out_shape`` (C, h', w')."""
    tap: str
    kind: str                       # "table" | "adaptive"
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    kernel: int = 0
    stride: int = 0
    padding: int = 0

    @property
    def dim(self) -> int:
        return math.prod(self.out_shape)

    def module(self) -> nn.Module:
        if self.kind == "table":
            return nn.AvgPool2d(self.kernel, self.stride, self.padding)
        return nn.AdaptiveAvgPool2d(self.out_shape[1:])


def _pooled_side(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1  # nn.AvgPool2d, ceil_mode=False


def _table_specs(model: nn.Module, taps: list[str], side: int) -> tuple[dict[str, PoolSpec] | None, str]:
    """The table's pools, or (None, why not)."""
    name = getattr(model, "pool_table", None) or getattr(model, "encoder_name", type(model).__name__)
    table = POOL_TABLES.get(name)
    if table is None:
        return None, f"no pooling table for encoder {name!r} (tables: {sorted(POOL_TABLES)})"
    if side != table["input"]:
        return None, f"the {name} table is for {table['input']} px input, not {side}"
    specs = {}
    for tap in taps:
        if tap not in table["taps"]:
            return None, f"the {name} table has no tap {tap!r}"
        expect, k, s, p = table["taps"][tap]
        h, w = model.feature_size(side, side, tap)
        if (h, w) != (expect, expect):
            return None, f"{name} tap {tap} is {h}x{w} at {side} px, the table expects {expect}x{expect}"
        c = model.feature_info[tap]["channels"]
        out = (c, _pooled_side(h, k, s, p), _pooled_side(w, k, s, p))
        specs[tap] = PoolSpec(tap, "table", (c, h, w), out, k, s, p)
    return specs, ""


def adaptive_spec(tap: str, channels: int, h: int, w: int, target_dim: int) -> PoolSpec:
    s = max(1, round(math.sqrt(target_dim / channels)))
    return PoolSpec(tap, "adaptive", (channels, h, w), (channels, min(s, h), min(s, w)))


def build_pool_specs(model: nn.Module, taps: list[str], side: int, mode: str = "auto",
                     target_dim: int = 9000) -> dict[str, PoolSpec]:
    """Pools for ``taps`` of ``model`` at a ``side`` x ``side`` input (see module doc)."""
    if mode not in POOL_MODES:
        raise ValueError(f"pool mode must be one of {POOL_MODES}, got {mode!r}")
    if mode != "adaptive":
        specs, why = _table_specs(model, taps, side)
        if specs is not None:
            return specs
        if mode == "table":
            raise ValueError(f"pool.mode=table: {why}; use pool.mode=auto or adaptive")
    if target_dim < 1:
        raise ValueError(f"pool.target_dim must be >= 1, got {target_dim}")
    out = {}
    for tap in taps:
        h, w = model.feature_size(side, side, tap)
        if h < 1 or w < 1:
            raise ValueError(f"tap {tap} is empty ({h}x{w}) at {side} px input; use a larger crop")
        out[tap] = adaptive_spec(tap, model.feature_info[tap]["channels"], h, w, target_dim)
    return out


class ProbeHeads(nn.Module):
    """One head per tap: pool (``pools``, no parameters) then BN (no affine) + Linear
    (``heads``). ``pool`` and ``forward`` are separate so cached pooled features skip the
    trunk and the pool."""

    def __init__(self, specs: dict[str, PoolSpec], num_classes: int):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a probe needs at least 2 classes, got {num_classes}")
        self.specs = dict(specs)
        self.pools = nn.ModuleDict({t: s.module() for t, s in specs.items()})
        self.heads = nn.ModuleDict({t: nn.Sequential(nn.BatchNorm2d(s.out_shape[0], affine=False),
                                                     nn.Flatten(), nn.Linear(s.dim, num_classes))
                                    for t, s in specs.items()})
        for head in self.heads.values():  # VISSL's linear-eval init
            nn.init.normal_(head[2].weight, std=0.01)
            nn.init.zeros_(head[2].bias)

    @property
    def taps(self) -> list[str]:
        return list(self.specs)

    def pool(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{tap: [N, C, h, w]} -> {tap: [N, C, h', w']}, checking each map's shape."""
        out = {}
        for tap, spec in self.specs.items():
            x = feats[tap]
            if tuple(x.shape[1:]) != spec.in_shape:
                raise ValueError(f"tap {tap} gave {list(x.shape[1:])}, the probe's pooling expects "
                                 f"{list(spec.in_shape)} (crop size or encoder changed?)")
            out[tap] = self.pools[tap](x)
        return out

    def forward(self, pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{tap: [N, C, h', w']} -> {tap: logits [N, num_classes]}."""
        return {tap: self.heads[tap](pooled[tap]) for tap in self.specs}


class TrunkChangedError(RuntimeError):
    """The frozen trunk's weights or BN statistics changed while the probe trained."""


class TrunkGuard:
    """Snapshot of a frozen trunk (parameters *and* buffers: BN running statistics are
    weights too); ``check()`` raises ``TrunkChangedError`` if anything moved or if a
    module left eval mode."""

    def __init__(self, trunk: nn.Module):
        self.trunk = trunk
        self.snapshot = {k: v.detach().to("cpu", copy=True) for k, v in trunk.state_dict().items()}

    def check(self) -> None:
        training = [n or "<root>" for n, m in self.trunk.named_modules() if m.training]
        state = self.trunk.state_dict()
        changed = [k for k, v in self.snapshot.items()
                   if k not in state or not torch.equal(v, state[k].detach().cpu())]
        if changed or training:
            raise TrunkChangedError(f"the frozen trunk changed during the probe: tensors {changed[:8]}"
                                    f"{'...' if len(changed) > 8 else ''}; modules in train mode "
                                    f"{training[:8]}")


def freeze(trunk: nn.Module) -> nn.Module:
    """Eval mode (BN uses its running statistics) and no gradients."""
    trunk.eval()
    trunk.requires_grad_(False)
    return trunk
