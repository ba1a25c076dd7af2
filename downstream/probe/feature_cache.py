"""On-disk cache of pooled probe features, for repeated probes of one trunk.

Layout under ``<cache dir>/<key>/``::

    meta.json                 what the key was made of (for people)
    <split>/<tap>.npy         pooled features [N, C*h*w] (float16 by default), a memory map
    <split>/labels.npy        int64 [N]; -1 marks an image that was skipped (bad file)
    <split>/done.json         written last: its presence marks the split as complete

``key`` is a hash of the trunk's weights and BN statistics, the data (kind, root, split,
limit, crop, resize), the pools and the dtype, so a changed trunk or crop never reads
stale features. Rows are written by image index straight into ``np.memmap`` files and
read back in random batches: neither building nor reading holds the split in memory.

One view per image is stored (the centre crop), so the cache serves the no-augmentation
mode only (``data.augment=false``): the protocol's random crops + flips need a new view
every epoch and always stream from the images.

Under DDP every rank writes its own rows of the same files (rank 0 creates them) and
reads its own slice of each shuffled epoch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from pretext.engine import dist as dist_utils
from pretext.engine.checkpoint import atomic_write_text

CACHE_VERSION = 1
DTYPES = ("float16", "float32")


def state_fingerprint(module: torch.nn.Module) -> str:
    """sha1 of every tensor (parameters and buffers) of ``module``, in key order."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d tensors (BN counters) too
    return h.hexdigest()


class FeatureCache:
    """Pooled features of one trunk + data + pools; see the module docstring."""

    def __init__(self, root: str | Path, key_fields: dict, dtype: str = "float16"):
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {DTYPES}, got {dtype!r}")
        fields = {**key_fields, "dtype": dtype, "version": CACHE_VERSION}
        self.key = hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = Path(root) / self.key
        self.dtype, self.fields = dtype, fields

    def has(self, split: str) -> bool:
        return (self.dir / split / "done.json").is_file()

    def build(self, split: str, loader: Iterable[dict], featurize: Callable, dims: dict[str, int],
              num_items: int, progress: bool = True) -> None:
        """Write ``featurize(images) -> {tap: [N, C, h, w]}`` of every batch of ``loader``
        into rows ``batch["index"]``. Every rank must call it (the loader holds its share)."""
        folder = self.dir / split
        if dist_utils.is_main():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.dir / "meta.json", json.dumps(self.fields, indent=1, default=str))
            for tap, dim in dims.items():
                np.lib.format.open_memmap(folder / f"{tap}.npy", "w+", self.dtype, (num_items, dim)).flush()
            labels = np.lib.format.open_memmap(folder / "labels.npy", "w+", np.int64, (num_items,))
            labels[:] = -1
            labels.flush()
        dist_utils.barrier()
        arrays = {tap: np.load(folder / f"{tap}.npy", mmap_mode="r+") for tap in dims}
        labels = np.load(folder / "labels.npy", mmap_mode="r+")
        for batch in tqdm(loader, desc=f"cache {split}", unit="batch", disable=not (progress and dist_utils.is_main())):
            if batch["label"].numel() == 0:
                continue
            rows = batch["index"].numpy()
            pooled = featurize(batch["image"])
            for tap, x in pooled.items():
                arrays[tap][rows] = x.flatten(1).cpu().numpy().astype(self.dtype)
            labels[rows] = batch["label"].numpy()
        for a in (*arrays.values(), labels):
            a.flush()
        del arrays, labels
        dist_utils.barrier()
        if dist_utils.is_main():
            valid = int((np.load(folder / "labels.npy", mmap_mode="r") >= 0).sum())
            atomic_write_text(folder / "done.json", json.dumps({"rows": num_items, "valid": valid}))
        dist_utils.barrier()

    def reader(self, split: str, shapes: dict[str, tuple[int, int, int]]) -> "CachedSplit":
        if not self.has(split):
            raise FileNotFoundError(f"feature cache {self.dir / split} is incomplete (no done.json)")
        return CachedSplit(self.dir / split, shapes)


class CachedSplit:
    """Random-access reader over one cached split (memory maps; rows read per batch)."""

    def __init__(self, folder: Path, shapes: dict[str, tuple[int, int, int]]):
        self.shapes = dict(shapes)
        self.arrays = {tap: np.load(folder / f"{tap}.npy", mmap_mode="r") for tap in shapes}
        labels = np.load(folder / "labels.npy", mmap_mode="r")
        self.valid = np.flatnonzero(labels >= 0)  # int64 [n_valid]: a row index per usable image
        self.labels = labels
        for tap, a in self.arrays.items():
            if a.shape[1] != int(np.prod(shapes[tap])):
                raise ValueError(f"cached tap {tap} has {a.shape[1]} dims, the probe expects {shapes[tap]}")

    def __len__(self) -> int:
        return len(self.valid)

    def num_batches(self, batch_size: int, world: int = 1, drop_last: bool = False) -> int:
        per_rank = len(self.valid) // world if drop_last else -(-len(self.valid) // world)
        return per_rank // batch_size if drop_last else -(-per_rank // batch_size)

    def batches(self, batch_size: int, device: torch.device, shuffle: bool = False, seed: int = 0,
                epoch: int = 0, rank: int = 0, world: int = 1, drop_last: bool = False
                ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """This rank's batches: ({tap: float32 [B, C, h, w]}, labels int64 [B]) on ``device``.
        Shuffled epochs are seeded by (seed, epoch); with ``drop_last`` every rank gets the
        same number of full batches (DDP steps in lock-step)."""
        rows = self.valid
        if shuffle:
            rows = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
        if drop_last:
            rows = rows[: len(rows) // world * world]
        rows = rows[rank::world]
        stop = len(rows) // batch_size * batch_size if drop_last else len(rows)
        for start in range(0, stop, batch_size):
            idx = np.sort(rows[start:start + batch_size])  # sorted rows: sequential disk reads
            pooled = {tap: torch.from_numpy(np.asarray(a[idx], dtype=np.float32)).reshape(-1, *self.shapes[tap]).to(device)
                      for tap, a in self.arrays.items()}
            yield pooled, torch.from_numpy(np.asarray(self.labels[idx])).to(device)
