"""The K = 5 nearest lattice centres in closed form (``LatticeFive``), the first path of
``pretext.color.nearest.SoftEncoder`` on the published 313 bins."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def lattice_step(centers: torch.Tensor) -> float | None:
    """g if the centres are distinct nodes of gZ², g the smallest gap between distinct
    coordinates (the published 313: 10; ``build_ab_centers(grid=g)``: g), else None. Also
    None when their box of nodes is too large for ``LatticeFive`` (its tables hold 12 rows
    per node, and its case numbers must stay exact fp32 integers: < 2^24)."""
    values = torch.unique(centers.double().reshape(-1))
    if len(values) < 2:
        return None
    g = float(values.diff().min())
    m = centers.double() / g
    if not bool(((m - m.round()).abs() <= 1e-9).all()):
        return None
    node = m.round().long()
    if len(torch.unique(node, dim=0)) < len(node):  # duplicate centres: one node, two bins
        return None
    side = node.max(0).values - node.min(0).values + 5  # + the 2-node margins
    return g if int(side.prod()) * 12 < 2**24 else None


def lattice_path(centers: torch.Tensor, sigma: float) -> "LatticeFive | None":
    """The closed-form path for K = 5 on these centres, or None where it does not apply: not
    lattice nodes (``lattice_step``), sigma < g/sqrt(80) (exp(-2cg²) would leave the normal
    fp32 range), or no node with all 8 neighbours (it would decide nothing)."""
    g = lattice_step(centers)
    if g is None or 0.5 * g * g / sigma**2 > 40:
        return None
    path = LatticeFive(centers, g, sigma)
    return path if path.interior_nodes else None


class LatticeFive:
    """K = 5 in closed form for centres that are nodes of the square lattice gZ².

    With m0 the node nearest p, u = p - m0 (|u_a|, |u_b| <= g/2) and s its signs, the five
    nearest nodes are m0, A = m0 + (s_a,0)g, B = m0 + (0,s_b)g and the two nearest of
    D = m0 + (s_a,s_b)g, E = m0 - (s_a,0)g, F = m0 - (0,s_b)g; every other node is at least
    as far as the two nearest of D, E, F (expand the d²). Their d² differ linearly in |u|:
      d²_D - d²_E = 2g(g/2 - 2|u_a| - |u_b|),  d²_D - d²_F = 2g(g/2 - |u_a| - 2|u_b|),
      d²_E - d²_F = 2g(|u_a| - |u_b|),
    so D is dropped iff 2|u_a| + |u_b| < g/2 and |u_a| + 2|u_b| < g/2, else the farther of E, F.
    Where the 3x3 nodes around m0 are all centres ("interior"), these are the five nearest
    centres. Gaussian weights relative to m0's (c = 1/2sigma²): A exp(2cg|u_a| - cg²),
    E exp(-2cg²) / A, D = A B: two exps per pixel; the indices are one row of a table
    [nodes x 12 cases, 5]. u is exact in fp32 (p minus a nearby multiple of g); the sums
    2|u_a| + |u_b| are within two ulps (two roundings), so a pixel within ``tau`` of a
    decision (or of the node's Voronoi edge, or in a non-interior node) is left to the next path.
    """

    def __init__(self, centers: torch.Tensor, g: float, sigma: float):
        q, c = centers.shape[0], 0.5 / sigma**2
        node = torch.round(centers.double() / g).long()  # [Q,2] lattice coordinates
        # a margin of 2 nodes (1 would do): pixels clamped into the box land off the interior
        lo, hi = node.min(0).values - 2, node.max(0).values + 2
        h, w = (hi - lo + 1).tolist()
        index = torch.full((h, w), -1, dtype=torch.long)
        index[node[:, 0] - lo[0], node[:, 1] - lo[1]] = torch.arange(q)
        inside = (index >= 0).float()[None, None]
        interior = F.conv2d(inside, torch.ones(1, 1, 3, 3, dtype=inside.dtype), padding=1)[0, 0].view(-1) == 9  # [h*w]
        # 12 cases: 4 (D dropped + Y is F) + 2 (u_a >= 0) + (u_b >= 0); slots m0, A, B, X, Y
        # with X = D (E where D is dropped), Y = E or F
        offsets = []
        for kept in range(3):  # 0: D, E   1: D, F   2: E, F
            for sa in (-w, w):  # (a is the slow axis of the node index)
                for sb in (-1, 1):
                    offsets.append([0, sa, sb, -sa if kept == 2 else sa + sb, -sa if kept == 0 else -sb])
        cell = torch.arange(h * w)[:, None, None] + torch.tensor(offsets)  # [h*w,12,5]
        rows = index.view(-1)[cell.clamp(0, h * w - 1)]
        rows[~interior] = 0  # never used: those pixels are left to the next path
        self.interior_nodes = int(interior.sum())
        self.g, self.width, self.tau = g, w, 8 * torch.finfo(torch.float32).eps * 1.5 * g
        self.node_lo, self.node_hi = lo.tolist(), hi.tolist()
        self.offset = float(lo[0] * w + lo[1])  # node index of the box's corner
        self.rows = rows.view(-1, 5)  # [h*w*12,5] long
        # subtracted from a pixel's margin: > any margin (<= g/2) off the interior
        self.off_interior = (~interior).float() * 4 * g  # [h*w]
        self.a_scale, self.a_shift, self.e_scale = 2 * c * g, -c * g * g, math.exp(-2 * c * g * g)
        self._device: dict = {}

    def __call__(self, x: torch.Tensor):
        """x [N,2,L] fp32 -> indices long [N*L,5] (pixel-major), weights fp32 [N,5,L], and the
        flat pixel indices left to the next path (their rows are not valid)."""
        if x.device not in self._device:
            self._device[x.device] = (self.rows.to(x.device), self.off_interior.to(x.device))
        rows, off_interior = self._device[x.device]
        n, _, length = x.shape
        g, half = self.g, self.g / 2
        m = torch.mul(x, 1.0 / g).round_()  # [N,2,L] nearest node, lattice units
        u = torch.add(x, m, alpha=-g)  # [N,2,L] exact
        positive = torch.ge(u, 0, out=torch.empty_like(u))  # 1.0 where u >= 0
        au = u.abs_()
        ua, ub = au[:, 0], au[:, 1]  # [N,L]
        s = torch.add(au, torch.add(ua, ub).unsqueeze(1))  # [N,2,L]: 2|u_a| + |u_b|, |u_a| + 2|u_b|
        drop_d = torch.lt(torch.maximum(s[:, 0], s[:, 1]), half, out=torch.empty_like(ua))  # 1.0: X = E
        y_is_f = torch.gt(ua, ub, out=torch.empty_like(ua))  # E farther than F
        torch.maximum(y_is_f, drop_d, out=y_is_f)  # 1.0: Y = F
        # distance to the nearest decision: the two sums' thresholds and the Voronoi edge
        margin = s.sub_(half).abs_()
        margin = torch.minimum(margin[:, 0], margin[:, 1])  # [N,L]
        torch.minimum(margin, torch.maximum(ua, ub).neg_().add_(half), out=margin)
        m[:, 0].clamp_(self.node_lo[0], self.node_hi[0])
        m[:, 1].clamp_(self.node_lo[1], self.node_hi[1])
        node = torch.add(m[:, 1], m[:, 0], alpha=self.width).sub_(self.offset)  # [N,L] exact small integers
        margin.sub_(off_interior.index_select(0, node.view(-1).int()).view(n, length))
        rest = flat_where(margin, lambda v: v <= self.tau)
        case = node.mul_(12).add_(drop_d, alpha=4).add_(y_is_f, alpha=4)
        case.add_(positive[:, 0], alpha=2).add_(positive[:, 1])
        indices = rows.index_select(0, case.view(-1).long())  # [N*L,5]
        # Gaussian weights relative to m0's, unnormalised into w: 1, A, B, X (D = A B, or E), Y (E or F)
        w = torch.empty(n, 5, length, dtype=torch.float32, device=x.device)
        ab = torch.exp(au.mul_(self.a_scale).add_(self.a_shift), out=w[:, 1:3])  # [N,2,L]
        ef = torch.reciprocal(ab).mul_(self.e_scale)  # [N,2,L]
        torch.lerp(ab[:, 0] * ab[:, 1], ef[:, 0], drop_d, out=w[:, 3])
        torch.lerp(ef[:, 0], ef[:, 1], y_is_f, out=w[:, 4])
        w[:, 0].fill_(1.0)
        w.div_(w.sum(1, keepdim=True))
        return indices, w, rest


def flat_where(x: torch.Tensor, test) -> torch.Tensor:
    """Flat indices (long [M]) of the elements of x where ``test(x)`` (elementwise, written so it
    works on a numpy array and a tensor) holds. On the CPU through numpy: comparison +
    flatnonzero ~3x faster than torch's comparison + nonzero for the few hits of a long
    tensor (measured, one thread)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(test(x.detach().numpy())))
    return test(x).view(-1).nonzero().squeeze(1)
