"""Exact search of the K nearest bin centres and their Gaussian weights (``soft_encode``).

Three paths, each leaving what it cannot decide exactly to the next (``SoftEncoder``):

* lattice (K = 5 on centres of a square lattice, as the published 313): closed form, two
  exps per pixel and one gathered row of indices;
* fine lookup table over the ab plane (any K <= 10, any centres);
* coarse cells with candidate lists, float64 (everything else: near-ties, far outside).
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import torch

from pretext.color.lab import check_image_batch
from pretext.color.lattice import flat_where, lattice_path


# Pixels left over by a path that go straight to the coarse path: up to this many, its cost is
# below the lookup table's fixed cost of ~25 ops (measured crossover ~3k pixels, one core).
FEW_PIXELS = 2048


@dataclass
class SoftEncoding:
    """K nearest bins of every pixel: ``indices`` long [N,K,H,W] into the centres (from
    ``soft_encode``: pixel-major strides, as a permuted [N,H,W,K]), ``weights`` [N,K,H,W]
    summing to 1 over K (Gaussian of the distance)."""

    indices: torch.Tensor
    weights: torch.Tensor
    num_bins: int = 313  # the published bins (pretext.color.bins.NUM_BINS)

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
    """Exact K-nearest-centre search: the lattice path where it applies, then a fine lookup
    table, then coarse cells; each path leaves the pixels it cannot decide exactly to the next.

    Lattice (``LatticeFive``): K = 5 on lattice centres (the published 313), sigma >= g/sqrt(80)
    (so that exp(-2cg²) stays a normal fp32). On real photos' ab it decides ~all pixels
    (``path_fractions``).

    Fine table: square cells of side ``fine`` (a power of two, 0.125), built on first use. For
    centres i, j, d²(p,ci) - d²(p,cj) is linear in p, so "the n nearest centres of p are
    the set S" holds on a whole cell iff it holds at its 4 corners; the build checks that
    exactly (float64, grid values) for S_n = the n centres nearest to the cell's middle.
      * fixed cell: S_1 and S_K hold: the K neighbours are known, only their Gaussian
        weights remain to compute;
      * pair cell: S_1, S_{K-1} and S_{K+1} hold: the K-th neighbour is the nearer of the
        two centres of S_{K+1} - S_{K-1}, one comparison;
      * general cell (around the points where three or more bisectors meet, and the border
        onto which outside pixels are clamped): the coarse path.
    A cell's row has K+1 slots: the nearest, the rest of the set, the contenders in slots
    K-1, K (fixed: slot K is a far sentinel; general: all are). Equal rows are shared (~6k
    for K=5). Per pixel: cell -> row (int32 table), the K+1 centres' coordinates (one fp32
    gather [2(K+1),R] -> [2(K+1),P], the fast gather), exponents -d²/2sigma² of all slots,
    one comparison, then the K indices as one long row of [R,K] (slot K-1: contender K-1),
    overwritten by contender K ([R]) for the pair-cell pixels where it is the nearer.
    ``floor(a / fine)`` is exact, so a pixel lies in the closed cell it gets (ties on cell
    edges are exact too). fp32 exponents order a pair to a few ulps; closer calls (|gap| <=
    4e-6 x the largest exponent) go to the coarse path, which is float64.

    Coarse path: cells of side ``cell`` with their candidates for the K+1 nearest (see
    ``_coarse_candidates``), a top-K over [P',M] in float64; brute force outside its box.
    For K > ``max_fine_k`` (or ``fine=None``) every pixel that reaches it takes it.
    """

    def __init__(self, centers: torch.Tensor, k: int = 5, sigma: float = 5.0, cell: float = 5.0,
                 extent: float = 130.0, fine: float | None = 0.125, max_fine_k: int = 10, lattice: bool = True):
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
        self.lattice = lattice_path(self.centers, self.sigma) if lattice and k == 5 and q > 5 else None
        # the fine table, built on first use: (active coarse cells, side) or None
        self._fine_args = (cand, nearest <= 2 * cell, float(fine)) if fine and k < q and k <= max_fine_k else None
        self.fine = None
        # the paths before the coarse one, in order: (name, x [N,2,L] -> indices, weights, pixels left)
        self.paths = ([("lattice", self.lattice)] if self.lattice is not None else []) + \
            ([("table", self._table_path)] if self._fine_args is not None else [])
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
        # per row: the K+1 centres' a then b [2(K+1),R] (fp32 gathers along dim 1 are the fast
        # ones), the K indices [R,K] (slot K-1: contender K-1), contender K [R] and a bound on
        # the exponents d² / 2 sigma² of fine-path pixels (|p - c_0| < (2 + sqrt 2) cell in active cells)
        general = table[:, 0] == q
        self.coords = torch.cat([c[table.T, 0], c[table.T, 1]]).float().contiguous()  # [2(K+1),R]
        self.row_idx, self.contender = table[:, :k].contiguous(), table[:, k].contiguous()  # [R,K], [R]
        slots = table[~general]  # [R',K+1] the fine-path rows
        far = (c[slots] - c[slots[:, :1]]).norm(dim=-1).masked_fill(slots == q, 0.0)  # from the nearest
        reach = float(far.max()) if len(slots) else 0.0
        self.max_exponent = 0.5 / self.sigma**2 * (reach + self.cell * (2 + math.sqrt(2))) ** 2
        self.fine_box = (g0 * per - round(self.extent / s), ng * per)  # floor(a/s) of cell 0, side
        self.fine = s  # last: the tables are complete once another thread sees it

    def _tables(self, device: torch.device) -> dict:
        """The coarse path's tables on ``device``, and the fine table's once it is built."""
        tabs = self._device_cache.get(device)
        if tabs is None:
            exact = torch.float32 if device.type == "mps" else torch.float64  # (mps has no float64)
            tabs = {"rel_a": self.rel_a.to(device, exact), "rel_b": self.rel_b.to(device, exact),
                    "cand": self.cand.to(device), "centers": self.centers.to(device, exact)}
            self._device_cache[device] = tabs
        if self.fine is not None and "cell_row" not in tabs:
            tabs.update(cell_row=self.cell_row.to(device), coords=self.coords.to(device),
                        row_idx=self.row_idx.to(device), contender=self.contender.to(device),
                        zero=torch.zeros((), dtype=torch.float32, device=device))
        return tabs

    def _cells(self, x: torch.Tensor, tabs: dict) -> torch.Tensor:
        """Row of the fine cell of each pixel of x [N,2,HW] (fp32), long [N*HW]: floor(a /
        fine) is exact, then small integers (< 2^24, exact in fp32). The table is int32 (half
        the cache footprint); the rows come back long, the index type of the gathers after it."""
        lo, nf = self.fine_box
        t = torch.mul(x, 1.0 / self.fine).floor_().clamp_(lo, lo + nf - 1)  # [N,2,HW]
        cell = torch.add(t[:, 1], t[:, 0], alpha=nf).sub_(lo * (nf + 1)).int()  # [N,HW]
        return tabs["cell_row"].index_select(0, cell.view(-1)).long()

    def path_fractions(self, ab: torch.Tensor) -> dict:
        """Fractions of the pixels of ab [N,2,H,W] decided by each path: lattice, table, coarse."""
        check_image_batch(ab, "soft_encode", channels=2)
        counts: dict = {}
        self._encode(ab.reshape(ab.shape[0], 2, -1).float(), counts=counts)
        total = max(ab[:, 0].numel(), 1)
        return {name: counts.get(name, 0) / total for name in ("lattice", "table", "coarse")}

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
            out = (t != tc).any(1).nonzero().squeeze(1)
            d2k[out], idx[out] = self._brute_force(v[out], tabs)
        return idx, (d2k - d2k[:, :1]).float()

    def _brute_force(self, v: torch.Tensor, tabs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The K nearest of all centres for v [P',2] (float64; mps: float32): d² [P',K] ascending, indices."""
        c = tabs["centers"]
        v = v.to(c.dtype)
        d2 = (v[:, :1] - c[:, 0]).square_().add_((v[:, 1:] - c[:, 1]).square_())  # [P',Q]
        return d2.topk(self.k, dim=1, largest=False)

    def _weights(self, d2: torch.Tensor) -> torch.Tensor:
        """Gaussian weights [P',K] from d² minus the nearest's [P',K] (>= 0: the nearest's term is
        1, so the sum never underflows; exp + sum cost half of softmax on short rows)."""
        w = d2.float().mul_(-0.5 / self.sigma**2).exp_()
        return w.div_(w.sum(1, keepdim=True))

    def _table_path(self, x: torch.Tensor):
        """Fine lookup table: x [N,2,L] fp32 -> indices long [N*L,K], weights fp32 [N,K,L], and the
        flat pixel indices left to the coarse path (general cells, near-ties)."""
        if self.fine is None:
            self._build_fine(*self._fine_args)
        k, (n, _, length), tabs = self.k, x.shape, self._tables(x.device)
        row = self._cells(x, tabs)  # [P] long
        ca, cb = tabs["coords"].index_select(1, row).view(2, k + 1, n, length)  # [K+1,N,L] centres' a, b
        ca.sub_(x[:, 0]), cb.sub_(x[:, 1])
        c = 0.5 / self.sigma**2
        e = torch.addcmul(tabs["zero"], ca, ca, value=-c).addcmul_(cb, cb, value=-c)  # [K+1,N,L] -d² / 2 sigma²
        # slot K-1 <- the nearer of the contenders K-1 and K
        gap = e[k] - e[k - 1]  # [N,L], > 0: contender K is nearer
        indices = tabs["row_idx"].index_select(0, row)  # [P,K]
        nearer = flat_where(gap, lambda g: g > 0)  # [P''] pair-cell pixels whose K-th is contender K
        indices[:, k - 1][nearer] = tabs["contender"].index_select(0, row[nearer])
        torch.maximum(e[k - 1], e[k], out=e[k - 1])
        # Gaussian weights normalised over K from the exponents relative to the nearest's (never
        # underflow; K-1 exps: w_0 = 1 / (1 + sum_i exp(e_i - e_0)))
        w = torch.empty(n, k, length, dtype=torch.float32, device=x.device)
        if k == 1:
            w.fill_(1.0)
        else:
            rel = e[1:k].sub_(e[0]).exp_()  # [K-1,N,L]
            w0 = w[:, 0]  # [N,L]
            torch.sum(rel, 0, out=w0).add_(1.0).reciprocal_()
            torch.mul(rel, w0, out=w[:, 1:].transpose(0, 1))
        # ties within fp32 error go to the coarse path, so do general cells (all sentinel: gap 0)
        # and non-finite gaps (|ab| >~ 1e19 overflows the d² to a general row's sentinel to -inf)
        tie = 4e-6 * self.max_exponent
        return indices, w, flat_where(gap, lambda g: ~(abs(g) > tie))

    def _coarse_path(self, x: torch.Tensor):
        """x [N,2,L] -> indices long [N*L,K], weights fp32 [N,K,L] (float64 search)."""
        n, _, length = x.shape
        indices, d2 = self._general(x.transpose(1, 2).reshape(-1, 2), self._tables(x.device))
        return indices, self._weights(d2).view(n, length, self.k).transpose(1, 2).contiguous()

    def _encode(self, x: torch.Tensor, depth: int = 0, counts: dict | None = None):
        """x [N,2,L] fp32 -> indices long [N*L,K] (pixel-major), weights fp32 [N,K,L]. The first
        path takes every pixel, each next one the pixels the previous left (``counts``: how many
        each decided)."""
        paths, (n, _, length) = self.paths, x.shape
        if depth == len(paths) or (depth > 0 and n * length <= FEW_PIXELS):  # a few left: straight to coarse
            if counts is not None:
                counts["coarse"] = n * length
            return self._coarse_path(x)
        name, path = paths[depth]
        indices, w, rest = path(x)
        if counts is not None:
            counts[name] = n * length - rest.numel()
        if rest.numel():
            ni, pi = rest // length, rest % length
            sub_indices, sub_w = self._encode(x[ni, :, pi].T.unsqueeze(0), depth + 1, counts)  # [1,2,P'] in
            indices[rest], w[ni, :, pi] = sub_indices, sub_w[0].T
        return indices, w

    def __call__(self, ab: torch.Tensor) -> SoftEncoding:
        check_image_batch(ab, "soft_encode", channels=2)
        n, _, h, w = ab.shape
        # fp32 values throughout (the coarse path: float64 of them); weights in ab's dtype
        indices, weights = self._encode(ab.reshape(n, 2, h * w).float())
        return SoftEncoding(indices.view(n, h, w, self.k).permute(0, 3, 1, 2),
                            weights.to(ab.dtype).view(n, self.k, h, w), num_bins=self.centers.shape[0])
