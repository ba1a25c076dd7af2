"""Linear probes (downstream.probe: linear_probe, heads, feeds, feature_cache; the
supervised baseline; downstream.metrics.topk_correct). Trunks themselves, including
user-brought timm / torchvision weights: tests/test_trunks.py.

End-to-end runs use the built-in generator (pretext.data.synthetic) at 48 px, a 1/8-width
AlexNet and a handful of steps: they check plumbing and records, not accuracy.
"""
import json
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main as cli_main
from downstream.metrics import topk_correct
from downstream.probe.heads import POOL_TABLES, ProbeHeads, TrunkChangedError, TrunkGuard, build_pool_specs, freeze
from downstream.probe.linear_probe import ProbeConfig, main
from downstream.trunks import checkpoint_trunk
from pretext.encoders import build_encoder, list_encoders
from pretext.engine.checkpoint import load_checkpoint, save_checkpoint, trunk_checkpoint
from pretext.engine.config import load_config
from pretext.methods import build_method, method_payload

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "downstream" / "probe_tiny.yaml"
ALEXNET_227 = {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}
RESNET50_224 = {"conv1": 9216, "res2": 9216, "res3": 8192, "res4": 9216, "res5": 8192}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from pretext.data.synthetic.generate import make_dataset

    root = tmp_path_factory.mktemp("builtin")
    make_dataset(root, size=48, num_train=4, num_val=2, num_voc=0, verbose=False)  # 32 train, 16 val
    return root / "imagefolder"


def tiny_cfg(data_root: Path, tmp_path: Path, *sets: str) -> ProbeConfig:
    return load_config(ProbeConfig, TINY, tiny_sets(data_root) + [f"out_dir={tmp_path}",
                                                                 f"cache.dir={tmp_path / 'cache'}", *sets])


def tiny_sets(data_root: Path, iterations: int = 4) -> list[str]:
    return [f"data.root={data_root}", "data.crop=40", "data.resize=48", "trunk.encoder_kwargs.width=0.125",
            "batch_size=8", "data.num_workers=0", f"optim.iterations={iterations}", "optim.milestones=[2]",
            "trunk.baseline.calib_images=16", "trunk.supervised.iterations=3", "trunk.supervised.milestones=[]"]


def records_of(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "metrics.json").read_text())["records"]


# ------------------------------------------------------------------ pooling

@pytest.mark.parametrize("name, side, dims", [("alexnet_cc", 227, ALEXNET_227), ("resnet50_cc", 224, RESNET50_224)])
def test_pool_table_gives_the_published_dims(name, side, dims):
    with torch.device("meta"):  # shapes only: a full-width trunk costs nothing here
        model = build_encoder(name)
        specs = build_pool_specs(model, model.taps, side, mode="table")
        assert {t: s.dim for t, s in specs.items()} == dims
        heads = ProbeHeads(specs, 1000)
        pooled = heads.pool(model.forward_features(torch.empty(2, 1, side, side)))  # real shapes
        assert {t: x[0].numel() for t, x in pooled.items()} == dims
        assert all(v.shape == (2, 1000) for v in heads(pooled).values())
    assert set(POOL_TABLES) == {"alexnet_cc", "resnet50_cc"}


def test_table_mode_is_strict_and_auto_falls_back():
    model = build_encoder("alexnet_cc", width=0.125)
    with pytest.raises(ValueError, match="227 px input, not 128"):
        build_pool_specs(model, model.taps, 128, mode="table")
    assert {s.kind for s in build_pool_specs(model, model.taps, 128).values()} == {"adaptive"}
    assert {s.kind for s in build_pool_specs(model, model.taps, 227).values()} == {"table"}  # width scales C only
    with torch.device("meta"):
        dilated = build_encoder("resnet50_cc", last_stride1=True)  # res5 is 14x14, not the table's 7x7
        with pytest.raises(ValueError, match="table expects 7x7"):
            build_pool_specs(dilated, dilated.taps, 224, mode="table")


@pytest.mark.parametrize("name", list_encoders())
def test_adaptive_pools_fit_small_maps(name):
    model = build_encoder(name, width=0.125)
    for target in (9000, 500):
        for tap, spec in build_pool_specs(model, model.taps, 64, mode="adaptive", target_dim=target).items():
            c, h, w = spec.in_shape
            assert (c, h, w) == (model.feature_info[tap]["channels"], *model.feature_size(64, 64, tap))
            assert spec.out_shape[1] <= h and spec.out_shape[2] <= w  # never more cells than the map
            side = max(1, round((target / c) ** 0.5))
            assert spec.out_shape[1:] == (min(side, h), min(side, w))
    heads = ProbeHeads(build_pool_specs(model, model.taps, 64), 3)
    with pytest.raises(ValueError, match="expects"):  # a different crop than the pools were built for
        heads.pool(model.forward_features(torch.rand(2, 1, 96, 96)))


# ------------------------------------------------------------------ metrics and the trunk guard

def test_topk_by_hand():
    logits = torch.tensor([[9., 8, 7, 6, 5, 4],    # label 0: top-1 hit
                           [9., 8, 7, 6, 5, 4],    # label 4: 5th best -> top-5 only
                           [9., 8, 7, 6, 5, 4],    # label 5: 6th -> neither
                           [0., 1, 0, 0, 0, 0]])   # label 1: top-1 hit
    labels = torch.tensor([0, 4, 5, 1])
    assert topk_correct(logits, labels).tolist() == [2, 3]
    assert topk_correct(logits[:, :3], torch.tensor([0, 2, 1, 1]), ks=(1, 5)).tolist() == [2, 4]  # k > classes


def test_trunk_guard_fires_on_any_change():
    trunk = freeze(build_encoder("alexnet_cc", width=0.125))
    guard = TrunkGuard(trunk)
    with torch.no_grad():
        trunk.forward_features(torch.rand(2, 1, 64, 64))
    guard.check()  # eval-mode forwards change nothing
    with torch.no_grad():
        trunk.conv3[0].weight[0, 0, 0, 0] += 1e-6
    with pytest.raises(TrunkChangedError, match="conv3.0.weight"):
        guard.check()
    trunk.conv3[0].weight.data.copy_(guard.snapshot["conv3.0.weight"])
    guard.check()
    trunk.train()  # a train-mode forward moves the BN running statistics
    with torch.no_grad():
        trunk.forward_features(torch.rand(2, 1, 64, 64))
    with pytest.raises(TrunkChangedError, match="conv1.1.running_mean"):
        guard.check()
    fresh = TrunkGuard(trunk)
    with pytest.raises(TrunkChangedError, match="train mode"):
        fresh.check()


# ------------------------------------------------------------------ end to end

def test_gaussian_probe_end_to_end_via_cli(data_root, tmp_path):
    run_dir = tmp_path / "run"
    argv = ["probe", "--config", str(TINY), "--init", "gaussian", "--run-dir", str(run_dir)]
    assert cli_main(argv + [x for s in tiny_sets(data_root, iterations=3) for x in ("--set", s)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    recs = metrics["records"]
    assert {(r["layer"], r["metric"]) for r in recs} == {(t, m) for t in ALEXNET_227 for m in ("top1", "top5")}
    assert {(r["suite"], r["method"], r["protocol"], r["dataset"], r["split"], r["encoder"]) for r in recs} == {
        ("probe", "gaussian", "linear_probe", "builtin", "val", "alexnet_cc")}
    assert all(0 <= r["value"] <= 100 for r in recs)
    assert metrics["trunk_unchanged"] and metrics["iterations"] == 3
    assert metrics["trunk"]["init"] == "gaussian" and metrics["trunk"]["calib_images"] == 16
    assert (run_dir / "config.yaml").is_file() and (run_dir / "log.jsonl").is_file()
    # the papers' per-layer figure from the records (colorbench table draws it)
    assert cli_main(["table", "--runs", str(run_dir), "--out", str(tmp_path / "tables")]) == 0
    plots = list((tmp_path / "tables").glob("probe_*.png"))
    assert plots and plots[0].read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_probe_and_cache(data_root, tmp_path):
    torch.manual_seed(0)
    method = build_method("zhang", build_encoder("alexnet_cc", width=0.125))
    ckpt = tmp_path / "colorization.pt"
    save_checkpoint(ckpt, method_payload(method, "alexnet_cc", {"width": 0.125}, {"loss": "full"}, step=7))
    cfg = tiny_cfg(data_root, tmp_path, f"trunk.checkpoint={ckpt}", "data.augment=false", "cache.enabled=true")
    first = main(cfg, run_dir=tmp_path / "a")
    assert {(r["method"], r["encoder"]) for r in first["records"]} == {("colorization", "alexnet_cc")}
    described = json.loads((tmp_path / "a" / "metrics.json").read_text())["trunk"]
    assert (described["checkpoint"], described["checkpoint_step"], described["checkpoint_method"]) == (
        str(ckpt), 7, "zhang")
    cache_dirs = list((tmp_path / "cache").iterdir())
    assert len(cache_dirs) == 1 and (cache_dirs[0] / "train" / "done.json").is_file()
    stamp = {p: p.stat().st_mtime_ns for p in cache_dirs[0].rglob("*.npy")}
    second = main(tiny_cfg(data_root, tmp_path, f"trunk.checkpoint={ckpt}", "data.augment=false",
                           "cache.enabled=true"),
                  run_dir=tmp_path / "b")
    assert {p: p.stat().st_mtime_ns for p in cache_dirs[0].rglob("*.npy")} == stamp  # read, not rebuilt
    assert second["results"] == first["results"]  # same seed, same features -> same probe
    assert "reading train" in (tmp_path / "b" / "log.jsonl").read_text()
    with pytest.raises(ValueError, match="data.augment=false"):
        main(tiny_cfg(data_root, tmp_path, f"trunk.checkpoint={ckpt}", "cache.enabled=true"), run_dir=tmp_path / "c")


def test_checkpoint_of_another_encoder_is_a_clear_error(data_root, tmp_path, capsys):
    ckpt = tmp_path / "vgg.pt"
    save_checkpoint(ckpt, trunk_checkpoint(build_encoder("vgg_cc", width=0.125), "vgg_cc", {"width": 0.125}))
    with pytest.raises(ValueError, match="holds a 'vgg_cc' encoder .* configured for 'alexnet_cc'"):
        main(tiny_cfg(data_root, tmp_path, f"trunk.checkpoint={ckpt}"), run_dir=tmp_path / "r")
    argv = ["probe", "--config", str(TINY), "--checkpoint", str(ckpt), "--set", f"data.root={data_root}",
            "--run-dir", str(tmp_path / "r2")]
    assert cli_main(argv) == 2
    assert "holds a 'vgg_cc' encoder" in capsys.readouterr().err
    assert not (tmp_path / "r2" / "metrics.json").exists()
    assert cli_main(["probe", "--config", str(TINY), "--set", "optim.nope=1"]) == 2
    assert "optim.nope" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown taps"):
        main(tiny_cfg(data_root, tmp_path, "trunk.init=gaussian", "taps=[conv9]"), run_dir=tmp_path / "r3")
    with pytest.raises(ValueError, match="init=checkpoint needs --checkpoint"):  # before any run directory
        main(tiny_cfg(data_root, tmp_path), run_dir=tmp_path / "r4")
    assert not (tmp_path / "r4").exists()


def test_kmeans_and_supervised_baselines(data_root, tmp_path):
    km = main(tiny_cfg(data_root, tmp_path, "trunk.init=kmeans", "taps=[conv2,conv5]"), run_dir=tmp_path / "k")
    assert {r["method"] for r in km["records"]} == {"kmeans"} and set(km["results"]) == {"conv2", "conv5"}
    sup = main(tiny_cfg(data_root, tmp_path, "trunk.init=supervised"), run_dir=tmp_path / "s")
    assert {r["method"] for r in sup["records"]} == {"supervised"}
    saved = tmp_path / "s" / "checkpoints" / "supervised_trunk.pt"
    payload = load_checkpoint(saved)
    assert payload["encoder"] == "alexnet_cc" and payload["step"] == 3 and payload["origin"] == "supervised"
    assert "method" not in payload  # a trunk-only checkpoint: no pretext method to rebuild
    assert json.loads((tmp_path / "s" / "metrics.json").read_text())["trunk"]["supervised_steps"] == 3
    # the saved trunk loads strictly and can be probed again without retraining
    assert checkpoint_trunk(saved, "alexnet_cc").describe()["checkpoint_step"] == 3
    again = main(tiny_cfg(data_root, tmp_path, "trunk.init=supervised", f"trunk.checkpoint={saved}"),
                 run_dir=tmp_path / "s2")
    assert "supervised_steps" not in json.loads((tmp_path / "s2" / "metrics.json").read_text())["trunk"]
    assert set(again["results"]) == set(ALEXNET_227)


@pytest.mark.slow
def test_two_process_gloo_probe(data_root, tmp_path):
    import os
    import subprocess
    import sys

    import socket

    with socket.socket() as sock:  # a free port: other tests may run torchrun at the same time
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_dir = tmp_path / "ddp"
    sets = tiny_sets(data_root, iterations=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "benchmarks.cli", "probe", "--config", str(TINY), "--init", "gaussian", "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd + [x for s in sets for x in ("--set", s)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_images"] == 16  # each validation image counted once over the two ranks
    assert {r["layer"] for r in metrics["records"]} == set(ALEXNET_227)


def test_bad_images_are_skipped_and_counted(data_root, tmp_path):
    import shutil

    root = tmp_path / "imagefolder"
    shutil.copytree(data_root, root)
    good = sorted((root / "train" / "disc").glob("*.png"))
    good[0].write_bytes(good[0].read_bytes()[:200])    # truncated
    (root / "train" / "disc" / "empty.png").write_bytes(b"")
    (root / "val" / "bar" / "junk.png").write_bytes(b"not an image at all")
    out = main(tiny_cfg(root, tmp_path, "trunk.init=gaussian", "optim.iterations=8"), run_dir=tmp_path / "r")
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["val_images"] == 16 and metrics["iterations"] == 8
    assert metrics["skipped"]["skipped/corrupt"] >= 1 and metrics["skipped"]["skipped/total"] >= 3
    assert set(out["results"]) == set(ALEXNET_227)
