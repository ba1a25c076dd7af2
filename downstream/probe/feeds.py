"""How pooled features reach the probe heads: streamed from the images, one trunk pass
per batch (``StreamFeed``), or read from the on-disk feature cache (``CachedFeed``,
no-augmentation mode; ``downstream.probe.feature_cache``). A feed's ``epoch(e)`` yields
``({tap: [N, C, h', w']}, labels [N])`` on the device; nothing is kept between batches.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from downstream.probe.feature_cache import FeatureCache, state_fingerprint
from downstream.probe.heads import ProbeHeads
from downstream.supervised import train_loader
from pretext.data.loader import SkipCounter, make_loader
from pretext.engine import dist as dist_utils


def loader_for(src, cfg, train: bool, world: int, rank: int):
    """Per-rank loader: shuffled, full batches for training; an exact split for evaluation."""
    if train:
        return train_loader(src, cfg.batch_size, cfg.data.num_workers, cfg.seed)
    # no padding: every image is counted once over the ranks
    return make_loader(src, cfg.batch_size // world, num_workers=cfg.data.num_workers,
                       sampler=range(rank, len(src), world))


def featurize(trunk: nn.Module, heads: ProbeHeads, images: torch.Tensor, device: torch.device) -> dict:
    """uint8 RGB [N, 3, H, W] -> pooled taps {tap: [N, C, h', w']}, without gradients.
    The trunk gets the input it declares (``Trunk.prepare``: L or RGB)."""
    with torch.no_grad():
        return heads.pool(trunk.forward_features(trunk.prepare(images, device), heads.taps))


class StreamFeed:
    """Batches of (pooled taps, labels) straight from the images: one trunk pass each."""

    def __init__(self, loader, trunk, heads, device, skips: SkipCounter):
        self.loader, self.trunk, self.heads, self.device, self.skips = loader, trunk, heads, device, skips

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int):
        if hasattr(self.loader.sampler, "set_epoch"):
            self.loader.sampler.set_epoch(epoch)
        for batch in self.loader:
            self.skips.update(batch)
            labels = batch["label"].to(self.device)
            if labels.numel() == 0:  # every file bad: still yielded, so DDP ranks stay in step
                yield {}, labels
            else:
                yield featurize(self.trunk, self.heads, batch["image"], self.device), labels


class CachedFeed:
    """Batches of (pooled taps, labels) read from the on-disk feature cache."""

    def __init__(self, split, batch_size: int, device, train: bool, seed: int):
        self.split, self.batch_size, self.device, self.train, self.seed = split, batch_size, device, train, seed
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()

    def __len__(self) -> int:
        return self.split.num_batches(self.batch_size, self.world, drop_last=self.train)

    def epoch(self, epoch: int):
        return self.split.batches(self.batch_size, self.device, shuffle=self.train, seed=self.seed, epoch=epoch,
                                  rank=self.rank, world=self.world, drop_last=self.train)


def make_feeds(cfg, trunk, heads, train_src, val_src, device, skips, say):
    world, rank = dist_utils.world_size(), dist_utils.rank()
    train_loader, val_loader = loader_for(train_src, cfg, True, world, rank), loader_for(val_src, cfg, False, world, rank)
    if not cfg.cache.enabled:
        return StreamFeed(train_loader, trunk, heads, device, skips), StreamFeed(val_loader, trunk, heads, device, skips)
    d = cfg.data
    key = {"trunk": state_fingerprint(trunk), "input": trunk.input_kind, "taps": heads.taps, "crop": d.crop,
           "resize": d.resize,
           "pools": {t: [s.kind, s.in_shape, s.out_shape, s.kernel, s.stride, s.padding] for t, s in heads.specs.items()},
           "data": {"kind": d.kind, "root": str(Path(d.root).resolve()), "train": [d.train_split, d.train_list, d.train_limit],
                    "val": [d.val_split, d.val_list, d.val_limit]}}
    cache = FeatureCache(cfg.cache.dir, key, cfg.cache.dtype)
    dims = {t: s.dim for t, s in heads.specs.items()}
    feeds = []
    for split, src in (("train", train_src), ("val", val_src)):
        if not cache.has(split):
            say(f"feature cache: writing {split} ({len(src)} images) to {cache.dir}")
            loader = make_loader(src, cfg.batch_size // world, num_workers=d.num_workers,
                                 sampler=range(rank, len(src), world))
            cache.build(split, _counted(loader, skips), lambda im: featurize(trunk, heads, im, device), dims, len(src))
        else:
            say(f"feature cache: reading {split} from {cache.dir}")
        reader = cache.reader(split, {t: s.out_shape for t, s in heads.specs.items()})
        feeds.append(CachedFeed(reader, cfg.batch_size // world, device, split == "train", cfg.seed))
    return feeds[0], feeds[1]


def _counted(loader, skips: SkipCounter):
    for batch in loader:
        skips.update(batch)
        yield batch
