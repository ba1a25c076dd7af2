"""Released weights: the ECCV16 import and the torchvision / detectron2 exports (pretext.encoders.weights*)."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmarks.cli import main as cli_main
from pretext.color.bins import ab_centers
from pretext.encoders import build_encoder, normalize_l
from pretext.encoders.weights import dense_groups, fold_bn, rgb_stem
from pretext.encoders.weights_export import export_trunk
from pretext.encoders.weights_import import import_detectron2, import_eccv16
from pretext.engine.checkpoint import load_checkpoint, save_checkpoint, trunk_checkpoint

# ----------------------------------------------------------------------------- the published ECCV16 colorizer

def _convs(channels: list[int], last_stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    """conv3x3 + ReLU per channel step (the last conv strided), then one BN: a model1-7 block."""
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate(itertools.pairwise(channels)):
        stride = last_stride if i == len(channels) - 2 else 1
        layers += [nn.Conv2d(cin, cout, 3, stride, dilation, dilation), nn.ReLU(True)]
    return layers + [nn.BatchNorm2d(channels[-1])]


class ReleaseECCV16(nn.Module):
    """Written from the layer list of colorizers/eccv16.py (ECCVGenerator), independently of vgg_cc."""

    def __init__(self):
        super().__init__()
        self.model1 = nn.Sequential(*_convs([1, 64, 64], 2))
        self.model2 = nn.Sequential(*_convs([64, 128, 128], 2))
        self.model3 = nn.Sequential(*_convs([128, 256, 256, 256], 2))
        self.model4 = nn.Sequential(*_convs([256, 512, 512, 512]))
        self.model5 = nn.Sequential(*_convs([512, 512, 512, 512], dilation=2))
        self.model6 = nn.Sequential(*_convs([512, 512, 512, 512], dilation=2))
        self.model7 = nn.Sequential(*_convs([512, 512, 512, 512]))
        self.model8 = nn.Sequential(nn.ConvTranspose2d(512, 256, 4, 2, 1), nn.ReLU(True),
                                    nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(True),
                                    nn.Conv2d(256, 256, 3, 1, 1), nn.ReLU(True), nn.Conv2d(256, 313, 1))
        self.model_out = nn.Conv2d(313, 2, 1, bias=False)

    def logits(self, lightness: torch.Tensor) -> torch.Tensor:  # L in [0, 100] -> [N, 313, H/4, W/4]
        x = (lightness - 50.0) / 100.0
        for i in range(1, 9):
            x = getattr(self, f"model{i}")(x)
        return x

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:  # the release's output: ab at full size
        out = self.model_out(torch.softmax(self.logits(lightness), dim=1))
        return 110.0 * F.interpolate(out, scale_factor=4, mode="bilinear", align_corners=False)


@torch.no_grad()
def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Variance-keeping conv weights and non-trivial BN statistics, so every layer matters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            fan_in = m.weight[0].numel() if isinstance(m, nn.Conv2d) else m.weight.shape[0] * m.weight[0, 0].numel() / 4
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.05)
        elif isinstance(m, nn.BatchNorm2d):
            for t, lo, hi in ((m.running_var, 0.5, 2.0), (m.weight, 0.5, 1.5)):
                if t is not None:
                    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
            for t in (m.running_mean, m.bias):
                if t is not None:
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            m.num_batches_tracked.fill_(7)
    return model.eval()


@pytest.fixture(scope="module")
def release():
    torch.manual_seed(0)
    ref = _randomise(ReleaseECCV16(), 1)
    with torch.no_grad():
        ref.model_out.weight.copy_((ab_centers().T / 110.0)[:, :, None, None])  # the release's decoding
    return ref, {k: v.clone() for k, v in ref.state_dict().items()}


def _lightness(n: int = 2, h: int = 40, w: int = 56) -> torch.Tensor:
    return torch.rand(n, 1, h, w, generator=torch.Generator().manual_seed(3)) * 100  # [N, 1, H, W], L in [0, 100]


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= rel * max(1.0, float(b.abs().max()))


def test_eccv16_logits_and_mean_decoding_equal_the_published_architecture(release, one_thread):
    ref, state = release
    method, extras = import_eccv16(state)
    method.eval()
    lightness = _lightness()
    with torch.no_grad():
        want = ref.logits(lightness)
        got = method.logits(normalize_l(lightness))
        assert want.std() > 0.1  # the random release really depends on its input
        assert _close(got, want)
        ab = F.interpolate(method.predict_ab(normalize_l(lightness), "mean"), size=lightness.shape[-2:],
                           mode="bilinear", align_corners=False)
        assert _close(ab, ref(lightness), 1e-5)  # the release's own output, ab units
    assert torch.equal(method.prior, torch.full((313,), 1 / 313)) and "uniform" in extras["prior_source"]
    assert extras["decoder"] == "mean" and method.loss_name == "full"


def test_eccv16_bins_in_another_order_are_reordered(release, one_thread):
    ref, state = release
    perm = torch.randperm(313, generator=torch.Generator().manual_seed(5))  # the same model, bins listed differently
    shuffled = dict(state, **{"model_out.weight": state["model_out.weight"][:, perm],
                              "model8.6.weight": state["model8.6.weight"][perm],
                              "model8.6.bias": state["model8.6.bias"][perm]})
    method, extras = import_eccv16(shuffled)
    lightness = _lightness(1, 32, 32)
    with torch.no_grad():
        ab = F.interpolate(method.eval().predict_ab(normalize_l(lightness), "mean"), size=(32, 32), mode="bilinear")
        assert _close(ab, ref(lightness), 1e-5)
    assert "reordered" in extras["import_notes"][1]


def test_eccv16_wrong_keys_shapes_and_decoding_are_named(release, tmp_path, capsys):
    _, state = release
    bad = {k: v for k, v in state.items() if k != "model3.2.weight"}
    bad.update({"model9.0.weight": torch.zeros(1), "model8.6.bias": torch.zeros(312)})
    with pytest.raises(ValueError, match=r"missing keys: model3\.2\.weight.*unexpected keys: model9\.0\.weight.*"
                                         r"wrong shapes: model8\.6\.bias \[312\] \(expected \[313\]\)"):
        import_eccv16(bad)
    with pytest.raises(ValueError, match="not the 313 ab bin centres / 110"):
        import_eccv16(dict(state, **{"model_out.weight": state["model_out.weight"] * 1.5}))
    torch.save(bad, tmp_path / "bad.pth")
    code = cli_main(["import-weights", "--format", "eccv16-pytorch", str(tmp_path / "bad.pth"),
                     "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model3.2.weight" in err
    assert not (tmp_path / "x.pt").exists()


def test_eccv16_files_without_bn_counters_load(release):
    _, state = release
    method, _ = import_eccv16({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    assert int(method.trunk.conv1[4].num_batches_tracked) == 0


@pytest.mark.slow
def test_imported_eccv16_runs_in_colorize_eval_color_and_probe(release, tmp_path, capsys):
    from pretext.colorize import load_colorizer
    from pretext.data.synthetic.generate import make_dataset
    from tests.conftest import REPO

    ref, state = release
    torch.save(state, tmp_path / "colorization_release_v2.pth")
    ckpt = tmp_path / "eccv16.pt"
    assert cli_main(["import-weights", "--format", "eccv16-pytorch", str(tmp_path / "colorization_release_v2.pth"),
                     "--out", str(ckpt)]) == 0
    payload = load_checkpoint(ckpt)
    assert (payload["encoder"], payload["method"], payload["origin"]) == ("vgg_cc", "zhang", "eccv16-pytorch")
    colorizer = load_colorizer(ckpt, size=0, decoder="mean")  # colorize's path: L in [0, 100] -> full-size ab
    lightness = _lightness(1, 48, 64)
    with torch.no_grad():
        assert _close(colorizer.predict_ab(lightness), ref(lightness), 1e-5)

    data = tmp_path / "data"
    make_dataset(data, size=64, num_train=4, num_val=2, num_voc=4, verbose=False)
    images = sorted((data / "imagefolder" / "val").rglob("*.*"))[:2]
    assert cli_main(["colorize", *map(str, images), "--checkpoint", str(ckpt), "--out", str(tmp_path / "col"),
                     "--decoder", "mean", "--size", "64"]) == 0
    assert len(list((tmp_path / "col").glob("*.png"))) == 2
    sets = ["classifier.enabled=false", "baselines=[gray]", "decoders=[mean]", "data.val_limit=4", "timing_runs=1", "size=64",
            f"data.root={data / 'imagefolder'}", f"prior.cache_dir={tmp_path / 'cache'}", "prior.max_images=8"]
    assert cli_main(["eval-color", "--config", str(REPO / "configs/downstream/eval_color_tiny.yaml"),
                     "--checkpoint", str(ckpt), "--run-dir", str(tmp_path / "eval"),
                     *[a for s in sets for a in ("--set", s)]]) == 0
    records = json.loads((tmp_path / "eval" / "metrics.json").read_text())["records"]
    assert any(r["metric"] == "auc" and r["encoder"] == "vgg_cc" for r in records)
    sets = ["trunk.encoder=vgg_cc", f"data.root={data / 'imagefolder'}", "data.crop=64", "data.resize=64",
            "batch_size=8", "optim.iterations=2", "optim.milestones=[1]", "data.num_workers=0", "taps=[conv1,conv8]"]
    assert cli_main(["probe", "--config", str(REPO / "configs/downstream/probe_tiny.yaml"), "--checkpoint", str(ckpt),
                     "--run-dir", str(tmp_path / "probe"), *[a for s in sets for a in ("--set", s)]]) == 0
    records = json.loads((tmp_path / "probe" / "metrics.json").read_text())["records"]
    assert {r["layer"] for r in records} == {"conv1", "conv8"}


# ----------------------------------------------------------------------------- conv algebra by hand

def test_fold_bn_and_dense_groups_by_hand():
    conv, bn = nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1).eval()
    with torch.no_grad():
        conv.weight.fill_(2.0), conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0), bn.running_var.fill_(4.0 - bn.eps), bn.weight.fill_(2.0), bn.bias.fill_(0.5)
    weight, bias = fold_bn(conv, bn)  # BN(2x + 1) = 2 (2x + 1 - 3) / 2 + 0.5 = 2x - 1.5
    assert weight.flatten().tolist() == pytest.approx([2.0]) and bias.tolist() == pytest.approx([-1.5])
    grouped = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)  # 4 outputs, 2 groups of 1 input each
    assert dense_groups(grouped, 2)[:, :, 0, 0].tolist() == [[1, 0], [2, 0], [0, 3], [0, 4]]
    w_rgb, shift = rgb_stem(torch.ones(1, 1, 1, 1), mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
    assert w_rgb.flatten().tolist() == pytest.approx([0.2126, 0.7152, 0.0722]) and shift.tolist() == pytest.approx([0.0])


# ----------------------------------------------------------------------------- exports

def _payload(encoder: str, seed: int, **kwargs) -> dict:
    torch.manual_seed(seed)
    return trunk_checkpoint(_randomise(build_encoder(encoder, **kwargs), seed), encoder, kwargs)


def _trunk(payload: dict) -> nn.Module:
    trunk = build_encoder(payload["encoder"], **payload["encoder_kwargs"])
    trunk.load_state_dict(payload["trunk"])
    return trunk.eval()


def _caffe_alexnet(in_chans: int) -> nn.Module:
    """torchvision's AlexNet with the Caffe AlexNet's convs (the documented recipe)."""
    net = torchvision.models.alexnet(weights=None)
    for i, conv in zip((0, 3, 6, 8, 10), (nn.Conv2d(in_chans, 96, 11, 4, 0), nn.Conv2d(96, 256, 5, padding=2),
                                          nn.Conv2d(256, 384, 3, padding=1), nn.Conv2d(384, 384, 3, padding=1),
                                          nn.Conv2d(384, 256, 3, padding=1))):
        net.features[i] = conv
    return net.eval()


def test_alexnet_export_loads_into_torchvision_alexnet_and_matches(one_thread):
    payload = _payload("alexnet_cc", 11)
    trunk = _trunk(payload)
    state, described = export_trunk(payload, "torchvision", "l")
    net = _caffe_alexnet(1)
    net.load_state_dict({**state, **{k: v for k, v in net.state_dict().items() if k.startswith("classifier")}})
    x = normalize_l(_lightness(2, 131, 99))
    with torch.no_grad():
        assert _close(net.features[:12](x), trunk(x))  # conv5 after its ReLU
        assert net(normalize_l(_lightness(1, 227, 227))).shape == (1, 1000)
    assert any("groups=2" in n for n in described["notes"])
    # the RGB stem: exact against the L stem fed luma(RGB) / 100 - 0.5 (conv1 is unpadded)
    rgb_state, _ = export_trunk(payload, "torchvision", "rgb")
    v = torch.rand(2, 3, 67, 67, generator=torch.Generator().manual_seed(4))  # RGB in [0, 1]
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    u = (v * torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(1, keepdim=True) - 0.5
    got = F.conv2d((v - mean) / std, rgb_state["features.0.weight"], rgb_state["features.0.bias"], 4)
    with torch.no_grad():
        assert _close(got, trunk.conv1[1](trunk.conv1[0](u)))


@pytest.mark.parametrize("last_stride1", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_resnet50_export_loads_into_torchvision_resnet50_and_matches(last_stride1, one_thread):
    payload = _payload("resnet50_cc", 12, last_stride1=last_stride1)
    trunk = _trunk(payload)
    state, _ = export_trunk(payload, "torchvision", "l")
    net = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, False, last_stride1])
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    net.load_state_dict({**state, "fc.weight": net.fc.weight, "fc.bias": net.fc.bias})
    body = nn.Sequential(*list(net.children())[:-2]).eval()  # conv1 ... layer4
    x = normalize_l(_lightness(1, 64, 64))
    with torch.no_grad():
        assert _close(body(x), trunk(x))
    rgb_state, _ = export_trunk(payload, "torchvision", "rgb")  # stem: exact away from the padded border
    v = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    u = (v * torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)).sum(1, keepdim=True) - 0.5
    net.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    net.load_state_dict({**rgb_state, "fc.weight": net.fc.weight, "fc.bias": net.fc.bias})
    with torch.no_grad():
        got, want = net.eval().bn1(net.conv1((v - mean) / std)), trunk.conv1[1](trunk.conv1[0](u))
        assert _close(got[..., 2:31, 2:31], want[..., 2:31, 2:31]) and not _close(got, want)


def _detectron2_forward(sd: dict, x: torch.Tensor, p: str) -> torch.Tensor:
    """detectron2's ResNet-50 (BasicStem, BottleneckBlock with STRIDE_IN_1X1 False, FrozenBN) read by its key names."""
    def conv_norm(x, name, stride=1, padding=0):
        x = F.conv2d(x, sd[f"{name}.weight"], None, stride, padding)
        scale = sd[f"{name}.norm.weight"] / (sd[f"{name}.norm.running_var"] + 1e-5).sqrt()
        shift = sd[f"{name}.norm.bias"] - sd[f"{name}.norm.running_mean"] * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    x = F.max_pool2d(F.relu(conv_norm(x, f"{p}stem.conv1", 2, 3)), 3, 2, 1)
    for stage, blocks in zip((2, 3, 4, 5), (3, 4, 6, 3)):
        for b in range(blocks):
            n, stride = f"{p}res{stage}.{b}", 2 if stage > 2 and b == 0 else 1
            out = F.relu(conv_norm(F.relu(conv_norm(x, f"{n}.conv1")), f"{n}.conv2", stride, 1))
            short = conv_norm(x, f"{n}.shortcut", stride) if f"{n}.shortcut.weight" in sd else x
            x = F.relu(conv_norm(out, f"{n}.conv3") + short)
    return x


def test_detectron2_export_runs_as_detectron2_and_imports_back(tmp_path, capsys, one_thread):
    payload = _payload("resnet50_cc", 13, width=0.5)
    save_checkpoint(tmp_path / "r50.pt", payload)
    out = tmp_path / "d2.pth"
    assert cli_main(["export-weights", str(tmp_path / "r50.pt"), "--format", "detectron2", "--input", "l",
                     "--out", str(out)]) == 0
    sd = torch.load(out, weights_only=True)["model"]
    p = "backbone.bottom_up."
    assert {f"{p}stem.conv1.weight", f"{p}stem.conv1.norm.running_var", f"{p}res2.0.shortcut.norm.bias",
            f"{p}res5.2.conv3.norm.weight"} <= set(sd)
    assert not any("num_batches_tracked" in k or ".bn" in k or "downsample" in k for k in sd)
    described = json.loads(out.with_name("d2.pth.json").read_text())
    assert described["config"]["MODEL.RESNETS.WIDTH_PER_GROUP"] == 32 and described["config"]["MODEL.PIXEL_STD"] == [100.0]
    trunk = _trunk(payload)
    x = normalize_l(_lightness(1, 64, 64))
    with torch.no_grad():
        assert _close(_detectron2_forward(sd, x, p), trunk(x))
    back = tmp_path / "back.pt"
    assert cli_main(["import-weights", "--format", "detectron2", str(out), "--out", str(back)]) == 0
    again = load_checkpoint(back)
    assert again["encoder_kwargs"] == {"width": 0.5, "last_stride1": False} and "method" not in again
    assert all(torch.equal(again["trunk"][k], v) for k, v in payload["trunk"].items() if "num_batches" not in k)
    bare, _ = export_trunk(payload, "detectron2", "rgb", prefix="")
    with pytest.raises(ValueError, match="3 input channels"):
        import_detectron2(bare, prefix="")


def test_export_refusals(tmp_path, capsys):
    save_checkpoint(tmp_path / "vgg.pt", trunk_checkpoint(build_encoder("vgg_cc", width=0.125), "vgg_cc", {"width": 0.125}))
    save_checkpoint(tmp_path / "alex.pt", trunk_checkpoint(build_encoder("alexnet_cc", width=0.25), "alexnet_cc",
                                                          {"width": 0.25}))
    for ckpt, fmt in (("vgg.pt", "torchvision"), ("alex.pt", "detectron2")):
        assert cli_main(["export-weights", str(tmp_path / ckpt), "--format", fmt, "--out", str(tmp_path / "o")]) == 2
        assert "no " + fmt + " layout" in capsys.readouterr().err
    (tmp_path / "taken.pth").write_bytes(b"x")
    assert cli_main(["export-weights", str(tmp_path / "alex.pt"), "--format", "torchvision",
                     "--out", str(tmp_path / "taken.pth")]) == 2
    assert "--overwrite" in capsys.readouterr().err
