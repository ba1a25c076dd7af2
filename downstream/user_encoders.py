"""A user's own encoder as a trunk body: a timm or torchvision architecture built here
(``pretrained=False`` / ``weights=None``: nothing is ever downloaded) and loaded from a
state dict file (``downstream.trunks`` wraps it in a ``Trunk`` with RGB input).

Weights files: ``torch.load(weights_only=True)`` (never unpickled); a raw state dict or
one under ``"state_dict"`` / ``"model"``. ``key_prefix`` keeps only the keys that start
with it, with it removed: ``module.encoder_q.`` (MoCo v1/v2 checkpoints), ``module.`` (a
model saved under DDP), ``backbone.`` (mmselfsup / solo-learn exports). Classifier keys
(``fc.``, ``head.``, ``classifier.``) and other weights of the architecture that the taps
never reach are dropped, and reported; otherwise loading is strict: every weight the
taps use must be in the file and every key must belong to the architecture, else a
one-line ValueError names keys and suggests a prefix. Missing BatchNorm
``num_batches_tracked`` counters (old torchvision files lack them) are filled with 0.

Taps: timm ResNets and torchvision ``resnet*`` / ``resnext*`` / ``wide_resnet*``: ``conv1``
(the stem after its ReLU), ``res2``-``res5``, as colorbench's ResNet-50; torchvision
``alexnet``: ``conv1``-``conv5`` after each conv's ReLU; ``vgg*``: ``conv1``-``conv5``, the
ReLU that ends each block; other timm models: timm's feature module names with "." as
"_" (``stages_0``, ``blocks_11``). ``feature_info`` strides are timm's reductions, or for
torchvision the nominal power of two of 224 / the tap's side at 224 px.
"""
from __future__ import annotations

import errno
import math
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call

from pretext.engine.checkpoint import file_sha256

CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.")
RESNET_TAPS = ["conv1", "res2", "res3", "res4", "res5"]



class UserEncoder(nn.Module):
    """A timm / torchvision feature extractor (``body``) with the encoder contract:
    named taps, ``feature_info``, ``forward_features``, ``feature_size``; RGB input."""

    def __init__(self, body: nn.Module, taps: list[str], name: str, strides: list[int] | None = None,
                 nhwc: bool = False):
        super().__init__()
        self.body, self.encoder_name, self._taps, self.nhwc = body, name, list(taps), nhwc
        self._sizes: dict[tuple[int, int], dict[str, tuple[int, ...]]] = {}
        shapes = self._shapes(224, 224)                                   # {tap: (C, h, w)}
        self.feature_info = {t: {"channels": shapes[t][0],
                                 "stride": strides[i] if strides else 2 ** round(math.log2(224 / shapes[t][1]))}
                             for i, t in enumerate(self._taps)}           # nominal stride: a power of two

    @property
    def taps(self) -> list[str]:
        return list(self._taps)

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.body(x)                       # timm: [N, C, h, w] per tap; torchvision: {tap: ...}
        feats = out if isinstance(out, dict) else dict(zip(self._taps, out))
        return {t: f.permute(0, 3, 1, 2) for t, f in feats.items()} if self.nhwc else feats

    def forward_features(self, x: torch.Tensor, taps=None) -> dict[str, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{self.encoder_name} takes RGB images [N, 3, H, W] with the ImageNet mean / std "
                             f"(Trunk.prepare), got {got}")
        taps = self._taps if taps is None else list(taps)
        if not taps or set(taps) - set(self._taps):
            raise ValueError(f"{self.encoder_name}: unknown or no taps {sorted(set(taps) - set(self._taps))}; "
                             f"valid taps: {self._taps}")
        feats = self._run(x)
        return {t: feats[t] for t in taps}

    def feature_size(self, h: int, w: int, tap: str | None = None) -> tuple[int, int]:
        return tuple(self._shapes(h, w)[tap or self._taps[-1]][1:])

    def _shapes(self, h: int, w: int) -> dict[str, tuple[int, ...]]:
        """{tap: (C, h', w')} for an h x w input: a pass on the meta device (no compute),
        or a real one in eval mode where a model keeps plain tensors outside its buffers."""
        if (h, w) not in self._sizes:
            try:
                meta = {k: torch.empty_like(v, device="meta")
                        for k, v in [*self.body.named_parameters(), *self.body.named_buffers()]}
                with torch.no_grad():
                    out = functional_call(self.body, meta, (torch.empty(1, 3, h, w, device="meta"),))
            except (RuntimeError, NotImplementedError, AssertionError):
                out = self._real_pass(h, w)
            feats = out if isinstance(out, dict) else dict(zip(self._taps, out))
            self._sizes[(h, w)] = {t: (f.shape[-1], *f.shape[1:3]) if self.nhwc else tuple(f.shape[1:])
                                   for t, f in feats.items()}
        return self._sizes[(h, w)]

    def _real_pass(self, h: int, w: int):
        was = self.training
        self.eval()  # BN running statistics stay as they are
        try:
            with torch.no_grad():
                return self.body(torch.zeros(1, 3, h, w, device=next(self.body.parameters()).device))
        except (RuntimeError, AssertionError) as exc:  # too small, or a fixed-size model (ViT)
            raise ValueError(f"{self.encoder_name} gives no features at {h}x{w} input "
                             f"({str(exc).splitlines()[0][:100]}); use a larger crop") from None
        finally:
            self.train(was)


def _timm_body(arch: str):
    """(features-only model, the full model's keys, {features key: full key}, taps, strides, nhwc)."""
    import timm

    if not timm.is_model(arch):
        raise ValueError(f"timm:{arch}: not a timm architecture (similar: {timm.list_models(f'*{arch}*')[:8]})")
    try:
        body = timm.create_model(arch, pretrained=False, features_only=True)
    except (RuntimeError, AssertionError, TypeError) as exc:
        raise ValueError(f"timm:{arch} has no features-only form ({exc})") from None
    try:
        with torch.device("meta"):  # key names only: nothing allocated
            full = set(timm.create_model(arch, pretrained=False).state_dict())
    except (RuntimeError, NotImplementedError):  # a model that computes with tensors while it is built
        full = set(timm.create_model(arch, pretrained=False).state_dict())
    canon = {k.replace("_", "."): k for k in full}  # features-only models flatten "stages.0" to "stages_0"
    to_full = {}
    for k in body.state_dict():
        for cand in (k, k.removeprefix("model.")):  # FeatureGetterNet wraps the model as "model"
            if cand in full or cand.replace("_", ".") in canon:
                to_full[k] = cand if cand in full else canon[cand.replace("_", ".")]
                break
        else:
            raise ValueError(f"timm:{arch}: features-only key {k!r} has no counterpart in the architecture")
    modules = body.feature_info.module_name()
    resnet = modules == ["act1", "layer1", "layer2", "layer3", "layer4"]
    taps = RESNET_TAPS if resnet else [m.replace(".", "_") for m in modules]
    fmt = getattr(body, "output_fmt", "NCHW")
    return body, full, to_full, taps, body.feature_info.reduction(), getattr(fmt, "value", fmt) == "NHWC"


def _torchvision_body(arch: str):
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"torchvision:{arch}: not a torchvision classification model")
    family = "alexnet" if arch == "alexnet" else "vgg" if arch.startswith("vgg") else \
        "resnet" if arch.startswith(("resnet", "resnext", "wide_resnet")) else None
    if family is None:
        raise ValueError(f"torchvision:{arch}: no tap names for this family (alexnet, vgg*, resnet*, resnext*, "
                         f"wide_resnet*); timm:{arch} names the taps of any timm model")
    model = torchvision.models.get_model(arch, weights=None)
    if family == "resnet":
        nodes = dict(zip(["relu", "layer1", "layer2", "layer3", "layer4"], RESNET_TAPS))
    else:
        layers = list(model.features)
        ends = ([i + 1 for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)] if family == "alexnet" else
                [i - 1 for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)])  # the ReLU indices
        nodes = {f"features.{i}": f"conv{j + 1}" for j, i in enumerate(ends)}
    body = create_feature_extractor(model, return_nodes=nodes)
    return body, set(model.state_dict()), {k: k for k in body.state_dict()}, list(nodes.values()), None, False


def read_weights(path: str | Path, key_prefix: str = "") -> tuple[dict[str, torch.Tensor], int]:
    """(state dict with ``key_prefix`` stripped, number of keys left out for lacking it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "weights file not found", str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of arbitrary objects, a truncated file, not a torch file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path} cannot be read as a state dict of tensors ({first[:120]}); "
                         "colorbench never unpickles arbitrary objects") from None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = obj.get("state_dict", obj.get("model", obj))
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{path} holds no state dict (a dict of tensors, or one under 'state_dict' / 'model'); "
                         f"found {keys}")
    if not key_prefix:
        return dict(obj), 0
    kept = {k[len(key_prefix):]: v for k, v in obj.items() if k.startswith(key_prefix)}
    if not kept:
        raise ValueError(f"no key of {path} starts with key_prefix {key_prefix!r}; its keys look like {list(obj)[:3]}")
    return kept, len(obj) - len(kept)


def _guess_prefix(keys, wanted: set[str]) -> str:
    votes = Counter(k[: len(k) - len(w)] for k in keys for w in wanted if k != w and k.endswith("." + w))
    return votes.most_common(1)[0][0] if votes else ""


def load_user_state(body: nn.Module, full_keys: set[str], to_full: dict[str, str], state: dict,
                    label: str, path) -> dict:
    """Load ``state`` (architecture key names) into ``body``; returns what was dropped."""
    wanted = set(to_full.values())
    extra = [k for k in state if k not in wanted]
    dropped = sorted(k for k in extra if k in full_keys or k.startswith(CLASSIFIER_PREFIXES))
    unexpected = sorted(set(extra) - set(dropped))
    missing = sorted(k for k in wanted - state.keys() if not k.endswith("num_batches_tracked"))
    if missing or unexpected:
        guess = _guess_prefix(unexpected, wanted)
        hint = f"try --key-prefix {guess!r}" if guess else "if they carry a prefix (e.g. 'module.'), set --key-prefix"
        raise ValueError(f"{path} does not fit {label}: {len(missing)} missing keys {missing[:3]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:3]}; {hint}")
    own = body.state_dict()
    bad = [f"{k} {list(state[f].shape)} vs {list(own[k].shape)}" for k, f in to_full.items()
           if f in state and state[f].shape != own[k].shape]
    if bad:
        raise ValueError(f"{path} does not fit {label}: shapes differ at {bad[:3]} (another depth or width?)")
    body.load_state_dict({k: state.get(f, torch.zeros((), dtype=torch.long)) for k, f in to_full.items()})
    return {"tensors_loaded": len(to_full), "dropped_keys": dropped}


def build_user_encoder(kind: str, arch: str, weights: str | Path, key_prefix: str = "",
                       say=print) -> tuple[UserEncoder, dict]:
    """(``kind`` "timm" | "torchvision" ``arch`` loaded from ``weights``, its description
    for the run records: weights path, sha256, key_prefix, tensors loaded)."""
    state, outside = read_weights(weights, key_prefix)
    body, full, to_full, taps, strides, nhwc = (_timm_body if kind == "timm" else _torchvision_body)(arch)
    label = f"{kind}:{arch}"
    report = load_user_state(body, full, to_full, state, label, weights)
    info = {"weights": str(weights), "weights_sha256": file_sha256(weights), "key_prefix": key_prefix,
            "tensors_loaded": report["tensors_loaded"]}
    dropped = report["dropped_keys"]
    say(f"{label}: {info['tensors_loaded']} tensors from {weights} (sha256 {info['weights_sha256']})"
        + (f"; dropped {len(dropped)} keys the taps do not use: {dropped[:6]}{'...' if len(dropped) > 6 else ''}"
           if dropped else "") + (f"; {outside} keys without the prefix {key_prefix!r} left out" if outside else ""))
    return UserEncoder(body, taps, label, strides, nhwc), info
