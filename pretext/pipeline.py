"""The pretext data path: sampling order, deterministic augmentation, and the batched
on-device conversion of uint8 RGB crops into (L input, ab target, mask, soft encoding).

Order and augmentation depend only on (seed, epoch, position), never on how many
workers or ranks there are or on when a run was interrupted, so ``--resume`` and a
DDP run see exactly the images (and crops) an uninterrupted 1-process run sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from pretext.color import SoftEncoding, rgb_to_lab, soft_encode
from pretext.encoders import normalize_l
from pretext.losses import colorful_mask


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


@dataclass
class PretextBatch:
    """One batch on the device. ``lightness``: normalised L [N,1,H,W]; ``ab``: full-res
    ab [N,2,H,W]; ``target_ab``: ab at the network's output size [N,2,h,w]; ``mask``:
    bool [N], images with colour; ``encoding``: soft encoding of target_ab (None for l2)."""

    lightness: torch.Tensor
    ab: torch.Tensor
    target_ab: torch.Tensor
    mask: torch.Tensor
    encoding: SoftEncoding | None


def to_lab(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 RGB [N,3,H,W] (any device) -> Lab [N,3,H,W] float32 on ``device``."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 RGB images [N,3,H,W], got {images.dtype} {list(images.shape)}")
    return rgb_to_lab(images.to(device, non_blocking=True).float().div_(255.0))


def prepare_batch(images: torch.Tensor, out_size: tuple[int, int], device: torch.device,
                  k: int = 5, sigma: float = 5.0, encode: bool = True) -> PretextBatch:
    """uint8 RGB [N,3,H,W] -> PretextBatch; targets are area-downsampled to ``out_size``."""
    lab = to_lab(images, device)  # [N,3,H,W]
    ab = lab[:, 1:]
    target_ab = F.interpolate(ab, size=out_size, mode="area") if tuple(ab.shape[2:]) != tuple(out_size) else ab
    # the non-gray rule looks at the full-resolution image: no |a| or |b| > 5 anywhere
    mask = colorful_mask(ab)
    encoding = soft_encode(target_ab.contiguous(), k=k, sigma=sigma) if encode else None
    return PretextBatch(normalize_l(lab[:, :1]), ab, target_ab, mask, encoding)
