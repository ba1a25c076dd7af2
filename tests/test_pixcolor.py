"""PixColor (pretext.methods.pixcolor) and its colour space (pretext.color.ycbcr): hand-computed
YCbCr values and bins, the loss by hand, teacher forcing on the ground truth, diverse
in-gamut samples, reproducible seeds, a Kodak photo at its native size."""
import math

import pytest
import torch

from pretext.color.lab import lab_to_rgb, rgb_to_lab
from pretext.color.ycbcr import chroma_centers, quantize_chroma, rgb_to_ycbcr, ycbcr_to_rgb
from pretext.encoders import build_encoder, normalize_l
from pretext.methods import StepContext, build_method
from pretext.methods.pixcolor import AB_SCALE, GAMUT_TOL, fit_to_gamut
from tests.conftest import shared_path

CTX = StepContext(torch.device("cpu"))


def _pixel(*rgb):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)


# -- YCbCr ------------------------------------------------------------------------------------
def test_ycbcr_hand_values_and_round_trip():
    # red (8-bit): Y = 0.299 * 255 = 76.245, Cb = 128 - 0.168736 * 255 = 84.97232, Cr = 128 + 127.5
    assert torch.allclose(rgb_to_ycbcr(_pixel(1, 0, 0)).flatten() * 255, torch.tensor([76.245, 84.97232, 255.5]),
                          atol=1e-3)
    # white: Y = 255 (the luma weights sum to 1), no chroma; mid grey likewise
    assert torch.allclose(rgb_to_ycbcr(_pixel(1, 1, 1)).flatten() * 255, torch.tensor([255.0, 128.0, 128.0]), atol=1e-3)
    assert torch.allclose(rgb_to_ycbcr(_pixel(0.5, 0.5, 0.5)).flatten() * 255, torch.tensor([127.5, 128.0, 128.0]),
                          atol=1e-3)
    rgb = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb), clip=False), rgb, atol=1e-5)
    # a YCbCr triple outside the RGB cube: clipped by default
    assert ycbcr_to_rgb(torch.tensor([1.0, 1.0, 1.0]).view(1, 3, 1, 1)).max() == 1.0
    with pytest.raises(ValueError, match="rgb_to_ycbcr"):
        rgb_to_ycbcr(torch.zeros(1, 2, 3, 3))


def test_chroma_bins_hand_values():
    # 32 bins of width 8 (8-bit scale), centred on grey: bin = round((C - 128) / 8) + 16, clamped
    eight_bit = torch.tensor([128.0, 131.9, 132.1, 84.97232, 255.5, 0.5, 107.27])
    assert quantize_chroma(eight_bit / 255).tolist() == [16, 16, 17, 11, 31, 0, 13]
    assert (chroma_centers(torch.tensor([0, 11, 16, 31])) * 255).tolist() == pytest.approx([0.0, 88.0, 128.0, 248.0])
    assert quantize_chroma(torch.tensor([0.2]), bins=4).tolist() == [1]  # width 64: (51 - 128) / 64 = -1.2 -> -1 + 2
    with pytest.raises(ValueError, match="chroma bins"):
        quantize_chroma(torch.zeros(1), bins=1)


# -- the method --------------------------------------------------------------------------------
def _method(seed=0, **kw):
    torch.manual_seed(seed)
    options = dict(grid=6, cond_size=48, cond_channels=8, hidden=8, layers=2, kernel=3, refine_channels=4)
    return build_method("pixcolor", build_encoder("alexnet_cc", width=0.125), **{**options, **kw})


def _solid(*rgb, size=48):
    return torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_low_res_target_hand_case():
    """Left half red, right half blue, grid 2: (Cr, Cb) bins per cell from the formulas above.
    Red: Cr 255.5 -> 31, Cb 84.97 -> 11; blue: Cr 128 - 0.081312 * 255 = 107.27 -> 13, Cb 255.5 -> 31."""
    m = _method(grid=2)
    image = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    image[0, 0, :, :4] = 255
    image[0, 2, :, 4:] = 255
    bins = m.low_res_bins(image)
    assert bins.shape == (1, 2, 2, 2)
    assert bins[0, 0].tolist() == [[31, 13], [31, 13]]  # channel 0 is Cr (sampled first)
    assert bins[0, 1].tolist() == [[11, 31], [11, 31]]


def test_loss_hand_computed(one_thread):
    """PixelCNN and auxiliary logits all zero -> CE = ln 32 each; refinement output zero ->
    1/2 (a^2 + b^2) / 100^2 for a solid colour; a grey image in the batch is masked out of every term."""
    m = _method(refine_weight=2.0, aux_weight=0.5).train()
    with torch.no_grad():
        for conv in (m.head_pixelcnn.out2, m.head_refine.out, m.head_aux.out):
            conv.weight.zero_()
            conv.bias.zero_()
    images = torch.cat([_solid(200, 60, 40), _solid(128, 128, 128)])
    ab = rgb_to_lab(_pixel(200 / 255, 60 / 255, 40 / 255))[0, 1:, 0, 0]
    refine = 0.5 * float((ab ** 2).sum()) / AB_SCALE ** 2
    loss, stats = m({"image": images}, CTX)
    assert stats["colourful"] == 1
    assert stats["loss_pixelcnn"] == pytest.approx(math.log(32), abs=1e-5)
    assert stats["loss_refine"] == pytest.approx(refine, rel=1e-4)
    assert stats["loss_aux"] == pytest.approx(math.log(32), abs=1e-5)
    assert loss.item() == pytest.approx(1.5 * math.log(32) + 2.0 * refine, rel=1e-5)
    assert _method().head_aux is None  # the paper has no auxiliary loss: aux_weight 0 builds no head


def test_auxiliary_targets_are_each_pixels_own_bins(one_thread):
    """Logits fixed to favour (Cr 31, Cb 11) - red's bins (see the hand case above) - by 20 nats: a
    solid red image costs ~0, a solid blue one (Cr 13, Cb 31) about 20 per channel."""
    m = _method(aux_weight=1.0).eval()  # (batch statistics of one 48 px image would be degenerate)
    with torch.no_grad():
        m.head_aux.out.weight.zero_()
        m.head_aux.out.bias.zero_()
        m.head_aux.out.bias[31] = 20.0       # Cr logits: channels 0..31
        m.head_aux.out.bias[32 + 11] = 20.0  # Cb logits: channels 32..63
    red, blue = _solid(255, 0, 0), _solid(0, 0, 255)
    mask = torch.ones(1, dtype=torch.bool)
    assert m.aux_loss(m.maps(normalize_l(rgb_to_lab(red.float() / 255)[:, :1])), red, mask).item() < 1e-6
    expected = 20.0 + math.log1p(31 * math.exp(-20.0))  # -log softmax of a zero logit against one at 20
    cost = m.aux_loss(m.maps(normalize_l(rgb_to_lab(blue.float() / 255)[:, :1])), blue, mask).item()
    assert cost == pytest.approx(expected, rel=1e-5)


def test_teacher_forcing_uses_the_ground_truth(one_thread, monkeypatch):
    m = _method().train()
    images = torch.randint(0, 256, (2, 3, 48, 48), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    truth = m.low_res_bins(images)
    seen = {}
    pixelcnn_loss, refine = m.head_pixelcnn.loss, m.refine

    def spy_loss(target, cond, mask=None):
        seen["pixelcnn"] = target
        return pixelcnn_loss(target, cond, mask)

    def spy_refine(lightness, bins):
        seen["refine"] = bins
        return refine(lightness, bins)
    monkeypatch.setattr(m.head_pixelcnn, "loss", spy_loss)
    monkeypatch.setattr(m, "refine", spy_refine)
    state = torch.get_rng_state()
    m({"image": images}, CTX)
    assert torch.equal(seen["pixelcnn"], truth) and torch.equal(seen["refine"], truth)
    assert torch.equal(torch.get_rng_state(), state)  # training draws nothing: no sample enters the loss


def test_training_step_reports_both_losses_and_trains(one_thread):
    m = _method().train()
    opt = {"main": torch.optim.Adam(m.parameters(), lr=3e-3)}
    images = torch.randint(0, 256, (4, 3, 48, 48), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    first = m.training_step([{"image": images[:2]}, {"image": images[2:]}], m, opt, CTX)
    for _ in range(15):
        last = m.training_step([{"image": images[:2]}, {"image": images[2:]}], m, opt, CTX)
    assert {"loss", "loss_pixelcnn", "loss_refine", "colourful"} <= set(first) and first["colourful"] == 4
    # the parts are means over the micro-batches (not sums): they add up to the loss
    assert first["loss"] == pytest.approx(first["loss_pixelcnn"] + first["loss_refine"], rel=1e-5)
    assert last["loss_pixelcnn"] < first["loss_pixelcnn"] and last["loss_refine"] < first["loss_refine"]


def test_fit_to_gamut_hand_cases():
    L = torch.tensor([50.0, 50.0, 100.0, 0.0]).view(1, 1, 1, 4)
    ab = torch.tensor([[0.0, 20.0, 60.0, 30.0], [0.0, -10.0, 0.0, 30.0]]).view(1, 2, 1, 4)
    rgb = lab_to_rgb(torch.cat([L, ab], 1), clip=False)
    inside = ((rgb >= 0) & (rgb <= 1)).all(1)[0, 0]
    assert inside.tolist() == [True, True, False, False]  # grey and a mild colour; L = 100 or 0 has no chroma
    out = fit_to_gamut(L, ab)
    assert torch.equal(out[..., :2], ab[..., :2])  # in-gamut pixels are left exactly as they are
    fitted = lab_to_rgb(torch.cat([L, out], 1), clip=False)
    assert fitted.min() >= -GAMUT_TOL and fitted.max() <= 1 + GAMUT_TOL
    # hue kept (ab only scaled), chroma reduced to the edge: 1% more chroma leaves the gamut
    far = torch.tensor([[[[120.0]], [[-90.0]]]])
    L50 = torch.full((1, 1, 1, 1), 50.0)
    fit = fit_to_gamut(L50, far)
    scale = fit / far
    assert torch.allclose(scale[:, 0], scale[:, 1]) and 0 < float(scale[0, 0]) < 1
    beyond = lab_to_rgb(torch.cat([L50, fit * 1.01], 1), clip=False)
    assert beyond.min() < 0 or beyond.max() > 1


def test_samples_differ_stay_in_gamut_and_are_reproducible(one_thread):
    m = _method().eval()
    with torch.no_grad():  # an untrained refinement's ab are faint: make them vivid (and often out of gamut)
        m.head_refine.out.weight.mul_(30.0)
    g = torch.Generator().manual_seed(3)
    x = normalize_l(torch.rand(2, 1, 40, 52, generator=g) * 60 + 20)  # L in [20, 80]
    raw = m.refine(x, torch.full((2, 2, 6, 6), 20)) * AB_SCALE  # before fit_to_gamut: the check below can fail
    assert (lab_to_rgb(torch.cat([(x + 0.5) * 100, raw], 1), clip=False) > 1 + GAMUT_TOL).any()
    state = torch.get_rng_state()
    ab = m.sample_ab(x, 4, seed=11)
    assert torch.equal(torch.get_rng_state(), state)  # a private generator
    assert ab.shape == (2, 4, 2, 40, 52) and m.output_size(40, 52) == (40, 52)
    for i in range(2):
        for s in range(4):
            for t in range(s):
                assert (ab[i, s] - ab[i, t]).abs().mean() > 1.0, (i, s, t)  # N samples differ from each other
            L = (x[i:i + 1] + 0.5) * 100
            rgb = lab_to_rgb(torch.cat([L, ab[i, s:s + 1]], 1), clip=False)
            assert rgb.min() >= -GAMUT_TOL and rgb.max() <= 1 + GAMUT_TOL
    assert ab.abs().amax() > 20  # the fitted colours are still colours, not grey
    assert torch.equal(m.sample_ab(x, 4, seed=11), ab)
    assert not torch.equal(m.sample_ab(x, 4, seed=12), ab)
    assert torch.equal(m.predict_ab(x, seed=11), m.sample_ab(x, 1, seed=11)[:, 0])
    assert torch.equal(m.predict_ab(x), m.sample_ab(x, 1, seed=0)[:, 0])


def test_validation_step_reports_the_losses(one_thread):
    m = _method().eval()
    images = torch.cat([_solid(200, 60, 40), _solid(90, 90, 90), _solid(30, 160, 90)])
    out = m.validation_step({"image": images}, CTX)
    assert out.count == 2 and out.pred_ab.shape == out.true_ab.shape == (2, 2, 48, 48)
    assert out.sums["val_loss"] == pytest.approx(out.sums["val_loss_pixelcnn"] + out.sums["val_loss_refine"])
    assert m.validation_step({"image": _solid(90, 90, 90)}, CTX) is None


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="valid taps"):
        _method(taps=["conv9"])
    with pytest.raises(ValueError, match="grid"):
        _method(grid=0)
    with pytest.raises(ValueError, match="chroma bins"):
        _method(bins=1)
    m = _method().eval()
    x = torch.zeros(1, 1, 48, 48)
    with pytest.raises(ValueError, match="samples must be"):
        m.sample_ab(x, 0)
    with pytest.raises(ValueError, match="unknown colorize options"):
        m.sample_ab(x, 2, global_lightness=x)


def test_kodak_photo_at_native_size(one_thread):
    """kodim01 (768 x 512) through the colorize path at its native size, three samples."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    from pretext.colorize import Colorizer, colorize_image

    path = shared_path("data", "kodak24", "kodim01.png")
    image = pil_to_tensor(Image.open(path).convert("RGB"))  # uint8 [3,512,768]
    m = _method(grid=8, cond_size=64).eval()
    colorizer = Colorizer(m, {}, "", size=0, seed=5)
    result = colorize_image(colorizer, image, samples=3)
    assert result.rgb.shape == (3, 512, 768) and result.samples.shape == (3, 3, 512, 768)
    assert not torch.equal(result.samples[0], result.samples[1])
    lightness = rgb_to_lab(image[None].float() / 255)[:, :1]
    ab = colorizer.sample_ab(lightness, 2)[0]  # [2,2,512,768] at native size: no resampling
    rgb = lab_to_rgb(torch.cat([lightness.expand(2, -1, -1, -1), ab], 1), clip=False)
    assert rgb.min() >= -GAMUT_TOL and rgb.max() <= 1 + GAMUT_TOL
