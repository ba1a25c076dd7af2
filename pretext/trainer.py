"""``colorbench pretrain``: the colorization pretext trainer.

    colorbench pretrain --config configs/pretext/tiny.yaml [--set key=value ...] [--resume]
    torchrun --nproc_per_node 8 -m benchmarks.cli pretrain --config configs/pretext/vgg_cc.yaml

Recipe (paper): Adam beta (0.9, 0.99), weight decay 1e-3, lr 3e-5 -> 1e-5 (200k) ->
3e-6 (375k), ~450k iterations of batch 40 on 176 crops. Iteration-based; resume
restores model, optimiser, scheduler, RNG and data position (the step: see
``pretext.pipeline.StepBatchSampler``). DDP: ``batch_size`` is the global batch, split
over ranks and accumulation steps; only rank 0 writes.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.utils import save_image
from tqdm import tqdm

from pretext import distributed as dist_utils
from pretext.color import ab_centers, decode, lab_to_rgb
from pretext.color_metrics import AucAccumulator
from pretext.config import git_revision, load_config, to_dict
from pretext.encoders import build_encoder
from pretext.losses import LOSS_VARIANTS, colorization_loss
from pretext.pipeline import SeededAugmentation, StepBatchSampler, prepare_batch
from pretext.prior import get_or_compute_prior
from pretext.rebalance import rebalance_weights
from pretext.runs import RunDir, encoder_checkpoint, load_checkpoint, load_state_strict, save_checkpoint
from pretext.sources import SkipCounter, build_source, collate_skip_bad, make_loader, train_transform, val_transform


@dataclass
class DataConfig:
    kind: str = "imagefolder"  # imagefolder | folder | filelist | voc
    root: str = "data/builtin/imagefolder"
    train_split: str | None = "train"
    val_split: str | None = "val"
    list_file: str | None = None
    val_limit: int = 10000  # the paper validates on the first 10k of ImageNet val
    crop: int = 176  # the paper's training crop
    resize: int | None = None  # resize the short side first (e.g. upscale small built-in images)
    num_workers: int = 2


@dataclass
class OptimConfig:
    lr_values: list[float] = field(default_factory=lambda: [3e-5, 1e-5, 3e-6])  # paper
    lr_steps: list[int] = field(default_factory=lambda: [200_000, 375_000])  # where lr drops
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 1e-3


@dataclass
class PriorConfig:
    path: str | None = None  # a prior file; when unset it is computed and cached
    max_images: int = 20000  # enough for a stable 313-bin histogram
    cache_dir: str = "runs/cache"
    lam: float = 0.5  # mixing with uniform (paper: 1/2)
    sigma: float = 5.0  # Gaussian smoothing of the prior in ab space


@dataclass
class PretrainConfig:
    name: str = "pretrain"
    out_dir: str = "runs"
    seed: int = 0
    encoder: str = "alexnet_cc"
    encoder_kwargs: dict = field(default_factory=dict)  # e.g. {width: 0.25}
    loss: str = "full"  # full | class | l2
    k: int = 5  # nearest centres in the soft encoding (paper 5; released code 10)
    sigma: float = 5.0  # Gaussian of the soft encoding
    init: str = "default"  # default | kmeans (Krähenbühl et al. data-dependent init)
    iterations: int = 450_000
    batch_size: int = 40  # global batch (all ranks, all accumulation steps)
    accum_steps: int = 1
    log_every: int = 50
    val_every: int = 10_000
    val_images: int = 512  # images per periodic validation (the final one uses val_limit)
    ckpt_every: int = 5_000
    device: str = "auto"
    amp: bool = True  # CUDA only: bf16/fp16 autocast
    channels_last: bool = True  # CUDA only
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)


def check_config(cfg: PretrainConfig, world: int) -> int:
    """Validate cross-field rules; returns the per-rank micro-batch."""
    if cfg.loss not in LOSS_VARIANTS:
        raise ValueError(f"loss must be one of {LOSS_VARIANTS}, got {cfg.loss!r}")
    if len(cfg.optim.lr_values) != len(cfg.optim.lr_steps) + 1:
        raise ValueError("optim.lr_values needs exactly one more entry than optim.lr_steps")
    if cfg.batch_size % (world * cfg.accum_steps):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by ranks x accum_steps = {world * cfg.accum_steps}")
    return cfg.batch_size // (world * cfg.accum_steps)


def build_model(cfg: PretrainConfig) -> torch.nn.Module:
    kwargs = dict(cfg.encoder_kwargs)
    if cfg.loss == "l2":
        kwargs["num_bins"] = 2  # the regression head predicts ab directly
    return build_encoder(cfg.encoder, **kwargs)


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
        self.say(f"colorbench pretrain: run {run_dir} | git {git_revision()} | "
                 f"{self.world} rank(s) on {self.device} | micro-batch {self.micro} x accum {cfg.accum_steps}")
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg).to(self.device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr_values[0],
                                          betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, piecewise_lr(cfg.optim))
        self.step = 0
        self.skipped = SkipCounter()
        self.class_weights, self.prior = self._prior()
        if resume and self._latest().is_file():
            self._resume()
        elif cfg.init == "kmeans":
            self._kmeans_init()
        elif cfg.init != "default":
            raise ValueError(f"init must be 'default' or 'kmeans', got {cfg.init!r}")
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
                    if self.world > 1 else None)

    def say(self, msg: str) -> None:
        if dist_utils.is_main():
            tqdm.write(msg)
            self.run.log("message", text=msg)

    # -- set-up ------------------------------------------------------------------------
    def _prior(self):
        def fetch():
            return get_or_compute_prior(to_dict(self.cfg.data), self.cfg.data.crop, self.cfg.prior.max_images,
                                        self.cfg.prior.cache_dir, self.device, self.cfg.prior.path, log=self.say)
        if dist_utils.is_main():  # rank 0 counts and caches; the others read its cache file
            prior, where = fetch()
        dist_utils.barrier()
        if not dist_utils.is_main():
            prior, where = fetch()
        self.prior_source = where
        weights = rebalance_weights(prior, lam=self.cfg.prior.lam, sigma=self.cfg.prior.sigma)
        return weights.to(self.device), prior.to(self.device)

    def _kmeans_init(self) -> None:
        from pretext.kmeans_init import kmeans_init

        source = build_source(self.cfg.data.kind, self.cfg.data.root, self.cfg.data.train_split,
                              list_file=self.cfg.data.list_file, transform=val_transform(self.cfg.data.crop, self.cfg.data.resize))
        kmeans_init(self.model, make_loader(source, self.micro, shuffle=True, seed=self.cfg.seed), self.device)
        self.say("initialised with data-dependent k-means (Krähenbühl et al.)")

    def _latest(self) -> Path:
        return self.run.checkpoint_dir / "last.pt"

    def _resume(self) -> None:
        payload = load_checkpoint(self._latest(), map_location=self.device)
        if payload.get("encoder") != self.cfg.encoder:
            raise ValueError(f"cannot resume: checkpoint encoder {payload.get('encoder')} != config {self.cfg.encoder}")
        load_state_strict(self.model, payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        set_rng_state(payload["rng"])
        self.step = int(payload["step"])
        self.say(f"resumed from {self._latest()} at step {self.step}")

    def save(self, name: str = "last.pt") -> None:
        if not dist_utils.is_main():
            return
        kwargs = dict(self.cfg.encoder_kwargs, **({"num_bins": 2} if self.cfg.loss == "l2" else {}))
        payload = encoder_checkpoint(self.model, self.cfg.encoder, kwargs, config=to_dict(self.cfg), step=self.step,
                                     optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                                     rng=rng_state(), loss=self.cfg.loss, prior=self.prior.cpu())
        save_checkpoint(self.run.checkpoint_dir / name, payload)

    def loaders(self):
        d = self.cfg.data
        train = build_source(d.kind, d.root, d.train_split, list_file=d.list_file, transform=train_transform(d.crop, d.resize))
        sampler = StepBatchSampler(len(train), self.micro, self.world, self.rank, self.cfg.accum_steps,
                                   seed=self.cfg.seed, start_step=self.step, total_steps=self.cfg.iterations)
        train_loader = torch.utils.data.DataLoader(
            SeededAugmentation(train, self.cfg.seed), batch_sampler=sampler, num_workers=d.num_workers,
            collate_fn=collate_skip_bad, pin_memory=self.cuda,
            persistent_workers=d.num_workers > 0)
        return train_loader

    # -- one step ----------------------------------------------------------------------
    def autocast(self):
        if self.cuda and self.cfg.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def micro_loss(self, images: torch.Tensor, model: torch.nn.Module) -> tuple[torch.Tensor, int]:
        """Loss of one micro-batch (uint8 [n,3,H,W]) and the number of images with colour."""
        if images.shape[0] == 0:  # every file of this micro-batch was unreadable:
            images = torch.zeros(1, 3, self.cfg.data.crop, self.cfg.data.crop, dtype=torch.uint8)  # gray: masked out
        out_size = self.model.feature_size(images.shape[2], images.shape[3])
        batch = prepare_batch(images, out_size, self.device, self.cfg.k, self.cfg.sigma, encode=self.cfg.loss != "l2")
        x = batch.lightness.contiguous(memory_format=torch.channels_last) if self.cuda and self.cfg.channels_last else batch.lightness
        with self.autocast():
            out = model(x)  # [n,313,h,w] logits (or [n,2,h,w] ab for l2)
        loss = colorization_loss(self.cfg.loss, out.float(), batch.target_ab, batch.encoding, self.class_weights, batch.mask)
        return loss, int(batch.mask.sum())

    def train_step(self, micro_batches: list[dict]) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        model = self.ddp or self.model
        total = torch.zeros((), device=self.device)
        for i, batch in enumerate(micro_batches):
            self.skipped.update(batch)
            last = i == len(micro_batches) - 1
            sync = model.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()
            with sync:
                loss, colourful = self.micro_loss(batch["image"], model)
                self.skipped.add("grayscale_excluded", batch["image"].shape[0] - colourful if batch["image"].shape[0] else 0)
                (loss / len(micro_batches)).backward()
            total += loss.detach() / len(micro_batches)
        mean_loss = float(dist_utils.all_reduce_sum(total)) / self.world
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"loss is {mean_loss} at step {self.step}; stopping (check the data and lr)")
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return mean_loss

    # -- validation --------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, max_images: int) -> tuple[dict, torch.Tensor | None]:
        """Validation loss, the prior-only baseline loss and AuC on the held-out split."""
        d = self.cfg.data
        source = build_source(d.kind, d.root, d.val_split, list_file=d.list_file,
                              transform=val_transform(d.crop, d.resize), limit=min(max_images, d.val_limit))
        loader = make_loader(source, self.micro, shuffle=False, num_workers=0)
        self.model.eval()
        sums, auc, grid = torch.zeros(3, dtype=torch.float64), AucAccumulator(), None
        for batch in loader:
            if batch["image"].shape[0] == 0:
                continue
            out_size = self.model.feature_size(*batch["image"].shape[2:])
            pb = prepare_batch(batch["image"], out_size, self.device, self.cfg.k, self.cfg.sigma, self.cfg.loss != "l2")
            if not pb.mask.any():
                continue
            out = self.model(pb.lightness).float()
            n = int(pb.mask.sum())
            loss = colorization_loss(self.cfg.loss, out, pb.target_ab, pb.encoding, self.class_weights, pb.mask)
            sums += torch.tensor([float(loss) * n, float(self.prior_baseline(out, pb)) * n, n], dtype=torch.float64)
            ab = out if self.cfg.loss == "l2" else decode(out, "annealed")  # [n,2,h,w]
            ab_full = torch.nn.functional.interpolate(ab, size=pb.ab.shape[2:], mode="bilinear", align_corners=False)
            auc.update(ab_full[pb.mask], pb.ab[pb.mask])
            if grid is None:
                grid = self._grid(pb, ab_full)
        if sums[2] == 0:
            raise ValueError("validation split has no colourful images")
        return {"val_loss": float(sums[0] / sums[2]), "prior_baseline_loss": float(sums[1] / sums[2]),
                "val_auc": auc.auc(), "val_images": int(sums[2])}, grid

    def prior_baseline(self, out: torch.Tensor, pb) -> torch.Tensor:
        """The loss of predicting the training prior at every pixel (the bar to beat)."""
        if self.cfg.loss == "l2":
            mean_ab = (self.prior[:, None] * ab_centers(self.device)).sum(0)
            return colorization_loss("l2", mean_ab[None, :, None, None].expand_as(out), pb.target_ab, mask=pb.mask)
        logits = torch.log(self.prior.clamp_min(1e-12))[None, :, None, None].expand_as(out).contiguous()
        return colorization_loss(self.cfg.loss, logits, pb.target_ab, pb.encoding, self.class_weights, pb.mask)

    @staticmethod
    def _grid(pb, ab_full: torch.Tensor, count: int = 8) -> torch.Tensor:
        """Rows of gray input / prediction / truth for the first ``count`` images."""
        L = (pb.lightness[:count] + 0.5) * 100.0
        gray = lab_to_rgb(torch.cat([L, torch.zeros_like(pb.ab[:count])], 1))
        pred = lab_to_rgb(torch.cat([L, ab_full[:count]], 1))
        true = lab_to_rgb(torch.cat([L, pb.ab[:count]], 1))
        return torch.cat([gray, pred, true], 0)

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
        loader = iter(self.loaders())
        bar = tqdm(total=cfg.iterations, initial=self.step, desc="pretrain", unit="it", disable=not dist_utils.is_main())
        start, start_step = time.perf_counter(), self.step
        while self.step < cfg.iterations:
            loss = self.train_step([next(loader) for _ in range(cfg.accum_steps)])
            rate = (self.step - start_step) * cfg.batch_size / max(time.perf_counter() - start, 1e-9)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:.1f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                self.run.log("train", step=self.step, loss=loss, lr=self.scheduler.get_last_lr()[0], images_per_s=rate)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.iterations:
                self.save()
            if os.environ.get("COLORBENCH_KILL_AT_STEP") == str(self.step):  # crash seam for the resume test
                os.kill(os.getpid(), signal.SIGKILL)
            if self.step % cfg.val_every == 0 and self.step < cfg.iterations:
                self.validate(cfg.val_images, f"{self.step:07d}")
        bar.close()
        final = self.validate(cfg.data.val_limit, "final")
        self.finish(final, rate)
        return final

    def finish(self, final: dict, rate: float) -> None:
        skipped = self.skipped.all_reduce() if self.world > 1 else self.skipped.as_dict()
        if not dist_utils.is_main():
            return
        self.say(f"skipped images: {self.skipped}")
        base = {"suite": "pretext", "method": f"colorization-{self.cfg.loss}", "encoder": self.cfg.encoder,
                "protocol": "pretext", "dataset": Path(self.cfg.data.root).name, "split": self.cfg.data.val_split or "",
                "layer": ""}
        records = [dict(base, metric=k, value=v) for k, v in final.items()]
        records += [dict(base, split="train", metric=k, value=v) for k, v in skipped.items()]
        records.append(dict(base, split="train", metric="images_per_s", value=rate))
        self.run.write_records(records, extra={"prior": self.prior_source, "steps": self.step})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML recipe, e.g. configs/pretext/tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (repeatable), e.g. --set iterations=1000")
    parser.add_argument("--run-dir", help="run directory (default: OUT_DIR/NAME)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt if present")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(PretrainConfig, args.config, args.overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.out_dir) / cfg.name
    if not args.resume and (run_dir / "checkpoints" / "last.pt").exists():
        print(f"colorbench pretrain: {run_dir} already has a checkpoint; pass --resume to continue it "
              "or choose another --run-dir", file=sys.stderr)
        return 2
    trainer = Trainer(cfg, run_dir, args.resume, sys.argv)
    try:
        trainer.fit()
    finally:
        dist_utils.cleanup()
    return 0
