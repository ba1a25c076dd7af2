"""Colour maths of the colorization pretext (Zhang, Isola, Efros, ECCV 2016).

Everything is batched torch on any device:

* ``rgb_to_lab`` / ``lab_to_rgb``: sRGB (D65) <-> CIE Lab, [N,3,H,W], L in [0,100].
* ``ab_centers``: the published 313 in-gamut ab bin centres (grid 10).
* ``build_ab_centers``: bin centres from data, for other grid sizes (Goyal et al. 2019).
* ``soft_encode``: K nearest centres with Gaussian weights, exact, without a dense
  [N,313,H,W] target (see ``SoftEncoder`` for the lookup-table search).
* ``decode``: 313-way distribution -> ab by ``mean``, ``mode`` or ``annealed`` mean.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import kornia.color
import torch

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


def check_image_batch(x: torch.Tensor, name: str, channels: int = 3) -> None:
    """Raise ValueError unless ``x`` is a finite floating [N, channels, H, W] tensor."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor [N,{channels},H,W], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name}: expected shape [N,{channels},H,W], got {list(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: input contains NaN or inf")


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0,1] [N,3,H,W] -> Lab [N,3,H,W] (L in [0,100], D65 white)."""
    check_image_batch(rgb, "rgb_to_lab")
    return kornia.color.rgb_to_lab(rgb.clamp(0.0, 1.0))


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Lab [N,3,H,W] -> sRGB [N,3,H,W], clipped to [0,1] unless ``clip=False``."""
    check_image_batch(lab, "lab_to_rgb")
    return kornia.color.lab_to_rgb(lab, clip=clip)


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


@dataclass
class SoftEncoding:
    """K nearest bins of every pixel: ``indices`` long [N,K,H,W] into the centres,
    ``weights`` [N,K,H,W] summing to 1 over K (Gaussian of the distance)."""

    indices: torch.Tensor
    weights: torch.Tensor
    num_bins: int = NUM_BINS

    def dense(self) -> torch.Tensor:
        """The dense target [N,Q,H,W] (for inspection; the losses never build it)."""
        n, _, h, w = self.indices.shape
        out = self.weights.new_zeros(n, self.num_bins, h, w)
        return out.scatter_add_(1, self.indices, self.weights)

    def argmax(self) -> torch.Tensor:
        """Bin of the largest weight, long [N,H,W] (the nearest centre)."""
        return self.indices.gather(1, self.weights.argmax(1, keepdim=True)).squeeze(1)


class SoftEncoder:
    """Exact K-nearest-centre search through a lookup table over ab cells.

    The ab plane is cut into square cells of side ``cell``. For each cell we keep the
    candidate centres that can be among the K nearest of *some* point of the cell: with
    D = the K-th smallest *farthest* distance from the cell to a centre (no point of the
    cell has its K-th neighbour farther than D), a centre whose *nearest* distance to the
    cell exceeds D can never qualify. Lists are padded to a common length M with a
    sentinel far away, so a pixel costs M distances and a top-K instead of 313
    (or a ball tree). Points outside the table's box fall back to brute force.
    """

    def __init__(self, centers: torch.Tensor, k: int = 5, sigma: float = 5.0, cell: float = 5.0,
                 extent: float = 130.0):
        q = centers.shape[0]
        if not 1 <= k <= q:
            raise ValueError(f"soft_encode: k must be in [1, {q}], got {k}")
        if sigma <= 0:
            raise ValueError(f"soft_encode: sigma must be > 0, got {sigma}")
        self.k, self.sigma, self.cell, self.extent = k, float(sigma), float(cell), float(extent)
        self.centers = centers.float().cpu()
        self.side = int(round(2 * extent / cell))
        lo = torch.arange(self.side, dtype=torch.float64) * cell - extent  # cell lower edges
        a0, b0 = torch.meshgrid(lo, lo, indexing="ij")
        a0, b0 = a0.reshape(-1, 1), b0.reshape(-1, 1)  # [C,1]
        ca, cb = self.centers[:, 0].double()[None], self.centers[:, 1].double()[None]  # [1,Q]
        # nearest / farthest distance from each cell (rectangle) to each centre: [C,Q]
        near_a = (a0 - ca).clamp(min=0) + (ca - (a0 + cell)).clamp(min=0)
        near_b = (b0 - cb).clamp(min=0) + (cb - (b0 + cell)).clamp(min=0)
        far_a = torch.maximum((ca - a0).abs(), (ca - a0 - cell).abs())
        far_b = torch.maximum((cb - b0).abs(), (cb - b0 - cell).abs())
        near = (near_a**2 + near_b**2).sqrt()
        far = (far_a**2 + far_b**2).sqrt()
        bound = far.kthvalue(k, dim=1, keepdim=True).values  # [C,1]
        candidate = near <= bound + 1e-6  # [C,Q]
        m = int(candidate.sum(1).max())
        # sort so candidates come first; pad with the sentinel index q
        order = torch.argsort((~candidate).to(torch.int8), dim=1, stable=True)[:, :m]
        valid = candidate.gather(1, order)  # [C,M]
        cand = torch.where(valid, order, torch.full_like(order, q))
        # candidate coordinates relative to their cell's lower corner, stored [M,C] so a
        # pixel's M candidates are gathered along dim 1 and the work runs over [M,P]
        # rows (vectorised over pixels) instead of tiny per-pixel rows
        padded = torch.cat([self.centers.double(), torch.full((1, 2), 1e4, dtype=torch.float64)], 0)
        self.rel_a = (padded[cand, 0] - a0).T.float().contiguous()  # [M,C]
        self.rel_b = (padded[cand, 1] - b0).T.float().contiguous()  # [M,C]
        self.cand = cand.T.contiguous()  # [M,C] centre index (q = sentinel)
        self.width = m
        self._device_cache: dict = {}

    def _on(self, device: torch.device):
        if device not in self._device_cache:
            self._device_cache[device] = tuple(t.to(device) for t in (self.rel_a, self.rel_b, self.cand, self.centers))
        return self._device_cache[device]

    def __call__(self, ab: torch.Tensor) -> SoftEncoding:
        check_image_batch(ab, "soft_encode", channels=2)
        n, _, h, w = ab.shape
        rel_a, rel_b, cand, centers = self._on(ab.device)
        a, b = ab[:, 0].reshape(-1).float(), ab[:, 1].reshape(-1).float()  # [P]
        ia, ib = ((a + self.extent) / self.cell).floor().long(), ((b + self.extent) / self.cell).floor().long()
        inside = (ia >= 0) & (ia < self.side) & (ib >= 0) & (ib < self.side)
        ia, ib = ia.clamp(0, self.side - 1), ib.clamp(0, self.side - 1)
        flat = ia * self.side + ib  # [P] cell of each pixel
        # offsets to the candidates in local coordinates (small numbers: exact enough in fp32)
        da = rel_a.index_select(1, flat) - (a - (ia * self.cell - self.extent))  # [M,P]
        db = rel_b.index_select(1, flat) - (b - (ib * self.cell - self.extent))  # [M,P]
        d2 = da * da + db * db  # [M,P]
        # K smallest along dim 0 by repeated min (M ~ 13-20 rows: cheaper than topk)
        chosen_d2, chosen_idx = [], []
        for _ in range(self.k):
            best, row = d2.min(0)  # [P]
            chosen_d2.append(best)
            chosen_idx.append(cand.view(-1)[row * cand.shape[1] + flat])
            d2.scatter_(0, row[None], float("inf"))
        d2k, idx = torch.stack(chosen_d2), torch.stack(chosen_idx)  # [K,P], nearest first
        if not bool(inside.all()):  # rare: far outside any Lab gamut -> exact brute force
            out = (~inside).nonzero().squeeze(1)
            pts = torch.stack([a[out], b[out]], 1).double()
            d2_all = (pts[:, None, :] - centers.double()[None]).pow(2).sum(-1)  # [P',Q]
            far_d2, far_idx = d2_all.topk(self.k, dim=1, largest=False)
            d2k[:, out], idx[:, out] = (far_d2 - far_d2[:, :1]).T.float(), far_idx.T
            d2k[:, inside] -= d2k[:1, inside]
        else:
            d2k = d2k - d2k[:1]
        # Gaussian weights exp(-d^2 / 2 sigma^2), normalised over K (relative to the nearest)
        weights = torch.exp(d2k * (-0.5 / self.sigma**2))
        weights = weights / weights.sum(0, keepdim=True)
        to_map = lambda t: t.view(self.k, n, h, w).permute(1, 0, 2, 3).contiguous()  # noqa: E731
        return SoftEncoding(to_map(idx), to_map(weights).to(ab.dtype), num_bins=self.centers.shape[0])


@lru_cache(maxsize=16)
def _cached_encoder(k: int, sigma: float) -> SoftEncoder:
    return SoftEncoder(_published_centers(), k=k, sigma=sigma)


def soft_encode(ab: torch.Tensor, k: int = 5, sigma: float = 5.0, centers: torch.Tensor | None = None) -> SoftEncoding:
    """Soft-encode ab [N,2,H,W] onto the bin centres (default: the published 313).

    K = 5 nearest with Gaussian weights sigma = 5 as in the paper (the released Caffe
    code used K = 10)."""
    if not isinstance(k, int) or not 1 <= k <= (NUM_BINS if centers is None else centers.shape[0]):
        raise ValueError(f"soft_encode: k must be an int in [1, {NUM_BINS if centers is None else centers.shape[0]}], got {k}")
    encoder = _cached_encoder(k, float(sigma)) if centers is None else SoftEncoder(centers, k=k, sigma=sigma)
    return encoder(ab)


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
