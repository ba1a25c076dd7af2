"""``colorbench colorize --samples N [--seed S]``: sampled colorizations of a stochastic
method (a fake one registered for the test: ab = 0 + seeded noise), files, grid,
reproducibility, and the one-line refusal on deterministic methods."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pretext.colorize as colorize_cmd
from pretext.colorize import ColorizeError, Colorizer, colorize_image, load_colorizer
from pretext.encoders import build_encoder
from pretext.engine.checkpoint import save_checkpoint
from pretext.methods import Method, method_payload, register_method
from pretext.methods import base as method_base
from tests.test_colorize import command, tiny_checkpoint

FAKE = "noisy_gray_test"


class NoisyGray(Method):
    """A stochastic stand-in: sample j of seed s is gray plus Gaussian ab noise (std
    ``scale``) drawn from its own generator, seeded ``1000 s + j``; ab at the input size."""

    stochastic = True
    decoders = ()

    def __init__(self, trunk: nn.Module, scale: float = 20.0):
        super().__init__(trunk)
        self.scale = float(scale)
        self.anchor = nn.Parameter(torch.zeros(1))  # the colorizer finds its device from a parameter

    def output_size(self, h, w):
        return h, w

    @torch.no_grad()
    def sample_ab(self, lightness, samples, seed=0, **options):
        n, _, h, w = lightness.shape
        draws = [torch.randn(n, 2, h, w, generator=torch.Generator().manual_seed(1000 * seed + j)) * self.scale
                 for j in range(samples)]
        return torch.stack(draws, 1).to(lightness.device)  # [n,S,2,h,w]

    @torch.no_grad()
    def predict_ab(self, lightness, decoder="annealed", seed=0, **options):
        return self.sample_ab(lightness, 1, seed)[:, 0]


@contextlib.contextmanager
def registered_fake():
    """NoisyGray in the method registry for the duration (so checkpoints of it load), then
    removed: other tests loop over the registered methods."""
    register_method(FAKE)(NoisyGray)
    try:
        yield NoisyGray
    finally:
        method_base._REGISTRY.pop(FAKE, None)


def fake_checkpoint(path, scale: float = 20.0):
    method = NoisyGray(build_encoder("alexnet_cc", width=0.0625), scale)
    save_checkpoint(path, method_payload(method, "alexnet_cc", {"width": 0.0625}, {"scale": scale}))
    return path


@pytest.fixture
def fake_ckpt(tmp_path):
    with registered_fake():
        yield fake_checkpoint(tmp_path / "noisy.pt")


def _photo(path, h=30, w=44):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_samples_are_files_per_sample_reproducible_and_sample_0_is_the_single_output(fake_ckpt, tmp_path, capsys):
    photo = _photo(tmp_path / "pic.png")
    run = lambda out, *extra: command(colorize_cmd, [str(photo), "--checkpoint", str(fake_ckpt), "--out",  # noqa: E731
                                                     str(tmp_path / out), "--size", "0", *extra])
    assert run("a", "--samples", "3", "--seed", "5", "--grid") == 0
    assert "3 samples each" in capsys.readouterr().out
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["pic_grid.png", "pic_s0.png", "pic_s1.png", "pic_s2.png"]
    images = [np.asarray(Image.open(tmp_path / "a" / f"pic_s{j}.png")) for j in range(3)]
    assert all(im.shape == (30, 44, 3) for im in images)  # full input resolution
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])  # diverse
    # grid: gray | 3 samples | original, padding 4 around and between
    assert Image.open(tmp_path / "a" / "pic_grid.png").size == (5 * 44 + 6 * 4, 30 + 2 * 4)
    assert run("b", "--samples", "3", "--seed", "5") == 0  # same seed: the same files
    for j in range(3):
        assert (tmp_path / "a" / f"pic_s{j}.png").read_bytes() == (tmp_path / "b" / f"pic_s{j}.png").read_bytes()
    assert run("c", "--samples", "3", "--seed", "6") == 0
    assert (tmp_path / "c" / "pic_s0.png").read_bytes() != (tmp_path / "a" / "pic_s0.png").read_bytes()
    assert run("d", "--seed", "5") == 0  # one colorization: <name>.png, sample 0 of that seed
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["pic.png"]
    assert (tmp_path / "d" / "pic.png").read_bytes() == (tmp_path / "a" / "pic_s0.png").read_bytes()


def test_sampled_ab_is_the_methods_upsampled(fake_ckpt):
    """Colorizer.sample_ab: the method's samples of the working-size L, bilinearly upsampled."""
    colorizer = load_colorizer(fake_ckpt, size=8, seed=2)
    lightness = torch.rand(2, 1, 12, 16, generator=torch.Generator().manual_seed(0)) * 100
    ab = colorizer.sample_ab(lightness, 4)  # [2,4,2,12,16]
    assert ab.shape == (2, 4, 2, 12, 16)
    work = colorizer.working_shape(12, 16)  # short side 8, raised to alexnet_cc's minimum input (35)
    raw = colorizer.method.sample_ab(torch.zeros(2, 1, *work), 4, 2)  # the noise ignores L: the same draws
    expected = torch.nn.functional.interpolate(raw.flatten(0, 1), size=(12, 16), mode="bilinear",
                                               align_corners=False).view(2, 4, 2, 12, 16)
    assert torch.allclose(ab, expected)
    assert torch.allclose(colorizer.predict_ab(lightness), ab[:, 0])  # predict_ab = sample 0 of the seed
    result = colorize_image(colorizer, torch.randint(0, 255, (3, 12, 16), dtype=torch.uint8), samples=4)
    assert result.samples.shape == (4, 3, 12, 16) and torch.equal(result.rgb, result.samples[0])


def test_samples_on_a_deterministic_method_are_one_line_errors(tmp_path_factory, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path_factory)
    photo = _photo(tmp_path / "pic.png")
    base = [str(photo), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
    capsys.readouterr()  # training the shared checkpoint (first use) prints progress
    assert command(colorize_cmd, [*base, "--samples", "2"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "deterministic" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert command(colorize_cmd, [*base, "--samples", "0"]) == 2 and "--samples must be >= 1" in capsys.readouterr().err
    assert command(colorize_cmd, [*base, "--samples", "1"]) == 0  # one colorization is what it has
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["pic.png"]
    colorizer = load_colorizer(ckpt)
    with pytest.raises(ColorizeError, match="deterministic"):
        colorizer.sample_ab(torch.zeros(1, 1, 40, 40), 2)
    assert not Colorizer(colorizer.method, {}, "x", 0).stochastic
