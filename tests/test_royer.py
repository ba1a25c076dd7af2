"""Royer et al. 2017 (``royer``): shapes, the (a, b) quantisation by hand, hand-computed
losses, decoding of a peaked model, diverse and reproducible samples, bad arguments and
the tiny recipe end to end (pretrain -> colorize --samples -> eval-color spread). The
contract's generic tests (tests/test_methods.py) run on it over every encoder."""
import json
import math

import pytest
import torch
from torch import nn

from benchmarks.cli import main as cli
from pretext.color.targets import to_lab
from pretext.encoders import build_encoder
from pretext.methods import StepContext, build_method
from pretext.methods.royer import ab_bin_centers, quantize_ab
from tests.conftest import REPO
from tests.helpers import tiny_imagefolder


def _royer(encoder="alexnet_cc", **kw):
    torch.manual_seed(0)
    return build_method("royer", build_encoder(encoder, width=0.125), **kw)


def _solid(rgb, n=1, size=64) -> torch.Tensor:
    """n images of one colour: uint8 [n,3,size,size]."""
    return torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, size, size).contiguous()


def _peaked(m, a_bin: int, b_bin: int, z: float, z_b: float | None = None):
    """The PixelCNN's last layer: weights 0, bias z on bin a_bin of channel a and z_b (default z)
    on b_bin of channel b, 0 elsewhere: every pixel's logits are these, whatever the input."""
    out = m.head_pixelcnn.out2
    nn.init.zeros_(out.weight)
    out.bias.data.zero_()
    out.bias.data[a_bin] = z
    out.bias.data[m.bins + b_bin] = z if z_b is None else z_b


def test_shapes(one_thread):
    m = _royer().eval()
    # embedding input: L (1) + alexnet_cc taps at width 1/8: 12 + 32 + 48 + 48 + 32; 256/8 channels out
    assert m.head_embed[0].in_channels == 1 + 12 + 32 + 48 + 48 + 32 and m.head_embed[-2].out_channels == 32
    assert (m.head_pixelcnn.channels, m.head_pixelcnn.bins, m.head_pixelcnn.cond_channels) == (2, 32, 32)
    x = torch.rand(2, 1, 72, 81) - 0.5
    assert m.grid_size(72, 81) == (18, 21) and m.embed(x).shape == (2, 32, 18, 21)  # ceil(H / 4)
    assert m.output_size(72, 81) == (72, 81)
    assert m.sample_ab(x, 3, seed=1).shape == (2, 3, 2, 72, 81) and m.predict_ab(x).shape == (2, 2, 72, 81)
    assert m.target_bins(torch.zeros(2, 2, 72, 81)).shape == (2, 2, 18, 21)
    assert m.stochastic and m.decoders == () and m.record_name == "royer"


def test_quantisation_by_hand():
    # width 220 / 32 = 6.875; bin 16 is grey; round to the nearest centre, clamp to the end bins
    ab = torch.tensor([0.0, 3.4, 3.5, -6.875, -110.0, 103.125, 200.0, -500.0])
    assert quantize_ab(ab, 32).tolist() == [16, 16, 17, 15, 0, 31, 31, 0]
    assert ab_bin_centers(torch.tensor([16, 17, 0, 31]), 32).tolist() == [0.0, 6.875, -110.0, 103.125]
    centres = ab_bin_centers(torch.arange(32), 32)
    assert torch.equal(quantize_ab(centres, 32), torch.arange(32))  # every centre is its own bin
    # the sRGB gamut (a in [-86.2, 98.2], b in [-107.9, 94.5]) lies within half a cell of the centres
    assert centres[0] - 6.875 / 2 < -107.9 and centres[-1] + 6.875 / 2 > 98.2


def test_loss_by_hand(one_thread):
    """Logits independent of the input (last layer: bias only): per pixel, channel a's CE
    is log(1 + 31 e^-z) on its true bin, channel b's log(1 + 31 e^-z_b); the loss is their
    mean; a gray image takes no part; uniform logits give log 32."""
    m = _royer().train()
    ctx = StepContext(torch.device("cpu"))
    red = _solid((200, 40, 40), n=2)
    a, b = to_lab(red[:1], "cpu")[0, 1:, 0, 0].tolist()
    a_bin, b_bin = quantize_ab(torch.tensor([a, b]), 32).tolist()
    assert (a_bin, b_bin) == (round(a / 6.875) + 16, round(b / 6.875) + 16) and a_bin != b_bin
    _peaked(m, a_bin, b_bin, 3.0, 1.0)
    expected = (math.log(1 + 31 * math.exp(-3.0)) + math.log(1 + 31 * math.exp(-1.0))) / 2
    loss, stats = m({"image": red}, ctx)
    assert loss.item() == pytest.approx(expected, rel=1e-5) and stats == {"colourful": 2}
    with_gray = {"image": torch.cat([red[:1], _solid((90, 90, 90))])}  # the gray image is masked out
    loss, stats = m(with_gray, ctx)
    assert loss.item() == pytest.approx(expected, rel=1e-5) and stats == {"colourful": 1}
    _peaked(m, a_bin, b_bin, 0.0)
    assert m({"image": red}, ctx)[0].item() == pytest.approx(math.log(32), rel=1e-6)
    loss, stats = m({"image": _solid((90, 90, 90), n=2)}, ctx)  # no colour at all: zero, still in the graph
    assert loss.item() == 0.0 and loss.requires_grad and stats == {"colourful": 0}


def test_rebalancing_scales_each_pixels_gradient_not_the_loss(one_thread):
    """rebalance: the forward value is the plain CE; the gradient of every pixel is x w at its
    target's nearest 313 bin. Two solid images (eval mode: no batch coupling), weights 3 and
    0.5 at their bins: the last bias's gradient is (3 g_red + 0.5 g_blue) / 2, g_x each image's alone."""
    from pretext.color.bins import soft_encode
    m = _royer(rebalance="all").eval()
    assert set(m.method_state()) >= {"prior", "class_weights"}
    ctx = StepContext(torch.device("cpu"))
    red, blue = _solid((200, 40, 40)), _solid((40, 60, 200))
    bins = [int(soft_encode(to_lab(im, "cpu")[:, 1:, :1, :1].contiguous(), k=1).indices[0, 0, 0, 0]) for im in (red, blue)]
    assert bins[0] != bins[1]

    def bias_grad(images, weights):
        m.class_weights.fill_(1.0)
        for b, w in zip(bins, weights):
            m.class_weights[b] = w
        m.zero_grad()
        loss, _ = m({"image": images}, ctx)
        loss.backward()
        return loss.detach(), m.head_pixelcnn.out2.bias.grad.clone()
    loss_1, g_red = bias_grad(red, (1.0, 1.0))
    _, g_blue = bias_grad(blue, (1.0, 1.0))
    plain, _ = bias_grad(torch.cat([red, blue]), (1.0, 1.0))
    loss_w, g_w = bias_grad(torch.cat([red, blue]), (3.0, 0.5))
    assert loss_w == pytest.approx(float(plain)) and float(loss_1) != pytest.approx(float(plain))
    assert torch.allclose(g_w, (3.0 * g_red + 0.5 * g_blue) / 2, atol=1e-6)
    assert not m.head_pixelcnn.out2.bias.grad.equal((g_red + g_blue) / 2)
    assert "prior" not in _royer().method_state()  # the paper's plain likelihood keeps no prior
    # rebalance "aux": the auxiliary term is weighted, the PixelCNN's is not
    m = _royer(rebalance="aux", aux_weight=1.0).eval()
    _, g_plain = bias_grad(torch.cat([red, blue]), (1.0, 1.0))
    aux_plain = m.head_aux.bias.grad.clone()
    _, g_aux_w = bias_grad(torch.cat([red, blue]), (3.0, 0.5))
    assert torch.allclose(g_aux_w, g_plain, atol=1e-7) and not torch.allclose(m.head_aux.bias.grad, aux_plain)
    with pytest.raises(ValueError, match="rebalance must be one of"):
        _royer(rebalance="aux")  # nothing to rebalance without the auxiliary term


def test_auxiliary_loss_by_hand_and_only_when_asked(one_thread):
    """aux_weight w: + w x the CE of head_aux (cond alone); with head_aux zeroed every pixel's
    logits are uniform, so the term is w log 32 over the plain loss; the trunk gets gradient
    through it even when the PixelCNN ignores cond."""
    assert not hasattr(_royer(), "head_aux")
    m = _royer(aux_weight=0.5).eval()
    ctx = StepContext(torch.device("cpu"))
    red = _solid((200, 40, 40), n=2)
    a, b = quantize_ab(to_lab(red[:1], "cpu")[0, 1:, 0, 0], 32).tolist()
    _peaked(m, a, b, 3.0, 1.0)
    nn.init.zeros_(m.head_aux.weight)
    nn.init.zeros_(m.head_aux.bias)
    plain = (math.log(1 + 31 * math.exp(-3.0)) + math.log(1 + 31 * math.exp(-1.0))) / 2
    loss, _ = m({"image": red}, ctx)
    assert loss.item() == pytest.approx(plain + 0.5 * math.log(32), rel=1e-5)
    # the PixelCNN's logits are bias-only here, so only the auxiliary term can reach the trunk
    nn.init.normal_(m.head_aux.weight, std=0.1)
    m.zero_grad()
    m({"image": red}, ctx)[0].backward()
    assert m.head_aux.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.trunk.parameters())
    with pytest.raises(ValueError, match="aux_weight"):
        _royer(aux_weight=-1)


def test_a_peaked_model_samples_its_bins_centre_everywhere(one_thread):
    m = _royer().eval()
    _peaked(m, 20, 9, 40.0)  # ~all mass on a = (20 - 16) * 6.875 = 27.5, b = (9 - 16) * 6.875 = -48.125
    ab = m.sample_ab(torch.rand(2, 1, 40, 44) - 0.5, 3, seed=7)
    assert torch.allclose(ab[:, :, 0], torch.full_like(ab[:, :, 0], 27.5))
    assert torch.allclose(ab[:, :, 1], torch.full_like(ab[:, :, 1], -48.125))


def test_samples_differ_and_are_reproducible(one_thread):
    m = _royer().eval()
    x = torch.rand(2, 1, 48, 48, generator=torch.Generator().manual_seed(0)) - 0.5
    rng = torch.get_rng_state()
    ab = m.sample_ab(x, 3, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's global RNG is untouched
    assert torch.equal(m.sample_ab(x, 3, seed=5), ab)  # same seed, same samples
    assert not torch.equal(m.sample_ab(x, 3, seed=6), ab)
    assert not torch.equal(ab[:, 0], ab[:, 1]) and not torch.equal(ab[:, 1], ab[:, 2])  # diverse
    assert (ab[:, 0] - ab[:, 1]).abs().mean() > 5  # not just a bin here and there (an untrained model)
    # sample j of a seed does not depend on how many are drawn; predict_ab is sample 0
    assert torch.equal(m.sample_ab(x, 2, seed=5), ab[:, :2])
    assert torch.equal(m.predict_ab(x, seed=5), ab[:, 0]) and torch.equal(m.predict_ab(x), m.sample_ab(x, 1)[:, 0])
    # every value is a bin centre of each channel's grid, upsampled: within [-110, 103.125]
    assert ab.min() >= -110 and ab.max() <= 103.125


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown or no taps \['fc7'\]"):
        _royer(taps=["conv1", "fc7"])
    with pytest.raises(ValueError, match="grid_stride"):
        _royer(grid_stride=0)
    with pytest.raises(ValueError, match="temperature"):
        _royer(temperature=0)
    m = _royer().eval()
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        m.sample_ab(torch.zeros(1, 1, 40, 40), 0)
    with pytest.raises(ValueError, match="unknown colorize options"):
        m.predict_ab(torch.zeros(1, 1, 40, 40), global_lightness=1)


@pytest.mark.slow
def test_tiny_recipe_end_to_end(tmp_path):
    """The shipped recipe for a few steps on a miniature folder, then colorize --samples and
    eval-color's spread over samples."""
    data = tiny_imagefolder(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    sets = ["iterations=3", "batch_size=4", "data.num_workers=0", "val_every=1000", "val_images=4",
            "data.val_limit=6", f"data.root={data}"]
    assert cli(["pretrain", "--config", str(REPO / "configs/pretext/royer_tiny.yaml"), "--run-dir", str(run),
                *[a for s in sets for a in ("--set", s)]]) == 0
    records = {r["metric"]: r for r in json.loads((run / "metrics.json").read_text())["records"]}
    assert records["val_auc"]["method"] == "royer" and 0 < records["val_auc"]["value"] <= 100
    ckpt = run / "checkpoints" / "last.pt"
    out = tmp_path / "colorized"
    assert cli(["colorize", str(data / "val" / "red_disc"), "--checkpoint", str(ckpt), "--out", str(out),
                "--samples", "2", "--grid"]) == 0
    assert len(list(out.glob("*_s0.png"))) == len(list(out.glob("*_s1.png"))) == 2
    sets = ["baselines=[gray]", "classifier.enabled=false", "samples=2", "timing_runs=1", f"data.root={data}",
            f"prior.cache_dir={tmp_path / 'cache'}", "prior.max_images=8", "data.crop=40", "data.resize=48"]
    assert cli(["eval-color", "--config", str(REPO / "configs/downstream/eval_color_tiny.yaml"), "--checkpoint",
                str(ckpt), "--run-dir", str(tmp_path / "eval"), *[a for s in sets for a in ("--set", s)]]) == 0
    values = {(r["method"], r["metric"]): r["value"]
              for r in json.loads((tmp_path / "eval" / "metrics.json").read_text())["records"]}
    assert values[("royer", "samples")] == 2 and ("royer", "auc_std") in values and ("gray", "auc_std") not in values
