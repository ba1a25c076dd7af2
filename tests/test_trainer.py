import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.cli import main as cli
from pretext.data.loader import StepBatchSampler
from pretext.engine.checkpoint import load_checkpoint
from pretext.methods import load_method
from tests.conftest import REPO, shared_path
from tests.helpers import tiny_imagefolder

TINY = ["encoder=alexnet_cc", "encoder_kwargs={width: 0.125}", "batch_size=4", "data.crop=40",
        "data.num_workers=0", "log_every=1", "val_every=1000", "val_images=8", "data.val_limit=8",
        "prior.max_images=16", "optim.lr_values=[1e-3]", "optim.lr_steps=[]"]


def _args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    sets = TINY + [f"data.root={data}", f"prior.cache_dir={tmp_path / 'cache'}", *extra]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_imagefolder(tmp_path_factory.mktemp("tiny"), per_class=6)


def _params(run: Path) -> dict:
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    state = {**{f"trunk.{k}": v for k, v in payload["trunk"].items()}, **payload["method_state"]}
    return {k: v for k, v in state.items() if "running" not in k and "num_batches" not in k}


def _losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if x["event"] == "train"]


def test_step_sampler_splits_global_batches_the_same_way():
    ddp = [list(StepBatchSampler(40, micro=4, world=2, rank=r, seed=3, total_steps=4)) for r in range(2)]
    accum = list(StepBatchSampler(40, micro=4, world=1, accum=2, seed=3, total_steps=4))
    assert [b for step in zip(*ddp) for b in step] == accum  # rank r's step s = micro-batch 2s+r
    flat = [i for b in accum for _, i in b]
    assert len(flat) == 32 and len(set(flat[:40])) == 32  # 5 steps/epoch: no repeats within 4 steps
    resumed = list(StepBatchSampler(40, micro=4, accum=2, seed=3, start_step=2, total_steps=4))
    assert resumed == accum[4:]  # resuming at step 2 replays exactly the remaining micro-batches
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(5, micro=4, world=2)


def test_pretrain_end_to_end_writes_the_run(tmp_path, data):
    run = tmp_path / "run"
    assert cli(["pretrain", "--config", str(REPO / "configs/pretext/tiny.yaml"), "--run-dir", str(run),
                *_args(tmp_path, data / "", "iterations=4")]) == 0
    assert (run / "config.yaml").read_text().count("git_revision") == 1
    metrics = json.loads((run / "metrics.json").read_text())
    values = {r["metric"]: r["value"] for r in metrics["records"]}
    assert {"val_loss", "prior_baseline_loss", "val_auc", "skipped/total"} <= values.keys()
    assert 0 < values["val_auc"] <= 100 and values["skipped/total"] == 0
    assert len(_losses(run)) == 4 and all(map(lambda x: x == x, _losses(run)))
    method, payload = load_method(run / "checkpoints" / "last.pt")
    assert payload["step"] == 4 and payload["encoder"] == "alexnet_cc" and payload["method"] == "zhang"
    assert method.loss_name == "full" and not method.training
    # the prior counted on the training data travels with the checkpoint
    assert method.prior.sum().item() == pytest.approx(1.0) and method.prior.max() > 2.0 / 313
    assert (run / "val_final.png").is_file()
    # a second start without --resume refuses to overwrite the run
    assert cli(["pretrain", "--config", str(REPO / "configs/pretext/tiny.yaml"), "--run-dir", str(run),
                *_args(tmp_path, data)]) == 2


def test_unknown_config_key_names_the_key(tmp_path, data, capsys):
    code = cli(["pretrain", "--config", str(REPO / "configs/pretext/tiny.yaml"), "--run-dir", str(tmp_path / "r"),
                "--set", "optim.momentum=0.9"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key 'optim.momentum'" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_method_kwarg_is_a_clear_error(tmp_path, data, capsys):
    code = cli(["pretrain", "--config", str(REPO / "configs/pretext/tiny.yaml"), "--run-dir", str(tmp_path / "r"),
                *_args(tmp_path, data, "method_kwargs={lossy: full}")])
    err = capsys.readouterr().err
    assert code == 2 and "lossy" in err and "valid method_kwargs" in err


def _pretrain_subprocess(tmp_path, data, run, *extra, env=None, launcher=(), flags=()):
    cmd = [*launcher, *(() if launcher else (sys.executable,)), "-m", "benchmarks.cli", "pretrain",
           "--config", str(REPO / "configs/pretext/tiny.yaml"), "--run-dir", str(run), *flags,
           *_args(tmp_path, data, *extra)]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, data):
    common = ("iterations=8", "ckpt_every=3")
    straight = _pretrain_subprocess(tmp_path, data, tmp_path / "straight", *common)
    assert straight.returncode == 0, straight.stderr[-2000:]
    # killed at step 5: the last checkpoint is step 3, steps 4-5 are lost and redone
    killed = _pretrain_subprocess(tmp_path, data, tmp_path / "killed", *common, env={"COLORBENCH_KILL_AT_STEP": "5"})
    assert killed.returncode == -9
    assert load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["step"] == 3
    resumed = _pretrain_subprocess(tmp_path, data, tmp_path / "killed", *common, flags=("--resume",))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "killed")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


@pytest.mark.slow
def test_ddp_two_ranks_match_one_rank_with_accumulation(tmp_path, data):
    # The paper-scale lr keeps this a float-tolerance comparison: Adam divides by sqrt(v),
    # so at lr 1e-3 float-level differences of the all-reduce on near-zero gradients
    # flip update signs and the runs drift apart by ~1e-3 after a few steps.
    common = ("iterations=5", "batch_size=8", "ckpt_every=5", "optim.lr_values=[1e-5]")
    single = _pretrain_subprocess(tmp_path, data, tmp_path / "single", *common, "accum_steps=2")
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _pretrain_subprocess(tmp_path, data, tmp_path / "ddp", *common,
                               launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single_losses, ddp_losses = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(ddp_losses) == 5  # only rank 0 logs: one line per step
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5)
    assert single_losses[0] != pytest.approx(single_losses[-1], rel=1e-5)  # the trajectory does move
    a, b = _params(tmp_path / "single"), _params(tmp_path / "ddp")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5 * 5 * 2  # within 2 Adam steps of lr


@pytest.mark.slow
@pytest.mark.parametrize("year, truncated", [("VOC2007", "000001"), ("VOC2012", "2007_000027")])
def test_training_over_real_voc_fixture_reports_truncated_files(tmp_path, year, truncated):
    root = shared_path("data", "voc_fixture", "VOCdevkit", year)
    run = tmp_path / "voc"
    assert cli(["pretrain", "--config", str(REPO / "configs/pretext/tiny.yaml"), "--run-dir", str(run),
                *[a for s in TINY + [f"data.root={root}", "data.kind=voc", "data.train_split=trainval",
                                     "data.val_split=test", "batch_size=2", "iterations=2", "data.crop=64",
                                     "data.resize=72", f"prior.cache_dir={tmp_path}"] for a in ("--set", s)]]) == 0
    values = {(r["split"], r["metric"]): r["value"] for r in json.loads((run / "metrics.json").read_text())["records"]}
    assert values[("train", "skipped/truncated")] >= 1
    assert truncated in (run / "log.jsonl").read_text() or values[("train", "skipped/total")] >= 1
