"""Liang et al. 2016 (``liang_patch`` on the ``liang_cc`` trunk): the two patch networks,
the losses and their schedule by hand, a training step, tiling at any size, the guided
filter, YUV -> Lab output and checkpoints."""
import math

import cv2
import kornia.color
import pytest
import torch

from pretext.color.lab import lab_to_rgb, rgb_to_lab
from pretext.encoders import build_encoder
from pretext.engine.checkpoint import save_checkpoint
from pretext.methods import StepContext, build_method, load_method, method_payload
from pretext.methods.liang_patch import denormalise_uv, guided_refine, loss_kind, normalise_uv, patch_loss
from tests.conftest import REPO
from tests.helpers import tiny_imagefolder

W = 0.25
CPU = StepContext(torch.device("cpu"))


@pytest.fixture
def method(one_thread):
    torch.manual_seed(0)
    return build_method("liang_patch", build_encoder("liang_cc", width=W))


def _batch(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            "label": torch.full((n,), -1)}


def test_trunk_is_two_networks_of_the_same_design(method):
    with torch.device("meta"):
        trunk = build_encoder("liang_cc")
    # per network: 11x11 1->64, 4x4 64->64, 3x3 64->32, no bias, BN (2C); two networks
    per_net = 121 * 64 + 2 * 64 + 16 * 64 * 64 + 2 * 64 + 9 * 64 * 32 + 2 * 32
    assert 2 * per_net == sum(p.numel() for p in trunk.parameters()) == 184_064
    assert [trunk.feature_info[t] for t in trunk.taps] == [{"channels": 128, "stride": 1},
                                                           {"channels": 128, "stride": 1},
                                                           {"channels": 64, "stride": 1}]
    assert [getattr(trunk, t)[1].kernel_size for t in trunk.taps] == [(11, 11), (4, 4), (3, 3)]
    assert method.head.kernel_size == (1, 1) and method.head.out_channels == 2
    # the U output depends on the U network only: no gradient reaches the V half of any layer
    method.train()
    method.logits(torch.rand(2, 1, 30, 33) - 0.5)[:, 0].sum().backward()
    for name in ("conv1", "conv2", "conv3"):
        grad = getattr(method.trunk, name)[1].weight.grad
        half = grad.shape[0] // 2
        assert grad[:half].abs().sum() > 0 and grad[half:].abs().sum() == 0, name
    assert method.head.weight.grad[1].abs().sum() == 0


def test_loss_values_and_schedule_by_hand():
    assert normalise_uv(torch.tensor([0.436, -0.615]).view(1, 2, 1, 1)).flatten().tolist() == pytest.approx([1.0, 0.0])
    assert denormalise_uv(torch.full((1, 2, 1, 1), 0.75)).flatten().tolist() == pytest.approx([0.218, 0.3075])
    logits = torch.zeros(2, 2, 3, 3)  # sigmoid 0.5 everywhere
    target = torch.ones(2, 2, 3, 3)
    target[1] = 0.25  # image 1 has no colour: masked out
    mask = torch.tensor([True, False])
    assert patch_loss(logits, target, "mse", mask).item() == pytest.approx(0.25)  # (0.5 - 1)^2
    assert patch_loss(logits, target, "log", mask).item() == pytest.approx(math.log(2))  # -log 0.5
    # soft target 0.25 at p = sigmoid(0) = 0.5: -(0.25 log 0.5 + 0.75 log 0.5) = log 2 too; at logit ln 3
    # (p = 0.75): -(0.25 log 0.75 + 0.75 log 0.25)
    third = torch.full((1, 2, 1, 1), math.log(3))
    expected = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert patch_loss(third, torch.full_like(third, 0.25), "log", torch.tensor([True])).item() == pytest.approx(expected)
    assert [loss_kind(s) for s in (0, 99, 100, 101, 102, 103)] == ["mse", "mse", "log", "mse", "log", "mse"]
    assert loss_kind(3, mse_iterations=0) == "mse" and loss_kind(4, mse_iterations=0) == "log"
    with pytest.raises(ValueError, match="loss kind"):
        patch_loss(logits, target, "l1", mask)


def test_patches_and_their_centre_targets(method):
    lightness = torch.arange(2 * 80 * 72, dtype=torch.float32).view(2, 1, 80, 72)
    uv = torch.stack([lightness[:, 0], -lightness[:, 0]], 1)
    torch.manual_seed(3)
    x, y = method.sample_patches(lightness, uv)
    assert x.shape == (2, 1, 64, 64) and y.shape == (2, 2, 56, 56)
    assert torch.equal(y[:, 0], x[:, 0, 4:60, 4:60]) and torch.equal(y[:, 1], -x[:, 0, 4:60, 4:60])
    with pytest.raises(ValueError, match="data.crop >= 64"):
        method.sample_patches(torch.zeros(1, 1, 48, 64), torch.zeros(1, 2, 48, 64))


def test_training_step_and_the_loss_switch(method):
    opts = {"main": torch.optim.Adam(method.parameters(), lr=1e-3)}
    before = {k: v.detach().clone() for k, v in method.named_parameters()}
    method.train()
    stats = method.training_step([_batch(seed=1)], method, opts, CPU)
    assert math.isfinite(stats["loss"]) and stats["colourful"] == 2
    assert not [k for k, p in method.named_parameters() if p.grad is None]
    assert all(not torch.equal(v, before[k]) for k, v in method.named_parameters())
    # step 100 uses the log loss: same patches (same seed), a different value
    method.eval()
    torch.manual_seed(0)
    mse, _ = method(_batch(), StepContext(torch.device("cpu"), step=99))
    torch.manual_seed(0)
    log, _ = method(_batch(), StepContext(torch.device("cpu"), step=100))
    assert log.item() > mse.item() > 0


def test_tiling_gives_each_patch_centre(method):
    method.eval()
    x = torch.rand(1, 1, 112, 56, generator=torch.Generator().manual_seed(0)) - 0.5
    tiled = method.tile_logits(x)
    assert tiled.shape == (1, 2, 112, 56)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4), mode="replicate")
    with torch.no_grad():
        top = method.logits(padded[..., 0:64, :])[..., 4:60, 4:60]
        bottom = method.logits(padded[..., 56:120, :])[..., 4:60, 4:60]
    assert torch.allclose(tiled[..., :56, :], top, atol=1e-5) and torch.allclose(tiled[..., 56:, :], bottom, atol=1e-5)


@pytest.mark.parametrize("h, w", [(37, 53), (130, 75), (5, 7)])
def test_predict_ab_at_any_size_is_full_resolution_lab(method, h, w):
    method.eval()
    ab = method.predict_ab(torch.rand(2, 1, h, w) - 0.5)
    assert ab.shape == (2, 2, h, w) == (2, 2, *method.output_size(h, w))
    with pytest.raises(ValueError, match="unknown colorize options"):
        method.predict_ab(torch.zeros(1, 1, 8, 8), global_lightness=torch.zeros(1, 1, 8, 8))


def test_output_is_lab_ab_of_yuv(method):
    """Head fixed to U = 0.218, V = -0.3075 (normalised 0.75, 0.25) everywhere, no
    refinement: ab = Lab of yuv_to_rgb(Y of the gray image, U, V)."""
    method.guided_radius = 0
    torch.nn.init.zeros_(method.head.weight)
    method.head.bias.data = torch.tensor([math.log(3), -math.log(3)])
    method.eval()
    lightness = torch.full((1, 1, 5, 6), 60.0)
    y = lab_to_rgb(torch.cat([lightness, torch.zeros(1, 2, 5, 6)], 1))[:, :1]
    uv = torch.tensor([0.218, -0.3075]).view(1, 2, 1, 1).expand(1, 2, 5, 6)
    expected = rgb_to_lab(kornia.color.yuv_to_rgb(torch.cat([y, uv], 1)).clamp(0, 1))[:, 1:]
    got = method.predict_ab(lightness / 100 - 0.5)
    assert torch.allclose(got, expected, atol=1e-3) and got.norm(dim=1).min() > 10  # a clear colour
    method.head.bias.data.zero_()  # U = V = 0: gray
    assert method.predict_ab(lightness / 100 - 0.5).abs().max() < 0.5


def test_guided_filter_keeps_the_size_and_follows_the_guide():
    g = torch.Generator().manual_seed(0)
    guide = torch.rand(2, 1, 37, 53, generator=g)
    uv = torch.rand(2, 2, 37, 53, generator=g) - 0.5
    out = guided_refine(uv, guide, radius=40, eps=1e-4)
    assert out.shape == uv.shape and out.dtype == uv.dtype
    ref = cv2.ximgproc.guidedFilter(guide[1, 0].numpy(), uv[1, 1].numpy(), 40, 1e-4)
    assert torch.allclose(out[1, 1], torch.from_numpy(ref))
    # a map that is a linear function of the guide passes unchanged (the filter's local model)
    linear = 0.3 * guide - 0.1
    assert torch.allclose(guided_refine(linear.repeat(1, 2, 1, 1), guide, 40, 1e-4), linear.repeat(1, 2, 1, 1),
                          atol=1e-3)


def test_checkpoint_round_trip_and_refusals(method, tmp_path):
    method.train()
    method.training_step([_batch()], method, {"main": torch.optim.SGD(method.parameters(), lr=0.1)}, CPU)
    path = tmp_path / "liang.pt"
    save_checkpoint(path, method_payload(method, "liang_cc", {"width": W}, {"guided_radius": 40}, step=1))
    loaded, payload = load_method(path)
    method.eval()
    x = torch.rand(1, 1, 40, 70) - 0.5
    assert payload["method"] == "liang_patch" and torch.equal(loaded.predict_ab(x), method.predict_ab(x))
    with pytest.raises(ValueError, match="use encoder liang_cc"):
        build_method("liang_patch", build_encoder("alexnet_cc", width=0.125))
    with pytest.raises(ValueError, match="even border"):
        build_method("liang_patch", build_encoder("liang_cc", width=W), core=57)


@pytest.mark.slow
def test_tiny_recipe_trains_end_to_end(tmp_path):
    from benchmarks.cli import main as cli

    data = tiny_imagefolder(tmp_path / "data", per_class=4, size=48)
    sets = ["iterations=3", "batch_size=4", "val_images=8", "data.val_limit=8", "data.num_workers=0",
            f"data.root={data}"]
    run = tmp_path / "run"
    assert cli(["pretrain", "--config", str(REPO / "configs/pretext/liang_patch_tiny.yaml"), "--run-dir", str(run),
                *[a for s in sets for a in ("--set", s)]]) == 0
    method, payload = load_method(run / "checkpoints" / "last.pt")
    assert payload["step"] == 3 and payload["encoder"] == "liang_cc" and method.guided_radius == 4  # the tiny recipe
    assert "val_auc" in (run / "metrics.json").read_text()
