"""``colorbench colorize``: through ``Method.predict_ab``; any size, gray or colour input,
decoders, costs, v1 checkpoints, bad input."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pretext.colorize as colorize_cmd
from downstream.color_quality.costs import colorizer_costs, runtime_ms
from pretext.color.bins import ab_centers
from pretext.color.lab import lab_to_rgb
from pretext.color.prior import estimate_prior
from pretext.color.targets import to_lab
from pretext.colorize import ColorizeError, Colorizer, colorize_image, load_colorizer
from pretext.data.loader import make_loader, train_transform
from pretext.data.sources import DataConfig, build_source
from pretext.data.synthetic.generate import make_dataset
from pretext.encoders import build_encoder, list_encoders
from pretext.engine.checkpoint import CheckpointError, save_checkpoint, trunk_checkpoint
from pretext.engine.config import to_dict
from pretext.methods import Method, StepContext, build_method, list_methods, method_payload
from tests.conftest import build_or_skip, shared_path

CROP, RESIZE = 40, 48  # the tiny model's training geometry: its working size is RESIZE
PRIOR_IMAGES = 64  # every training image of the miniature data
METHOD_KWARGS = {"head": "linear"}  # one 1x1 conv on conv5: the cheapest head, trained in seconds


def command(module, argv: list[str]) -> int:
    """Run a subcommand module (``add_arguments`` / ``run``) as the CLI does."""
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv)) or 0)


def tiny_data(factory) -> Path:
    """A miniature of the built-in data (8 classes x 8 train / 3 val images, 48 px): the
    same generator, so colours are multimodal given lightness, as the decoders assume."""
    root = factory.getbasetemp() / "colorbench_builtin_mini"
    make_dataset(root, size=48, num_train=8, num_val=3, num_voc=0, verbose=False)  # no-op when present
    return root / "imagefolder"


def train_tiny(data: Path, loss: str, iterations: int) -> tuple[Method, dict]:
    """Zhang's method on a 1/8-width AlexNet, trained for real (seconds on one core):
    the training prior counted over the training images, Adam at a CPU-sized lr."""
    torch.manual_seed(0)
    method = build_method("zhang", build_encoder("alexnet_cc", width=0.125), loss=loss, **METHOD_KWARGS)
    config = DataConfig(root=str(data), crop=CROP, resize=RESIZE)
    grid = method.output_size(CROP, CROP)  # as pretraining counts it: on the targets' grid
    acc, _ = estimate_prior(config, PRIOR_IMAGES, torch.device("cpu"), grid)
    method.set_prior(acc.prior())
    source = build_source("imagefolder", data, "train", transform=train_transform(CROP, RESIZE))
    opt = torch.optim.Adam(method.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=1e-4)
    ctx, step = StepContext(torch.device("cpu")), 0
    method.train()
    while step < iterations:
        for batch in make_loader(source, 8, shuffle=True, seed=step, drop_last=True):
            ctx.step = step
            method.training_step([batch], method, {"main": opt}, ctx)
            step += 1
            if step == iterations:
                break
    return method.eval(), {"data": to_dict(config)}


def tiny_checkpoint(factory, loss: str = "full", iterations: int = 60) -> Path:
    """The tiny trained checkpoint (once per session, shared with the eval-color tests)."""
    path = factory.getbasetemp() / f"colorbench_tiny_{loss}_{iterations}.pt"
    if not path.is_file():
        with torch.random.fork_rng():
            method, config = train_tiny(tiny_data(factory), loss, iterations)
        save_checkpoint(path, method_payload(method, "alexnet_cc", {"width": 0.125}, {"loss": loss, **METHOD_KWARGS},
                                             config=config, step=iterations))
    return path


@pytest.fixture(scope="module")
def full_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


def _chroma(ab: torch.Tensor) -> float:
    return float(ab.pow(2).sum(1).sqrt().mean())


def test_decoders_reach_the_method_on_real_outputs(full_ckpt, tmp_path_factory):
    colorizer = load_colorizer(full_ckpt)
    assert colorizer.size == RESIZE and colorizer.record_name() == "colorization-full-annealed"
    source = build_source("imagefolder", tiny_data(tmp_path_factory), "val")
    images = torch.stack([source[i]["image"] for i in range(len(source))])  # [N,3,48,48]
    lightness = to_lab(images, "cpu")[:, :1]
    ab = {d: colorizer.predict_ab(lightness, d, full_size=False) for d in ("mean", "annealed", "mode")}  # [N,2,h,w]
    assert ab["mode"].shape == (len(source), 2, *colorizer.method.output_size(48, 48))  # the method's output size
    # mode: every pixel is one of the 313 bin centres; the mean of the distribution is not
    centres = ab_centers()
    nearest = torch.cdist(ab["mode"].permute(0, 2, 3, 1).reshape(-1, 2), centres).min(1).values
    assert nearest.max() < 1e-4 and torch.cdist(ab["mean"].permute(0, 2, 3, 1).reshape(-1, 2), centres).min(1).values.max() > 1
    # the paper's reason for annealing: the mean of a multimodal distribution is desaturated
    assert _chroma(ab["mean"]) < _chroma(ab["annealed"]), {d: _chroma(v) for d, v in ab.items()}
    assert not torch.allclose(ab["annealed"], ab["mean"], atol=0.1)


def test_same_checkpoint_same_input_identical_output(full_ckpt, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (37, 90, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    outs = []
    for name in ("a", "b"):
        argv = [str(tmp_path / "odd.png"), "--checkpoint", str(full_ckpt), "--out", str(tmp_path / name)]
        assert command(colorize_cmd, argv) == 0
        outs.append((tmp_path / name / "odd.png").read_bytes())
    assert outs[0] == outs[1]
    assert Image.open(tmp_path / "a" / "odd.png").size == (90, 37)  # full input resolution


def test_gray_and_tiny_inputs_any_aspect(full_ckpt, tmp_path):
    gray = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (12, 1))  # 12 x 300: below alexnet's 35 px minimum
    Image.fromarray(gray, "L").save(tmp_path / "old.png")
    out = tmp_path / "out"
    assert command(colorize_cmd, [str(tmp_path / "old.png"), "--checkpoint", str(full_ckpt), "--out", str(out),
                                  "--grid", "--size", "0"]) == 0
    result = np.asarray(Image.open(out / "old.png").convert("RGB")).astype(int)
    assert result.shape == (12, 300, 3)
    # the lightness is the input's: the gray version of the result is close to the input
    lab = to_lab(torch.from_numpy(result).permute(2, 0, 1)[None].to(torch.uint8), "cpu")
    ref = to_lab(torch.from_numpy(np.stack([gray] * 3, -1)).permute(2, 0, 1)[None], "cpu")
    diff = (lab[:, 0] - ref[:, 0]).abs()  # out-of-gamut colours are clipped: L moves a little
    assert diff.mean() < 1.0 and diff.max() < 5.0
    # a gray input has no "original" panel: gray | colorized only (2 panels, padding 4)
    assert Image.open(out / "old_grid.png").size == (2 * 300 + 3 * 4, 12 + 2 * 4)


def test_kodak_at_native_sizes(tmp_path_factory, tmp_path):
    kodak = shared_path("data", "kodak24")  # skip before training anything when ../shared is absent
    full_ckpt = tiny_checkpoint(tmp_path_factory)
    files = [kodak / "kodim01.png", kodak / "kodim04.png"]  # 768 x 512 and 512 x 768
    out = tmp_path / "kodak"
    assert command(colorize_cmd, [*map(str, files), "--checkpoint", str(full_ckpt), "--out", str(out), "--grid"]) == 0
    for f in files:
        assert Image.open(out / f.name).size == Image.open(f).size
        w, h = Image.open(f).size
        assert Image.open(out / f"{f.stem}_grid.png").size == (3 * w + 4 * 4, h + 2 * 4)  # gray | ours | original


def test_unreadable_files_are_skipped_and_listed(full_ckpt, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(folder / "sub" / "good.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    rc = command(colorize_cmd, [str(folder), str(tmp_path / "missing.png"), "--checkpoint", str(full_ckpt),
                                "--out", str(tmp_path / "out")])
    assert rc == 0 and (tmp_path / "out" / "sub" / "good.png").is_file()  # sub-folders are kept
    err = capsys.readouterr().err
    assert "skipped 3 unreadable file(s)" in err
    for name, reason in (("broken.png", "corrupt"), ("empty.jpg", "empty"), ("missing.png", "missing")):
        assert name in err and reason in err


def test_existing_output_folder_needs_overwrite(full_ckpt, tmp_path, capsys):
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    args = [str(tmp_path / "x.png"), "--checkpoint", str(full_ckpt), "--out", str(out)]
    assert command(colorize_cmd, args) == 2 and "--overwrite" in capsys.readouterr().err
    assert not (out / "x.png").exists()
    assert command(colorize_cmd, args + ["--overwrite"]) == 0
    assert (out / "x.png").is_file() and (out / "keep.txt").read_text() == "mine"


def test_trunk_only_and_foreign_checkpoints_are_refused(tmp_path, capsys):
    trunk = build_encoder("alexnet_cc", width=0.125)
    save_checkpoint(tmp_path / "trunk.pt", trunk_checkpoint(trunk, "alexnet_cc", {"width": 0.125}))
    with pytest.raises(CheckpointError, match="trunk only"):
        load_colorizer(tmp_path / "trunk.pt")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "x.png")
    assert command(colorize_cmd, [str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "trunk.pt"),
                                  "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "trunk only" in err and "Traceback" not in err and not (tmp_path / "o" / "x.png").exists()
    torch.save({"model": trunk.state_dict()}, tmp_path / "foreign.pt")  # plain weights, no colorbench format
    with pytest.raises(CheckpointError, match="not a colorbench checkpoint"):
        load_colorizer(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="trunk only"):  # the decoder is checked once a method is loaded
        load_colorizer(tmp_path / "trunk.pt", decoder="median")


@pytest.mark.parametrize("loss", ["full", "l2"])
def test_v1_checkpoint_still_colorizes(loss, tmp_path):
    """colorbench 0.1 wrote trunk + Zhang head in one state dict: it loads and predicts
    exactly what the method it was written from predicts."""
    torch.manual_seed(0)
    method = build_method("zhang", build_encoder("alexnet_cc", width=0.125), loss=loss).eval()
    prior = torch.rand(313, generator=torch.Generator().manual_seed(2)) + 0.05
    method.set_prior(prior / prior.sum())
    model = {**method.trunk.state_dict(), **{k: v for k, v in method.method_state().items() if k.startswith("head.")}}
    save_checkpoint(tmp_path / "v1.pt", {
        "format": "colorbench-checkpoint-v1", "model": model, "encoder": "alexnet_cc",
        "encoder_kwargs": {"width": 0.125, "num_bins": 2 if loss == "l2" else 313}, "loss": loss,
        "prior": method.prior.clone(), "config": {"data": {"crop": 56, "resize": 64}}, "step": 10})
    colorizer = load_colorizer(tmp_path / "v1.pt", decoder="mean")
    assert colorizer.size == 64 and colorizer.record_name() == f"colorization-{loss}" + ("" if loss == "l2" else "-mean")
    assert torch.equal(colorizer.method.prior, method.prior)
    lightness = torch.rand(2, 1, 64, 80, generator=torch.Generator().manual_seed(3)) * 100
    expected = method.predict_ab(lightness / 100 - 0.5, "mean")  # working size = the input's: no resizing
    assert torch.allclose(colorizer.predict_ab(lightness, full_size=False), expected, atol=1e-5)
    assert colorize_image(colorizer, torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)).rgb.shape == (3, 64, 80)


class FixedAB(Method):
    """A stand-in method whose ``predict_ab`` returns ``ab`` [1,2,h,w] whatever its
    input, and remembers the input it was given."""

    decoders = ()

    def __init__(self, ab: torch.Tensor):
        super().__init__(nn.Identity())
        self.anchor = nn.Parameter(torch.zeros(1))  # a parameter, so the colorizer finds a device
        self.ab, self.seen = ab, None

    def predict_ab(self, lightness, decoder="annealed"):
        self.seen = lightness.clone()
        return self.ab.expand(lightness.shape[0], -1, -1, -1)


def test_predict_ab_works_at_the_working_size_and_upsamples_bilinearly():
    a = torch.tensor([[[0.0, 100.0]]])  # a over a 1 x 2 output map
    method = FixedAB(torch.stack([a, torch.zeros_like(a)], 1))  # [1,2,1,2]
    colorizer = Colorizer(method, {"encoder": "none"}, "fixed", size=8)
    lightness = torch.full((1, 1, 4, 6), 100.0)  # a white 4 x 6 image
    ab = colorizer.predict_ab(lightness)
    # short side 4 -> 8: the method saw 8 x 12, normalised L = 100 / 100 - 0.5
    assert method.seen.shape == (1, 1, 8, 12) and torch.allclose(method.seen, torch.full_like(method.seen, 0.5))
    # bilinear, half-pixel centres, width 2 -> 6: output x = 0..5 samples input x = (x + 0.5) / 3 - 0.5
    # = -1/3, 0, 1/3, 2/3, 1, 4/3 (clamped to 0..1), i.e. a = 0, 0, 100/3, 200/3, 100, 100
    assert ab.shape == (1, 2, 4, 6)
    expected_a = torch.tensor([0.0, 0.0, 100 / 3, 200 / 3, 100.0, 100.0])
    assert torch.allclose(ab[0, 0], expected_a.expand(4, 6), atol=1e-4) and ab[0, 1].abs().max() == 0


def test_l2_method_output_is_the_ab_of_the_result():
    """Zhang's l2 head with a constant output (weights 0, bias (20, -30)): every pixel
    of the result is the input's L with ab = (20, -30), at the input's resolution."""
    method = build_method("zhang", build_encoder("alexnet_cc", width=0.125), loss="l2").eval()
    last = [m for m in method.modules() if isinstance(m, nn.Conv2d)][-1]
    nn.init.zeros_(last.weight)
    last.bias.data = torch.tensor([20.0, -30.0])
    colorizer = Colorizer(method, {"encoder": "alexnet_cc"}, "l2", size=64)
    assert colorizer.decoders == () and colorizer.record_name("mode") == "colorization-l2"
    image = torch.randint(0, 255, (3, 50, 70), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result = colorize_image(colorizer, image)
    lightness = to_lab(image[None], "cpu")[:, :1]
    ab = torch.tensor([20.0, -30.0]).view(1, 2, 1, 1).expand(1, 2, 50, 70)
    assert torch.allclose(result.rgb, lab_to_rgb(torch.cat([lightness, ab], 1))[0], atol=1e-5)
    assert result.original is not None and torch.equal(result.original, image.float() / 255)


def test_mode_decoding_of_a_one_hot_head_is_that_bins_centre():
    method = build_method("zhang", build_encoder("vgg_cc", width=0.0625), loss="class").eval()
    last = [m for m in method.modules() if isinstance(m, nn.Conv2d)][-1]
    nn.init.zeros_(last.weight)
    last.bias.data = torch.zeros(313)
    last.bias.data[200] = 40.0  # softmax puts ~all mass on bin 200, even annealed
    colorizer = Colorizer(method, {"encoder": "vgg_cc"}, "onehot", size=0)
    lightness = torch.rand(1, 1, 24, 36, generator=torch.Generator().manual_seed(0)) * 100
    centre = ab_centers()[200].view(1, 2, 1, 1)
    for decoder in ("mode", "annealed", "mean"):
        assert torch.allclose(colorizer.predict_ab(lightness, decoder), centre.expand(1, 2, 24, 36), atol=1e-3)


@pytest.mark.parametrize("name", list_encoders())
@pytest.mark.parametrize("method_name", list_methods())
def test_every_registered_encoder_and_method_colorizes(name, method_name, tmp_path, one_thread):
    torch.manual_seed(0)
    method = build_or_skip(method_name, build_encoder(name, width=0.0625))
    save_checkpoint(tmp_path / "c.pt", method_payload(method, name, {"width": 0.0625}, {}))
    colorizer = load_colorizer(tmp_path / "c.pt", size=40)
    image = torch.randint(0, 255, (3, 45, 81), dtype=torch.uint8)
    assert colorize_image(colorizer, image).rgb.shape == (3, 45, 81)
    costs = colorizer_costs(colorizer, "annealed", runs=1)
    assert costs["params_mb"] == pytest.approx(sum(p.numel() for p in method.parameters()) * 4 / 2**20)
    assert costs["working_size"] == 40
    # activations: at least the trunk's deepest map, and growing with the image area (x4 here;
    # more for deep maps of small images, whose borders shrink them to a few cells)
    c = method.trunk.feature_info[method.trunk.taps[-1]]["channels"]
    h, w = method.trunk.feature_size(40, 40)
    assert costs["feature_mb"] >= c * h * w * 4 / 2**20
    colorizer.size = 80
    # (Iizuka's global branch and PixColor's conditioning always see 224 x 224, a fixed share
    # that does not grow: PixColor's is most of its total, only its refinement network grows)
    low = {"iizuka": 1.05, "pixcolor": 1.01}.get(method_name, 3)
    assert low < colorizer_costs(colorizer, "annealed", runs=1)["feature_mb"] / costs["feature_mb"] < 10


def test_runtime_is_the_median_of_network_and_decoding_after_warm_up():
    method = FixedAB(torch.zeros(1, 2, 1, 1))
    calls, inner = [], method.predict_ab

    def slow(lightness, decoder="annealed"):  # 20 ms per call, the first warm-up call 500 ms
        calls.append(decoder)
        time.sleep(0.5 if len(calls) == 1 else 0.02)
        return inner(lightness, decoder)
    method.predict_ab = slow
    ms = runtime_ms(Colorizer(method, {"encoder": "none"}, "fixed", size=16), torch.zeros(1, 1, 16, 16), "mode", runs=3)
    assert calls == ["mode"] * 5  # 2 warm-up + 3 timed runs, with the decoder asked for
    assert 20 <= ms < 200  # the slow warm-up is not counted


# ----------------------------------------------------------------------------- decoders of the loaded method

def test_decoders_are_the_loaded_methods_and_checked_after_loading(full_ckpt, tmp_path, capsys):
    """Larsson's median is reachable; Zhang refuses it in one line naming its own decoders;
    a checkpoint's ``decoder`` field is the default when none is given."""
    from pretext.colorize import registered_decoders

    assert {"mean", "mode", "annealed", "median"} <= set(registered_decoders())
    torch.manual_seed(0)
    larsson = build_method("larsson", build_encoder("alexnet_cc", width=0.125))
    save_checkpoint(tmp_path / "larsson.pt", method_payload(larsson, "alexnet_cc", {"width": 0.125}, {}))
    assert load_colorizer(tmp_path / "larsson.pt", decoder="median").decoder == "median"
    with pytest.raises(ColorizeError, match=r"decoder must be one of mean, mode, annealed for colorization-full, "
                                            r"got 'median'"):
        load_colorizer(full_ckpt, decoder="median")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "x.png")
    args = [str(tmp_path / "x.png"), "--checkpoint", str(full_ckpt), "--out", str(tmp_path / "o")]
    assert command(colorize_cmd, [*args, "--decoder", "median"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "mean, mode, annealed" in err and not (tmp_path / "o").exists()
    assert command(colorize_cmd, [str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "larsson.pt"),
                                  "--out", str(tmp_path / "l"), "--decoder", "median"]) == 0  # larsson has it
    # no --decoder: the payload's field (imported ECCV16 weights say "mean"), else annealed
    from pretext.engine.checkpoint import load_checkpoint
    payload = load_checkpoint(full_ckpt)
    save_checkpoint(tmp_path / "says_mean.pt", dict(payload, decoder="mean"))
    assert load_colorizer(full_ckpt).decoder == "annealed"
    assert load_colorizer(tmp_path / "says_mean.pt").decoder == "mean"
    assert load_colorizer(tmp_path / "says_mean.pt", decoder="mode").decoder == "mode"  # the user's word wins
    outs = {}
    for name, extra in (("default", []), ("mean", ["--decoder", "mean"]), ("annealed", ["--decoder", "annealed"])):
        assert command(colorize_cmd, [str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "says_mean.pt"),
                                      "--out", str(tmp_path / name), *extra]) == 0
        outs[name] = (tmp_path / name / "x.png").read_bytes()
    assert outs["default"] == outs["mean"] != outs["annealed"]
