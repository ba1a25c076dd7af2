"""``colorbench prior``: the empirical ab prior of a training set, computed once and cached.

The prior is counted over centre crops of up to ``max_images`` training images (ab
subsampled by 4, as the loss sees it), gray images excluded. The cache file name is a
hash of what determines the result (data kind, root, split, list file, crop, image
count), so a second run, or the trainer, finds it instead of recounting.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import torch
from tqdm import tqdm

from pretext.rebalance import PriorAccumulator, load_prior, save_prior
from pretext.sources import SkipCounter, build_source, make_loader, val_transform


def prior_cache_path(cache_dir: str | Path, data: dict, crop: int, max_images: int) -> Path:
    key = {"kind": data["kind"], "root": os.path.abspath(data["root"]), "split": data.get("train_split"),
           "list_file": data.get("list_file"), "crop": crop, "resize": data.get("resize"), "max_images": max_images}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"prior-{digest}.json"


def estimate_prior(data: dict, crop: int, max_images: int, device: torch.device, batch_size: int = 64,
                   num_workers: int = 0) -> tuple[PriorAccumulator, SkipCounter]:
    """Count nearest-bin frequencies over the first ``max_images`` training images."""
    from pretext.pipeline import to_lab
    from pretext.losses import colorful_mask

    source = build_source(data["kind"], data["root"], data.get("train_split"), list_file=data.get("list_file"),
                          transform=val_transform(crop, data.get("resize")), limit=max_images)
    loader = make_loader(source, batch_size, shuffle=False, num_workers=num_workers)
    acc, skipped = PriorAccumulator(), SkipCounter()
    for batch in tqdm(loader, desc="prior", unit="batch", leave=False):
        skipped.update(batch)
        if batch["image"].shape[0] == 0:
            continue
        ab = to_lab(batch["image"], device)[:, 1:, ::4, ::4].contiguous()  # [N,2,H/4,W/4]
        mask = colorful_mask(ab)
        skipped.add("grayscale_excluded", int((~mask).sum()))
        acc.update(ab, mask)
    return acc, skipped


def get_or_compute_prior(data: dict, crop: int, max_images: int, cache_dir: str | Path, device: torch.device,
                         prior_path: str | None = None, num_workers: int = 0, log=print) -> tuple[torch.Tensor, str]:
    """The prior [313] and where it came from: the given file, the cache, or a fresh count."""
    if prior_path:
        return load_prior(prior_path), str(prior_path)
    path = prior_cache_path(cache_dir, data, crop, max_images)
    if path.is_file():
        log(f"prior: using cached {path}")
        return load_prior(path), str(path)
    acc, skipped = estimate_prior(data, crop, max_images, device, num_workers=num_workers)
    save_prior(path, acc.counts, {"images": acc.images, "data": {k: str(v) for k, v in data.items()},
                                  "crop": crop, "skipped": skipped.as_dict()})
    log(f"prior: counted {acc.images} images ({skipped}) -> {path}")
    return acc.prior(), str(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a pretext config (its data and prior settings are used)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set data.root=/data/imagenet")
    parser.add_argument("--out", help="write the prior here instead of the cache")


def run(args: argparse.Namespace) -> int:
    from pretext.config import load_config, to_dict
    from pretext.distributed import pick_device
    from pretext.trainer import PretrainConfig

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    device = pick_device(cfg.device)
    data = to_dict(cfg.data)
    if args.out:
        acc, skipped = estimate_prior(data, cfg.data.crop, cfg.prior.max_images, device)
        save_prior(args.out, acc.counts, {"images": acc.images, "skipped": skipped.as_dict()})
        print(f"prior of {acc.images} images ({skipped}) written to {args.out}")
        return 0
    _, where = get_or_compute_prior(data, cfg.data.crop, cfg.prior.max_images, cfg.prior.cache_dir, device)
    print(f"prior: {where}")
    return 0
