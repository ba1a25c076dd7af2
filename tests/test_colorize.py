"""``colorbench colorize``: any size, gray or colour input, decoders, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.cli import main as cli
from pretext.colorize import ColorizeError, colorize_image, load_colorizer
from pretext.encoders import build_encoder
from pretext.pipeline import to_lab
from pretext.runs import encoder_checkpoint, load_checkpoint, save_checkpoint
from pretext.sources import build_source
from pretext.synthetic import make_dataset
from tests.conftest import REPO, shared_path

# A tiny full-loss model trained for real (seconds on 2 cores); images stay at
# their native 48 px (data.resize=48), so the checkpoint's working size is 48.
TINY = ["encoder=alexnet_cc", "encoder_kwargs={width: 0.125}", "batch_size=8", "data.crop=40", "data.resize=48",
        "data.num_workers=0", "log_every=10", "val_every=1000", "val_images=8", "data.val_limit=8",
        "prior.max_images=24", "optim.lr_values=[3e-3]", "optim.lr_steps=[]", "ckpt_every=1000"]


def tiny_data(factory) -> Path:
    """A miniature of the built-in data (8 classes x 8 train / 3 val images, 48 px): the
    same generator, so colours are multimodal given lightness, as the decoders assume."""
    root = factory.getbasetemp() / "colorbench_builtin_mini"
    make_dataset(root, size=48, num_train=8, num_val=3, num_voc=0, verbose=False)  # no-op when present
    return root / "imagefolder"


def tiny_checkpoint(factory, loss: str = "full", iterations: int = 60) -> Path:
    """Train (once per session, shared by the colorize and eval-color tests) a tiny model."""
    run = factory.getbasetemp() / f"colorbench_tiny_{loss}_{iterations}"
    ckpt = run / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        data = tiny_data(factory)
        sets = TINY + [f"data.root={data}", f"prior.cache_dir={run.parent / 'colorbench_cache'}",
                       f"loss={loss}", f"iterations={iterations}"]
        args = [a for s in sets for a in ("--set", s)]
        assert cli(["pretrain", "--config", str(REPO / "configs/pretext/tiny.yaml"), "--run-dir", str(run), *args]) == 0
    return ckpt


@pytest.fixture(scope="module")
def full_ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory)


def _chroma(ab: torch.Tensor) -> float:
    return float(ab.pow(2).sum(1).sqrt().mean())


def test_annealed_is_between_mean_and_mode_on_real_outputs(full_ckpt, tmp_path_factory):
    colorizer = load_colorizer(full_ckpt)
    assert colorizer.size == 48 and colorizer.method() == "colorization-full-annealed"
    source = build_source("imagefolder", tiny_data(tmp_path_factory), "val")
    images = torch.stack([source[i]["image"] for i in range(len(source))])  # [N,3,48,48]
    lightness = to_lab(images, "cpu")[:, :1]
    sat = {d: _chroma(colorizer.predict_ab(lightness, d)) for d in ("mean", "annealed", "mode")}
    assert sat["mean"] < sat["annealed"] < sat["mode"], sat


def test_same_checkpoint_same_input_identical_output(full_ckpt, tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (37, 90, 3), dtype=np.uint8)).save(tmp_path / "odd.png")
    outs = []
    for name in ("a", "b"):
        assert cli(["colorize", str(tmp_path / "odd.png"), "--checkpoint", str(full_ckpt), "--out", str(tmp_path / name)]) == 0
        outs.append((tmp_path / name / "odd.png").read_bytes())
    assert outs[0] == outs[1]
    assert Image.open(tmp_path / "a" / "odd.png").size == (90, 37)  # full input resolution


def test_gray_and_tiny_inputs_any_aspect(full_ckpt, tmp_path):
    gray = np.tile(np.linspace(0, 255, 300, dtype=np.uint8), (12, 1))  # 12 x 300: below alexnet's 35 px minimum
    Image.fromarray(gray, "L").save(tmp_path / "old.png")
    out = tmp_path / "out"
    assert cli(["colorize", str(tmp_path / "old.png"), "--checkpoint", str(full_ckpt), "--out", str(out),
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
    assert cli(["colorize", *map(str, files), "--checkpoint", str(full_ckpt), "--out", str(out), "--grid"]) == 0
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
    rc = cli(["colorize", str(folder), str(tmp_path / "missing.png"), "--checkpoint", str(full_ckpt),
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
    args = ["colorize", str(tmp_path / "x.png"), "--checkpoint", str(full_ckpt), "--out", str(out)]
    assert cli(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert not (out / "x.png").exists()
    assert cli(args + ["--overwrite"]) == 0 and (out / "x.png").is_file() and (out / "keep.txt").read_text() == "mine"


def test_checkpoint_without_colorization_head_is_refused(full_ckpt, tmp_path, capsys):
    payload = load_checkpoint(full_ckpt)
    trunk = {k: v for k, v in payload["model"].items() if not k.startswith("head.")}
    save_checkpoint(tmp_path / "trunk.pt", {**payload, "model": trunk})
    with pytest.raises(ColorizeError, match="no colorization head"):
        load_colorizer(tmp_path / "trunk.pt")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "x.png")
    assert cli(["colorize", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "trunk.pt"),
                "--out", str(tmp_path / "o")]) == 2
    assert "no colorization head" in capsys.readouterr().err
    # a supervised-style head (1000 classes) is not a colorization head either
    model = build_encoder("alexnet_cc", width=0.125, num_bins=1000)
    save_checkpoint(tmp_path / "sup.pt", encoder_checkpoint(model, "alexnet_cc", {"width": 0.125, "num_bins": 1000}))
    with pytest.raises(ColorizeError, match="1000 channels"):
        load_colorizer(tmp_path / "sup.pt")
    save_checkpoint(tmp_path / "foreign.pt", {"model": trunk})
    with pytest.raises(ColorizeError, match="not a colorbench encoder checkpoint"):
        load_colorizer(tmp_path / "foreign.pt")


def test_l2_head_predicts_ab_directly(tmp_path):
    torch.manual_seed(0)
    model = build_encoder("alexnet_cc", width=0.125, num_bins=2)
    save_checkpoint(tmp_path / "l2.pt", encoder_checkpoint(model, "alexnet_cc", {"width": 0.125, "num_bins": 2}, loss="l2"))
    colorizer = load_colorizer(tmp_path / "l2.pt", size=64)
    assert colorizer.regression and colorizer.method("mode") == "colorization-l2"
    image = torch.randint(0, 255, (3, 50, 70), dtype=torch.uint8)
    result = colorize_image(colorizer, image)
    lightness = to_lab(image[None], "cpu")[:, :1]
    expected = torch.nn.functional.interpolate(colorizer.model(lightness_norm(lightness, colorizer)).detach(),
                                               size=(50, 70), mode="bilinear", align_corners=False)
    assert torch.allclose(colorizer.predict_ab(lightness), expected, atol=1e-5)
    assert result.rgb.shape == (3, 50, 70) and result.original is not None


def lightness_norm(lightness: torch.Tensor, colorizer) -> torch.Tensor:
    from pretext.encoders import normalize_l
    work = colorizer.working_shape(*lightness.shape[-2:])  # short side 64: 64 x 90
    assert work == (64, 90)
    colorizer.model.eval()
    return normalize_l(torch.nn.functional.interpolate(lightness, size=work, mode="bilinear", align_corners=False,
                                                       antialias=True))


@pytest.mark.parametrize("name", ["alexnet_cc", "vgg_cc", "resnet50_cc"])
def test_every_registered_encoder_with_a_head_colorizes(name, tmp_path):
    from pretext.encoders import list_encoders
    assert name in list_encoders()
    model = build_encoder(name, width=0.0625)
    save_checkpoint(tmp_path / "c.pt", encoder_checkpoint(model, name, {"width": 0.0625}, loss="class"))
    colorizer = load_colorizer(tmp_path / "c.pt", size=40)
    image = torch.randint(0, 255, (3, 45, 81), dtype=torch.uint8)
    assert colorize_image(colorizer, image).rgb.shape == (3, 45, 81)
    costs = colorizer.costs("annealed", runs=1)
    assert costs["params_mb"] == pytest.approx(sum(p.numel() for p in model.parameters()) * 4 / 2**20)
    assert costs["feature_mb"] > 0 and costs["runtime_ms"] > 0 and costs["working_size"] == 40
