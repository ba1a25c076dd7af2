"""Trunks (downstream.trunks, downstream.user_encoders): the one place a harness gets its
trunk. A user's timm / torchvision state dict loads strictly (prefix stripped, classifier
dropped), gives the same features as the architecture it came from, takes RGB, and a
probe runs on it end to end; bad files and mismatched checkpoints are one-line errors.

Weights are saved from freshly built (random) timm / torchvision models: nothing is
downloaded. The probe runs use the built-in data at 48 px.
"""
import argparse
import hashlib
import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from benchmarks.cli import main as cli_main
from downstream.probe.heads import TrunkChangedError, TrunkGuard, build_pool_specs, freeze
from downstream.trunks import (TrunkConfig, add_trunk_arguments, build_trunk, check_trunk_config, checkpoint_trunk,
                               default_method, encoder_trunk, split_init, trunk_overrides, user_trunk)
from pretext.data.sources import DataConfig
from pretext.encoders import build_encoder
from pretext.engine.checkpoint import save_checkpoint, trunk_checkpoint
from pretext.engine.config import config_from_args
from pretext.methods import build_method, method_payload

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "downstream" / "probe_tiny.yaml"
RESNET_TAPS = ["conv1", "res2", "res3", "res4", "res5"]
RESNET50_224 = {"conv1": 9216, "res2": 9216, "res3": 8192, "res4": 9216, "res5": 8192}  # DESIGN §4

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from pretext.data.synthetic.generate import make_dataset

    root = tmp_path_factory.mktemp("builtin")
    make_dataset(root, size=48, num_train=4, num_val=2, num_voc=0, verbose=False)  # 32 train, 16 val
    return root / "imagefolder"


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """(timm resnet18 in eval mode, its state dict saved as a DDP model would: "module." keys)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18_ddp.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    return model, path


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def images(n=2, side=40, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ------------------------------------------------------------------ user encoders

def test_timm_state_dict_loads_strictly_and_gives_the_models_features(resnet18_file):
    model, path = resnet18_file
    said = []
    trunk = user_trunk("timm:resnet18", path, "module.", say=said.append).eval()
    assert trunk.taps == RESNET_TAPS and trunk.input_kind == "RGB"
    assert [trunk.feature_info[t]["channels"] for t in RESNET_TAPS] == [64, 64, 128, 256, 512]
    assert [trunk.feature_info[t]["stride"] for t in RESNET_TAPS] == [2, 4, 8, 16, 32]
    assert trunk.pool_table is None  # the published ResNet pools are for ResNet-50's channels only
    assert "dropped 2 keys" in said[0] and "fc.weight" in said[0]  # the classifier, reported
    x = trunk.prepare(images(), "cpu")
    with torch.no_grad():
        feats = trunk.forward_features(x)
        assert torch.equal(feats["res5"], model.forward_features(x))  # the same network, same weights
    for tap, f in feats.items():  # the meta-device shape pass agrees with a real one
        assert trunk.feature_size(40, 40, tap) == tuple(f.shape[-2:])
    d = trunk.describe()
    assert (d["init"], d["architecture"], d["input"], d["key_prefix"]) == ("timm:resnet18", "timm:resnet18", "RGB",
                                                                          "module.")
    assert d["weights_sha256"] == sha16(path) and d["tensors_loaded"] == len(model.state_dict()) - 2
    with pytest.raises(ValueError, match=r"takes RGB images \[N, 3, H, W\]"):  # an L input is refused
        trunk.forward_features(torch.zeros(1, 1, 40, 40))


def test_torchvision_alexnet_state_dict_has_conv_taps(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.alexnet(num_classes=10).eval()
    path = tmp_path / "alexnet.pth"  # the trunk's weights plus the last classifier layer (fc6/fc7 left out)
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith(("features.", "classifier.6."))}, path)
    said = []
    trunk = user_trunk("torchvision:alexnet", path, say=said.append).eval()
    assert trunk.taps == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert [trunk.feature_info[t]["channels"] for t in trunk.taps] == [64, 192, 384, 256, 256]
    assert "classifier.6.weight" in said[0]
    # conv1: 11x11 stride 4 padding 2 -> (227 + 4 - 11) // 4 + 1 = 56 and (224 + 4 - 11) // 4 + 1 = 55
    assert trunk.feature_size(227, 227, "conv1") == (56, 56) and trunk.feature_size(224, 224, "conv1") == (55, 55)
    assert trunk.feature_size(224, 224, "conv5") == (13, 13)
    x = trunk.prepare(images(side=64), "cpu")
    with torch.no_grad():
        feats = trunk.forward_features(x, ["conv2", "conv5"])
        assert list(feats) == ["conv2", "conv5"]
        assert torch.equal(feats["conv5"], model.features[:12](x))  # after conv5's ReLU, before the pool
        assert torch.equal(feats["conv2"], model.features[:5](x))


def test_other_timm_families_keep_timms_names(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False).eval()
    path = tmp_path / "convnext.pth"
    torch.save({"model": model.state_dict()}, path)
    said = []
    trunk = user_trunk("timm:convnext_atto", path, say=said.append).eval()
    assert trunk.taps == ["stages_0", "stages_1", "stages_2", "stages_3"]  # "stages.0" -> a ModuleDict-safe name
    assert "head.fc.weight" in said[0] and "head.norm.weight" in said[0]
    x = trunk.prepare(images(side=64), "cpu")
    with torch.no_grad():
        assert torch.equal(trunk.forward_features(x, ["stages_3"])["stages_3"], model.forward_features(x))


def test_rgb_and_l_inputs_by_hand(resnet18_file):
    rgb = torch.tensor([[[[255]], [[0]], [[0]]], [[[0]], [[0]], [[0]]]], dtype=torch.uint8)  # red, black [2, 3, 1, 1]
    x = user_trunk("timm:resnet18", resnet18_file[1], "module.", say=quiet).prepare(rgb, "cpu")
    expect = [[(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]]
    assert torch.allclose(x.flatten(1), torch.tensor(expect), atol=1e-6)
    gray = torch.tensor([255, 0], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 1, 1)  # white, black
    lum = encoder_trunk("alexnet_cc", {"width": 0.125}).prepare(gray, "cpu")
    assert lum.shape == (2, 1, 1, 1) and torch.allclose(lum.flatten(), torch.tensor([0.5, -0.5]), atol=1e-4)


def test_bad_weights_are_one_line_errors(resnet18_file, tmp_path):
    model, path = resnet18_file
    with pytest.raises(ValueError, match=r"unexpected keys \['module\.bn1.*try --key-prefix 'module\.'"):
        user_trunk("timm:resnet18", path, say=quiet)  # the prefix forgotten
    with pytest.raises(ValueError, match="no key of .* starts with key_prefix 'backbone.'"):
        user_trunk("timm:resnet18", path, "backbone.", say=quiet)
    other = tmp_path / "other_arch.pth"
    torch.save(model.state_dict(), other)
    with pytest.raises(ValueError, match=r"does not fit timm:resnet34: \d+ missing keys \['layer1\.2\."):
        user_trunk("timm:resnet34", other, say=quiet)
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save({**model.state_dict(), "conv1.weight": torch.zeros(32, 3, 7, 7)}, bad_shape)
    with pytest.raises(ValueError, match=r"shapes differ at \['conv1.weight \[32, 3, 7, 7\] vs \[64, 3, 7, 7\]'\]"):
        user_trunk("timm:resnet18", bad_shape, say=quiet)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="cannot be read as a state dict of tensors"):
        user_trunk("timm:resnet18", garbage, say=quiet)
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=0.1)}, pickled)  # an arbitrary object: never unpickled
    with pytest.raises(ValueError, match="never unpickles"):
        user_trunk("timm:resnet18", pickled, say=quiet)
    no_tensors = tmp_path / "no_tensors.pth"
    torch.save({"epoch": 3, "arch": "resnet18"}, no_tensors)
    with pytest.raises(ValueError, match=r"holds no state dict .* found \['epoch', 'arch'\]"):
        user_trunk("timm:resnet18", no_tensors, say=quiet)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        user_trunk("timm:resnet18", tmp_path / "missing.pth", say=quiet)
    with pytest.raises(ValueError, match="not a timm architecture"):
        user_trunk("timm:resnet_nope", path, say=quiet)
    with pytest.raises(ValueError, match="no tap names for this family"):
        user_trunk("torchvision:mobilenet_v2", path, say=quiet)


# ------------------------------------------------------------------ colorbench checkpoints

def test_checkpoints_load_strictly_and_another_encoder_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    method = build_method("zhang", build_encoder("alexnet_cc", width=0.125))
    full = tmp_path / "zhang.pt"
    save_checkpoint(full, method_payload(method, "alexnet_cc", {"width": 0.125}, {"loss": "full"}, step=5))
    only = tmp_path / "trunk.pt"
    save_checkpoint(only, trunk_checkpoint(method.trunk, "alexnet_cc", {"width": 0.125}, step=6))
    for path, step, kind in ((full, 5, "zhang"), (only, 6, None)):
        trunk = checkpoint_trunk(path, "alexnet_cc")
        assert trunk.input_kind == "L" and trunk.pool_table == "alexnet_cc"
        assert all(torch.equal(v, method.trunk.state_dict()[k]) for k, v in trunk.net.state_dict().items())
        d = trunk.describe()
        assert (d["checkpoint_step"], d["checkpoint_method"], d["encoder_kwargs"]) == (step, kind, {"width": 0.125})
        assert d["checkpoint_sha256"] == sha16(path)
    vgg = tmp_path / "vgg.pt"
    save_checkpoint(vgg, trunk_checkpoint(build_encoder("vgg_cc", width=0.125), "vgg_cc", {"width": 0.125}))
    with pytest.raises(ValueError, match=r"holds a 'vgg_cc' encoder .* configured for 'alexnet_cc'.*trunk.encoder=vgg_cc"):
        checkpoint_trunk(vgg, "alexnet_cc")
    weights = tmp_path / "plain.pth"
    torch.save(build_encoder("alexnet_cc", width=0.125).state_dict(), weights)  # plain weights, not a checkpoint
    with pytest.raises(ValueError, match="not a colorbench checkpoint.*--init timm:ARCH"):
        checkpoint_trunk(weights, "alexnet_cc")


# ------------------------------------------------------------------ config and command line

def test_init_names_and_config_rules():
    assert split_init("timm:resnet50") == ("timm", "resnet50") and split_init("kmeans") == ("kmeans", "")
    for bad in ("random", "timm:", "torchvision", "kmeans:x"):
        with pytest.raises(ValueError, match="trunk.init must be one of"):
            split_init(bad)
    assert [default_method(TrunkConfig(init=i)) for i in ("checkpoint", "gaussian", "supervised", "timm:resnet50",
                                                          "torchvision:alexnet")] == [
        "colorization", "gaussian", "supervised", "resnet50", "alexnet"]
    rules = [(dict(init="checkpoint"), "needs --checkpoint"), (dict(init="timm:resnet50"), "needs --weights"),
             (dict(init="timm:resnet50", weights="w", checkpoint="c"), "drop --checkpoint"),
             (dict(init="kmeans", checkpoint="c"), "drop --checkpoint"),
             (dict(init="gaussian", weights="w"), "are for --init timm:ARCH"),
             (dict(init="checkpoint", checkpoint="c", key_prefix="module."), "are for --init timm:ARCH")]
    for fields, message in rules:
        with pytest.raises(ValueError, match=message):
            check_trunk_config(TrunkConfig(**fields))
    check_trunk_config(TrunkConfig(init="supervised", checkpoint="c"))  # a supervised trunk trained earlier


def test_trunk_flags_become_config_overrides(tmp_path):
    from dataclasses import dataclass, field

    @dataclass
    class Harness:
        trunk: TrunkConfig = field(default_factory=TrunkConfig)

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    add_trunk_arguments(parser)
    args = parser.parse_args(["--init", "timm:resnet50", "--weights", "w.pth", "--key-prefix", "module.encoder_q.",
                              "--set", "trunk.encoder=vgg_cc"])
    cfg = config_from_args(Harness, args, **trunk_overrides(args)).trunk
    assert (cfg.init, cfg.weights, cfg.key_prefix, cfg.checkpoint, cfg.encoder) == (
        "timm:resnet50", "w.pth", "module.encoder_q.", "", "vgg_cc")
    plain = config_from_args(Harness, parser.parse_args(["--set", "trunk.init=kmeans"]),
                             **trunk_overrides(parser.parse_args(["--set", "trunk.init=kmeans"])))
    assert plain.trunk.init == "kmeans"  # flags not given leave the config alone


# ------------------------------------------------------------------ build_trunk and the guard

def test_user_trunk_frozen_guard_and_build(resnet18_file, data_root, tmp_path):
    from pretext.engine.runs import RunDir

    cfg = TrunkConfig(init="timm:resnet18", weights=str(resnet18_file[1]), key_prefix="module.")
    data = DataConfig(root=str(data_root), crop=40, resize=48, num_workers=0)
    trunk = freeze(build_trunk(cfg, data, torch.device("cpu"), RunDir(tmp_path / "run"), 8, say=quiet))
    guard = TrunkGuard(trunk)
    with torch.no_grad():
        trunk.forward_features(trunk.prepare(images(), "cpu"))
    guard.check()  # eval-mode forwards change nothing
    trunk.train()
    with torch.no_grad():
        trunk.forward_features(trunk.prepare(images(), "cpu"))
    with pytest.raises(TrunkChangedError, match=r"net\.body\.bn1\.running_mean"):
        guard.check()


# ------------------------------------------------------------------ end to end

def test_probe_main_feeds_a_user_trunk_rgb(resnet18_file, data_root, tmp_path):
    from downstream.probe.linear_probe import ProbeConfig, main
    from pretext.engine.config import load_config

    sets = [f"data.root={data_root}", "data.crop=40", "data.resize=48", "batch_size=8", "data.num_workers=0",
            "optim.iterations=2", "optim.milestones=[]", "taps=[res3,res5]", "trunk.init=torchvision:resnet18",
            f"trunk.weights={resnet18_file[1]}", "trunk.key_prefix=module.", "data.augment=false",
            "cache.enabled=true", f"cache.dir={tmp_path / 'cache'}"]  # timm's resnet18 keys = torchvision's
    out = main(load_config(ProbeConfig, TINY, sets), run_dir=tmp_path / "run")
    assert {(r["method"], r["encoder"], r["layer"]) for r in out["records"] if r["metric"] == "top1"} == {
        ("resnet18", "torchvision:resnet18", "res3"), ("resnet18", "torchvision:resnet18", "res5")}
    meta = json.loads(next((tmp_path / "cache").glob("*/meta.json")).read_text())
    assert meta["input"] == "RGB"  # the feature cache is keyed by the input the trunk was fed


@pytest.mark.slow
def test_probe_with_a_user_timm_resnet50_state_dict_via_cli(data_root, tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "moco_like_r50.pth"  # a DDP-saved timm ResNet-50 with its classifier
    model = timm.create_model("resnet50", pretrained=False)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, weights)
    run_dir = tmp_path / "run"
    sets = [f"data.root={data_root}", "data.crop=40", "data.resize=48", "batch_size=8", "data.num_workers=0",
            "optim.iterations=3", "optim.milestones=[2]"]
    argv = ["probe", "--config", str(TINY), "--init", "timm:resnet50", "--weights", str(weights),
            "--key-prefix", "module.", "--run-dir", str(run_dir)]
    assert cli_main(argv + [x for s in sets for x in ("--set", s)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {(r["method"], r["encoder"]) for r in metrics["records"]} == {("resnet50", "timm:resnet50")}
    assert {r["layer"] for r in metrics["records"]} == set(RESNET_TAPS)
    assert metrics["trunk"]["weights_sha256"] == sha16(weights) and metrics["trunk"]["input"] == "RGB"
    assert metrics["trunk_unchanged"] and metrics["iterations"] == 3
    config = (run_dir / "config.yaml").read_text()
    assert "init: timm:resnet50" in config and f"weights: {weights}" in config
    assert "dropped 2 keys the taps do not use: ['fc.bias', 'fc.weight']" in (run_dir / "log.jsonl").read_text()
    # the same file without the prefix setting: a one-line error that says which prefix to set
    assert cli_main(argv[:-2] + ["--key-prefix", "", "--run-dir", str(tmp_path / "r2")]
                    + [x for s in sets for x in ("--set", s)]) == 2
    assert "try --key-prefix 'module.'" in capsys.readouterr().err
    # at the protocol's 224 px a user's ResNet-50 takes the published ResNet-50 pools (DESIGN §4)
    trunk = user_trunk("timm:resnet50", weights, "module.", say=quiet)
    assert trunk.pool_table == "resnet50_cc"
    assert {t: s.dim for t, s in build_pool_specs(trunk, trunk.taps, 224, mode="table").items()} == RESNET50_224
