"""The empirical ab prior of a training set, computed once and cached (``colorbench prior``).

The prior is counted over centre crops of up to ``max_images`` training images, with ab
sampled on the same grid as the loss's targets (the method's output size for a crop),
gray images excluded. The cache file name is a
hash of what determines the result (data kind, root, split, list file, crop, image
count), so a second run, or the trainer, finds it instead of recounting.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from pretext.engine import dist
from pretext.color.rebalance import PriorAccumulator, load_prior, save_prior
from pretext.data.sources import DataConfig, source_for
from pretext.engine.config import to_dict
from pretext.data.loader import SkipCounter, make_loader, val_transform


@dataclass
class PriorConfig:
    """Where the class-rebalancing prior comes from."""

    path: Optional[str] = None  # a prior file; when unset it is computed and cached
    max_images: int = 20000  # enough for a stable 313-bin histogram
    cache_dir: str = "runs/cache"


def prior_cache_path(cache_dir: str | Path, data: DataConfig, max_images: int, grid: tuple[int, int],
                     sampling: str) -> Path:
    """A file name from what determines the prior: the training split, crop, count and grid."""
    key = {"kind": data.kind, "root": os.path.abspath(data.root), "split": data.train_split,
           "list_file": data.train_list and os.path.abspath(data.train_list), "limit": data.train_limit,
           "crop": data.crop, "resize": data.resize, "max_images": max_images, "grid": list(grid),
           "sampling": sampling}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"prior-{digest}.json"


def estimate_prior(data: DataConfig, max_images: int, device: torch.device, grid: tuple[int, int],
                   sampling: str = "point", batch_size: int = 64, num_workers: int = 0
                   ) -> tuple[PriorAccumulator, SkipCounter]:
    """Count nearest-bin frequencies over the first ``max_images`` training images:
    centre crops, ab resampled to ``grid`` (the loss's output size for a crop) the way
    the targets are, gray images (the loss's non-gray rule) excluded."""
    from pretext.color.losses import colorful_mask
    from pretext.color.targets import resample_ab, to_lab

    source = source_for(data, "train", val_transform(data.crop, data.resize), limit=max_images)
    loader = make_loader(source, batch_size, shuffle=False, num_workers=num_workers)
    acc, skipped = PriorAccumulator(), SkipCounter()
    for batch in tqdm(loader, desc="prior", unit="batch", leave=False):
        skipped.update(batch)
        if batch["image"].shape[0] == 0:
            continue
        ab = to_lab(batch["image"], device)[:, 1:]  # [N,2,crop,crop]
        mask = colorful_mask(ab)  # the non-gray rule on the whole crop, as the loss applies it
        ab = resample_ab(ab, grid, sampling).contiguous()  # [N,2,h,w]: the targets' grid
        skipped.add("grayscale_excluded", int((~mask).sum()))
        acc.update(ab, mask)
    return acc, skipped


def get_or_compute_prior(data: DataConfig, prior: PriorConfig, device: torch.device, grid: tuple[int, int],
                         sampling: str = "point", num_workers: int = 0, log=print) -> tuple[torch.Tensor, str]:
    """The prior [313] and where it came from: the given file, the cache, or a fresh count."""
    if prior.path:
        return load_prior(prior.path), str(prior.path)
    path = prior_cache_path(prior.cache_dir, data, prior.max_images, grid, sampling)
    if path.is_file():
        log(f"prior: using cached {path}")
        return load_prior(path), str(path)
    acc, skipped = estimate_prior(data, prior.max_images, device, grid, sampling, num_workers=num_workers)
    save_prior(path, acc.counts, {"images": acc.images, "data": to_dict(data), "grid": list(grid),
                                  "sampling": sampling, "skipped": skipped.as_dict()})
    log(f"prior: counted {acc.images} images ({skipped}) -> {path}")
    return acc.prior(), str(path)


def shared_prior(cfg, device: torch.device, grid: tuple[int, int], sampling: str = "point",
                 say=print) -> tuple[torch.Tensor, str]:
    """The prior for a pretext config (``cfg.data``, ``cfg.prior``): rank 0 counts and
    caches it, the other ranks then read its cache file."""
    def fetch():
        return get_or_compute_prior(cfg.data, cfg.prior, device, grid, sampling, log=say)
    if dist.is_main():
        result = fetch()
    dist.barrier()
    if not dist.is_main():
        result = fetch()
    return result
