"""Class rebalancing (Zhang et al. 2016, eq. 3-4) and the empirical ab prior.

The prior p is the frequency of each of the Q = 313 bins (nearest centre) over the
training pixels, counted in a stream (``PriorAccumulator``); ``colorbench prior``
writes it to a JSON file that the trainer caches and reuses.

    p~ = normalise(G_sigma * p)            (Gaussian smoothing in ab space, sigma = 5)
    w  ∝ ((1 - lam) p~ + lam / Q)^-1      (lam = 1/2)
    scaled so that sum_q p~_q w_q = 1     (the expected weight under p~ is 1)
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from pretext.color.bins import NUM_BINS, ab_centers, soft_encode


class PriorAccumulator:
    """Streaming bin counts: ``update(ab)`` adds the nearest-bin histogram of a batch."""

    def __init__(self, num_bins: int = NUM_BINS):
        self.counts = torch.zeros(num_bins, dtype=torch.float64)
        self.images = 0

    def update(self, ab: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """ab [N,2,H,W]; ``mask`` bool [N] selects the images to count (e.g. non-gray)."""
        if mask is not None:
            ab = ab[mask.to(ab.device)]
        if ab.shape[0] == 0:
            return
        nearest = soft_encode(ab, k=1).indices.flatten()  # [N*H*W]
        self.counts += torch.bincount(nearest, minlength=self.counts.numel()).double().cpu()
        self.images += ab.shape[0]

    def merge(self, other: "PriorAccumulator") -> None:
        self.counts += other.counts
        self.images += other.images

    def prior(self) -> torch.Tensor:
        total = self.counts.sum()
        if total <= 0:
            raise ValueError("the prior is empty: no colourful pixels were counted")
        return (self.counts / total).float()


def smooth_prior(prior: torch.Tensor, sigma: float = 5.0, centers: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian smoothing of a [Q] prior over the ab positions of the centres, renormalised."""
    centers = ab_centers() if centers is None else centers.float()
    if prior.shape != (centers.shape[0],):
        raise ValueError(f"prior: expected shape [{centers.shape[0]}], got {list(prior.shape)}")
    if sigma <= 0:
        return prior / prior.sum()
    d2 = torch.cdist(centers.double(), centers.double()).pow(2)  # [Q,Q]
    kernel = torch.exp(-d2 / (2 * sigma**2))
    smoothed = kernel @ prior.double()
    return (smoothed / smoothed.sum()).to(prior.dtype)


def rebalance_weights(prior: torch.Tensor, lam: float = 0.5, sigma: float = 5.0,
                      centers: torch.Tensor | None = None) -> torch.Tensor:
    """Per-bin weights [Q]: w ∝ 1 / ((1-lam) p~ + lam/Q), with sum(p~ w) = 1."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not torch.isfinite(prior).all() or (prior < 0).any() or prior.sum() <= 0:
        raise ValueError("prior must be finite, non-negative and not all zero")
    p = prior.double() / prior.sum()
    p_smooth = smooth_prior(p, sigma, centers)
    q = p.numel()
    mixed = (1 - lam) * p_smooth + lam / q
    if (mixed <= 0).any():  # lam = 0 with bins of zero mass: their weight is unbounded
        raise ValueError("lam = 0 and some bins have zero smoothed prior: weights would be infinite")
    w = 1.0 / mixed
    w = w / (p_smooth * w).sum()
    return w.float()


def save_prior(path: str | Path, counts: torch.Tensor, meta: dict) -> None:
    """Write counts + metadata as JSON, atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": "colorbench-prior-v1", "num_bins": int(counts.numel()),
               "counts": [float(c) for c in counts.tolist()], **meta}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def load_prior(path: str | Path) -> torch.Tensor:
    """Read a prior file written by ``save_prior`` -> normalised prior [Q] float32."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read prior file {path}: {exc}") from exc
    if payload.get("format") != "colorbench-prior-v1" or len(payload.get("counts", [])) != payload.get("num_bins"):
        raise ValueError(f"{path} is not a colorbench prior file (format colorbench-prior-v1)")
    counts = torch.tensor(payload["counts"], dtype=torch.float64)
    acc = PriorAccumulator(counts.numel())
    acc.counts = counts
    return acc.prior()
