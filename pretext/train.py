"""``colorbench pretrain``: one pretext training loop over any ``Method``.

    colorbench pretrain --config configs/pretext/tiny.yaml [--set key=value ...] [--resume]
    torchrun --nproc_per_node 8 -m benchmarks.cli pretrain --config configs/pretext/vgg_cc.yaml

The loop owns what every method shares: the data path, optimisers and schedules, DDP,
AMP, checkpoints, resume, validation and records. The method (``pretext.methods``) owns
heads, targets, losses and how one step drives its optimisers. Iteration-based; resume
restores trunk, heads, optimisers, schedulers, RNG and data position (the step: see
``pretext.data.loader.StepBatchSampler``). DDP: ``batch_size`` is the global batch,
split over ranks and accumulation steps; only rank 0 writes.

Recipe (paper, Zhang's method): Adam beta (0.9, 0.99), weight decay 1e-3, lr 3e-5 -> 1e-5
(200k) -> 3e-6 (375k), ~450k iterations of batch 40 on 176 crops.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.utils import save_image
from tqdm import tqdm

from pretext.color.lab import lab_to_rgb
from pretext.color.metrics import AucAccumulator
from pretext.color.prior import PriorConfig
from pretext.data.loader import (SeededAugmentation, SkipCounter, StepBatchSampler, collate_skip_bad, make_loader,
                                 train_transform, val_transform)
from pretext.data.sources import DataConfig, source_for
from pretext.encoders import build_encoder
from pretext.engine import dist as dist_utils
from pretext.engine.checkpoint import load_checkpoint, load_state_strict, save_checkpoint
from pretext.engine.config import add_config_arguments, config_from_args, git_revision, to_dict
from pretext.engine.runs import RunDir
from pretext.methods import Method, StepContext, build_method, method_payload
from pretext.methods.base import build_optimizer


@dataclass
class OptimConfig:
    lr_values: list[float] = field(default_factory=lambda: [3e-5, 1e-5, 3e-6])  # paper
    lr_steps: list[int] = field(default_factory=lambda: [200_000, 375_000])  # where lr drops
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 1e-3
    bias_lr_mult: float = 1.0  # Caffe recipes (the released AlexNet one): biases at lr x2 ...
    bias_decay_mult: float = 1.0  # ... and without weight decay (0)


def _pretext_data() -> DataConfig:
    # the paper validates on the first 10k images of ImageNet val
    return DataConfig(val_limit=10_000)


@dataclass
class PretrainConfig:
    name: str = "pretrain"
    out_dir: str = "runs"
    seed: int = 0
    encoder: str = "alexnet_cc"
    encoder_kwargs: dict = field(default_factory=dict)  # e.g. {width: 0.25}
    method: str = "zhang"  # a pretext method of pretext.methods (list_methods())
    method_kwargs: dict = field(default_factory=dict)  # e.g. {loss: full, k: 5} for zhang
    init: str = "default"  # default | kmeans (Krähenbühl et al. data-dependent init)
    iterations: int = 450_000
    batch_size: int = 40  # global batch (all ranks, all accumulation steps)
    accum_steps: int = 1
    log_every: int = 50
    val_every: int = 10_000
    val_images: int = 512  # images per periodic validation (the final one uses data.val_limit)
    ckpt_every: int = 5_000
    device: str = "auto"
    amp: bool = True  # CUDA only: bf16/fp16 autocast
    channels_last: bool = True  # CUDA only
    data: DataConfig = field(default_factory=_pretext_data)
    optim: OptimConfig = field(default_factory=OptimConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)


def check_config(cfg: PretrainConfig, world: int) -> int:
    """Validate cross-field rules; returns the per-rank micro-batch."""
    if len(cfg.optim.lr_values) != len(cfg.optim.lr_steps) + 1:
        raise ValueError("optim.lr_values needs exactly one more entry than optim.lr_steps")
    if cfg.batch_size % (world * cfg.accum_steps):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by ranks x accum_steps = {world * cfg.accum_steps}")
    if cfg.init not in ("default", "kmeans"):
        raise ValueError(f"init must be 'default' or 'kmeans', got {cfg.init!r}")
    return cfg.batch_size // (world * cfg.accum_steps)


def build_model(cfg: PretrainConfig) -> Method:
    """The configured method on a fresh trunk."""
    return build_method(cfg.method, build_encoder(cfg.encoder, **cfg.encoder_kwargs), **cfg.method_kwargs)


def piecewise_lr(cfg: OptimConfig):
    base = cfg.lr_values[0]
    return lambda step: cfg.lr_values[sum(step >= s for s in cfg.lr_steps)] / base


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, cfg: PretrainConfig, run_dir: Path, resume: bool, argv: list[str]):
        self.cfg = cfg
        self.rank, self.world, _ = dist_utils.init_distributed(dist_utils.pick_device(cfg.device).type)
        self.device = dist_utils.pick_device(cfg.device)
        self.micro = check_config(cfg, self.world)
        self.run = RunDir(run_dir, enabled=dist_utils.is_main())
        self.run.write_config(cfg, argv)
        self.say = self.run.say
        self.say(f"colorbench pretrain: run {run_dir} | git {git_revision()} | method {cfg.method} on "
                 f"{cfg.encoder} | {self.world} rank(s) on {self.device} | micro-batch {self.micro} x accum {cfg.accum_steps}")
        torch.manual_seed(cfg.seed)
        self.cuda = self.device.type == "cuda"
        self.method = build_model(cfg).to(self.device)
        if self.cuda and cfg.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        self.ctx = StepContext(self.device, autocast=self.autocast, channels_last=self.cuda and cfg.channels_last,
                               config=cfg, say=self.say)
        kinds = self.method.optimizer_kinds()  # a method's own optimiser for a group (e.g. a GAN critic)
        self.optimizers = {name: build_optimizer(kinds[name], params) if name in kinds else
                           torch.optim.Adam(self.param_groups(params), lr=cfg.optim.lr_values[0],
                                            betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
                           for name, params in self.method.optimizer_groups().items()}
        self.schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, piecewise_lr(cfg.optim))
                           for name, opt in self.optimizers.items()}
        self.step = 0
        self.skipped = SkipCounter()
        self.method.setup(self.ctx)
        self.setup_info = dict(self.ctx.stats)
        if resume and self._latest().is_file():
            self._resume()
        elif cfg.init == "kmeans":
            self._kmeans_init()
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.method, device_ids=[self.device.index] if self.cuda else None)
                    if self.world > 1 else None)

    # -- set-up ------------------------------------------------------------------------
    def param_groups(self, params: list) -> list[dict]:
        """Weights, and biases at ``bias_lr_mult`` x lr with ``bias_decay_mult`` x weight decay."""
        o = self.cfg.optim
        biases = {id(p) for n, p in self.method.named_parameters() if n.endswith(".bias")}
        groups = [{"params": [p for p in params if id(p) not in biases]},
                  {"params": [p for p in params if id(p) in biases], "lr": o.lr_values[0] * o.bias_lr_mult,
                   "weight_decay": o.weight_decay * o.bias_decay_mult}]
        return [g for g in groups if g["params"]]

    def _kmeans_init(self) -> None:
        from pretext.encoders.init import kmeans_init

        d = self.cfg.data
        source = source_for(d, "train", val_transform(d.crop, d.resize))
        kmeans_init(self.method, make_loader(source, self.micro, shuffle=True, seed=self.cfg.seed), self.device)
        self.say("initialised with data-dependent k-means (Krähenbühl et al.)")

    def _latest(self) -> Path:
        return self.run.checkpoint_dir / "last.pt"

    def _resume(self) -> None:
        payload = load_checkpoint(self._latest(), map_location=self.device)
        if (payload.get("encoder"), payload.get("method")) != (self.cfg.encoder, self.cfg.method):
            raise ValueError(f"cannot resume: checkpoint holds {payload.get('method')} on {payload.get('encoder')}, "
                             f"the config {self.cfg.method} on {self.cfg.encoder}")
        load_state_strict(self.method.trunk, payload["trunk"])
        self.method.load_method_state(payload["method_state"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(payload["optimizers"][name])
            self.schedulers[name].load_state_dict(payload["schedulers"][name])
        set_rng_state(payload["rng"])
        self.step = int(payload["step"])
        self.say(f"resumed from {self._latest()} at step {self.step}")

    def save(self, name: str = "last.pt") -> None:
        if not dist_utils.is_main():
            return
        payload = method_payload(self.method, self.cfg.encoder, self.cfg.encoder_kwargs, self.cfg.method_kwargs,
                                 config=to_dict(self.cfg), step=self.step,
                                 optimizers={k: o.state_dict() for k, o in self.optimizers.items()},
                                 schedulers={k: s.state_dict() for k, s in self.schedulers.items()},
                                 rng=rng_state())
        save_checkpoint(self.run.checkpoint_dir / name, payload)

    def loader(self):
        d = self.cfg.data
        train = source_for(d, "train", train_transform(d.crop, d.resize))
        sampler = StepBatchSampler(len(train), self.micro, self.world, self.rank, self.cfg.accum_steps,
                                   seed=self.cfg.seed, start_step=self.step, total_steps=self.cfg.iterations)
        return torch.utils.data.DataLoader(
            SeededAugmentation(train, self.cfg.seed), batch_sampler=sampler, num_workers=d.num_workers,
            collate_fn=collate_skip_bad, pin_memory=self.cuda, persistent_workers=d.num_workers > 0)

    def autocast(self):
        if self.cuda and self.cfg.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    # -- one step ----------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict]) -> float:
        self.method.train()
        for batch in micro_batches:
            self.skipped.update(batch)
        self.ctx.step = self.step
        stats = self.method.training_step(micro_batches, self.ddp or self.method, self.optimizers, self.ctx)
        if "colourful" in stats:  # images the method's non-gray rule left out of the loss
            self.skipped.add("grayscale_excluded", sum(b["image"].shape[0] for b in micro_batches) - stats["colourful"])
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.step += 1
        return stats["loss"]

    # -- validation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, max_images: int) -> tuple[dict, torch.Tensor | None]:
        """The method's validation losses (means over colourful images) and AuC on the
        held-out split, plus a picture grid of the first batch."""
        d = self.cfg.data
        source = source_for(d, "val", val_transform(d.crop, d.resize), limit=max_images)
        loader = make_loader(source, self.micro, shuffle=False, num_workers=0)
        self.method.eval()
        sums, count, auc, grid = {}, 0, AucAccumulator(), None
        for batch in loader:
            if batch["image"].shape[0] == 0:
                continue
            out = self.method.validation_step(batch, self.ctx)
            if out is None:  # no colourful image in this batch
                continue
            for k, v in out.sums.items():
                sums[k] = sums.get(k, 0.0) + v
            count += out.count
            auc.update(out.pred_ab, out.true_ab)  # [n,2,H,W] each
            if grid is None:
                grid = self._grid(out)
        if count == 0:
            raise ValueError("validation split has no colourful images")
        return {**{k: v / count for k, v in sums.items()}, "val_auc": auc.auc(), "val_images": count}, grid

    @staticmethod
    def _grid(out, count: int = 8) -> torch.Tensor:
        """Rows of gray input / prediction / truth for the first ``count`` images."""
        L = (out.lightness[:count] + 0.5) * 100.0
        zeros = torch.zeros_like(out.true_ab[:count])
        return torch.cat([lab_to_rgb(torch.cat([L, ab], 1)) for ab in (zeros, out.pred_ab[:count], out.true_ab[:count])], 0)

    def validate(self, max_images: int, tag: str) -> dict:
        if not dist_utils.is_main():
            return {}
        metrics, grid = self.evaluate(max_images)
        if grid is not None:
            save_image(grid, self.run.path / f"val_{tag}.png", nrow=grid.shape[0] // 3)
        self.run.log("val", step=self.step, **metrics)
        self.say(f"step {self.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        return metrics

    # -- the loop ----------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        loader = iter(self.loader())
        bar = tqdm(total=cfg.iterations, initial=self.step, desc="pretrain", unit="it", disable=not dist_utils.is_main())
        start, start_step, rate = time.perf_counter(), self.step, 0.0
        while self.step < cfg.iterations:
            loss = self.train_step([next(loader) for _ in range(cfg.accum_steps)])
            rate = (self.step - start_step) * cfg.batch_size / max(time.perf_counter() - start, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                lr = self.schedulers["main"].get_last_lr()[0]
                self.run.log("train", step=self.step, loss=loss, lr=lr, images_per_s=rate)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.iterations:
                self.save()
            if os.environ.get("COLORBENCH_KILL_AT_STEP") == str(self.step):  # crash seam for the resume test
                os.kill(os.getpid(), signal.SIGKILL)
            if self.step % cfg.val_every == 0 and self.step < cfg.iterations:
                self.validate(cfg.val_images, f"{self.step:07d}")
        bar.close()
        final = self.validate(cfg.data.val_limit or 10**9, "final")
        self.finish(final, rate)
        return final

    def finish(self, final: dict, rate: float) -> None:
        skipped = self.skipped.all_reduce()  # every rank joins (on the process group's device)
        if not dist_utils.is_main():
            return
        self.say(f"skipped images: {self.skipped}")
        base = {"suite": "pretext", "method": self.method.record_name,
                "encoder": self.cfg.encoder, "protocol": "pretext", "dataset": self.cfg.data.dataset_name,
                "split": self.cfg.data.val_split or "", "layer": ""}
        records = [dict(base, metric=k, value=v) for k, v in final.items()]
        records += [dict(base, split="train", metric=k, value=v) for k, v in skipped.items()]
        records.append(dict(base, split="train", metric="images_per_s", value=rate))
        self.run.write_records(records, extra={**self.setup_info, "steps": self.step})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/pretext/tiny.yaml")
    parser.add_argument("--run-dir", help="run directory (default: OUT_DIR/NAME)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt if present")


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(PretrainConfig, args)
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.out_dir) / cfg.name
    if not args.resume and (run_dir / "checkpoints" / "last.pt").exists():
        raise ValueError(f"{run_dir} already has a checkpoint; pass --resume to continue it or choose another --run-dir")
    trainer = Trainer(cfg, run_dir, args.resume, sys.argv)
    try:
        trainer.fit()
    finally:
        dist_utils.cleanup()
    return 0


def add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "configs/pretext/tiny.yaml")
    parser.add_argument("--out", help="write the prior here instead of the cache")


def run_prior(args: argparse.Namespace) -> int:
    """``colorbench prior``: count (or find cached) the prior of a pretext config's data."""
    from pretext.color.prior import estimate_prior, get_or_compute_prior
    from pretext.color.rebalance import save_prior

    cfg = config_from_args(PretrainConfig, args)
    device = dist_utils.pick_device(cfg.device)
    method = build_model(cfg)  # the prior is counted on its targets' grid
    grid, sampling = method.output_size(cfg.data.crop, cfg.data.crop), getattr(method, "target_sampling", "point")
    if args.out:
        acc, skipped = estimate_prior(cfg.data, cfg.prior.max_images, device, grid, sampling)
        save_prior(args.out, acc.counts, {"images": acc.images, "grid": list(grid), "skipped": skipped.as_dict()})
        print(f"prior of {acc.images} images ({skipped}) written to {args.out}")
        return 0
    _, where = get_or_compute_prior(cfg.data, cfg.prior, device, grid, sampling)
    print(f"prior: {where}")
    return 0
