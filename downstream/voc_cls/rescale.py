"""Krähenbühl et al. (ICLR 2016) rescaling of a pretrained net before fine-tuning.

Fine-tuning uses one learning rate for every layer, so a layer whose weights are large
relative to their gradients barely moves while another jumps. Krähenbühl et al. rescale
a pretrained net (Zhang et al. fine-tuned their colorization weights this way):

* within-layer: each output unit of a layer is scaled to unit standard deviation over
  calibration images;
* between-layer: each layer is scaled by a scalar so that its change rate
  C_k = E||dL/dW_k||^2 / ||W_k||^2 approaches the geometric mean over layers
  (scaling W_k by a divides C_k by a^4), ``iterations`` damped passes.

Every scale here preserves the net's function exactly, so only the training dynamics
change: a conv followed by BatchNorm is scaled with the BN's running statistics (mean x
s, var x s^2; in train mode BN is scale-invariant anyway); fc6 / fc7 (ReLU, dropout
between) are scaled with the inverse on the next layer's input columns (ReLU commutes
with positive scales). A trainable conv without a BN after it (e.g. a torchvision
AlexNet) is left alone and reported; frozen layers and the new fc8 are not touched.
Statistics and gradients are taken in eval mode (no dropout, BN running statistics)
with the sigmoid cross-entropy on the calibration images' real labels.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from downstream.voc_cls.data import targets, train_loader


def rescalable_layers(net) -> tuple[list[tuple[str, nn.Module, str, nn.Module]], list[str]]:
    """([(name, layer, "bn" | "next", follower)], trainable convs that cannot be scaled)."""
    layers, skipped = [], []
    mods = list(net.trunk.named_modules())
    for (name, m), (_, nxt) in zip(mods, mods[1:] + [("", None)]):
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            if isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == m.out_channels and nxt.running_var is not None:
                layers.append((f"trunk.{name}", m, "bn", nxt))
            else:
                skipped.append(name)
    head = net.head
    if hasattr(head, "fc6"):
        layers += [("head.fc6", head.fc6, "next", head.fc7), ("head.fc7", head.fc7, "next", head.fc8)]
    return layers, skipped


@torch.no_grad()
def scale_(layer: nn.Module, kind: str, follower: nn.Module, s: torch.Tensor) -> None:
    """Multiply ``layer``'s output unit c by s[c] (> 0) and compensate in ``follower``."""
    layer.weight.mul_(s.view(-1, *[1] * (layer.weight.dim() - 1)))
    if layer.bias is not None:
        layer.bias.mul_(s)
    if kind == "bn":
        follower.running_mean.mul_(s)
        follower.running_var.mul_(s * s)
    else:
        follower.weight.div_(s.view(1, -1))


def _unit_std(net, layer: nn.Module, batches) -> torch.Tensor:
    """Standard deviation of each output unit of ``layer`` over ``batches``: [C]."""
    stats = []

    def hook(_, __, out):  # out: [N, C, h, w] or [N, C]
        stats.append(out.detach().transpose(0, 1).reshape(out.shape[1], -1).double())

    handle = layer.register_forward_hook(hook)
    with torch.no_grad():
        for x, _ in batches:
            net(x)
    handle.remove()
    return torch.cat(stats, 1).std(1).float().clamp_min(1e-8)


def change_rates(net, layers, batches, loss_fn) -> list[float]:
    """C_k = E||dL/dW_k||^2 / ||W_k||^2 for each layer (eval mode, real labels)."""
    sq = [0.0] * len(layers)
    for x, y in batches:
        net.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        for i, (_, layer, _, _) in enumerate(layers):
            sq[i] += float(layer.weight.grad.pow(2).sum()) / len(batches)
    net.zero_grad(set_to_none=True)
    return [g / max(float(layer.weight.detach().pow(2).sum()), 1e-30) for g, (_, layer, _, _) in zip(sq, layers)]


def krahenbuhl_rescale(net, train_src, train_lbl, loss_fn, rcfg, device, seed: int, say) -> dict:
    """Rescale ``net`` in place (see the module doc) with the training loss ``loss_fn``
    (logits [B, K], labels [B, K]); returns what was done."""
    layers, skipped = rescalable_layers(net)
    if skipped:
        say(f"rescale: trainable convs without a BatchNorm after them are left as they are: {skipped}")
    if not layers:
        return {"layers": 0, "skipped": skipped}
    batch = max(1, min(16, rcfg.images, len(train_src)))  # a tiny training set still calibrates
    loader = train_loader(train_src, batch, max(1, rcfg.images // batch), seed + 7, 0)
    batches = [(net.trunk.prepare(b["image"], device), targets(train_lbl, b["index"], device))
               for b in loader if b["index"].numel()]
    was = net.training
    net.eval()
    for name, layer, kind, follower in layers:                    # within-layer: unit std per output
        scale_(layer, kind, follower, 1.0 / _unit_std(net, layer, batches))
    before = change_rates(net, layers, batches, loss_fn)
    rates = before
    for _ in range(rcfg.iterations):                              # between-layer: equal change rates
        mean_log = sum(math.log(c) for c in rates) / len(rates)
        for (name, layer, kind, follower), c in zip(layers, rates):
            a = math.exp(rcfg.alpha * (math.log(c) - mean_log) / 4.0)
            scale_(layer, kind, follower, torch.full((layer.weight.shape[0],), a, device=layer.weight.device))
        rates = change_rates(net, layers, batches, loss_fn)
    net.train(was)
    spread = lambda r: max(r) / min(r)  # noqa: E731
    say(f"rescale (Krähenbühl et al.): {len(layers)} layers on {sum(len(x) for x, _ in batches)} images; "
        f"change-rate spread max/min {spread(before):.3g} -> {spread(rates):.3g}")
    return {"layers": [n for n, *_ in layers], "skipped": skipped, "images": sum(len(x) for x, _ in batches),
            "change_rate_spread_before": spread(before), "change_rate_spread_after": spread(rates)}
