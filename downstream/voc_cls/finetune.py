"""VOC 2007 classification by fine-tuning (Krähenbühl et al. 2016 / Donahue et al.).

Net: the trunk's last tap [N, C, h, w] -> pool5 -> fc6 -> ReLU -> dropout -> fc7 -> ReLU
-> dropout -> a new fc8 [N, K]; sigmoid cross-entropy over the K classes (summed over
classes, averaged over images, as Caffe's SigmoidCrossEntropyLoss), label 0 (difficult
only) masked out. ``train_from``: ``fc6`` trains fc6-8 only (the trunk frozen in eval
mode: the "cls fc6-8" column); ``conv1`` trains everything ("cls all"); any other tap
trains from that tap on. Which trunk weights are frozen is read from the autograd graph
(the weights the previous tap depends on), so it holds for any trunk.

Head (``finetune.head``): pool5 ``auto`` is AlexNet's max-pool 3/2 on an AlexNet whose
last map has >= 3 cells (6x6 at 227 px: fc6 sees 256x6x6 = 9216 dims, as AlexNet), else
a global average (ResNets, tiny maps). fc6 / fc7 are 4096 x the trunk's width (1024 for
a quarter-width trunk) on AlexNets and absent on other trunks (global pool + fc8, the
usual ResNet transfer). New fc6 / fc7: He-normal (keeps the activation scale at any
width; Caffe's fixed std 0.005 was tuned for 9216-d inputs); fc8: N(0, 0.01).

fc6 / fc7 from a checkpoint (``head.from_checkpoint``): Zhang et al.'s released head is
conv-ized (``pretext.methods.zhang``: pool5 3/1/1 -> fc6 as a 6x6 conv dilated by 2 -> BN
without affine -> ReLU -> fc7 1x1 -> BN -> ReLU). At the centre of a 13x13 conv5 map the
dilated 6x6 window reads exactly the 6x6 grid that pool5 3/2 makes, so when the geometry
matches (a 227 px AlexNet: fc6 weight [4096, 256, 6, 6] and a 6x6 pool5) fc6 is that
convolution's weight flattened, and fc7 the 1x1 one, each with its BN's running
statistics folded in (W / sqrt(var + eps), (b - mean) / sqrt(var + eps)). Any other
geometry (e.g. the tiny 128 px config: pool5 2x2) or head kind (``fc``, ``linear``,
trunk-only checkpoints) gets new fc6 / fc7; the run log and records say which.

Test: ``test_crops`` random crops (+ flips) per image, fc8 logits averaged; AP per class
is sklearn's ``average_precision_score`` over the images with label 1 / -1, mAP the mean
over classes with positives (``downstream.voc_cls.data.class_aps``).
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from downstream.probe.heads import TrunkGuard
from downstream.voc_cls.data import (
    RandomCrops,
    class_aps,
    eval_loader,
    image_source,
    targets,
    train_loader,
    train_transform,
)
from downstream.voc_cls.rescale import krahenbuhl_rescale
from pretext.data.loader import SkipCounter
from pretext.encoders.registry import scaled
from pretext.engine.checkpoint import load_checkpoint, save_checkpoint

BN_EPS = 1e-5


class ClsNet(nn.Module):
    """trunk + head; ``forward(x)`` -> logits [N, K] (x: what ``trunk.prepare`` returns)."""

    def __init__(self, trunk: nn.Module, head: nn.Sequential):
        super().__init__()
        self.trunk, self.head, self.tap = trunk, head, trunk.taps[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk.forward_features(x, [self.tap])[self.tap])   # [N, C, h, w] -> [N, K]


# ---------------------------------------------------------------------------- the head

def _is_alexnet(trunk) -> bool:
    return "alexnet" in str(getattr(trunk, "pool_table", None) or trunk.encoder_name)


def head_geometry(trunk, crop: int, hcfg) -> tuple[str, int, int, int]:
    """(pool kind, channels, pooled side, hidden width) of the head at a ``crop`` input."""
    tap = trunk.taps[-1]
    c = trunk.feature_info[tap]["channels"]
    h, w = trunk.feature_size(crop, crop, tap)
    pool = hcfg.pool
    if pool == "auto":
        pool = "max3s2" if _is_alexnet(trunk) and min(h, w) >= 3 else "avg"
    if pool == "max3s2" and min(h, w) < 3:
        raise ValueError(f"finetune.head.pool=max3s2 needs a map of >= 3x3, the trunk gives {h}x{w} at {crop} px")
    side = {"max3s2": ((h - 3) // 2 + 1, (w - 3) // 2 + 1), "avg": (1, 1), "none": (h, w)}[pool]
    hidden = hcfg.hidden
    if hidden < 0:
        hidden = scaled(4096, getattr(getattr(trunk, "net", trunk), "width", 1.0), 2) if _is_alexnet(trunk) else 0
    return pool, c, side[0] * side[1], hidden


def build_head(trunk, crop: int, num_classes: int, hcfg, source_head: dict | None = None) -> tuple[nn.Sequential, dict]:
    """The head and what it is made of ({"pool", "fc_dims", "fc6_fc7": "checkpoint" | "new", ...})."""
    pool, c, cells, hidden = head_geometry(trunk, crop, hcfg)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["pool5"] = {"max3s2": nn.MaxPool2d(3, 2), "avg": nn.AdaptiveAvgPool2d(1), "none": nn.Identity()}[pool]
    layers["flatten"] = nn.Flatten()
    dim = c * cells
    if hidden:
        for i, (fin, fout) in enumerate(((dim, hidden), (hidden, hidden)), start=6):
            layers[f"fc{i}"] = nn.Linear(fin, fout)
            nn.init.kaiming_normal_(layers[f"fc{i}"].weight, nonlinearity="relu")
            nn.init.zeros_(layers[f"fc{i}"].bias)
            layers[f"relu{i}"] = nn.ReLU(inplace=True)
            layers[f"drop{i}"] = nn.Dropout(hcfg.dropout)
    layers["fc8"] = nn.Linear(hidden or dim, num_classes)
    nn.init.normal_(layers["fc8"].weight, std=0.01)
    nn.init.zeros_(layers["fc8"].bias)
    head = nn.Sequential(layers)
    info = {"pool5": pool, "fc6_in": dim, "hidden": hidden, "fc6_fc7": "none" if not hidden else "new"}
    if hidden and source_head is not None:
        why = load_zhang_fc(head, source_head, c, cells)
        info.update(fc6_fc7="checkpoint" if not why else "new", fc6_fc7_note=why or "folded BN of the released head")
    return head, info


def checkpoint_head_state(trunk_cfg) -> dict | None:
    """The pretext method's state (``method_state``) of a checkpoint trunk, else None."""
    if not trunk_cfg.checkpoint or ":" in trunk_cfg.init:
        return None
    return load_checkpoint(trunk_cfg.checkpoint).get("method_state")


def load_zhang_fc(head: nn.Sequential, state: dict, channels: int, cells: int) -> str:
    """Copy the released head's conv-ized fc6 / fc7 into ``head`` (see the module doc);
    returns "" on success, else why not (and ``head`` is left as it was)."""
    need = ["head.1.weight", "head.1.bias", "head.2.running_mean", "head.2.running_var",
            "head.4.weight", "head.4.bias", "head.5.running_mean", "head.5.running_var"]
    if any(k not in state for k in need):
        return "the checkpoint's head is not Zhang's released (conv-ized fc6 / fc7) head"
    w6, w7 = state["head.1.weight"], state["head.4.weight"]
    hidden, side = head.fc6.out_features, int(round(math.sqrt(cells)))
    if (tuple(w6.shape) != (hidden, channels, side, side) or side * side != cells
            or tuple(w7.shape[:2]) != (hidden, hidden)):
        return (f"checkpoint fc6 is {list(w6.shape)}, this head's fc6 needs [{hidden}, {channels}, {side}, {side}] "
                f"(pool5 {cells} cells at this crop)")
    with torch.no_grad():
        for fc, w, b, bn in ((head.fc6, w6, "head.1.bias", "head.2"), (head.fc7, w7, "head.4.bias", "head.5")):
            inv = torch.rsqrt(state[f"{bn}.running_var"].float() + BN_EPS)                        # [hidden]
            fc.weight.copy_(w.reshape(hidden, -1).float() * inv[:, None])
            fc.bias.copy_((state[b].float() - state[f"{bn}.running_mean"].float()) * inv)
    return ""


# ---------------------------------------------------------------------------- freezing

def frozen_names(trunk, train_from: str, crop: int, device) -> set[str]:
    """Names of the trunk parameters that stay fixed when training from ``train_from``."""
    names = [n for n, _ in trunk.named_parameters()]
    if train_from == "fc6":
        return set(names)
    if train_from not in trunk.taps:
        raise ValueError(f"train_from must be fc6 or a tap of the trunk ({', '.join(trunk.taps)}), got {train_from!r}")
    i = trunk.taps.index(train_from)
    if i == 0:
        return set()
    prev = trunk.taps[i - 1]
    params = [p for _, p in trunk.named_parameters()]
    was = trunk.training
    trunk.eval()
    with torch.enable_grad():
        x = trunk.prepare(torch.zeros(2, 3, crop, crop, dtype=torch.uint8), device)
        for p in params:
            p.requires_grad_(True)
        out = trunk.forward_features(x, [prev])[prev]
        grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
    trunk.train(was)
    return {n for n, g in zip(names, grads) if g is not None}


def set_train_mode(net: ClsNet, frozen: set[str]) -> None:
    """Train mode, except modules whose own parameters are all frozen (their BN
    statistics are weights too: a frozen layer keeps them)."""
    net.train()
    for mname, m in net.trunk.named_modules():
        own = [f"{mname}.{p}" if mname else p for p, _ in m.named_parameters(recurse=False)]
        if own and all(n in frozen for n in own):
            m.eval()


# ---------------------------------------------------------------------------- train / evaluate

def multilabel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy: ``logits`` [B, K], ``labels`` int8 [B, K] in {1, 0, -1}; 0
    is masked out; summed over classes, averaged over the batch."""
    weight = (labels != 0).float()
    loss = F.binary_cross_entropy_with_logits(logits, (labels == 1).float(), weight=weight, reduction="sum")
    return loss / max(1, logits.shape[0])


def train_one_epoch(net, batches, optimizer, scheduler, state: dict, until: int, cfg, train_lbl, frozen,
                    device, skips: SkipCounter, bar, run) -> None:
    """Steps from ``state["step"]`` to ``until`` over the batch iterator ``batches``."""
    f = cfg.finetune
    params = [p for p in net.parameters() if p.requires_grad]
    set_train_mode(net, frozen)
    while state["step"] < until:
        batch = next(batches)
        skips.update(batch)
        if batch["index"].numel() == 0:
            continue
        x = net.trunk.prepare(batch["image"], device)
        loss = multilabel_loss(net(x), targets(train_lbl, batch["index"], device))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"voc-cls finetune: non-finite loss at step {state['step']}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if f.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, f.clip_grad)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        bar.update(1)
        if state["step"] % f.log_every == 0 or state["step"] == f.iterations:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            run.log("train", step=state["step"], loss=round(loss.item(), 5), lr=scheduler.get_last_lr()[0])


@torch.no_grad()
def evaluate(net: ClsNet, loader, n_images: int, num_classes: int, device, skips: SkipCounter) -> np.ndarray:
    """Scores float [N, K]: fc8 logits averaged over each image's views; NaN rows for
    images the loader skipped."""
    net.eval()
    scores = np.full((n_images, num_classes), np.nan)
    for batch in tqdm(loader, desc="test crops", unit="batch", leave=False):
        skips.update(batch)
        if batch["index"].numel() == 0:
            continue
        views = batch["image"]                                      # uint8 [B, n, 3, crop, crop]
        b, n = views.shape[:2]
        logits = net(net.trunk.prepare(views.flatten(0, 1), device))  # [B * n, K]
        scores[batch["index"].numpy()] = logits.view(b, n, -1).mean(1).double().cpu().numpy()
    return scores


def run_finetune(cfg, trunk, train_lbl, test_lbl, device, run) -> dict:
    """Fine-tune and test; returns {"aps", "mAP", "extra"}."""
    f, d = cfg.finetune, cfg.data
    head, head_info = build_head(trunk, d.crop, len(train_lbl.classes), f.head,
                                 checkpoint_head_state(cfg.trunk) if f.head.from_checkpoint else None)
    net = ClsNet(trunk, head).to(device)
    frozen = frozen_names(trunk, cfg.train_from, d.crop, device)
    for n, p in trunk.named_parameters():
        p.requires_grad_(n not in frozen)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    guard = TrunkGuard(trunk) if cfg.train_from == "fc6" else None  # fc6-8: the trunk must not move at all
    run.say(f"head: {head_info}; training from {cfg.train_from}: {trainable} trainable parameters, "
            f"{len(frozen)} trunk tensors frozen")
    train_src = image_source(train_lbl, train_transform(d.crop, d.resize, f.scale_min, f.scale_max))
    if f.rescale.enabled:
        head_info["rescale"] = krahenbuhl_rescale(net, train_src, train_lbl, multilabel_loss, f.rescale, device,
                                                  cfg.seed, run.say)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=f.lr, momentum=f.momentum,
                                weight_decay=f.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, f.lr_step, f.lr_gamma)
    test_src = image_source(test_lbl, RandomCrops(f.test_crops, d.crop, d.resize))
    test_loader = eval_loader(test_src, f.eval_batch_size, cfg.seed + 1, d.num_workers)
    train_skips, test_skips, state = SkipCounter(), SkipCounter(), {"step": 0}
    batches = iter(train_loader(train_src, f.batch_size, f.iterations, cfg.seed, d.num_workers))
    start = time.perf_counter()
    with tqdm(total=f.iterations, desc=f"finetune from {cfg.train_from}", unit="it") as bar:
        while state["step"] < f.iterations:
            until = min(f.iterations, state["step"] + (f.eval_every or f.iterations))
            train_one_epoch(net, batches, optimizer, scheduler, state, until, cfg, train_lbl, frozen, device,
                            train_skips, bar, run)
            if until < f.iterations:
                _, m, _ = class_aps(evaluate(net, test_loader, len(test_lbl.ids), len(test_lbl.classes), device,
                                             SkipCounter()), test_lbl, "sklearn")
                run.say(f"step {until}: test mAP {m:.2f}")
                run.log("val", step=until, mAP=m)
    seconds = time.perf_counter() - start
    scores = evaluate(net, test_loader, len(test_lbl.ids), len(test_lbl.classes), device, test_skips)
    aps, m, unscored = class_aps(scores, test_lbl, "sklearn")
    if guard is not None:
        guard.check()  # raises TrunkChangedError if a frozen weight or BN statistic moved
    save_checkpoint(run.checkpoint_dir / "finetuned.pt",
                    {"format": "colorbench-voc-cls-finetuned", "classes": train_lbl.classes, "step": state["step"],
                     "head": head.state_dict(), "trunk": trunk.net.state_dict(), "head_info": head_info})
    extra = {"head": head_info, "train_from": cfg.train_from, "iterations": state["step"],
             "train_seconds": round(seconds, 2), "trainable_parameters": trainable,
             "skipped_train": train_skips.as_dict(), "skipped_test": test_skips.as_dict(),
             "test_images_unscored": unscored, "trunk_unchanged": True if guard is not None else None,
             "ap": "sklearn average_precision_score, difficult excluded"}
    return {"aps": aps, "mAP": m, "extra": extra}
