import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import color as skcolor

from pretext.color import bins as color
from pretext.color import lab as labmod
from tests.conftest import shared_path


def _skimage_lab(rgb: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(skcolor.rgb2lab(rgb.double().permute(0, 2, 3, 1).numpy())).permute(0, 3, 1, 2)


def test_lab_matches_skimage_on_random_colours():
    torch.manual_seed(0)
    rgb = torch.rand(8, 3, 16, 16)
    assert (labmod.rgb_to_lab(rgb).double() - _skimage_lab(rgb)).abs().max() < 0.1


def test_lab_matches_skimage_on_real_photos():
    from PIL import Image
    files = sorted(shared_path("data", "kodak24").glob("*.png"))[:3]
    for f in files:
        rgb = torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        assert (labmod.rgb_to_lab(rgb).double() - _skimage_lab(rgb)).abs().max() < 0.1, f.name


def test_lab_known_values():
    # white -> L=100, a=b=0; pure red -> (53.24, 80.09, 67.20) (sRGB D65, standard tables)
    rgb = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 2)
    lab = labmod.rgb_to_lab(rgb)[0, :, 0].T
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(lab[1], torch.tensor([53.24, 80.09, 67.20]), atol=0.02)


def test_rgb_round_trip():
    torch.manual_seed(1)
    rgb = torch.rand(4, 3, 32, 32)
    assert (labmod.lab_to_rgb(labmod.rgb_to_lab(rgb)) - rgb).abs().max() < 1e-3


@pytest.mark.parametrize("bad, message", [
    (torch.rand(3, 8, 8), r"\[N,3,H,W\]"),
    (torch.rand(1, 4, 8, 8), r"\[N,3,H,W\]"),
    (torch.randint(0, 255, (1, 3, 8, 8)), "floating"),
    (torch.full((1, 3, 2, 2), float("nan")), "NaN"),
])
def test_lab_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        labmod.rgb_to_lab(bad)


def test_ab_centers_equal_published_file():
    ref = np.load(shared_path("reference", "pts_in_hull.npy"))
    got = color.ab_centers()
    assert got.dtype == torch.float32 and got.shape == (313, 2)
    assert np.array_equal(got.numpy(), ref.astype(np.float32))  # same values, same order


def test_ab_centers_hand_facts():
    c = color.ab_centers()
    # 313 distinct points on the grid of 10, ranges a in [-90,100], b in [-110,100]
    assert len({tuple(p) for p in c.tolist()}) == 313
    assert torch.all(c % 10 == 0)
    assert c[:, 0].min() == -90 and c[:, 0].max() == 100 and c[:, 1].min() == -110 and c[:, 1].max() == 100
    # (0, 0) sits after the columns a = -90..-10 (5+8+10+12+14+15+16+16+17 = 113 centres)
    # and 7 steps above b = -70 in its own column: index 120
    assert c[120].tolist() == [0.0, 0.0]


def test_build_ab_centers_hand_case_and_gamut():
    pts = torch.tensor([[1.0, 2.0], [9.0, -4.0], [11.0, 0.0], [-14.0, 0.0]])
    assert color.build_ab_centers(pts, grid=10).tolist() == [[-10.0, 0.0], [0.0, 0.0], [10.0, 0.0]]
    assert color.build_ab_centers(pts, grid=10, min_count=2).tolist() == [[10.0, 0.0]]
    # the whole sRGB gamut (96^3 colours) touches 262 cells of the 10-grid (DESIGN §3)
    g = torch.linspace(0, 1, 96)
    rgb = torch.stack(torch.meshgrid(g, g, g, indexing="ij")).reshape(1, 3, 96, -1)
    ab = labmod.rgb_to_lab(rgb)[:, 1:]
    assert color.build_ab_centers(ab, grid=10).shape[0] == 262
    assert color.build_ab_centers(ab, grid=20).shape[0] < color.build_ab_centers(ab, grid=5).shape[0]


def _brute_force(ab: torch.Tensor, k: int, sigma: float):
    """Reference: distances to all 313 centres in float64, sorted; Gaussian weights of
    the k nearest. Returns (order [P,313], sorted d2 [P,313], weights [P,k])."""
    pts = ab.double().permute(0, 2, 3, 1).reshape(-1, 2)
    d2, order = torch.cdist(pts, color.ab_centers().double()).pow(2).sort(1)
    # subtracting the nearest distance changes nothing mathematically and keeps far
    # points (|ab| ~ 300) from underflowing to 0/0
    w = torch.exp(-(d2[:, :k] - d2[:, :1]) / (2 * sigma**2))
    return order, d2, w / w.sum(1, keepdim=True)


def _compare_to_brute_force(ab, k, sigma=5.0):
    enc = color.soft_encode(ab, k=k, sigma=sigma)
    order, d2_ref, w_ref = _brute_force(ab, k, sigma)
    idx = enc.indices.permute(0, 2, 3, 1).reshape(-1, k)
    w = enc.weights.permute(0, 2, 3, 1).reshape(-1, k).double()
    pts = ab.double().permute(0, 2, 3, 1).reshape(-1, 2)
    d2 = (pts[:, None] - color.ab_centers().double()[idx]).pow(2).sum(-1)  # [P,k]
    d2_sorted, rank = d2.sort(1)
    # the chosen centres are k nearest ones: same distances as the reference's k nearest
    assert torch.allclose(d2_sorted, d2_ref[:, :k], rtol=0, atol=1e-6)
    # same index sets wherever the k-th and (k+1)-th distances are not tied
    untied = (d2_ref[:, k] - d2_ref[:, k - 1] > 1e-6) if k < 313 else torch.ones(len(idx), dtype=torch.bool)
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


def test_decode_modes():
    torch.manual_seed(0)
    logits = torch.randn(2, 313, 3, 3) * 3
    c = color.ab_centers()
    mean = color.decode(logits, "mean")
    assert torch.allclose(mean, torch.einsum("nqhw,qc->nchw", logits.softmax(1), c), atol=1e-4)
    assert torch.allclose(color.decode(logits, "annealed", T=1.0), mean, atol=1e-5)
    mode = color.decode(logits, "mode")
    assert torch.equal(mode, c[logits.argmax(1)].permute(0, 3, 1, 2))
    assert (color.decode(logits, "annealed", T=0.01) - mode).abs().max() < 1e-2
    # annealing moves the mean towards the mode monotonically (on average)
    d = [(color.decode(logits, "annealed", T=t) - mode).abs().mean() for t in (1.0, 0.38, 0.1)]
    assert d[0] > d[1] > d[2]
    with pytest.raises(ValueError, match="mode must be"):
        color.decode(logits, "median")


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


def test_real_photos_mostly_take_the_table_paths(photo_ab):
    # the lookup table's claim on what training sees: nearly every pixel in a fixed or pair cell
    kinds = color.soft_encoder(5).cell_kinds(photo_ab)
    assert abs(sum(kinds.values()) - 1) < 1e-9
    assert kinds["fixed"] > 0.85 and kinds["general"] < 0.02


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
