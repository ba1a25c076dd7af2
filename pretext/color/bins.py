"""Colour maths of the colorization pretext (Zhang, Isola, Efros, ECCV 2016).

Everything is batched torch on any device:

* ``ab_centers``: the published 313 in-gamut ab bin centres (grid 10).
* ``build_ab_centers``: bin centres from data, for other grid sizes (Goyal et al. 2019).
* ``soft_encode``: K nearest centres with Gaussian weights, exact, without a dense
  [N,313,H,W] target (the search: ``pretext.color.nearest``).
* ``decode``: 313-way distribution -> ab by ``mean``, ``mode`` or ``annealed`` mean.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from pretext.color.nearest import SoftEncoder, SoftEncoding  # noqa: F401 (SoftEncoding: part of this API)

NUM_BINS = 313
GRID = 10.0

# The 313 centres published with the original code, as facts: for each a (step 10),
# the contiguous range of b values (step 10) kept in gamut. Order: a-major, b ascending,
# which is the order of the published array (checked in the tests against it).
_PUBLISHED_COLUMNS = (  # (a, b_min, b_max)
    (-90, 50, 90), (-80, 20, 90), (-70, 0, 90), (-60, -20, 90), (-50, -30, 100),
    (-40, -40, 100), (-30, -50, 100), (-20, -50, 100), (-10, -60, 100), (0, -70, 100),
    (10, -80, 90), (20, -80, 90), (30, -90, 90), (40, -100, 90), (50, -100, 80),
    (60, -110, 80), (70, -110, 80), (80, -110, 70), (90, -110, 70), (100, -90, 0),
)


@lru_cache(maxsize=None)
def _published_centers() -> torch.Tensor:
    rows = [(a, b) for a, b0, b1 in _PUBLISHED_COLUMNS for b in range(b0, b1 + 1, 10)]
    centers = torch.tensor(rows, dtype=torch.float32)
    assert centers.shape == (NUM_BINS, 2)
    return centers


def ab_centers(device: torch.device | str | None = None) -> torch.Tensor:
    """The published 313 ab bin centres, float32 [313, 2] (columns a, b)."""
    return _published_centers().to(device).clone()


def build_ab_centers(ab_samples: torch.Tensor, grid: float = 10.0, min_count: int = 1) -> torch.Tensor:
    """Bin centres from data: every grid cell (centred on multiples of ``grid``) hit by
    at least ``min_count`` of the ab samples ([M, 2] or [N,2,H,W]). Returns [Q, 2]
    sorted a-major, b ascending, like the published set. Grids 5/10/15/20 as in
    Goyal et al. 2019."""
    if ab_samples.dim() == 4:
        ab_samples = ab_samples.permute(0, 2, 3, 1).reshape(-1, 2)
    if ab_samples.dim() != 2 or ab_samples.shape[1] != 2:
        raise ValueError(f"build_ab_centers: expected [M,2] or [N,2,H,W], got {list(ab_samples.shape)}")
    if grid <= 0:
        raise ValueError(f"build_ab_centers: grid must be > 0, got {grid}")
    cells = torch.round(ab_samples.float() / grid).long()
    uniq, counts = torch.unique(cells, dim=0, return_counts=True)  # sorted lexicographically
    keep = uniq[counts >= min_count]
    if keep.numel() == 0:
        raise ValueError("build_ab_centers: no cell reaches min_count; pass more samples")
    return keep.float() * grid


def soft_encoder(k: int = 5, sigma: float = 5.0, centers: torch.Tensor | None = None) -> SoftEncoder:
    """The (cached) encoder ``soft_encode`` uses, for its tables and ``path_fractions``."""
    if not isinstance(k, int) or not 1 <= k <= (NUM_BINS if centers is None else centers.shape[0]):
        raise ValueError(f"soft_encode: k must be an int in [1, {NUM_BINS if centers is None else centers.shape[0]}], got {k}")
    if centers is not None and (centers.dim() != 2 or centers.shape[1] != 2):
        raise ValueError(f"soft_encode: centers must be [Q,2], got {list(centers.shape)}")
    key = None if centers is None else centers.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return _cached_encoder(k, float(sigma), key)


@lru_cache(maxsize=16)
def _cached_encoder(k: int, sigma: float, centers: bytes | None = None) -> SoftEncoder:
    """Encoders by (k, sigma, centres as float32 bytes; None: the published 313)."""
    table = _published_centers() if centers is None else torch.frombuffer(bytearray(centers), dtype=torch.float32)
    return SoftEncoder(table.view(-1, 2), k=k, sigma=sigma)


def soft_encode(ab: torch.Tensor, k: int = 5, sigma: float = 5.0, centers: torch.Tensor | None = None) -> SoftEncoding:
    """Soft-encode ab [N,2,H,W] onto the bin centres (default: the published 313).

    K = 5 nearest with Gaussian weights sigma = 5 as in the paper (the released Caffe
    code used K = 10)."""
    return soft_encoder(k, sigma, centers)(ab)


def decode(logits: torch.Tensor, mode: str = "annealed", T: float = 0.38,
           centers: torch.Tensor | None = None) -> torch.Tensor:
    """313-way logits [N,Q,H,W] -> ab [N,2,H,W].

    ``mean``: expectation; ``mode``: centre of the most likely bin; ``annealed``: the
    mean of f_T(z) ∝ exp(log z / T) = softmax(logits / T) (T = 0.38 in the paper).
    """
    if logits.dim() != 4:
        raise ValueError(f"decode: expected logits [N,Q,H,W], got {list(logits.shape)}")
    centers = (ab_centers() if centers is None else centers).to(logits.device, logits.dtype)
    if logits.shape[1] != centers.shape[0]:
        raise ValueError(f"decode: logits have {logits.shape[1]} bins, centres {centers.shape[0]}")
    if mode == "mode":
        return centers[logits.argmax(1)].permute(0, 3, 1, 2).contiguous()
    if mode == "mean":
        temperature = 1.0
    elif mode == "annealed":
        if T <= 0:
            raise ValueError(f"decode: T must be > 0, got {T}")
        temperature = T
    else:
        raise ValueError(f"decode: mode must be one of mean, mode, annealed; got {mode!r}")
    probs = torch.softmax(logits / temperature, dim=1)  # [N,Q,H,W]
    return torch.einsum("nqhw,qc->nchw", probs, centers)
