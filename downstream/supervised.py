"""Supervised pretraining on the labels: the ceiling row of the probe tables.

``--init supervised`` (``downstream.trunks``, any harness) first trains the same trunk
the other methods use (1-channel L input, same encoder and width) together with a
linear classifier on the global-average-pooled deepest tap, on the harness's training
split with its labels, random crops and flips; it saves the trunk as a trunk-only
colorbench checkpoint (``checkpoints/supervised_trunk.pt`` in the run directory) and
the harness then uses it like any other trunk. ``--init supervised --checkpoint
THAT_FILE`` uses a trunk trained earlier without training it again.

The published "ImageNet labels" rows are RGB AlexNets trained for ~90 epochs; this row
is the gray trunk trained for ``supervised.iterations`` steps (a ceiling for *this*
architecture and budget, which is what the comparison on the built-in data needs).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from pretext.data.loader import make_loader
from pretext.engine import dist as dist_utils
from pretext.engine.checkpoint import save_checkpoint, trunk_checkpoint


@dataclass
class SupervisedConfig:
    iterations: int = 2000  # steps of supervised training before the probe
    lr: float = 0.01  # SGD as the probe (AlexNet's original recipe also started at 0.01)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # AlexNet's
    milestones: list[int] = field(default_factory=lambda: [1000, 1600])  # lr x gamma at these steps
    gamma: float = 0.1
    log_every: int = 50


def batch_usable(n: int, device: torch.device, minimum: int = 2) -> bool:
    """Whether every rank's batch has at least ``minimum`` images (BatchNorm cannot train
    on one). Under DDP all ranks must agree, or the one that steps waits forever for the
    one that skipped: the smallest batch over the ranks decides."""
    if dist_utils.world_size() == 1:
        return n >= minimum
    return int(dist_utils.all_reduce(torch.tensor([n], device=device), "min").item()) >= minimum


def train_loader(src, batch_size: int, num_workers: int, seed: int):
    """Per-rank training loader: shuffled, full batches of ``batch_size // world`` images
    (``batch_size`` is global); a DistributedSampler under DDP."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} is not divisible by {world} ranks")
    if world > 1:
        sampler = DistributedSampler(src, world, rank, shuffle=True, seed=seed, drop_last=True)
        return make_loader(src, batch_size // world, num_workers=num_workers, sampler=sampler, drop_last=True)
    return make_loader(src, batch_size, shuffle=True, num_workers=num_workers, seed=seed, drop_last=True)


class LabelClassifier(nn.Module):
    """trunk -> deepest tap [N, C, h, w] -> global average [N, C] -> Linear [N, classes]."""

    def __init__(self, trunk: nn.Module, num_classes: int):
        super().__init__()
        self.trunk, self.tap = trunk, trunk.taps[-1]
        self.fc = nn.Linear(trunk.feature_info[self.tap]["channels"], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.trunk.forward_features(x, [self.tap])[self.tap]  # [N, C, h, w]
        return self.fc(feats.mean((2, 3)))                             # [N, num_classes]


def train_one_epoch(net: nn.Module, prepare: Callable, loader: Iterable[dict], optimizer: torch.optim.Optimizer,
                    scheduler, device: torch.device, step: int, cfg: SupervisedConfig,
                    bar, log: Callable[..., None]) -> int:
    """One pass over ``loader`` (or until ``cfg.iterations``); returns the step reached.
    ``prepare`` turns uint8 RGB into the trunk's input (``Trunk.prepare``)."""
    net.train()
    for batch in loader:
        if step >= cfg.iterations:
            break
        if not batch_usable(batch["label"].numel(), device):  # bad files can leave < 2 images
            continue
        x = prepare(batch["image"], device)                     # the trunk's input [N, C, H, W]
        y = batch["label"].to(device)                           # [N]
        logits = net(x)                                         # [N, num_classes]
        loss = F.cross_entropy(logits, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"supervised pretraining: non-finite loss {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.iterations:
            acc = (logits.argmax(1) == y).float().mean().item() * 100
            bar.set_postfix(loss=f"{loss.item():.3f}", top1=f"{acc:.1f}")
            log("supervised", step=step, loss=loss.item(), train_top1=acc, lr=scheduler.get_last_lr()[0])
    return step


def train_supervised(trunk: nn.Module, loader, num_classes: int, cfg: SupervisedConfig,
                     device: torch.device, log: Callable[..., None] = lambda *a, **k: None) -> int:
    """Train ``trunk`` (a ``downstream.trunks.Trunk``, in place, on ``device``) with a
    linear classifier on the labels. ``loader`` yields skip-aware batches (uint8 RGB; see
    ``train_loader``); under DDP it must hold a DistributedSampler. Returns the number of
    steps taken."""
    if cfg.iterations < 1:
        raise ValueError(f"supervised.iterations must be >= 1, got {cfg.iterations}")
    model = LabelClassifier(trunk, num_classes).to(device)
    net = model
    if dist_utils.world_size() > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, cfg.gamma)
    step, epoch = 0, 0
    with tqdm(total=cfg.iterations, desc="supervised", unit="it", disable=not dist_utils.is_main()) as bar:
        while step < cfg.iterations:
            if hasattr(getattr(loader, "sampler", None), "set_epoch"):
                loader.sampler.set_epoch(epoch)
            before = step
            step = train_one_epoch(net, trunk.prepare, loader, optimizer, scheduler, device, step, cfg, bar, log)
            if step == before:
                raise ValueError("supervised pretraining: an epoch gave no usable batch (too few labelled images?)")
            epoch += 1
    return step


def save_trunk(path: str | Path, encoder_module: nn.Module, encoder: str, encoder_kwargs: dict, step: int,
               config: dict) -> None:
    """The trained colorbench encoder as a trunk-only checkpoint (``trunk_checkpoint``:
    no pretext method; ``origin`` says how it was trained)."""
    save_checkpoint(path, trunk_checkpoint(encoder_module, encoder, encoder_kwargs, step=step, config=config,
                                           origin="supervised"))
