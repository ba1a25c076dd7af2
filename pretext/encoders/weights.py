"""Released weights in and out of colorbench: the shared pieces.

``colorbench import-weights`` (``weights_import``) and ``colorbench export-weights``
(``weights_export``) use these: reading a weights file safely, checking its keys and
shapes with a one-line error, the ResNet-50 key renames (both ways), folding an
eval-mode BatchNorm into the conv before it, expanding a grouped conv to a dense one,
and turning a 1-channel L stem into a 3-channel RGB stem.

The RGB stem (an approximation, the one inexact step; ``--input l`` avoids it).
colorbench trunks see ``u = L / 100 - 0.5`` (Lab L, [N, 1, H, W]). L is not linear in
RGB, so an RGB stem uses the sRGB luminance weights k = (0.2126, 0.7152, 0.0722) on the
gamma-encoded values, ``L / 100 ~ k . v`` (v = RGB in [0, 1]; |delta L| <= 3.4 on the
gray axis; mean 2-6, 99th percentile 5-13 on skimage's astronaut / coffee / chelsea /
rocket photos; saturated blues are worst). With the input normalised as torchvision
does, ``x_c = (v_c - mean_c) / std_c``:

    u ~ sum_c k_c std_c x_c + (sum_c k_c mean_c - 0.5)
    W_rgb[:, c] = W_L[:, 0] * k_c * std_c;   shift_o = (sum_c k_c mean_c - 0.5) * sum(W_L[o])

``conv_L(u) = conv_rgb(x) + shift``: the shift goes into the conv's bias (AlexNet's
unpadded conv1: exact everywhere) or, for a bias-free conv followed by BN (ResNet),
into ``running_mean -= shift`` (exact away from the zero-padded 3-pixel border, where
the padding is 0 in x, not in u).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

LUMA = (0.2126, 0.7152, 0.0722)  # sRGB / Rec. 709 luminance weights of R, G, B
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's input normalisation


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A weights file as {key: tensor}: ``torch.load(weights_only=True)`` (nothing is
    unpickled); a raw state dict, or one under ``"state_dict"`` / ``"model"``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, f"{what} weights file not found", str(path))
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (not a torch file, truncated, or needs unpickling)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "weights only load failed" in first.lower():  # torch's long weights_only notice: say it briefly
            first = "not a torch file, or it holds objects other than tensors, which colorbench never unpickles"
        raise ValueError(f"{path} cannot be read as a {what} state dict of tensors ({first[:120]})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{path} is not a {what} state dict (a dict of tensors)")
    return data


def check_state(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], what: str,
                optional: Iterable[str] = ()) -> None:
    """Every expected key present with its shape, no other key; ``optional`` keys may be
    absent. Otherwise one ValueError line naming the keys (at most 6 of each kind)."""
    optional = set(optional)
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [f"{k} {list(state[k].shape)} (expected {list(expected[k])})" for k in expected
              if k in state and tuple(state[k].shape) != tuple(expected[k])]
    problems = [f"{name}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''} ({len(items)})"
                for name, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                    ("wrong shapes", shapes)) if items]
    if problems:
        raise ValueError(f"not {what}: " + "; ".join(problems))



def check_out(path: str | Path, overwrite: bool) -> Path:
    """Refuse to replace an existing ``--out`` file unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise ValueError(f"--out {path} already exists; pass --overwrite to replace it")
    return path


# ----------------------------------------------------------------------------- conv algebra

@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """conv -> eval-mode BN as one conv: (weight [O, I/g, k, k], bias [O]). Exact up to
    float rounding: ``BN(W * x + b) = (s W) * x + s (b - mean) + beta``, s = gamma / sqrt(var + eps)
    (gamma = 1, beta = 0 for a BN without affine)."""
    if bn.running_var is None:
        raise ValueError("a BatchNorm without running statistics cannot be folded into its conv")
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    shift = (bias - bn.running_mean.double()) * scale + (bn.bias.double() if bn.bias is not None else 0.0)
    weight = conv.weight.double() * scale[:, None, None, None]
    return weight.to(conv.weight.dtype), shift.to(conv.weight.dtype)


def dense_groups(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped conv's weight [O, I/g, k, k] as the dense block-diagonal [O, I, k, k]
    (output block j reads only input block j; zeros elsewhere): the same conv, groups=1."""
    if groups == 1:
        return weight
    out_c, in_per, kh, kw = weight.shape
    dense = weight.new_zeros(out_c, in_per * groups, kh, kw)
    step = out_c // groups
    for g in range(groups):
        dense[g * step:(g + 1) * step, g * in_per:(g + 1) * in_per] = weight[g * step:(g + 1) * step]
    return dense


def rgb_stem(weight: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1-channel L conv weight [O, 1, k, k] -> (RGB weight [O, 3, k, k], shift [O]) with
    ``conv_L(L/100 - 0.5) = conv_rgb((v - mean) / std) + shift`` under ``L/100 = LUMA . v``
    (module doc)."""
    if weight.shape[1] != 1:
        raise ValueError(f"the stem has {weight.shape[1]} input channels, expected the L channel (1)")
    k = torch.tensor(LUMA, dtype=torch.float64)
    gain = k * torch.tensor(std, dtype=torch.float64)                      # [3]
    offset = float((k * torch.tensor(mean, dtype=torch.float64)).sum()) - 0.5
    w = weight.double()
    rgb = w * gain[None, :, None, None]                                     # [O, 3, k, k]
    shift = offset * w.sum(dim=(1, 2, 3))                                   # [O]
    return rgb.to(weight.dtype), shift.to(weight.dtype)


# ----------------------------------------------------------------------------- ResNet-50 key layouts

# resnet50_cc (timm inside: conv1 = stem conv + BN, res2-res5 = timm layer1-4) -> the other layout
_TORCHVISION = ((r"^conv1\.0\.", "conv1."), (r"^conv1\.1\.", "bn1."),
                (r"^res([2-5])\.", lambda m: f"layer{int(m.group(1)) - 1}."))
_DETECTRON2 = ((r"^conv1\.0\.", "stem.conv1."), (r"^conv1\.1\.", "stem.conv1.norm."),
               (r"^(res[2-5]\.\d+)\.bn(\d)\.", r"\1.conv\2.norm."),
               (r"^(res[2-5]\.\d+)\.downsample\.0\.", r"\1.shortcut."),
               (r"^(res[2-5]\.\d+)\.downsample\.1\.", r"\1.shortcut.norm."),
               (r"^(res[2-5]\.\d+\.conv\d)\.", r"\1."))
LAYOUTS = {"torchvision": _TORCHVISION, "detectron2": _DETECTRON2}
DETECTRON2_PREFIX = "backbone.bottom_up."  # a detectron2 FPN model's ResNet (GeneralizedRCNN state dict)


def rename_resnet(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """resnet50_cc trunk keys -> ``layout`` keys (detectron2's without prefix; FrozenBN
    has no ``num_batches_tracked``, so those are dropped there)."""
    out = {}
    for key, value in state.items():
        if layout == "detectron2" and key.endswith("num_batches_tracked"):
            continue
        for pattern, repl in LAYOUTS[layout]:
            new, n = re.subn(pattern, repl, key)
            if n:
                out[new] = value
                break
        else:
            raise ValueError(f"resnet50_cc key {key!r} has no {layout} counterpart")
    return out


def resnet_key_map(trunk_keys: Iterable[str], layout: str) -> dict[str, str]:
    """{layout key: trunk key} for the inverse mapping (detectron2 -> resnet50_cc)."""
    return {new: old for old in trunk_keys for new in rename_resnet({old: torch.empty(0)}, layout)}
