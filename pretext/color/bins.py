"""Colour maths of the colorization pretext (Zhang, Isola, Efros, ECCV 2016).

Everything is batched torch on any device:

* ``ab_centers``: the published 313 in-gamut ab bin centres (grid 10).
* ``build_ab_centers``: bin centres from data, for other grid sizes (Goyal et al. 2019).
* ``soft_encode``: K nearest centres with Gaussian weights, exact, without a dense
  [N,313,H,W] target (see ``SoftEncoder`` for the lookup-table search).
* ``decode``: 313-way distribution -> ab by ``mean``, ``mode`` or ``annealed`` mean.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from functools import lru_cache

import numpy as np
import torch

from pretext.color.lab import check_image_batch

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


@dataclass
class SoftEncoding:
    """K nearest bins of every pixel: ``indices`` long [N,K,H,W] into the centres (from
    ``soft_encode``: pixel-major strides, as a permuted [N,H,W,K]), ``weights`` [N,K,H,W]
    summing to 1 over K (Gaussian of the distance)."""

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


def _coarse_candidates(centers: torch.Tensor, k: int, cell: float, extent: float):
    """For the square cells of side ``cell`` tiling [-extent, extent]²: every centre that
    can be among the k nearest of *some* point of the cell (with D = the k-th smallest
    *farthest* distance from the cell to a centre, a centre whose *nearest* distance
    exceeds D never qualifies). Returns the candidates [C,M] (index order, padded with
    the sentinel index Q), the cells' lower corners [C,2] (float64) and the distance from
    each cell to its nearest centre [C]."""
    q, side = centers.shape[0], int(round(2 * extent / cell))
    lo = torch.arange(side, dtype=torch.float64) * cell - extent
    corner = torch.stack(torch.meshgrid(lo, lo, indexing="ij"), -1).view(-1, 1, 2)  # [C,1,2]
    rel = centers.double()[None] - corner  # [C,Q,2] centres from each cell's lower corner
    near = (rel.clamp(0, cell) - rel).norm(dim=-1)  # [C,Q] nearest / farthest point of the cell
    far = torch.maximum(rel.abs(), (rel - cell).abs()).norm(dim=-1)
    candidate = near <= far.kthvalue(min(k, q), dim=1, keepdim=True).values + 1e-3  # slack: fp32 pixels
    order = torch.argsort((~candidate).to(torch.int8), dim=1, stable=True)[:, : int(candidate.sum(1).max())]
    cand = torch.where(candidate.gather(1, order), order, torch.full_like(order, q))  # [C,M]
    return cand, corner.view(-1, 2), near.min(1).values


class SoftEncoder:
    """Exact K-nearest-centre search through two lookup tables over the ab plane.

    Fine table (the fast path): square cells of side ``fine`` (a power of two, 0.125). For
    centres i, j, d²(p,ci) - d²(p,cj) is linear in p, so "the n nearest centres of p are
    the set S" holds on a whole cell iff it holds at its 4 corners; the build checks that
    exactly (float64, grid values) for S_n = the n centres nearest to the cell's middle.
    Pixels of real photos' ab (Kodak crops at the loss's stride 4, K=5; ``cell_kinds``):
      * fixed cell: S_1 and S_K hold (~96%): the K neighbours are known, only their
        Gaussian weights remain to compute;
      * pair cell: S_1, S_{K-1} and S_{K+1} hold (~3.5%): the K-th neighbour is the nearer
        of the two centres of S_{K+1} - S_{K-1}, one comparison;
      * general cell (~0.14%: around the points where three or more bisectors meet, e.g.
        the grid squares' centres, and the border onto which outside pixels are clamped):
        the coarse path below. Halving the cells (0.25 -> 0.125) cut this path's pixels 5x
        and the time per call ~2%, at 4x the build (measured).
    A cell's row has K+1 slots: the nearest, the rest of the set, the contenders in slots
    K-1, K (fixed: slot K is a far sentinel; general: all are). Equal rows are shared (~6k
    for K=5). Per pixel: cell -> row (int32 table), the K+1 centres' coordinates (one fp32
    gather [2(K+1),R] -> [2(K+1),P], the fast gather), exponents -d²/2sigma² of all slots,
    one comparison, then the K indices as one long row of [R,K] (slot K-1: contender K-1),
    overwritten by contender K ([R]) for the pair-cell pixels where it is the nearer, so
    ``indices`` comes pixel-major (strides of [N,H,W,K]). ``floor(a /
    fine)`` is exact, so a pixel lies in the closed cell it gets (ties on cell edges are
    exact too). fp32 exponents order a pair to a few ulps; closer calls (|gap| <= 4e-6 x
    the largest exponent) go to the coarse path, which is float64.

    Coarse path: cells of side ``cell`` with their candidates for the K+1 nearest (see
    ``_coarse_candidates``), a top-K over [P',M] in float64; brute force outside its box.
    For K > ``max_fine_k`` (or ``fine=None``) every pixel takes it (the build grows with K).
    """

    def __init__(self, centers: torch.Tensor, k: int = 5, sigma: float = 5.0, cell: float = 5.0,
                 extent: float = 130.0, fine: float | None = 0.125, max_fine_k: int = 10):
        q = centers.shape[0]
        if not 1 <= k <= q:
            raise ValueError(f"soft_encode: k must be in [1, {q}], got {k}")
        if sigma <= 0:
            raise ValueError(f"soft_encode: sigma must be > 0, got {sigma}")
        self.k, self.sigma, self.cell, self.extent = k, float(sigma), float(cell), float(extent)
        self.centers = centers.float().cpu()
        self.side = int(round(2 * extent / cell))
        cand, corner, nearest = _coarse_candidates(self.centers, k + 1, cell, extent)  # K+1: the fine build's
        self.padded = torch.cat([self.centers.double(), torch.full((1, 2), 1e4, dtype=torch.float64)])  # + sentinel
        # candidates from their cell's lower corner, [C,M]: the coarse path gathers [P',M] rows
        self.rel_a = self.padded[cand, 0] - corner[:, :1]  # [C,M] float64
        self.rel_b = self.padded[cand, 1] - corner[:, 1:]
        self.cand = cand  # [C,M] centre index (q = sentinel)
        self.fine = None
        if fine and k < q and k <= max_fine_k:
            # fine cells only near centres (an in-gamut colour is within 5*sqrt(2) of its bin's)
            self._build_fine(cand, nearest <= 2 * cell, float(fine))
        self._device_cache: dict = {}

    def _build_fine(self, cand: torch.Tensor, active: torch.Tensor, s: float) -> None:
        k, q, per = self.k, self.centers.shape[0], int(round(self.cell / s))
        if per * s != self.cell or 2.0 ** round(math.log2(s)) != s:
            raise ValueError(f"SoftEncoder: fine must be a power of two dividing cell, got {s}")
        c = self.padded  # [Q+1,2] float64
        # a square box of ng x ng coarse cells around the centres (+1 cell each side)
        g0 = max(int((c[:q].min() + self.extent) // self.cell) - 1, 0)
        ng = min(int((c[:q].max() + self.extent) // self.cell) + 1, self.side - 1) - g0 + 1
        box = ((torch.arange(ng)[:, None] + g0) * self.side + torch.arange(ng) + g0).view(-1)  # coarse ids
        cand = torch.cat([cand, torch.full_like(cand[:, :3], q)], 1)  # [C,M+3], M >= K+1: K+4 to rank
        u = torch.arange(per + 1, dtype=torch.float64) * s  # vertex offsets in a coarse cell [per+1]
        per_cell = torch.full((ng * ng, per, per, k + 1), q, dtype=torch.int32)  # general unless found
        for chunk in active[box].nonzero().squeeze(1).split(256):  # [G] positions in the box
            cc = cand[box[chunk]]  # [G,M] candidates of each coarse cell
            ra = (c[cc, 0] - (chunk // ng + g0)[:, None] * self.cell + self.extent)[:, None]  # [G,1,M]
            rb = (c[cc, 1] - (chunk % ng + g0)[:, None] * self.cell + self.extent)[:, None]
            sq_a, sq_b = (ra - u[:, None]) ** 2, (rb - u[:, None]) ** 2  # [G,per+1,M]: d² = sq_a + sq_b
            mid = ((ra - u[:-1, None] - s / 2) ** 2)[:, :, None] + ((rb - u[:-1, None] - s / 2) ** 2)[:, None]
            # the middle's K+3 nearest; any other candidate is at least sqrt(t) - s/sqrt(2)
            # from all of the cell (t: the (K+4)-th smallest d² at the middle)
            t, order = mid.topk(k + 4, dim=-1, largest=False)  # [G,per,per,K+4]
            beyond = (t[..., -1].sqrt() - s / math.sqrt(2)).clamp(min=0) ** 2 * (1 - 1e-12)  # rounded down
            order, e = order[..., : k + 3], (-1, per, per, -1)
            # S_n (n = 1, K-1, K, K+1; S_0 always) holds if at each corner its farthest is no farther than the rest
            ok = {n: torch.ones(order.shape[:3], dtype=torch.bool) for n in {1, k - 1, k, k + 1} - {0}}
            for da in (0, 1):
                for db in (0, 1):
                    d = sq_a[:, da:da + per, None].expand(e).gather(-1, order)  # [G,per,per,K+3] at a corner
                    d += sq_b[:, None, db:db + per].expand(e).gather(-1, order)
                    for n in ok:
                        ok[n] &= d[..., :n].amax(-1) <= torch.minimum(d[..., n:].amin(-1), beyond)
            first, ok[0] = ok[1] if k > 1 else True, True  # K = 1: slot 0 is the chosen contender
            fixed, pair = first & ok[k], first & ok[k - 1] & ok[k + 1] & ~ok[k]
            top = cc[:, None, None].expand(e).gather(-1, order[..., : k + 1])  # [G,per,per,K+1]
            top[..., k][fixed] = q
            top[~(fixed | pair)] = q
            # canonical rows (nearest, the set sorted, the contenders) so equal cells share one
            tail = torch.arange(k + 1) >= torch.where(fixed, k, k - 1)[..., None]
            top[..., 1:] = (top[..., 1:] + tail[..., 1:] * (q + 1)).sort(-1).values % (q + 1)
            per_cell[chunk] = top.int()
        per_cell = per_cell.view(ng, ng, per, per, k + 1).transpose(1, 2).reshape(ng * per, ng * per, k + 1)
        per_cell[[0, -1]], per_cell[:, [0, -1]] = q, q  # the border, where outside pixels land: general
        per_cell = per_cell.view(-1, k + 1)  # [cells,K+1]
        # share equal rows: hash each to an int64 (wrapping), unique, then verify exactly
        mix = torch.randint(1, 2**62, (k + 1,), generator=torch.Generator().manual_seed(0)).tolist()
        key = sum(per_cell[:, j].long() * m for j, m in enumerate(mix))  # [cells]
        cell_row = torch.unique(key, return_inverse=True)[1]
        table = per_cell.new_empty(int(cell_row.max()) + 1, k + 1).index_copy_(0, cell_row, per_cell)
        if not torch.equal(table[cell_row], per_cell):  # a hash collision (never seen): exact unique
            table, cell_row = torch.unique(per_cell, dim=0, return_inverse=True)
        self.cell_row, table = cell_row.int(), table.long()  # [cells] -> row, [R,K+1]
        # per row: kind (0 fixed, 1 pair, 2 general), the K+1 centres' a then b [2(K+1),R] (fp32
        # gathers along dim 1 are the fast ones), the K indices [R,K] (slot K-1: contender K-1),
        # contender K [R] and a bound on the exponents d² / 2 sigma² of fine-path pixels (|p - c_0| <
        # (2 + sqrt 2) cell in active cells)
        general, fixed = table[:, 0] == q, table[:, k] == q
        self.row_kind = torch.where(general, 2, torch.where(fixed, 0, 1)).to(torch.int8)  # [R]
        self.coords = torch.cat([c[table.T, 0], c[table.T, 1]]).float().contiguous()  # [2(K+1),R]
        self.row_idx, self.contender = table[:, :k].contiguous(), table[:, k].contiguous()  # [R,K], [R]
        slots = table[~general]  # [R',K+1] the fine-path rows
        far = (c[slots] - c[slots[:, :1]]).norm(dim=-1).masked_fill(slots == q, 0.0)  # from the nearest
        reach = float(far.max()) if len(slots) else 0.0
        self.max_exponent = 0.5 / self.sigma**2 * (reach + self.cell * (2 + math.sqrt(2))) ** 2
        self.fine, self.fine_box = s, (g0 * per - round(self.extent / s), ng * per)  # floor(a/s) of cell 0, side

    def _on(self, device: torch.device) -> dict:
        if device not in self._device_cache:
            exact = torch.float32 if device.type == "mps" else torch.float64  # (mps has no float64)
            tabs = {"rel_a": self.rel_a.to(device, exact), "rel_b": self.rel_b.to(device, exact),
                    "cand": self.cand.to(device), "centers": self.centers.to(device, exact)}
            if self.fine is not None:
                tabs.update(cell_row=self.cell_row.to(device), coords=self.coords.to(device),
                            row_idx=self.row_idx.to(device), contender=self.contender.to(device),
                            zero=torch.zeros((), device=device))
            self._device_cache[device] = tabs
        return self._device_cache[device]

    def _cells(self, x: torch.Tensor, tabs: dict) -> torch.Tensor:
        """Row of the fine cell of each pixel of x [N,2,HW] (fp32), long [N*HW]: floor(a /
        fine) is exact, then small integers (< 2^24, exact in fp32). The table is int32 (half
        the cache footprint); the rows come back long, the index type of the gathers after it."""
        lo, nf = self.fine_box
        t = torch.mul(x, 1.0 / self.fine).floor_().clamp_(lo, lo + nf - 1)  # [N,2,HW]
        cell = torch.add(t[:, 1], t[:, 0], alpha=nf).sub_(lo * (nf + 1)).int()  # [N,HW]
        return tabs["cell_row"].index_select(0, cell.view(-1)).long()

    def cell_kinds(self, ab: torch.Tensor) -> dict:
        """Fractions of the pixels of ab [N,2,H,W] in fixed / pair / general fine cells."""
        check_image_batch(ab, "soft_encode", channels=2)
        if self.fine is None:
            return {"fixed": 0.0, "pair": 0.0, "general": 1.0}
        x = ab.reshape(ab.shape[0], 2, -1).float().cpu()
        counts = torch.bincount(self.row_kind[self._cells(x, self._on(x.device))].long(), minlength=3)
        return dict(zip(("fixed", "pair", "general"), (counts.double() / max(x[:, 0].numel(), 1)).tolist()))

    def _general(self, v: torch.Tensor, tabs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse path for pixels v = (a, b) [P',2], in float64 (fp32 d² cannot order gaps of
        1e-6 at d² ~ 400): indices long [P',K] (nearest first), their d² minus the nearest's."""
        rel_a, rel_b, cand = tabs["rel_a"], tabs["rel_b"], tabs["cand"]
        w = v.to(rel_a.dtype).add(self.extent)  # [P',2] from the box's lower corner
        t = torch.div(w, self.cell).floor_()  # [P',2] coarse cell
        tc = t.clamp(0, self.side - 1)
        flat = torch.add(tc[:, 1], tc[:, 0], alpha=self.side).long()  # [P']
        w.sub_(tc, alpha=self.cell)  # [P',2] from the cell's lower corner
        da = rel_a.index_select(0, flat).sub_(w[:, :1])  # [P',M] to the candidates
        db = rel_b.index_select(0, flat).sub_(w[:, 1:])
        d2k, j = da.square_().addcmul_(db, db).topk(self.k, dim=1, largest=False)  # [P',K] nearest first
        idx = cand.index_select(0, flat).gather(1, j)  # [P',K] centre indices
        if not torch.equal(t, tc):  # rare: far outside any Lab gamut -> brute force
            out, c = (t != tc).any(1).nonzero().squeeze(1), tabs["centers"]
            vo = v[out].to(c.dtype)
            d2_all = (vo[:, :1] - c[:, 0]) ** 2 + (vo[:, 1:] - c[:, 1]) ** 2  # [P'',Q]
            d2k[out], idx[out] = d2_all.topk(self.k, dim=1, largest=False)
        return idx, (d2k - d2k[:, :1]).float()

    def _weights(self, d2: torch.Tensor) -> torch.Tensor:
        """Gaussian weights [P',K] from d² minus the nearest's [P',K] (>= 0: the nearest's term is
        1, so the sum never underflows; exp + sum cost half of softmax on short rows)."""
        w = d2.float().mul_(-0.5 / self.sigma**2).exp_()
        return w.div_(w.sum(1, keepdim=True))

    def __call__(self, ab: torch.Tensor) -> SoftEncoding:
        check_image_batch(ab, "soft_encode", channels=2)
        n, _, h, w = ab.shape
        k, hw, tabs, q = self.k, h * w, self._on(ab.device), self.centers.shape[0]
        x = ab.reshape(n, 2, hw).float()  # [N,2,HW]: fp32 values throughout (the coarse path: float64 of them)
        out_w = torch.empty(n, k, hw, dtype=ab.dtype, device=ab.device)
        if self.fine is None:
            idx, d2 = self._general(x.transpose(1, 2).reshape(-1, 2), tabs)  # [P,K]
            out_w.copy_(self._weights(d2).view(n, hw, k).transpose(1, 2))
            return SoftEncoding(idx.view(n, h, w, k).permute(0, 3, 1, 2), out_w.view(n, k, h, w), num_bins=q)
        row = self._cells(x, tabs)  # [P] long
        ca, cb = tabs["coords"].index_select(1, row).view(2, k + 1, n, hw)  # [K+1,N,HW] centres' a, b
        ca.sub_(x[:, 0]), cb.sub_(x[:, 1])
        c = 0.5 / self.sigma**2
        e = torch.addcmul(tabs["zero"], ca, ca, value=-c).addcmul_(cb, cb, value=-c)  # [K+1,N,HW] -d² / 2 sigma²
        # slot K-1 <- the nearer of the contenders K-1 and K
        gap = e[k] - e[k - 1]  # [N,HW], > 0: contender K is nearer
        pm = tabs["row_idx"].index_select(0, row)  # [P,K]
        nearer = _flat_where(gap, lambda g: g > 0)  # [P''] pair-cell pixels whose K-th is contender K
        pm[:, k - 1][nearer] = tabs["contender"].index_select(0, row[nearer])
        torch.maximum(e[k - 1], e[k], out=e[k - 1])
        # Gaussian weights normalised over K, straight into the output, from the exponents
        # relative to the nearest's (never underflow; K-1 exps: w_0 = 1 / (1 + sum_i exp(e_i - e_0)))
        if k == 1:
            out_w.fill_(1.0)
        else:
            rel = e[1:k].sub_(e[0]).exp_()  # [K-1,N,HW]
            w0 = out_w[:, 0]  # [N,HW]
            torch.sum(rel, 0, out=w0).add_(1.0).reciprocal_()
            torch.mul(rel, w0, out=out_w[:, 1:].transpose(0, 1))
        # ties within fp32 error go to the coarse path, so do general cells (all sentinel: gap 0)
        tie = 4e-6 * self.max_exponent
        sel = _flat_where(gap, lambda g: abs(g) <= tie)  # [P']
        if sel.numel():
            ni, pi = sel // hw, sel % hw
            gi, gd = self._general(x[ni, :, pi], tabs)  # [P',K]
            pm[sel], out_w[ni, :, pi] = gi, self._weights(gd).to(out_w.dtype)
        return SoftEncoding(pm.view(n, h, w, k).permute(0, 3, 1, 2), out_w.view(n, k, h, w), num_bins=q)


def _flat_where(x: torch.Tensor, test) -> torch.Tensor:
    """Flat indices (long [M]) of the elements of x where ``test(x)`` (elementwise, written so it
    works on a numpy array and a tensor) holds. On the CPU through numpy: comparison +
    flatnonzero ~3x faster than torch's comparison + nonzero for the few hits of a long
    tensor (measured, one thread)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(test(x.detach().numpy())))
    return test(x).view(-1).nonzero().squeeze(1)


def soft_encoder(k: int = 5, sigma: float = 5.0, centers: torch.Tensor | None = None) -> SoftEncoder:
    """The (cached) encoder ``soft_encode`` uses, for its tables and ``cell_kinds``."""
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
