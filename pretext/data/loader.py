"""Batching: skip-aware collation and counts, the resumable step sampler, seeded
augmentation and the standard crops.

Order and augmentation depend only on (seed, epoch, position), never on how many
workers or ranks there are or on when a run was interrupted, so ``--resume`` and a
DDP run see exactly the images (and crops) an uninterrupted 1-process run sees.
Collation runs inside DataLoader workers (other processes), so nothing is counted
there: the consumer feeds every batch to a ``SkipCounter``, which sums counts by reason.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from pretext.data.images import REASONS, BadSample

log = logging.getLogger(__name__)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches of (epoch, index) pairs, step after step.

    A global step takes the next ``micro * world * accum`` positions of the epoch's
    permutation (seeded by seed + epoch); micro-batch ``a`` of rank ``r`` is the slice
    ``(a * world + r) * micro``. So 2 ranks x 1 accumulation step and 1 rank x 2
    accumulation steps split a global batch identically. The tail of an epoch that
    does not fill a global batch is dropped. ``start_step`` resumes mid-epoch.
    """

    def __init__(self, num_items: int, micro: int, world: int = 1, rank: int = 0, accum: int = 1,
                 seed: int = 0, start_step: int = 0, total_steps: int | None = None):
        self.global_batch = micro * world * accum
        if num_items < self.global_batch:
            raise ValueError(f"the data set has {num_items} items, fewer than one global batch "
                             f"({self.global_batch} = micro {micro} x ranks {world} x accumulation {accum})")
        self.num_items, self.micro, self.world, self.rank, self.accum = num_items, micro, world, rank, accum
        self.seed, self.start_step, self.total_steps = seed, start_step, total_steps
        self.steps_per_epoch = num_items // self.global_batch

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            epoch, offset = divmod(step, self.steps_per_epoch)
            perm = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed + epoch))
            base = offset * self.global_batch
            for a in range(self.accum):
                start = base + (a * self.world + self.rank) * self.micro
                yield [(epoch, int(i)) for i in perm[start:start + self.micro]]
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("an endless StepBatchSampler has no length")
        return (self.total_steps - self.start_step) * self.accum


class SeededAugmentation(Dataset):
    """Wraps a source whose transform draws from torch's global RNG: item (epoch, i) is
    produced under a generator seeded by (seed, epoch, i), so a crop is the same in any
    worker, on any rank and after a resume."""

    def __init__(self, source: Dataset, seed: int):
        self.source, self.seed = source, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch * 7_919 + index) % (2**63))
            return self.source[index]


def collate_skip_bad(items: list) -> dict:
    """Batch the good items, list the bad ones. Returns

        image: uint8 [N, 3, H, W] (a list of [3, H_i, W_i] when sizes differ,
               uint8 [0, 3, 0, 0] when every item was bad)
        label, index: int64 [N];  gray_file: bool [N];  path: list[str]
        skipped: list[BadSample]  (to feed a SkipCounter in the consumer)

    N may be smaller than the batch size, or 0.
    """
    good = [s for s in items if not isinstance(s, BadSample)]
    images = [s["image"] for s in good]
    if not images:
        image = torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    elif len({tuple(i.shape) for i in images}) == 1:
        image = torch.stack(images)
    else:
        image = images  # full-resolution images (e.g. colorize) cannot be stacked
    return {
        "image": image,
        "label": torch.tensor([s["label"] for s in good], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in good], dtype=torch.int64),
        "gray_file": torch.tensor([s["gray_file"] for s in good], dtype=torch.bool),
        "path": [s["path"] for s in good],
        "skipped": [s for s in items if isinstance(s, BadSample)],
    }


class SkipCounter:
    """Counts skipped items by reason, in the process that consumes the batches.

    Counts are occurrences: a bad file is counted once per epoch it is drawn. The
    first ``log_examples`` of each reason are logged with path and detail.
    """

    def __init__(self, log_examples: int = 5):
        self.counts: Counter = Counter()
        self.log_examples = log_examples

    def update(self, batch_or_records) -> None:
        """Add ``batch["skipped"]`` (pass the batch) or an iterable of ``BadSample``."""
        records = batch_or_records["skipped"] if isinstance(batch_or_records, dict) else batch_or_records
        for r in records:
            self.add(r.reason, path=r.path, detail=r.detail)

    def add(self, reason: str, n: int = 1, path: str | None = None, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; valid: {', '.join(REASONS)}")
        if path is not None and self.counts[reason] < self.log_examples:
            log.warning("skipped %s: %s %s", reason, path, detail)
        self.counts[reason] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self, prefix: str = "skipped/", counts: Counter | None = None) -> dict[str, int]:
        """Every reason (zeros included, so metric keys are stable) plus the total."""
        counts = self.counts if counts is None else counts
        out = {f"{prefix}{r}": int(counts[r]) for r in REASONS}
        return {**out, f"{prefix}total": sum(out.values())}

    def all_reduce(self) -> dict[str, int]:
        """``as_dict()`` summed over DDP ranks (every rank must call it); without a
        process group: this rank's counts."""
        from pretext.engine.dist import all_reduce_sum
        t = all_reduce_sum(torch.tensor([self.counts[r] for r in REASONS], dtype=torch.int64))
        return self.as_dict(counts=Counter(dict(zip(REASONS, t.tolist()))))

    def __str__(self) -> str:
        parts = ", ".join(f"{r} {self.counts[r]}" for r in REASONS if self.counts[r])
        return f"skipped {self.total}" + (f" ({parts})" if parts else "")


def make_loader(source: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0,
                seed: int = 0, drop_last: bool = False, sampler: Sampler | None = None,
                pin_memory: bool = False) -> DataLoader:
    """DataLoader with the skip-aware collate and a seeded generator.

    The order (shuffle) and the workers' RNG seeds come from ``seed``, so a given seed
    gives the same batches. With ``num_workers=0`` crops and flips use the global torch
    RNG: call ``torch.manual_seed`` for reproducible augmentation. For DDP pass a
    ``DistributedSampler(source, shuffle=..., seed=...)`` as ``sampler`` (and call its
    ``set_epoch`` each epoch); ``shuffle`` must then be False, the sampler owns order.
    """
    if sampler is not None and shuffle:
        raise ValueError("pass shuffle to the sampler (e.g. DistributedSampler(shuffle=True)), "
                         "not to make_loader, when a sampler is given")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(source, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate_skip_bad,
                      drop_last=drop_last, generator=generator, pin_memory=pin_memory,
                      persistent_workers=num_workers > 0)


class ShortSideAtLeast:
    """Resize (keeping aspect) so the short side is at least ``size``; larger images
    are left alone, so random crops keep the image's own scale."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, img):
        h, w = v2.functional.get_size(img)
        return v2.functional.resize(img, [self.size]) if min(h, w) < self.size else img


def train_transform(crop: int = 176, resize: int | None = None) -> v2.Compose:
    """Paper recipe: random ``crop`` x ``crop`` (176) + horizontal flip -> uint8 [3, crop, crop].
    ``resize`` first sets the short side (256 mimics the original's 256-pixel LMDB)."""
    ops = [v2.Resize(resize)] if resize else []
    ops += [ShortSideAtLeast(crop), v2.RandomCrop(crop), v2.RandomHorizontalFlip(), v2.PILToTensor()]
    return v2.Compose(ops)


def val_transform(crop: int = 176, resize: int | None = None) -> v2.Compose:
    """Short side -> ``resize`` (default ``crop``), centre ``crop`` -> uint8 [3, crop, crop]."""
    return v2.Compose([v2.Resize(resize or crop), v2.CenterCrop(crop), v2.PILToTensor()])
