"""``colorbench import-weights``: released weights -> a colorbench checkpoint (nothing is downloaded).

    colorbench import-weights --format eccv16-pytorch colorization_release_v2-9b330a0b.pth --out eccv16.pt
    colorbench import-weights --format detectron2 model_final.pth --out r50.pt [--prefix backbone.bottom_up.]

``eccv16-pytorch``: the official PyTorch ECCV16 colorizer (Zhang et al.'s
``colorizers/eccv16.py``, ``ECCVGenerator``; the file its ``eccv16(pretrained=True)``
fetches, downloaded by the user) -> ``vgg_cc`` + Zhang's method with the ``linear`` head.

* Keys: ``model{i}.{j}.*`` -> trunk ``conv{i}.{j}.*`` (i = 1..8, the same module indices:
  conv / ReLU / ... / BN at 2, 4 or 6); ``model8.6`` (the 1x1 conv 256 -> 313) -> ``head``;
  ``model_out.weight`` [2, 313, 1, 1] is not a weight of ours: it is checked to be the 313
  ab centres / 110 (in any order: the head's rows are permuted into colorbench's order).
  Missing BN ``num_batches_tracked`` counters are filled with 0; any other missing,
  unexpected or mis-shaped key is a one-line error naming it.
* Scaling: the release feeds ``(L - 50) / 100`` (= ``normalize_l``) and returns
  ``110 * model_out(softmax(logits))`` bilinearly upsampled x4. With ``model_out`` = centres
  / 110 that is exactly colorbench's ``mean`` decoder (softmax at T = 1, expectation over
  the centres). So ``--decoder mean`` in ``colorize`` / ``eval-color`` reproduces the
  release's output; ``annealed`` sharpens it further (T = 0.38). The Caffe deploy net put a
  x2.606 (= 1 / 0.38) scale before its softmax; whether the PyTorch port folded it into
  ``model8.6`` cannot be told from the file, so the release's own output (``mean``) is the
  reference. colorize upsamples to the input size (same as x4 when H, W are multiples of
  8; otherwise the release's conv8 map is one row / column larger, which vgg_cc crops).
* Prior: the release ships none. ``--prior FILE`` (a ``colorbench prior`` file) sets it;
  otherwise it stays uniform and the payload says so (``prior_source``): rebalanced metrics
  then need a prior counted from data (``eval-color --set prior.path=FILE``).

``detectron2``: the inverse of ``export-weights --format detectron2 --input l`` (see
``weights_export``): a detectron2 ResNet-50 with a 1-channel stem -> a trunk-only
``resnet50_cc`` checkpoint (width from the shapes; ``--last-stride1`` for a dilated res5).
"""
from __future__ import annotations

import argparse

import torch

from pretext.color.bins import NUM_BINS, ab_centers
from pretext.encoders import build_encoder
from pretext.encoders.weights import (
    DETECTRON2_PREFIX,
    check_out,
    check_state,
    read_state_dict,
    resnet_key_map,
)
from pretext.engine.checkpoint import (
    file_sha256,
    load_state_strict,
    save_checkpoint,
    trunk_checkpoint,
)

FORMATS = ("eccv16-pytorch", "detectron2")
AB_NORM = 110.0  # the release's BaseColor.ab_norm: model_out * 110 = ab
CENTRE_TOLERANCE = 0.01  # ab units: the largest |110 * model_out - centre| accepted (the grid step is 10)


# ----------------------------------------------------------------------------- ECCV16 (PyTorch release)

def _release_key(trunk_key: str) -> str:
    return "model" + trunk_key[len("conv"):]  # conv3.4.running_var -> model3.4.running_var


def eccv16_expected(trunk: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """{release key: shape} of the ECCV16 state dict, from vgg_cc's own layout."""
    expected = {_release_key(k): tuple(v.shape) for k, v in trunk.state_dict().items()}
    c8 = trunk.feature_info["conv8"]["channels"]
    expected.update({"model8.6.weight": (NUM_BINS, c8, 1, 1), "model8.6.bias": (NUM_BINS,),
                     "model_out.weight": (2, NUM_BINS, 1, 1)})
    return expected


def release_bin_order(model_out: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``model_out.weight`` [2, 313, 1, 1] -> (perm, max deviation): release bin j is
    colorbench's centre ``perm[j]``. Raises unless 110 * model_out is the 313 centres."""
    release = model_out.detach().double().reshape(2, NUM_BINS).T * AB_NORM  # [313, 2] ab per release bin
    dist = torch.cdist(release, ab_centers().double())                      # [313, 313]
    nearest, perm = dist.min(dim=1)
    worst = float(nearest.max())
    if worst > CENTRE_TOLERANCE or perm.unique().numel() != NUM_BINS:
        j = int(nearest.argmax())
        raise ValueError(f"model_out.weight is not the 313 ab bin centres / {AB_NORM:g} (release bin {j} is "
                         f"{[round(float(x), 2) for x in release[j]]}, {worst:.3g} from the nearest centre): "
                         "not the ECCV16 release's decoding, so colorbench's decoders cannot reproduce it")
    return perm, worst


def import_eccv16(state: dict[str, torch.Tensor], prior: torch.Tensor | None = None):
    """The release's state dict -> (Zhang method on vgg_cc, payload extras)."""
    from pretext.methods import (
        build_method,  # methods build on encoders: imported when used
    )

    trunk = build_encoder("vgg_cc")
    method = build_method("zhang", trunk, loss="full", head="linear")
    expected = eccv16_expected(trunk)
    counters = [k for k in expected if k.endswith("num_batches_tracked")]
    check_state(state, expected, "the ECCV16 PyTorch colorizer (colorizers/eccv16.py)", optional=counters)
    perm, worst = release_bin_order(state["model_out.weight"])
    trunk_state = {k: state.get(_release_key(k), torch.zeros((), dtype=torch.long)) for k in trunk.state_dict()}
    load_state_strict(trunk, trunk_state)
    with torch.no_grad():  # colorbench bin perm[j] takes release logit j
        method.head.weight[perm] = state["model8.6.weight"].to(method.head.weight)
        method.head.bias[perm] = state["model8.6.bias"].to(method.head.bias)
    if prior is not None:
        method.set_prior(prior)
    permuted = not torch.equal(perm, torch.arange(NUM_BINS))
    extras = {"origin": "eccv16-pytorch", "decoder": "mean",
              "prior_source": "file" if prior is not None else
              "uniform: the ECCV16 release ships no prior (count one from data for rebalanced metrics)",
              "import_notes": [
                  "input (L - 50) / 100 = normalize_l; output 110 * model_out(softmax(logits)) = the 'mean' decoder",
                  f"model_out = centres / 110 within {worst:.2g} ab" + (", bins reordered" if permuted else ""),
                  "'annealed' applies T = 0.38 to these logits (the Caffe net's x2.606 may already be in them)"]}
    return method, extras


# ----------------------------------------------------------------------------- detectron2 ResNet-50 (inverse)

def import_detectron2(state: dict[str, torch.Tensor], prefix: str = DETECTRON2_PREFIX, last_stride1: bool = False):
    """A detectron2 ResNet-50 (1-channel stem) -> (resnet50_cc trunk, encoder kwargs)."""
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not own:
        raise ValueError(f"no key starts with {prefix!r} (give --prefix, '' for bare stem./res2. keys)")
    if "res2.0.conv1.weight" not in own:
        raise ValueError(f"{prefix}res2.0.conv1.weight missing: not a detectron2 ResNet")
    width = own["res2.0.conv1.weight"].shape[0] / 64
    kwargs = {"width": width, "last_stride1": bool(last_stride1)}
    trunk = build_encoder("resnet50_cc", **kwargs)
    names = resnet_key_map(trunk.state_dict(), "detectron2")             # {d2 key: trunk key}
    expected = {k: tuple(trunk.state_dict()[t].shape) for k, t in names.items()}
    stem = own.get("stem.conv1.weight")
    if stem is not None and stem.shape[1] != 1:
        raise ValueError(f"the stem conv has {stem.shape[1]} input channels: only a 1-channel (L) stem maps back "
                         "onto resnet50_cc (export with --input l)")
    check_state({k: v for k, v in own.items() if not k.endswith("num_batches_tracked")}, expected,
                f"a detectron2 ResNet-50 of width {width:g} under {prefix!r}")
    trunk_state = {t: own[k] for k, t in names.items()}
    trunk_state.update({k: torch.zeros((), dtype=torch.long) for k in trunk.state_dict() if k.endswith("num_batches_tracked")})
    load_state_strict(trunk, trunk_state)
    return trunk, kwargs


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="the weights file (downloaded by you; nothing is fetched)")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="eccv16-pytorch: the official PyTorch ECCV16 colorizer state dict -> vgg_cc + Zhang's "
                             "head; detectron2: a ResNet-50 written by 'export-weights --format detectron2 --input l'")
    parser.add_argument("--out", required=True, help="the colorbench checkpoint to write")
    parser.add_argument("--prior", help="eccv16: a 'colorbench prior' file for the rebalancing prior (the release "
                                        "ships none; default: uniform, recorded as such)")
    parser.add_argument("--prefix", default=DETECTRON2_PREFIX,
                        help="detectron2: the key prefix of the ResNet (default: an FPN model's backbone.bottom_up.)")
    parser.add_argument("--last-stride1", action="store_true", help="detectron2: res5 is dilated (RES5_DILATION 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    out = check_out(args.out, args.overwrite)
    state = read_state_dict(args.path, args.format)
    source = {"source": str(args.path), "source_sha256": file_sha256(args.path), "step": 0}
    if args.format == "eccv16-pytorch":
        from pretext.color.rebalance import load_prior
        from pretext.methods import method_payload

        prior = load_prior(args.prior) if args.prior else None
        method, extras = import_eccv16(state, prior)
        save_checkpoint(out, method_payload(method, "vgg_cc", {"width": 1.0}, {"loss": "full", "head": "linear"},
                                            **source, **extras))
        print(f"wrote {out}: vgg_cc + zhang (linear head) from the ECCV16 release")
        for note in extras["import_notes"] + [f"prior: {extras['prior_source']}"]:
            print(f"  {note}")
        print("  reproduce the release's output with: colorbench colorize ... --decoder mean")
    else:
        trunk, kwargs = import_detectron2(state, args.prefix, args.last_stride1)
        save_checkpoint(out, trunk_checkpoint(trunk, "resnet50_cc", kwargs, origin="detectron2", **source))
        print(f"wrote {out}: a resnet50_cc trunk ({kwargs}) from a detectron2 ResNet-50")
    return 0
