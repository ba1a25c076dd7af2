"""``colorbench export-weights``: a checkpoint's trunk in torchvision / detectron2 key layout,
for fine-tuning elsewhere.

    colorbench export-weights runs/x/checkpoints/last.pt --format torchvision --out trunk_tv.pth [--input rgb|l]
    colorbench export-weights r50.pt --format detectron2 --out trunk_d2.pth [--prefix backbone.bottom_up.]

Writes FILE (torchvision: a plain state dict; detectron2: ``{"model": state dict,
"__author__": "colorbench"}``, which ``DetectionCheckpointer`` reads as a ``.pth``) and
FILE.json (the mapping, the input it expects, the notes below). The head (and any
classifier) is not exported.

``alexnet_cc`` -> torchvision AlexNet ``features.{0,3,6,8,10}.{weight,bias}`` (conv1-5):
* each BN (eval mode) is folded into its conv (``fold_bn``: exact up to rounding);
* the grouped conv2/4/5 (groups 2) become dense block-diagonal weights (exact);
* channels are the Caffe AlexNet's 96/256/384/384/256 (x width), not torchvision's
  64/192/384/256/256, and conv1 is unpadded: build torchvision's ``AlexNet`` and replace
  ``features[0, 3, 6, 8, 10]`` by ``Conv2d(C_in, 96, 11, 4, padding=0)``, ``Conv2d(96, 256,
  5, padding=2)``, ``Conv2d(256, 384, 3, padding=1)``, ``Conv2d(384, 384, 3, padding=1)``,
  ``Conv2d(384, 256, 3, padding=1)``; then ``features[:12]`` equals the trunk's conv5 tap
  (post-ReLU) and the classifier's 256 x 6 x 6 input fits unchanged (227-px input).
* detectron2 has no AlexNet: refused.

``resnet50_cc`` -> torchvision ResNet-50 (``conv1``, ``bn1``, ``layer1``-``layer4``: timm's
names = torchvision's, so only conv1 / res2-5 are renamed; BN stays BN) or detectron2
(``stem.conv1`` + ``stem.conv1.norm``, ``res2``-``res5``; ``bn{i}`` -> ``conv{i}.norm``,
``downsample.0/1`` -> ``shortcut`` / ``shortcut.norm``; ``num_batches_tracked`` dropped
(FrozenBN); keys under ``--prefix``, default ``backbone.bottom_up.`` = an FPN model; ``''``
gives the bare names of detectron2's convert-torchvision-to-d2, which its name matching
loads into any ResNet model, C4's ``roi_heads.res5`` included). Exact (same ops) with
detectron2's ``STRIDE_IN_1X1: False`` (timm strides the 3x3) and torchvision's
``resnet50(replace_stride_with_dilation=[False, False, True])`` for ``last_stride1``;
detectron2's ``RES5_DILATION: 2`` also dilates res5's first block, which timm does not:
not exact there. Width != 1 keeps the layout but not torchvision's channel counts.

Stem (``--input``): ``rgb`` (default: what torchvision / detectron2 pipelines feed) expands
the 1-channel L conv to 3 channels for ImageNet-normalised RGB (``weights.rgb_stem``, an
approximation of L, documented there); ``l`` keeps it exact: 1 input channel fed
``L / 100 - 0.5`` (detectron2: ``PIXEL_MEAN [50.0]``, ``PIXEL_STD [100.0]`` on a Lab-L image).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from pretext.encoders import build_encoder
from pretext.encoders.registry import scaled
from pretext.encoders.weights import (
    DETECTRON2_PREFIX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LUMA,
    check_out,
    dense_groups,
    fold_bn,
    rename_resnet,
    rgb_stem,
)
from pretext.engine.checkpoint import (
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    load_state_strict,
)

FORMATS = ("torchvision", "detectron2")
INPUTS = ("rgb", "l")
ALEXNET_INDEX = {"conv1": 0, "conv2": 3, "conv3": 6, "conv4": 8, "conv5": 10}  # torchvision features.N


def _conv_bn(block: nn.Sequential) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    convs = [m for m in block if isinstance(m, nn.Conv2d)]
    norms = [m for m in block if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != 1 or len(norms) != 1:
        raise ValueError("alexnet_cc block is not conv -> BN -> ReLU; the export mapping needs updating")
    return convs[0], norms[0]


def alexnet_torchvision(trunk: nn.Module, input_kind: str = "rgb") -> tuple[dict, list[str]]:
    """alexnet_cc -> torchvision AlexNet ``features.*`` (BN folded, groups dense)."""
    state, notes = {}, ["BN folded into each conv (eval-mode statistics)"]
    for name, index in ALEXNET_INDEX.items():
        conv, bn = _conv_bn(getattr(trunk, name))
        weight, bias = fold_bn(conv, bn)
        if conv.groups > 1:
            weight = dense_groups(weight, conv.groups)
            notes.append(f"{name}: groups={conv.groups} expanded to a dense block-diagonal weight")
        if name == "conv1" and input_kind == "rgb":
            weight, shift = rgb_stem(weight)
            bias = bias + shift
        state[f"features.{index}.weight"], state[f"features.{index}.bias"] = weight.contiguous(), bias
    channels = [state[f"features.{i}.weight"].shape[0] for i in ALEXNET_INDEX.values()]
    notes.append(f"channels {channels}, conv1 unpadded (torchvision: [64, 192, 384, 256, 256], conv1 padding 2)")
    return state, notes


def resnet_layout(trunk: nn.Module, layout: str, input_kind: str = "rgb") -> tuple[dict, list[str]]:
    """resnet50_cc -> torchvision / detectron2 (no prefix) keys; BN kept."""
    state = {k: v.clone() for k, v in trunk.state_dict().items()}
    notes = []
    if input_kind == "rgb":
        weight, shift = rgb_stem(state["conv1.0.weight"])
        state["conv1.0.weight"] = weight
        state["conv1.1.running_mean"] = state["conv1.1.running_mean"] - shift  # the bias-free stem's offset
        notes.append("stem offset folded into bn1.running_mean: exact away from the 3-pixel padded border")
    return rename_resnet(state, layout), notes


def detectron2_config(trunk: nn.Module, input_kind: str) -> dict:
    """The detectron2 config keys this export loads into exactly (printed and in FILE.json)."""
    w = trunk.width
    planes = [scaled(c, w) for c in (64, 128, 256, 512)]
    cfg = {"MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.STRIDE_IN_1X1": False, "MODEL.RESNETS.NUM_GROUPS": 1,
           "MODEL.RESNETS.WIDTH_PER_GROUP": planes[0], "MODEL.RESNETS.RES2_OUT_CHANNELS": 4 * planes[0],
           "MODEL.RESNETS.STEM_OUT_CHANNELS": trunk.feature_info["conv1"]["channels"],
           "MODEL.RESNETS.RES5_DILATION": 2 if getattr(trunk, "last_stride1", False) else 1}
    if input_kind == "rgb":
        cfg.update({"MODEL.PIXEL_MEAN": [round(255 * m, 3) for m in IMAGENET_MEAN],
                    "MODEL.PIXEL_STD": [round(255 * s, 3) for s in IMAGENET_STD], "INPUT.FORMAT": "RGB"})
    else:
        cfg.update({"MODEL.PIXEL_MEAN": [50.0], "MODEL.PIXEL_STD": [100.0]})
    if planes != [planes[0] * 2 ** i for i in range(4)]:
        cfg["note"] = f"stage widths {planes} do not double: detectron2 cannot build this width"
    return cfg


def export_trunk(payload: dict, fmt: str, input_kind: str = "rgb", prefix: str = DETECTRON2_PREFIX
                 ) -> tuple[dict, dict]:
    """A v2 payload's trunk -> (state dict in ``fmt``'s layout, description for FILE.json)."""
    if fmt not in FORMATS or input_kind not in INPUTS:
        raise ValueError(f"format must be one of {FORMATS} and input one of {INPUTS}, got {fmt!r}, {input_kind!r}")
    encoder, kwargs = payload["encoder"], dict(payload.get("encoder_kwargs", {}))
    trunk = build_encoder(encoder, **kwargs)
    load_state_strict(trunk, payload["trunk"])
    trunk.eval()
    if encoder == "alexnet_cc" and fmt == "torchvision":
        state, notes = alexnet_torchvision(trunk, input_kind)
    elif encoder == "resnet50_cc":
        state, notes = resnet_layout(trunk, fmt, input_kind)
        if fmt == "detectron2":
            state = {prefix + k: v for k, v in state.items()}
    else:
        raise ValueError(f"no {fmt} layout for a {encoder} trunk: export-weights maps alexnet_cc -> torchvision "
                         "AlexNet and resnet50_cc -> torchvision / detectron2 ResNet-50")
    described = {"format": fmt, "encoder": encoder, "encoder_kwargs": kwargs, "input": _input_text(input_kind),
                 "keys": len(state), "notes": notes}
    if fmt == "detectron2":
        described.update(prefix=prefix, config=detectron2_config(trunk, input_kind))
    return state, described


def _input_text(input_kind: str) -> str:
    if input_kind == "l":
        return "1 channel: Lab L / 100 - 0.5 (exact)"
    return (f"3 channels: RGB in [0, 1], (v - {list(IMAGENET_MEAN)}) / {list(IMAGENET_STD)}; the stem sees "
            f"L / 100 ~ {list(LUMA)} . RGB (approximate, see pretext.encoders.weights)")


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="a colorbench checkpoint (pretext run or trunk-only)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="torchvision: AlexNet features.* / ResNet-50 keys; detectron2: its ResNet names")
    parser.add_argument("--out", required=True, help="the weights file to write (FILE.json describes it)")
    parser.add_argument("--input", default="rgb", choices=INPUTS,
                        help="rgb (default: what torchvision / detectron2 pipelines feed; the L stem is expanded, "
                             "approximately); l: the exact 1-channel L stem")
    parser.add_argument("--prefix", default=DETECTRON2_PREFIX,
                        help="detectron2 key prefix (default: an FPN model's backbone.bottom_up.; '' = bare names "
                             "that detectron2's name matching loads into any ResNet model)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    out = check_out(args.out, args.overwrite)
    payload = load_checkpoint(args.checkpoint)
    state, described = export_trunk(payload, args.format, args.input, args.prefix)
    saved = state if args.format == "torchvision" else {"model": state, "__author__": "colorbench"}
    atomic_write(out, lambda f: torch.save(saved, f))
    described["source"] = str(args.checkpoint)
    atomic_write_text(Path(f"{out}.json"), json.dumps(described, indent=2) + "\n")
    print(f"wrote {out} ({described['keys']} tensors, {args.format} layout) and {out}.json")
    print(f"  input: {described['input']}")
    for note in described["notes"]:
        print(f"  {note}")
    for key, value in described.get("config", {}).items():
        print(f"  {key}: {value}")
    return 0
