"""torchrun / DistributedDataParallel plumbing: NCCL on GPUs, gloo on CPUs, rank-0 writes."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(device_kind: str) -> tuple[int, int, int]:
    """Join the process group when launched by torchrun. Returns (rank, world, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# The device a backend's collectives take their tensors on: NCCL only reduces CUDA
# tensors (a CPU tensor fails at run time, e.g. the skip counts at the end of a run).
BACKEND_DEVICE = {"nccl": "cuda", "gloo": "cpu", "mpi": "cpu"}


def collective_device() -> torch.device:
    """The device of the current process group's collectives (CPU without a group)."""
    if not is_distributed():
        return torch.device("cpu")
    kind = BACKEND_DEVICE.get(str(dist.get_backend()), "cpu")
    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


_OPS = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}


def all_reduce(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce a tensor over ranks (``sum``, ``min``, ``max``) on the group's device;
    returned on the input's device (a copy: the input is unchanged). Every collective
    of colorbench goes through this module."""
    if not is_distributed():
        return values.clone()
    out = values.to(collective_device(), copy=True)
    dist.all_reduce(out, op=_OPS[op])
    return out.to(values.device)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    return all_reduce(values, "sum")


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module``, in place."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            buf = t.detach().to(collective_device(), copy=True)
            dist.broadcast(buf, src)
            t.copy_(buf.to(t.device))


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def pick_device(requested: str = "auto") -> torch.device:
    """'auto' -> the local CUDA device when present, else CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return device
