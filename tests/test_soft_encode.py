"""Soft encoding (``pretext.color.nearest``): every path against a float64 brute force."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pretext.color import bins as color
from pretext.color.lattice import lattice_step
from pretext.color.nearest import SoftEncoder


def _brute_force(ab: torch.Tensor, k: int, sigma: float, centers: torch.Tensor):
    """Reference: distances to all Q centres in float64, sorted; Gaussian weights of
    the k nearest. Returns (order [P,Q], sorted d2 [P,Q], weights [P,k])."""
    pts = ab.double().permute(0, 2, 3, 1).reshape(-1, 2)
    d2, order = torch.cdist(pts, centers.double()).pow(2).sort(1)
    # subtracting the nearest distance changes nothing mathematically and keeps far
    # points (|ab| ~ 300) from underflowing to 0/0
    w = torch.exp(-(d2[:, :k] - d2[:, :1]) / (2 * sigma**2))
    return order, d2, w / w.sum(1, keepdim=True)


def _compare_to_brute_force(ab, k, sigma=5.0, centers=None, encoder=None):
    """``encoder`` (default: ``soft_encode``'s for k, sigma, centers) against the brute force."""
    enc = (encoder or color.soft_encoder(k, sigma, centers))(ab)
    centers = color.ab_centers() if centers is None else centers
    order, d2_ref, w_ref = _brute_force(ab, k, sigma, centers)
    idx = enc.indices.permute(0, 2, 3, 1).reshape(-1, k)
    w = enc.weights.permute(0, 2, 3, 1).reshape(-1, k).double()
    pts = ab.double().permute(0, 2, 3, 1).reshape(-1, 2)
    d2 = (pts[:, None] - centers.double()[idx]).pow(2).sum(-1)  # [P,k]
    d2_sorted, rank = d2.sort(1)
    # the chosen centres are k nearest ones: same distances as the reference's k nearest
    assert torch.allclose(d2_sorted, d2_ref[:, :k], rtol=0, atol=1e-6)
    # same index sets wherever the k-th and (k+1)-th distances are not tied
    untied = (d2_ref[:, k] - d2_ref[:, k - 1] > 1e-6) if k < len(centers) else torch.ones(len(idx), dtype=torch.bool)
    assert torch.equal(idx[untied].sort(1).values, order[untied, :k].sort(1).values)
    # weights within 1e-5, matched by distance rank
    assert (w.gather(1, rank) - w_ref).abs().max() < 1e-5
    assert torch.allclose(enc.weights.sum(1), torch.ones(()), atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 10, 32])
def test_soft_encode_equals_brute_force(k):
    g = torch.Generator().manual_seed(k)
    inside = torch.rand(2, 2, 40, 40, generator=g) * 200 - 100  # mostly in or near the gamut
    far = torch.rand(1, 2, 20, 20, generator=g) * 600 - 300  # far outside any gamut
    # points on the gamut edge: the outermost centres, slightly perturbed
    c = color.ab_centers()
    edge = (c + torch.randn(313, 2, generator=g) * 3).T.reshape(1, 2, 1, 313)
    for ab in (inside, far, edge):
        _compare_to_brute_force(ab, k)


@settings(max_examples=60, deadline=None)
@given(a=st.floats(-200, 200), b=st.floats(-200, 200), k=st.integers(1, 12))
def test_soft_encode_property(a, b, k):
    _compare_to_brute_force(torch.tensor([a, b]).reshape(1, 2, 1, 1), k)


def test_soft_encode_hand_case():
    # at (0,0): itself at distance 0 and four neighbours at distance 10;
    # weights 1 : e^{-100/50} (x4), normalised
    enc = color.soft_encode(torch.zeros(1, 2, 1, 1), k=5)
    assert enc.indices[0, 0, 0, 0] == 120
    w0 = 1 / (1 + 4 * math.exp(-2))
    assert abs(enc.weights[0, 0].item() - w0) < 1e-6
    assert torch.allclose(enc.weights[0, 1:, 0, 0], torch.full((4,), math.exp(-2) * w0), atol=1e-6)
    assert enc.argmax().item() == 120
    dense = enc.dense()
    assert dense.shape == (1, 313, 1, 1) and abs(dense.sum().item() - 1) < 1e-6
    assert abs(dense[0, 120].item() - w0) < 1e-6


@pytest.mark.parametrize("k", [0, 314, -1])
def test_soft_encode_bad_k(k):
    with pytest.raises(ValueError, match="k must be"):
        color.soft_encode(torch.zeros(1, 2, 2, 2), k=k)


def test_soft_encode_bad_input():
    with pytest.raises(ValueError, match=r"\[N,2,H,W\]"):
        color.soft_encode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        color.soft_encode(torch.full((1, 2, 2, 2), float("inf")))


@pytest.fixture(scope="module")
def photo_ab() -> torch.Tensor:
    """ab [16,2,44,44] of real photos as the trainer's targets: 176 crops at stride 4
    (Kodak24 from ../shared when present, else scikit-image's bundled photos)."""
    from benchmarks import speed

    photos, _ = speed.load_photos()
    return speed.photo_ab(photos, num=16, seed=0)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_soft_encode_equals_brute_force_on_real_photos(k, photo_ab):
    assert photo_ab.shape == (16, 2, 44, 44)
    _compare_to_brute_force(photo_ab[:8], k)


def test_real_photos_take_the_lattice_path(photo_ab):
    # the closed form's claim on what training sees: it decides nearly every pixel
    kinds = color.soft_encoder(5).path_fractions(photo_ab)
    assert abs(sum(kinds.values()) - 1) < 1e-9
    assert kinds["lattice"] > 0.98 and kinds["coarse"] < 0.02


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_soft_encode_exact_next_to_bisectors(k):
    # points 1e-3 .. 1e-5 either side of the bisector of the K-th and (K+1)-th nearest centres:
    # the K-th neighbour flips there (pair cells' one comparison, and the fp32 near-ties that
    # must go to the float64 path)
    g = torch.Generator().manual_seed(k)
    c = color.ab_centers().double()
    p = torch.rand(400, 2, generator=g, dtype=torch.float64) * 160 - 80
    order = torch.cdist(p, c).argsort(1)
    ci, cj = c[order[:, k - 1]], c[order[:, k]]
    normal = (cj - ci) / (cj - ci).norm(dim=1, keepdim=True)
    on = p - ((p - (ci + cj) / 2) * normal).sum(1, keepdim=True) * normal  # projected onto the bisector
    offsets = torch.tensor([-1e-3, -1e-5, 1e-5, 1e-3], dtype=torch.float64)
    pts = (on[:, None] + offsets[:, None] * normal[:, None]).reshape(-1, 2).float()
    _compare_to_brute_force(pts.T.reshape(1, 2, 1, -1), k)


@pytest.mark.parametrize("sigma", [0.5, 20.0])
def test_soft_encode_other_sigmas(sigma, photo_ab):
    # small sigma: exponents -d²/2sigma² would underflow, so they are taken relative to the nearest
    g = torch.Generator().manual_seed(int(sigma * 10))
    ab = torch.cat([torch.rand(1, 2, 30, 30, generator=g) * 200 - 100, photo_ab[:1, :, :30, :30]])
    _compare_to_brute_force(ab, 5, sigma=sigma)


def test_soft_encode_layout_and_dtypes(photo_ab):
    ab = photo_ab[:2]
    enc = color.soft_encode(ab)
    # indices come pixel-major (a permuted [N,H,W,K], one gathered row per pixel), weights [N,K,H,W]
    assert enc.indices.shape == enc.weights.shape == (2, 5, 44, 44) and enc.indices.dtype == torch.long
    assert enc.indices.permute(0, 2, 3, 1).is_contiguous() and enc.weights.is_contiguous()
    # float64 / float16 ab: the same encoding of their fp32 values, weights in ab's dtype
    enc64 = color.soft_encode(ab.double())
    assert enc64.weights.dtype == torch.float64 and torch.equal(enc64.indices, enc.indices)
    assert torch.allclose(enc64.weights.float(), enc.weights)
    half = ab.half()
    assert torch.equal(color.soft_encode(half).indices, color.soft_encode(half.float()).indices)


def test_encode_benchmark_data_without_shared(monkeypatch):
    # a user's clone has no ../shared: the benchmark falls back to scikit-image's bundled photos
    from benchmarks import speed

    monkeypatch.setattr(speed, "KODAK", speed.KODAK.parent / "no_such_folder")
    ab, source = speed.encode_data("photos")
    assert ab.shape == (40, 2, 44, 44) and ab.dtype == torch.float32
    assert "scikit-image" in source
    assert speed.encode_data("random")[0].shape == (40, 2, 44, 44)
    with pytest.raises(FileNotFoundError, match="no_such"):
        speed.load_photos(speed.KODAK)


def test_lattice_step():
    c = color.ab_centers()
    assert lattice_step(c) == 10.0
    assert lattice_step(c / 2) == 5.0
    assert lattice_step(c + torch.tensor([3.0, 0.0])) is None  # off any lattice through the origin
    # on the lattice 5Z² but no node with all 8 neighbours: the lattice path would decide nothing
    assert lattice_step(c + torch.tensor([5.0, 0.0])) == 5.0
    assert SoftEncoder(c + torch.tensor([5.0, 0.0]), k=5).lattice is None
    assert lattice_step(c[:1]) is None
    # K = 5 with sigma >= g / sqrt(80) takes the lattice path; otherwise (or lattice=False) the table
    assert SoftEncoder(c, k=5).lattice is not None
    assert SoftEncoder(c, k=5, sigma=1.0).lattice is None and SoftEncoder(c, k=4).lattice is None
    assert SoftEncoder(c, k=5, lattice=False).lattice is None


def _near_decision_lines(node: torch.Tensor) -> torch.Tensor:
    """ab [1,2,1,P] at u = p - node on the lattice path's decisions, exactly and 1e-6 / 1e-4
    off them: 2|u_a| + |u_b| = 5, |u_a| + 2|u_b| = 5, |u_a| = |u_b|, the Voronoi edge |u| = 5,
    the axes, in all four sign quadrants."""
    t = torch.linspace(0, 1, 41, dtype=torch.float64)[:, None]
    lines = [torch.cat([2.5 * t, 5 - 5 * t], 1), torch.cat([5 - 5 * t, 2.5 * t], 1),
             torch.cat([5 * t, 5 * t], 1), torch.cat([torch.full_like(t, 5.0), 5 * t], 1),
             torch.cat([5 * t, torch.zeros_like(t)], 1), torch.zeros(1, 2, dtype=torch.float64)]
    u = torch.cat(lines)  # [M,2] in the quadrant u >= 0
    offsets = torch.tensor([0.0, -1e-4, -1e-6, 1e-6, 1e-4], dtype=torch.float64)
    u = (u[:, None] + offsets[None, :, None]).reshape(-1, 2)  # [M*5,2] shifted along (1,1)
    signs = torch.tensor([[1, 1], [1, -1], [-1, 1], [-1, -1]], dtype=torch.float64)
    p = (u[None] * signs[:, None] + node.double()).reshape(-1, 2).float()
    return p.T.reshape(1, 2, 1, -1)


@pytest.mark.parametrize("node", [(0.0, 0.0), (10.0, -20.0), (-30.0, 40.0), (60.0, 50.0)])
def test_lattice_path_exact_on_its_decision_lines(node):
    ab = _near_decision_lines(torch.tensor(node))
    _compare_to_brute_force(ab, 5)
    # the exact ties are for the float64 path; the rest the closed form decides
    assert color.soft_encoder(5).path_fractions(ab)["lattice"] > 0.5


def test_table_path_for_k5_equals_brute_force(photo_ab):
    # the lookup table still serves K = 5 where the lattice path does not apply
    table = SoftEncoder(color.ab_centers(), k=5, lattice=False)
    g = torch.Generator().manual_seed(5)
    inside = torch.rand(1, 2, 40, 40, generator=g) * 200 - 100
    for ab in (photo_ab[:4], inside, _near_decision_lines(torch.tensor([10.0, -20.0]))):
        _compare_to_brute_force(ab, 5, encoder=table)
    assert table.path_fractions(photo_ab)["table"] > 0.98


def test_lattice_path_on_a_finer_grid(photo_ab):
    # centres from data on grid 5 (Goyal et al.): a lattice too, with holes where no pixel fell
    centers = color.build_ab_centers(photo_ab, grid=5)
    encoder = color.soft_encoder(5, 5.0, centers)
    assert encoder.lattice is not None and encoder.lattice.g == 5.0
    g = torch.Generator().manual_seed(55)
    for ab in (photo_ab[8:12], torch.rand(1, 2, 30, 30, generator=g) * 160 - 80):
        _compare_to_brute_force(ab, 5, centers=centers)
    # (a pixel next to a hole in these sparse centres is left to the table: ~40% here)
    assert encoder.path_fractions(photo_ab[8:12])["lattice"] > 0.5


def test_leftovers_go_to_the_table_only_when_many():
    # pixels next to the gamut edge (off the lattice path's interior) are left over: a few go
    # straight to the coarse path, many through the lookup table first
    g = torch.Generator().manual_seed(7)
    c = color.ab_centers()
    step = torch.tensor([[da, db] for da in (-10.0, 0.0, 10.0) for db in (-10.0, 0.0, 10.0)])
    is_centre = (torch.cdist((c[:, None] + step).view(-1, 2), c).min(1).values == 0).view(-1, 9)
    outer = c[~is_centre.all(1)]  # centres with a missing neighbour
    edge = (outer[torch.randint(0, len(outer), (4000,), generator=g)] + torch.randn(4000, 2, generator=g) * 2).T
    encoder = color.soft_encoder(5)
    few = edge[:, :40].reshape(1, 2, 1, -1)
    fractions = encoder.path_fractions(few)
    assert fractions["table"] == 0 and fractions["coarse"] > 0
    many = edge.reshape(1, 2, 1, -1)
    assert encoder.path_fractions(many)["table"] > 0
    for ab in (few, many):
        _compare_to_brute_force(ab, 5)


def test_duplicate_and_far_flung_centres_stay_off_the_lattice_path():
    c = color.ab_centers()
    duplicated = torch.cat([c, c[120:121]])  # one node, two bins: the closed form would drop one
    assert lattice_step(duplicated) is None
    ab = torch.tensor([0.3, 0.2]).reshape(1, 2, 1, 1)
    _compare_to_brute_force(ab, 5, centers=duplicated)
    # a box of nodes whose case numbers would pass 2^24 in fp32
    assert lattice_step(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1200.0, 1200.0]])) is None


def test_default_dtype_float64_and_huge_values(photo_ab):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        enc = SoftEncoder(color.ab_centers(), k=5)
        assert torch.equal(enc(photo_ab[:1]).indices, color.soft_encode(photo_ab[:1].float()).indices)
        table = SoftEncoder(color.ab_centers(), k=5, lattice=False)(photo_ab[:1])  # weights in ab's dtype
        assert table.weights.dtype == torch.float32 and torch.equal(table.indices.sort(1).values,
                                                                     enc(photo_ab[:1]).indices.sort(1).values)
    finally:
        torch.set_default_dtype(previous)
    # |ab| ~ 1e20: a general row's d² to its sentinel overflows; those pixels still reach the coarse path
    huge = torch.full((1, 2, 50, 50), 1e20)
    enc = color.soft_encode(huge)
    assert int(enc.indices.max()) < 313 and bool(torch.isfinite(enc.weights).all())
    _compare_to_brute_force(huge[:, :, :2, :2], 5)
