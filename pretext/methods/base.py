"""The Method contract (DESIGN §2): what differs between colorization systems.

A ``Method`` is an ``nn.Module`` holding a head-free trunk (``self.trunk``, from
``pretext.encoders``) and its own heads, built on the trunk's ``feature_info``. It owns
its targets, its losses and the state it checkpoints; the training loop
(``pretext.train``), the data path, checkpoints, DDP and records are shared and know
no method.

The loop calls, in order:

* ``setup(ctx)`` once: data-dependent state (Zhang's class-rebalancing prior), computed
  on rank 0 and read from its cache by the other ranks;
* ``optimizer_groups()``: ``{name: [parameters]}``, one optimiser each ("main", and e.g.
  "critic" for a GAN); the loop builds them from the config's recipe (Adam), or as
  ``optimizer_kinds()`` says for a group (e.g. RMSprop for a WGAN critic);
* ``training_step(micro_batches, model, optimizers, ctx)`` per global step: the default
  accumulates ``forward`` over the micro-batches and steps the "main" optimiser; a
  method with several optimisers overrides it. ``model`` is the DDP wrapper (or the
  method itself): calling it runs ``forward`` with gradient synchronisation;
* ``validation_step(batch)`` on held-out batches (losses and a colorization);
* ``predict_ab(l, decoder, **options)`` for colorize / eval-color: ab at the method's
  output size (``options``: method-specific, e.g. another image's global features);
* ``sample_ab(l, samples, seed)`` for methods that draw colorizations from a
  distribution (``stochastic = True``, e.g. PixColor's autoregressive model): several
  diverse colorizations per image, reproducible from ``seed``.

A batch is a dict: ``image`` uint8 RGB [n,3,H,W], ``label`` int64 [n] (-1: no label;
methods with a classification loss use it when present), plus the loader's bookkeeping.

Registry: ``register_method(name)``, ``build_method(name, trunk, **kw)``,
``list_methods()``; unknown or duplicate names raise with the valid ones.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from pretext.encoders import build_encoder
from pretext.engine.checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, load_state_strict

_REGISTRY: dict[str, type["Method"]] = {}


def register_method(name: str) -> Callable:
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is already registered; registered: {list_methods()}")

    def add(cls):
        _REGISTRY[name] = cls
        cls.method_name = name
        return cls
    return add


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def build_method(name: str, trunk: nn.Module, **kwargs: Any) -> "Method":
    """``build_method("zhang", build_encoder("alexnet_cc"), loss="full")``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid names: {list_methods()}")
    try:
        return _REGISTRY[name](trunk, **kwargs)
    except TypeError as exc:  # an unknown keyword: name it, with the valid ones
        import inspect
        valid = [p for p in inspect.signature(_REGISTRY[name].__init__).parameters if p not in ("self", "trunk")]
        raise ValueError(f"method {name!r}: {exc}; valid method_kwargs: {valid}") from None


@dataclass
class StepContext:
    """What a method may need from the loop: the device, the autocast context, the step,
    and (in ``setup``) the run's config and logger."""

    device: torch.device
    step: int = 0
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    channels_last: bool = False
    config: Any = None
    say: Callable[[str], None] = print
    stats: dict = field(default_factory=dict)


@dataclass
class ValidationOutput:
    """Per-batch validation: ``sums`` of per-image metrics (divide by ``count``), the
    colourful images' normalised L [n,1,H,W], predicted and true ab [n,2,H,W]."""

    sums: dict[str, float]
    count: int
    lightness: torch.Tensor
    pred_ab: torch.Tensor
    true_ab: torch.Tensor


class Method(nn.Module):
    method_name = "?"  # set by register_method
    decoders: tuple[str, ...] = ()  # predict_ab's decoder names; () = one deterministic output
    # True: the method draws colorizations (sample_ab); its predict_ab is sample 0 of seed 0
    # unless a decoder says otherwise, and eval-color reports the spread over samples
    stochastic: bool = False
    # one line for `colorbench methods`: "paper · loss · output" (every registered method sets it)
    summary: str = ""

    @property
    def record_name(self) -> str:
        """The ``method`` field of this method's run records."""
        return self.method_name

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    # -- the contract ------------------------------------------------------------------
    def setup(self, ctx: StepContext) -> None:
        """Data-dependent state before training (default: none)."""

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": [p for p in self.parameters() if p.requires_grad]}

    def optimizer_kinds(self) -> dict[str, dict]:
        """Optional: for a group of ``optimizer_groups``, the optimiser to build instead of
        the config's Adam recipe, e.g. ``{"critic": {"kind": "rmsprop", "lr": 5e-5}}``
        (``kind``: a key of ``OPTIMIZERS``; the other keys are its keyword arguments). Such
        a group is one parameter group (no bias lr / decay multipliers) and follows the
        config's lr schedule as a factor on its own lr. Default: every group gets Adam."""
        return {}

    def forward(self, batch: dict, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch (``batch["image"]`` uint8 RGB [n,3,H,W], ``batch["label"]``
        int64 [n]) and stats (numbers, summed over micro-batches)."""
        raise NotImplementedError

    def training_step(self, micro_batches: list[dict], model: nn.Module,
                      optimizers: dict[str, torch.optim.Optimizer], ctx: StepContext) -> dict[str, float]:
        """One global step: gradient accumulation over the micro-batches, then one step
        of the "main" optimiser. Returns {"loss": mean loss, ...stats summed}."""
        opt = optimizers["main"]
        opt.zero_grad(set_to_none=True)
        total, stats = torch.zeros((), device=ctx.device), {}
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with model.no_sync() if ddp and not last else contextlib.nullcontext():
                loss, s = model(batch, ctx)
                (loss / len(micro_batches)).backward()
            total += loss.detach() / len(micro_batches)
            for k, v in s.items():
                stats[k] = stats.get(k, 0) + v
        ctx.stats = stats
        loss_value = _mean_over_ranks(total)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {ctx.step}; stopping (check the data and lr)")
        opt.step()
        return {"loss": loss_value, **stats}

    @torch.no_grad()
    def validation_step(self, batch: dict, ctx: StepContext) -> ValidationOutput | None:
        raise NotImplementedError

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, decoder: str = "annealed", **options) -> torch.Tensor:
        """Normalised L [N,1,H,W] -> ab [N,2,h,w] at the method's output size. ``options``
        are method-specific; a method given one it does not know raises ValueError."""
        raise NotImplementedError

    @torch.no_grad()
    def sample_ab(self, lightness: torch.Tensor, samples: int, seed: int = 0, **options) -> torch.Tensor:
        """Stochastic methods: normalised L [N,1,H,W] -> ``samples`` colorizations per image,
        ab [N,samples,2,h,w] at the method's output size; the same ``seed`` and input give the
        same samples, on the caller's global RNG untouched."""
        raise ValueError(f"{self.method_name} predicts one colorization per image; it does not sample")

    def check_sample_request(self, samples: int, options: dict) -> None:
        """The argument checks every ``sample_ab`` starts with: ValueError for options the
        method does not know or a sample count that is not an integer >= 1."""
        if options:
            raise ValueError(f"{self.method_name}: unknown colorize options {sorted(options)}")
        if int(samples) != samples or samples < 1:
            raise ValueError(f"{self.method_name}: samples must be an integer >= 1, got {samples}")

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Spatial size of ``predict_ab`` for an H x W input (default: the deepest tap)."""
        return self.trunk.feature_size(h, w)

    # -- checkpoint state ----------------------------------------------------------------
    def method_state(self) -> dict[str, torch.Tensor]:
        """Everything but the trunk: heads and buffers, keys without ``trunk.``."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("trunk.")}

    def load_method_state(self, state: dict[str, torch.Tensor]) -> None:
        """Strict: every head / buffer key present, none unexpected."""
        load_state_strict(_Without(self, "trunk."), state)


class _Without(nn.Module):
    """A view of a module's state dict without one prefix (for strict partial loads)."""

    def __init__(self, module: nn.Module, prefix: str):
        super().__init__()
        object.__setattr__(self, "_m", module)
        object.__setattr__(self, "_p", prefix)

    def state_dict(self, *a, **kw):
        return {k: v for k, v in self._m.state_dict().items() if not k.startswith(self._p)}

    def load_state_dict(self, state, strict=False):
        return self._m.load_state_dict(state, strict=False)


OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}  # kinds of Method.optimizer_kinds


def build_optimizer(spec: dict, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """An optimiser from a ``Method.optimizer_kinds`` entry ``{"kind": ..., **kwargs}``."""
    options = dict(spec)
    kind = options.pop("kind", "adam")
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer kind must be one of {sorted(OPTIMIZERS)}, got {kind!r}")
    return OPTIMIZERS[kind](params, **options)


def _mean_over_ranks(total: torch.Tensor) -> float:
    from pretext.engine import dist
    return float(dist.all_reduce_sum(total)) / dist.world_size()


def method_payload(method: Method, encoder: str, encoder_kwargs: dict, method_kwargs: dict, **extra) -> dict:
    """A v2 checkpoint payload (``pretext.engine.checkpoint``) for a method and its trunk."""
    return {"format": CHECKPOINT_FORMAT, "encoder": encoder, "encoder_kwargs": dict(encoder_kwargs),
            "trunk": method.trunk.state_dict(), "method": method.method_name,
            "method_kwargs": dict(method_kwargs), "method_state": method.method_state(), **extra}


def load_method(source: str | dict, map_location: str | torch.device = "cpu") -> tuple[Method, dict]:
    """Rebuild the method and trunk a checkpoint (path or loaded payload) was trained
    with, loading both strictly. Returns (method in eval mode, payload)."""
    payload = load_checkpoint(source, map_location) if not isinstance(source, dict) else source
    if not payload.get("method"):
        raise CheckpointError(f"{source if isinstance(source, str) else 'the checkpoint'} holds a trunk only "
                              f"(encoder {payload.get('encoder')}), no pretext method with heads: it can be "
                              "probed or fine-tuned, not used to colorize")
    trunk = build_encoder(payload["encoder"], **payload.get("encoder_kwargs", {}))
    load_state_strict(trunk, payload["trunk"])
    method = build_method(payload["method"], trunk, **payload.get("method_kwargs", {}))
    method.load_method_state(payload["method_state"])
    return method.to(map_location).eval(), payload
