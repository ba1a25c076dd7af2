"""Collectives run on the process group's device (issue: the skip counts were all-reduced
on a CPU tensor, which NCCL refuses: every multi-GPU run would crash at its end).

No GPU here, so NCCL's "CUDA tensors only" rule is played by a fake collective that
accepts only tensors on the device mapped to the backend (``meta`` standing in for
``cuda``), and records where each call site's tensor was."""
import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist

from pretext.data.loader import SkipCounter
from pretext.engine import dist
from tests.conftest import REPO


class _Reached(Exception):
    pass


@pytest.fixture
def fake_nccl(monkeypatch):
    monkeypatch.setitem(dist.BACKEND_DEVICE, "nccl", "meta")
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(tdist, "get_backend", lambda *a, **k: "nccl")
    seen = []

    def collective(t, *args, **kwargs):
        seen.append(t.device.type)
        if t.device.type != "meta":
            raise RuntimeError(f"fake NCCL: a {t.device.type} tensor (CUDA required)")
        raise _Reached  # the tensor was on the group's device: stop before copying back
    monkeypatch.setattr(tdist, "all_reduce", collective)
    monkeypatch.setattr(tdist, "broadcast", collective)
    return seen


@pytest.mark.parametrize("call", [
    lambda: SkipCounter().all_reduce(),
    lambda: dist.all_reduce_sum(torch.ones(3)),
    lambda: dist.all_reduce(torch.ones(3), "min"),
    lambda: dist.broadcast_module_(torch.nn.Linear(2, 2)),
], ids=["skip-counts", "sum", "min", "broadcast"])
def test_collectives_move_tensors_to_the_group_device(fake_nccl, call):
    with pytest.raises(_Reached):
        call()
    assert fake_nccl == ["meta"]


def test_collective_device_per_backend(monkeypatch):
    assert dist.collective_device() == torch.device("cpu")  # no process group
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(tdist, "get_backend", lambda *a, **k: "gloo")
    assert dist.collective_device() == torch.device("cpu")


def test_no_collective_bypasses_the_dist_module():
    """Every torch.distributed collective is called from pretext/engine/dist.py only."""
    names = {"all_reduce", "broadcast", "all_gather", "reduce", "all_gather_object", "gather", "scatter"}
    offenders = []
    for path in [*REPO.glob("pretext/**/*.py"), *REPO.glob("downstream/**/*.py"), *REPO.glob("benchmarks/**/*.py")]:
        if path == REPO / "pretext" / "engine" / "dist.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in names and "distributed" in ast.unparse(node.value) \
                    or isinstance(node, ast.Attribute) and node.attr in names and ast.unparse(node.value) == "dist":
                offenders.append(f"{Path(path).relative_to(REPO)}:{node.lineno}")
    assert not offenders
