import numpy as np
import pytest
import torch
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
