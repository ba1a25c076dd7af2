"""Table 1's cost columns for a checkpoint (``colorbench eval-color``): parameters and
activation memory in MiB (float32, via forward hooks) and the median runtime of network +
decoding, measured on one square image of the colorizer's working size (256 when native).

A stochastic method is timed and measured per colorization (its ``predict_ab``: sample 0
of its seed)."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from pretext.colorize import DEFAULT_SIZE, MIB, Colorizer
from pretext.encoders import normalize_l


def colorizer_costs(colorizer: Colorizer, decoder: str | None = None, runs: int = 10) -> dict:
    """{"params_mb", "feature_mb", "runtime_ms", "working_size"} of one checkpoint and decoder
    (a decoder the method does not have: its own)."""
    method = colorizer.method
    side = max(colorizer.size or DEFAULT_SIZE, getattr(method.trunk, "min_size", 1))
    x = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0)).mul(100).to(colorizer.device)
    params = sum(p.numel() for p in method.parameters()) * 4 / MIB
    decoder = decoder if decoder in colorizer.decoders else colorizer.decoder
    feature = feature_memory_mb(method, normalize_l(x),
                                lambda z: method.predict_ab(z, decoder, **colorizer.method_options()))
    return {"params_mb": params, "feature_mb": feature, "runtime_ms": runtime_ms(colorizer, x, decoder, runs),
            "working_size": side}


def runtime_ms(colorizer: Colorizer, x: torch.Tensor, decoder: str | None = None, runs: int = 10) -> float:
    """Median ms of network + decoding on ``x`` (L [1,1,h,w] at the working size), after 2
    warm-up runs, CUDA synchronised."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    for i in range(runs + 2):
        sync()
        start = time.perf_counter()
        colorizer.predict_ab(x, decoder, full_size=False)
        sync()
        if i >= 2:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def feature_memory_mb(model: torch.nn.Module, x: torch.Tensor,
                      forward: Callable[[torch.Tensor], object] | None = None) -> float:
    """MiB of every leaf module's output in one pass of ``forward(x)`` (default
    ``model(x)``), 4 bytes a value; in-place results, which share their input's
    storage, are counted once."""
    outputs: list[torch.Tensor] = []  # kept alive so no storage is freed and reused mid-pass

    def hook(module, inputs, out):
        outputs.extend(t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor))
    handles = [m.register_forward_hook(hook) for m in model.modules() if next(m.children(), None) is None]
    try:
        with torch.no_grad():
            model.eval()
            (forward or model)(x)
    finally:
        for h in handles:
            h.remove()
    sizes: dict[int, int] = {}
    for t in outputs:
        ptr = t.untyped_storage().data_ptr()
        sizes[ptr] = max(sizes.get(ptr, 0), t.numel())
    return sum(sizes.values()) * 4 / MIB
