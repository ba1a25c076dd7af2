"""Encoder registry and contracts (DESIGN §2): every registered encoder is looped over.

Loops use width 0.125 and 64-90 px inputs (CPU seconds); width-1 parameter counts and
the 227/224 probe shapes are computed on the meta device (shapes only, no compute).
"""
import math

import pytest
import timm
import torch
from torch import nn

from pretext.encoders import build_encoder, list_encoders, normalize_l, register_encoder

CASES = [(name, {}) for name in list_encoders()] + [("resnet50_cc", {"last_stride1": True})]
SIZES = [(64, 64), (70, 90)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] + "".join(f"-{k}" for k in c[1]))
def case(request):
    name, kw = request.param
    torch.manual_seed(0)
    return name, kw, build_encoder(name, width=0.125, **kw)


def _near_stride(size: int, full: int, stride: int) -> bool:
    # unpadded convs (AlexNet) lose a few border cells; padded ones give exactly ceil
    return full / stride - 3 <= size <= math.ceil(full / stride)


@pytest.mark.parametrize("h, w", SIZES)
def test_forward_gives_the_deepest_tap_by_the_documented_rule(case, h, w):
    name, _, model = case
    out = model(torch.rand(2, 1, h, w) - 0.5)
    deepest = model.taps[-1]
    s = model.feature_info[deepest]["stride"]
    assert out.shape == (2, model.feature_info[deepest]["channels"], *model.feature_size(h, w))
    assert model.feature_size(h, w) == model.feature_size(h, w, deepest)
    assert _near_stride(out.shape[2], h, s) and _near_stride(out.shape[3], w, s)
    if name != "alexnet_cc":  # padded trunks: exactly ceil(H / s)
        assert out.shape[2:] == (math.ceil(h / s), math.ceil(w / s))


def test_trunks_are_head_free(case):
    _, _, model = case
    assert not hasattr(model, "head") and not any(k.startswith("head.") for k in model.state_dict())
    assert model.input_kind == "L"


def test_every_parameter_gets_a_finite_gradient(case):
    _, _, model = case
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(torch.rand(2, 1, 70, 90) - 0.5)
    # a fixed random readout, so every channel and position carries gradient
    readout = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out * readout).sum().backward()
    missing = [k for k, p in model.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0


@pytest.mark.parametrize("h, w", SIZES)
def test_taps_match_feature_info(case, h, w):
    _, _, model = case
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(torch.rand(2, 1, h, w) - 0.5, model.taps)
    assert list(feats) == model.taps
    for tap, f in feats.items():
        info = model.feature_info[tap]
        assert f.shape[:2] == (2, info["channels"])
        assert f.shape[2:] == model.feature_size(h, w, tap)
        assert _near_stride(f.shape[2], h, info["stride"])
        assert _near_stride(f.shape[3], w, info["stride"])


def test_forward_features_returns_requested_taps_and_stops_early(case):
    _, _, model = case
    taps = model.taps
    calls = []
    hooks = [getattr(model, t).register_forward_hook(lambda *a, t=t: calls.append(t)) for t in taps]
    try:
        with torch.no_grad():
            out = model.eval().forward_features(torch.zeros(1, 1, 64, 64), [taps[1], taps[0]])
    finally:
        for hk in hooks:
            hk.remove()
    assert set(out) == {taps[0], taps[1]}
    assert calls == taps[:2]  # nothing deeper than the deepest requested tap


def test_bad_inputs_and_taps_raise(case):
    name, _, model = case
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        model(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        model(torch.zeros(1, 64, 64))
    with pytest.raises(ValueError, match="valid taps"):
        model.forward_features(torch.zeros(1, 1, 64, 64), ["fc9"])


def test_registry_errors():
    with pytest.raises(ValueError) as err:
        build_encoder("no_such_net")
    for name in ("alexnet_cc", "vgg_cc", "resnet50_cc"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("vgg_cc")
    assert {"alexnet_cc", "vgg_cc", "resnet50_cc"} <= set(list_encoders())
    with pytest.raises(ValueError, match="width"):
        build_encoder("vgg_cc", width=0)


def test_normalize_l():
    assert normalize_l(torch.tensor([0.0, 50.0, 100.0])).tolist() == [-0.5, 0.0, 0.5]


def _counts(name, **kw):
    with torch.device("meta"):  # shapes only: no init cost at width 1
        model = build_encoder(name, **kw)
    return sum(p.numel() for p in model.parameters())


def _conv(cin, cout, k, groups=1, bias=True):
    return cout * (cin // groups) * k * k + (cout if bias else 0)


def test_param_counts_alexnet():
    # conv (with bias) + BN (2C): conv1 11,712+192; conv2 307,456+512; conv3 885,120+768;
    # conv4 663,936+768; conv5 442,624+512  -> 2,313,600
    trunk = (_conv(1, 96, 11) + 192 + _conv(96, 256, 5, 2) + 512 + _conv(256, 384, 3) + 768
             + _conv(384, 384, 3, 2) + 768 + _conv(384, 256, 3, 2) + 512)
    assert trunk == 2_313_600
    assert _counts("alexnet_cc") == trunk


def test_param_counts_vgg_matches_released_eccv16():
    # blocks 1-7: convs with bias + one BN (2C) per block
    b1 = _conv(1, 64, 3) + _conv(64, 64, 3) + 128                            # 37,696
    b2 = _conv(64, 128, 3) + _conv(128, 128, 3) + 256                        # 221,696
    b3 = _conv(128, 256, 3) + 2 * _conv(256, 256, 3) + 512                   # 1,475,840
    b4 = _conv(256, 512, 3) + 2 * _conv(512, 512, 3) + 1024                  # 5,900,800
    b567 = 3 * (3 * _conv(512, 512, 3) + 1024)                               # 3 x 7,080,448
    b8 = 512 * 256 * 16 + 256 + 2 * _conv(256, 256, 3)                       # 3,277,568
    assert b1 + b2 + b3 + b4 + b567 + b8 == 32_154_944
    # released eccv16 = this trunk + Zhang's 1x1 head to 313 (80,441; tests/test_methods.py)
    # = 32,235,385, + model_out (313->2, no bias: 626) = 32,236,011 (32.2M)
    assert _counts("vgg_cc") == 32_154_944


def test_param_counts_resnet50():
    # torchvision resnet50: 25,557,032 incl. fc (2048*1000 + 1000 = 2,049,000) and an RGB
    # conv1 (64*3*7*7 = 9,408); a 1-channel conv1 has 3,136:
    # 25,557,032 - 2,049,000 - 9,408 + 3,136 = 23,501,760
    trunk = 25_557_032 - 2_049_000 - 9_408 + 3_136
    assert trunk == 23_501_760
    assert _counts("resnet50_cc") == trunk
    assert _counts("resnet50_cc", last_stride1=True) == trunk  # dilation adds nothing


def test_resnet_trunk_is_timm_resnet50():
    with torch.device("meta"):
        ours = build_encoder("resnet50_cc").state_dict()
        ref = timm.create_model("resnet50", pretrained=False, in_chans=1, num_classes=0)
        ref = ref.state_dict()
    rename = {"conv1.weight": "conv1.0.weight"}
    mapped = {}
    for k, v in ref.items():
        k = rename.get(k, k.replace("bn1.", "conv1.1.", 1) if k.startswith("bn1.") else k)
        for i in range(1, 5):
            if k.startswith(f"layer{i}."):
                k = f"res{i + 1}." + k[len(f"layer{i}."):]
        mapped[k] = v.shape
    assert {k: v.shape for k, v in ours.items()} == mapped


def _pooled_dims(model, size, pools):
    x = torch.empty(1, 1, size, size, device="meta")
    feats = model.forward_features(x)
    shapes = {t: tuple(f.shape[2:]) for t, f in feats.items()}
    dims = {t: nn.AvgPool2d(*pools[t])(f).numel() for t, f in feats.items()}
    return shapes, dims


def test_alexnet_227_taps_and_design_probe_dims():
    with torch.device("meta"):
        model = build_encoder("alexnet_cc")
    pools = {"conv1": (19, 4), "conv2": (12, 3), "conv3": (9, 1), "conv4": (9, 1), "conv5": (8, 1)}
    shapes, dims = _pooled_dims(model, 227, pools)
    assert shapes == {"conv1": (55, 55), "conv2": (27, 27), "conv3": (13, 13),
                      "conv4": (13, 13), "conv5": (13, 13)}
    assert [dims[t] for t in model.taps] == [9600, 9216, 9600, 9600, 9216]
    small = build_encoder("alexnet_cc", width=0.125).eval()  # real tensors agree with the rule
    with torch.no_grad():
        feats = small.forward_features(torch.zeros(1, 1, 227, 227))
    assert {t: tuple(f.shape[2:]) for t, f in feats.items()} == shapes


def test_resnet50_224_design_probe_dims():
    with torch.device("meta"):
        model = build_encoder("resnet50_cc")
    pools = {"conv1": (10, 10, 4), "res2": (16, 8), "res3": (13, 5), "res4": (8, 3), "res5": (6, 1)}
    shapes, dims = _pooled_dims(model, 224, pools)
    assert shapes == {"conv1": (112, 112), "res2": (56, 56), "res3": (28, 28),
                      "res4": (14, 14), "res5": (7, 7)}
    assert [dims[t] for t in model.taps] == [9216, 9216, 8192, 9216, 8192]


def test_alexnet_rejects_inputs_below_its_minimum():
    model = build_encoder("alexnet_cc", width=0.125)
    assert model.feature_size(64, 70) == (2, 3)  # (64-11)//4+1=14 -> 6 -> 2; 70 -> 15 -> 7 -> 3
    with pytest.raises(ValueError, match="H, W >= 35"):
        model(torch.zeros(2, 1, 34, 64))
