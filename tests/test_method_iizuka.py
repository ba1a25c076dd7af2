"""Iizuka et al. 2016 (``iizuka`` on the ``iizuka_cc`` trunk): architecture shapes, the
loss by hand, a training step, any input size, checkpoints and style transfer."""
import argparse
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pretext import colorize
from pretext.encoders import build_encoder
from pretext.engine.checkpoint import save_checkpoint
from pretext.methods import StepContext, build_method, load_method, method_payload
from pretext.methods.iizuka import denormalise_ab, iizuka_loss, normalise_ab
from tests.conftest import REPO
from tests.helpers import tiny_imagefolder

W = 0.125  # channels / 8: CPU milliseconds
CPU = StepContext(torch.device("cpu"))


@pytest.fixture
def method(one_thread):
    torch.manual_seed(0)
    return build_method("iizuka", build_encoder("iizuka_cc", width=W), num_classes=3)


def _batch(n=2, size=64, seed=0, labels=(0, 2)):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            "label": torch.tensor(labels[:n])}


def test_trunk_is_the_low_and_mid_level_networks():
    with torch.device("meta"):
        trunk = build_encoder("iizuka_cc")
    # low-level: 3x3 convs without bias + BN (2C): 1->64 s2, 64->128, 128->128 s2, 128->256, 256->256 s2, 256->512
    low = [(1, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)]
    mid = [(512, 512), (512, 256)]
    count = lambda layers: sum(9 * a * b + 2 * b for a, b in layers)  # noqa: E731
    assert count(low) == 2_288_832 and count(mid) == 3_540_480
    assert sum(p.numel() for p in trunk.parameters()) == 5_829_312
    assert [trunk.feature_info[t]["stride"] for t in trunk.taps] == [2, 2, 4, 4, 8, 8, 8, 8]
    assert trunk.global_tap == "conv6" and trunk.feature_info["conv6"]["channels"] == 512
    assert trunk.feature_info["conv8"]["channels"] == 256
    small = build_encoder("iizuka_cc", width=W).eval()
    feats = small.forward_features(torch.zeros(1, 1, 61, 100), ["conv6", "conv8"])
    assert feats["conv6"].shape == (1, 64, 8, 13) and feats["conv8"].shape == (1, 32, 8, 13)  # ceil(H/8)


def test_heads_global_at_224_fusion_and_half_resolution_output(method):
    seen = []
    method.head_global.convs[0].register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    method.eval()
    with torch.no_grad():
        pred, hidden = method.network(torch.zeros(2, 1, 64, 96))
    # global network: low-level features of the 224 copy, 512/8 channels at 28 x 28 -> 7 x 7
    assert seen == [(2, 64, 28, 28)] and method.head_global.convs(torch.zeros(1, 64, 28, 28)).shape == (1, 64, 7, 7)
    assert hidden.shape == (2, 64)  # the 512-d layer the classifier reads (x 1/8)
    assert pred.shape == (2, 2, 32, 48) and method.output_size(64, 96) == (32, 48)  # half resolution
    assert 0 < pred.min() and pred.max() < 1  # sigmoid
    # fusion: the 256-d global vector (x 1/8 = 32) at every position of the mid-level map (32 channels)
    assert method.head_fusion[0].in_channels == 32 + 32 and method.head_fusion[0].kernel_size == (1, 1)
    assert method.head_class[-1].out_features == 3
    seen.clear()
    with torch.no_grad():  # a 224 x 224 input shares its low-level pass with the global network
        method.network(torch.zeros(1, 1, 224, 224))
    assert seen == [(1, 64, 28, 28)]


def test_loss_by_hand():
    assert normalise_ab(torch.tensor([-128.0, 127.0])).tolist() == [0.0, 1.0]
    assert denormalise_ab(torch.tensor(0.5)).item() == pytest.approx(-0.5)
    # image 0: a = 127 and b = -128 everywhere (normalised 1 and 0), predicted 0.5: MSE 0.25;
    # image 1: gray, masked out (its squared error 1 would otherwise count)
    pred = torch.full((2, 2, 2, 2), 0.5)
    target = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])[None].repeat(2, 1, 1, 1)
    target[1] = 0.0
    pred[1] = 1.0
    mask = torch.tensor([True, False])
    logits = torch.tensor([[0.0, 0.0], [5.0, -5.0]])  # image 0 labelled 0: CE = ln 2; image 1 unlabelled
    loss, parts = iizuka_loss(pred, target, mask, logits, torch.tensor([0, -1]), alpha=1 / 300)
    assert parts["mse"].item() == pytest.approx(0.25) and parts["class_ce"].item() == pytest.approx(math.log(2))
    assert loss.item() == pytest.approx(0.25 + math.log(2) / 300)
    # no labels at all: the classifier term is 0 (and still part of the graph, for DDP)
    loss, parts = iizuka_loss(pred, target, mask, logits.requires_grad_(), torch.tensor([-1, -1]))
    assert loss.item() == pytest.approx(0.25) and loss.requires_grad


def test_method_loss_on_a_constant_image_by_hand(method):
    """Every output 0.5 (the last conv zeroed): a uniform image with ab = (a, b) gives
    MSE = ((0.5 - (a + 128) / 255)^2 + (0.5 - (b + 128) / 255)^2) / 2; no labels."""
    last = method.head_color[-2]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    image = torch.tensor([200, 40, 40], dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, 32, 32).contiguous()
    from pretext.color.targets import to_lab
    a, b = to_lab(image, "cpu")[0, 1:, 0, 0].tolist()
    expected = ((0.5 - (a + 128) / 255) ** 2 + (0.5 - (b + 128) / 255) ** 2) / 2
    loss, stats = method({"image": image, "label": torch.tensor([-1])}, CPU)
    assert loss.item() == pytest.approx(expected, rel=1e-5) and stats["colourful"] == 1


def test_training_step_updates_trunk_and_heads(method):
    opts = {"main": torch.optim.Adam(method.parameters(), lr=1e-3)}
    before = {k: v.detach().clone() for k, v in method.named_parameters()}
    method.train()
    stats = method.training_step([_batch(seed=1), _batch(seed=2)], method, opts, CPU)
    assert math.isfinite(stats["loss"]) and stats["colourful"] == 4
    assert not [k for k, p in method.named_parameters() if p.grad is None]
    changed = {k.split(".")[0] for k, v in method.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {"trunk", "head_global", "head_fusion", "head_color", "head_class"}
    with pytest.raises(ValueError, match="num_classes"):
        method(_batch(labels=(0, 3)), CPU)


@pytest.mark.parametrize("h, w", [(37, 53), (64, 64), (101, 75), (8, 9)])
def test_predict_ab_any_size(method, h, w):
    method.eval()
    ab = method.predict_ab(torch.rand(1, 1, h, w) - 0.5, "annealed")
    assert ab.shape == (1, 2, *method.output_size(h, w)) == (1, 2, 4 * math.ceil(h / 8), 4 * math.ceil(w / 8))
    assert -128 <= ab.min() and ab.max() <= 127
    with pytest.raises(ValueError, match="unknown colorize options"):
        method.predict_ab(torch.zeros(1, 1, 32, 32), temperature=0.5)


def test_other_trunks_and_refusals(one_thread):
    m = build_method("iizuka", build_encoder("alexnet_cc", width=W)).eval()  # the deepest tap serves both roles
    assert m.low_tap == m.mid_tap == "conv5" and not hasattr(m, "head_class")
    fh, fw = m.trunk.feature_size(72, 80)  # conv5 at stride 16 (unpadded): 3 x 3
    assert m.predict_ab(torch.zeros(1, 1, 72, 80)).shape == (1, 2, 4 * fh, 4 * fw) == (1, 2, *m.output_size(72, 80))
    with pytest.raises(ValueError, match="stride >= 4"):
        build_method("iizuka", build_encoder("liang_cc", width=W))


def test_checkpoint_round_trip(method, tmp_path):
    method.train()
    method.training_step([_batch()], method, {"main": torch.optim.SGD(method.parameters(), lr=0.1)}, CPU)
    path = tmp_path / "iizuka.pt"
    save_checkpoint(path, method_payload(method, "iizuka_cc", {"width": W}, {"num_classes": 3}, step=1))
    loaded, payload = load_method(path)
    method.eval()
    x = torch.rand(2, 1, 48, 40) - 0.5
    assert payload["method"] == "iizuka" and torch.equal(loaded.predict_ab(x), method.predict_ab(x))


def _calibrate_bn(method, x):
    """BN running statistics = those of one batch (a fresh network's unit statistics shrink
    its signal layer by layer until the output is a constant)."""
    for m in method.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        method.train().network(x)
    return method.eval()


def test_style_transfer_takes_the_global_features_of_another_image(method):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 48, 64, generator=g) - 0.5
    style = torch.zeros(1, 1, 90, 70) - 0.5  # a black image
    _calibrate_bn(method, x)
    own = method.predict_ab(x)
    assert torch.equal(method.predict_ab(x, global_lightness=x), own)
    styled = method.predict_ab(x, global_lightness=style)
    assert styled.shape == own.shape and (styled - own).abs().max() > 1e-3
    # one style image serves the batch: the same as giving it to each image
    assert torch.allclose(styled, method.predict_ab(x, global_lightness=style.expand(2, -1, -1, -1)), atol=1e-3)
    with pytest.raises(ValueError, match="global_lightness must be"):
        method.predict_ab(x, global_lightness=torch.zeros(3, 1, 8, 8))


def _colorize(tmp_path, ckpt, out, *extra):
    parser = argparse.ArgumentParser()
    colorize.add_arguments(parser)
    out = tmp_path / out
    return colorize.run(parser.parse_args([str(tmp_path / "in.png"), "--checkpoint", str(ckpt), "--out", str(out),
                                           "--size", "48", *extra])), out


def test_colorize_global_from_flag(method, tmp_path, capsys):
    g = torch.Generator().manual_seed(1)
    for name in ("in", "style"):
        Image.fromarray(torch.randint(0, 256, (40, 56, 3), generator=g, dtype=torch.uint8).numpy()).save(
            tmp_path / f"{name}.png")
    _calibrate_bn(method, torch.rand(2, 1, 48, 64, generator=g) - 0.5)
    ckpt = tmp_path / "iizuka.pt"
    save_checkpoint(ckpt, method_payload(method, "iizuka_cc", {"width": W}, {"num_classes": 3}))
    code, plain = _colorize(tmp_path, ckpt, "plain")
    code2, styled = _colorize(tmp_path, ckpt, "styled", "--global-from", str(tmp_path / "style.png"))
    assert code == code2 == 0
    a, b = (torch.from_numpy(np.array(Image.open(out / "in.png"))) for out in (plain, styled))
    assert a.shape == b.shape == (40, 56, 3) and not torch.equal(a, b)
    capsys.readouterr()
    code, _ = _colorize(tmp_path, ckpt, "missing", "--global-from", str(tmp_path / "missing.png"))
    err = capsys.readouterr().err
    assert code == 2 and "missing.png" in err and len(err.strip().splitlines()) == 1
    zhang = build_method("zhang", build_encoder("alexnet_cc", width=W), head="linear")
    save_checkpoint(tmp_path / "zhang.pt", method_payload(zhang, "alexnet_cc", {"width": W}, {"head": "linear"}))
    code, _ = _colorize(tmp_path, tmp_path / "zhang.pt", "zhang", "--global-from", str(tmp_path / "style.png"))
    err = capsys.readouterr().err
    assert code == 2 and "global_lightness" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_tiny_recipe_trains_end_to_end(tmp_path):
    from benchmarks.cli import main as cli

    data = tiny_imagefolder(tmp_path / "data", per_class=4, size=48)  # 3 classes
    sets = ["iterations=3", "batch_size=4", "val_images=8", "data.val_limit=8", "data.num_workers=0",
            "method_kwargs={num_classes: 3}", f"data.root={data}"]
    run = tmp_path / "run"
    assert cli(["pretrain", "--config", str(REPO / "configs/pretext/iizuka_tiny.yaml"), "--run-dir", str(run),
                *[a for s in sets for a in ("--set", s)]]) == 0
    method, payload = load_method(run / "checkpoints" / "last.pt")
    assert payload["step"] == 3 and payload["encoder"] == "iizuka_cc" and method.num_classes == 3
    assert "gray_baseline_mse" in (run / "metrics.json").read_text()
