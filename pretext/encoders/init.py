"""Data-dependent initialisation (Krähenbühl, Doersch, Donahue, Darrell, ICLR 2016) and
the Gaussian baseline, for any encoder of the registry.

``kmeans_init_(model, batches)`` visits the Conv2d / ConvTranspose2d / BatchNorm2d layers
in the order a forward pass calls them (found with hooks, so it works for AlexNet, VGG
and timm's ResNet alike) and, layer by layer, on the calibration batches pushed through
the layers already initialised:

* Conv2d (the k-means step, as in the authors' ``magic_init.py``): random patches of the
  layer's *input* (``F.unfold`` with the conv's kernel, stride, padding, dilation; per
  group for grouped convs) are centred, PCA-whitened onto their top ``out_channels``
  components, normalised to unit length and clustered by k-means (``k =
  out_channels``; Lloyd from random patches, in torch on the model's device); the
  centres, mapped back through the whitening, are the filters. ConvTranspose2d (VGG's
  conv8 upsampling) has no patch view: it gets Gaussian filters (``elwise`` there).
* then every conv is rescaled on data so each output channel has zero mean and unit
  variance: ``W /= std``, ``bias = -mean / std`` (convs without a bias leave the mean
  to the BatchNorm that follows them);
* BatchNorm2d: affine set to the identity (weight 1, bias 0), running mean / variance
  set to the exact statistics of its input on the calibration data, so in eval mode
  each BN output channel is standardised on that data.

The paper's optional between-layer step (equalising the rate of change of every layer)
is not applied. ``gaussian_init_`` is the data-independent baseline (Gaussian filters,
std 0.01 as Caffe's ``gaussian`` filler); with ``batches`` its BN running statistics are
computed from data the same way (otherwise BN is the identity).

Entry points take the model in any mode and restore it; everything runs under
``torch.no_grad`` on the model's device. ``kmeans_init(model, loader, device)`` wraps
``kmeans_init_`` for a loader of skip-aware batches (uint8 RGB, ``pretext.sources``).
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["kmeans_init", "kmeans_init_", "gaussian_init_", "calibration_batches", "kmeans_filters"]

PATCHES_PER_CLUSTER = 100  # at least 100 input patches per k-means centre (filter)
MAX_PATCHES = 100_000  # memory cap per layer: 100 per filter up to 1,000 filters per group
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
_LAYERS = _CONVS + (nn.BatchNorm2d,)


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass at the layer being initialised."""


class _Moments:
    """Per-channel mean / variance of [N, C, H, W] tensors, accumulated in float64."""

    def __init__(self):
        self.n, self.s, self.ss = 0, 0.0, 0.0

    def add(self, t: torch.Tensor) -> None:
        t = t.detach().double()
        self.n += t.numel() // t.shape[1]
        self.s = self.s + t.sum((0, 2, 3))
        self.ss = self.ss + (t * t).sum((0, 2, 3))

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.s / self.n
        return mean, (self.ss / self.n - mean * mean).clamp_min(0.0)


def _call_order(model: nn.Module, forward: Callable, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Conv / BN layers in the order one forward pass first calls them."""
    order: dict[str, nn.Module] = {}

    def seen(name: str, mod: nn.Module) -> None:  # a pre-hook's return value would replace the input
        order.setdefault(name, mod)
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen(name, mod))
             for name, m in model.named_modules() if isinstance(m, _LAYERS)]
    try:
        forward(x)
    finally:
        for h in hooks:
            h.remove()
    return list(order.items())


def _capture(forward: Callable, module: nn.Module, batches: list[torch.Tensor], fn: Callable,
             where: str) -> None:
    """Run each batch up to ``module``; ``fn`` gets its input ("input") or output ("output")
    inside the hook (before an in-place ReLU can change it); the pass then stops."""
    def pre(mod, args):
        fn(args[0])
        raise _Stop

    def post(mod, args, out):
        fn(out)
        raise _Stop

    handle = module.register_forward_pre_hook(pre) if where == "input" else module.register_forward_hook(post)
    try:
        for x in batches:
            try:
                forward(x)
            except _Stop:
                pass
    finally:
        handle.remove()


def _patches(x: torch.Tensor, conv: nn.Conv2d, keep: int, gen: torch.Generator, chunk: int = 8) -> torch.Tensor:
    """``keep`` random patches of the conv's input ``x`` [N, Cin, H, W] -> [keep', Cin*kh*kw]."""
    n_chunks = -(-x.shape[0] // chunk)
    per_chunk, out = -(-keep // n_chunks), []
    for part in x.split(chunk):  # unfold a few images at a time: [n, Cin*kh*kw, L] can be large
        cols = F.unfold(part, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
        cols = cols.transpose(1, 2).reshape(-1, cols.shape[1])  # [n*L, Cin*kh*kw]
        idx = torch.randperm(cols.shape[0], generator=gen)[:per_chunk]
        out.append(cols[idx.to(cols.device)].float())
    return torch.cat(out)


def _nearest(x: torch.Tensor, c: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index of the nearest centre (Euclidean) of every row of ``x`` [M, r]: long [M]."""
    cn = (c * c).sum(1)                                   # [k]
    return torch.cat([(cn[None] - 2.0 * xb @ c.T).argmin(1) for xb in x.split(chunk)])


def _lloyd(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    """k-means (Lloyd) of ``x`` [M, r] from k random rows; an empty cluster is re-seeded
    with a random row. Returns the centres [k, r]."""
    def pick(n: int) -> torch.Tensor:
        return torch.randperm(x.shape[0], generator=gen)[:n].to(x.device)
    c = x[pick(k)].clone()
    for _ in range(iters):
        assign = _nearest(x, c)                           # [M]
        counts = torch.bincount(assign, minlength=k)      # [k]
        c = torch.zeros_like(c).index_add_(0, assign, x) / counts.clamp_min(1)[:, None].to(x)
        empty = counts == 0
        if empty.any():
            c[empty] = x[pick(int(empty.sum()))]
    return c


def kmeans_filters(patches: torch.Tensor | np.ndarray, n_out: int, seed: int = 0, iters: int = 15) -> torch.Tensor:
    """Filters [n_out, d] (float32, on the patches' device) from patches [M, d]: centre,
    PCA-whiten onto the top min(n_out, d) components, normalise rows, k-means with
    k = n_out, map the centres back (magic_init's ``kmeans`` type). Lloyd iterations are
    matrix products on the patches' device (measured on one CPU thread: full-width
    AlexNet trunk 15 s, with the 4096-wide colour head 2 min; scikit-learn's k-means++
    had not finished that head after 13 min)."""
    x = torch.as_tensor(patches)
    gen = torch.Generator().manual_seed(seed)
    if x.shape[0] < n_out:  # too little data: Gaussian filters (magic_init does the same)
        return torch.randn(n_out, x.shape[1], generator=gen).to(x.device)
    d = x.float() - x.float().mean(0, keepdim=True)       # [M, d]
    s, v = torch.linalg.eigh((d.T @ d).double())          # ascending eigenvalues, float64
    s, v = s[-n_out:], v[:, -n_out:]                      # the top min(n_out, d) components
    inv = torch.where(s >= 1e-6, (s.clamp_min(0.0) + 1e-3).rsqrt(), torch.zeros_like(s))
    whiten = (v * inv).float()                            # [d, r]
    wd = d @ whiten                                       # [M, r]
    wd = wd / (wd.norm(dim=1, keepdim=True) + 1e-12)
    return _lloyd(wd, n_out, iters, gen) @ whiten.T       # [n_out, d]


def _set_kmeans_filters(conv: nn.Conv2d, forward: Callable, batches: list[torch.Tensor],
                        max_patches: int, seed: int) -> int:
    """Set the conv's filters from k-means of its input patches; returns the patch count."""
    groups, cout = conv.groups, conv.out_channels
    per_group = cout // groups
    # magic_init draws 10 x k patches per k-means *mini-batch*, over many batches; one
    # batch of that size would leave ~10 patches per cluster and understate the baseline:
    # cluster PATCHES_PER_CLUSTER x k patches at once (capped by max_patches for memory)
    keep = min(max_patches, PATCHES_PER_CLUSTER * per_group)
    gen = torch.Generator().manual_seed(seed)
    collected: list[torch.Tensor] = []
    per_batch = -(-keep // len(batches))
    _capture(forward, conv, batches, lambda x: collected.append(_patches(x, conv, per_batch, gen)), "input")
    cols = torch.cat(collected)[:keep]                    # [M, Cin*kh*kw], on the model's device
    width = cols.shape[1] // groups
    w = conv.weight                                       # [Cout, Cin/g, kh, kw]
    for g in range(groups):
        filt = kmeans_filters(cols[:, g * width:(g + 1) * width], per_group, seed + g)
        w[g * per_group:(g + 1) * per_group] = filt.reshape(per_group, *w.shape[1:]).to(w)
    return cols.shape[0]


def _standardise_conv(conv: nn.Module, forward: Callable, batches: list[torch.Tensor]) -> None:
    """Scale filters so each output channel has unit variance on the data; bias -> zero mean."""
    if conv.bias is not None:
        conv.bias.zero_()
    moments = _Moments()
    _capture(forward, conv, batches, moments.add, "output")
    mean, var = moments.mean_var()
    std = var.sqrt()
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a dead channel stays as it is
    dim = 1 if isinstance(conv, nn.ConvTranspose2d) else 0    # the output-channel axis of the weight
    shape = [1] * conv.weight.dim()
    shape[dim] = -1
    conv.weight.div_(std.reshape(shape).to(conv.weight))
    if conv.bias is not None:
        conv.bias.copy_((-mean / std).to(conv.bias))


def _calibrate_bn(bn: nn.BatchNorm2d, forward: Callable, batches: list[torch.Tensor]) -> None:
    """Identity affine; running statistics = the exact statistics of the BN's input."""
    if bn.affine:
        bn.weight.fill_(1.0)
        bn.bias.zero_()
    moments = _Moments()
    _capture(forward, bn, batches, moments.add, "input")
    mean, var = moments.mean_var()
    bn.running_mean.copy_(mean.to(bn.running_mean))
    bn.running_var.copy_(var.to(bn.running_var))


def _forward_fn(model: nn.Module, include_head: bool) -> Callable:
    """The trunk's taps (``forward_features``), or with ``include_head`` the method's
    ``logits`` (trunk + colour head) when the model is a pretext method."""
    if include_head:
        return getattr(model, "logits", model)
    if hasattr(model, "forward_features"):
        return model.forward_features
    return model.trunk.forward_features if hasattr(model, "trunk") else model


def _layer_loop(model: nn.Module, batches: list[torch.Tensor], include_head: bool,
                init_conv: Callable | None) -> dict[str, str]:
    if not batches:
        raise ValueError("data-dependent init needs at least one calibration batch")
    forward = _forward_fn(model, include_head)
    was_training = model.training
    model.eval()
    report = {}
    try:
        with torch.no_grad():
            for name, m in _call_order(model, forward, batches[0][:1]):
                if isinstance(m, nn.BatchNorm2d):
                    _calibrate_bn(m, forward, batches)
                    report[name] = "bn: identity, data statistics"
                elif init_conv is not None:
                    report[name] = init_conv(m, forward)
    finally:
        model.train(was_training)
    return report


def kmeans_init_(model: nn.Module, batches: Iterable[torch.Tensor], include_head: bool = False,
                 max_patches: int = MAX_PATCHES, seed: int = 0) -> dict[str, str]:
    """Krähenbühl et al. k-means init, in place. ``batches``: encoder inputs [N, 1, H, W]
    (normalised L) on the model's device. ``include_head`` also initialises the colour
    head (the pretext wants it; a probe does not run it). Returns {layer: what was done}."""
    batches = list(batches)

    def init_conv(conv: nn.Module, forward: Callable) -> str:
        how = "kmeans"
        if isinstance(conv, nn.Conv2d) and not isinstance(conv.padding, str):
            how += f" ({_set_kmeans_filters(conv, forward, batches, max_patches, seed)} patches)"
        else:
            nn.init.normal_(conv.weight)
            how = "gaussian"
        _standardise_conv(conv, forward, batches)
        return how + " + unit variance"
    return _layer_loop(model, batches, include_head, init_conv)


def gaussian_init_(model: nn.Module, std: float = 0.01, batches: Iterable[torch.Tensor] | None = None,
                   seed: int = 0, include_head: bool = True) -> dict[str, str]:
    """The Gaussian baseline, in place: conv / linear weights ~ N(0, std^2), biases 0, BN
    affine identity. With ``batches`` the BN running statistics come from data (as in
    ``kmeans_init_``), else they are reset to mean 0, variance 1."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _CONVS + (nn.Linear,)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_parameters()
    if batches is None:
        return {"all": f"gaussian std {std}, bn identity"}
    return _layer_loop(model, list(batches), include_head, None)


def calibration_batches(loader: Iterable[dict], device: torch.device | str, max_images: int = 512) -> list[torch.Tensor]:
    """Encoder inputs [n, 1, H, W] (normalised L on ``device``) from skip-aware batches of
    uint8 RGB images, up to ``max_images`` in all."""
    from pretext.encoders import normalize_l
    from pretext.color.targets import to_lab

    out, total = [], 0
    for batch in loader:
        images = batch["image"]
        if not isinstance(images, torch.Tensor) or images.shape[0] == 0:
            continue
        images = images[: max_images - total]
        out.append(normalize_l(to_lab(images, torch.device(device))[:, :1]))
        total += images.shape[0]
        if total >= max_images:
            break
    if not out:
        raise ValueError("data-dependent init: the loader gave no usable image")
    return out


def kmeans_init(model: nn.Module, loader: Iterable[dict], device: torch.device | str,
                max_images: int = 512, include_head: bool = True, max_patches: int = MAX_PATCHES,
                seed: int = 0) -> dict[str, str]:
    """``kmeans_init_`` on up to ``max_images`` images of ``loader`` (uint8 RGB batches).
    The colour head is included by default: this is the pretext trainer's entry point."""
    batches = calibration_batches(loader, device, max_images)
    return kmeans_init_(model, batches, include_head=include_head, max_patches=max_patches, seed=seed)
