"""Pretext training throughput against its data path, measured in one run.

    python -m benchmarks.train_speed --data data/builtin/imagefolder [--config configs/pretext/tiny.yaml]

1. data path alone: decode + crop + flip (DataLoader, the recipe's workers) then Lab and
   soft encoding in batch on the device, in images/s;
2. training: full steps of the recipe (data path + forward + loss + backward + Adam), images/s.

The ratio data/training says how much headroom the data path leaves: above 1 it is not
the bottleneck.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from pretext.data.loader import SeededAugmentation, StepBatchSampler, collate_skip_bad, train_transform
from pretext.data.sources import source_for
from pretext.engine.config import load_config
from pretext.methods import StepContext
from pretext.train import PretrainConfig, build_model

CPU = torch.device("cpu")


def _loader(cfg: PretrainConfig, steps: int):
    d = cfg.data
    source = source_for(d, "train", train_transform(d.crop, d.resize))
    sampler = StepBatchSampler(len(source), cfg.batch_size, seed=cfg.seed, total_steps=steps)
    return torch.utils.data.DataLoader(SeededAugmentation(source, cfg.seed), batch_sampler=sampler,
                                       num_workers=d.num_workers, collate_fn=collate_skip_bad)


def _timed(cfg: PretrainConfig, steps: int, work) -> float:
    """images/s of ``work(batch)`` over ``steps`` batches (the first, worker start-up, untimed)."""
    images, start = 0, None
    for i, batch in enumerate(_loader(cfg, steps + 1)):
        if i == 1:
            start, images = time.perf_counter(), 0
        work(batch["image"])
        images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def data_path_rate(cfg: PretrainConfig, steps: int) -> float:
    """Loader + the method's on-device targets (Lab, resampling, soft encoding)."""
    method = build_model(cfg)
    return _timed(cfg, steps, lambda x: method._batch(x, CPU))


def training_rate(cfg: PretrainConfig, steps: int) -> float:
    """Full steps of the method through its own ``training_step`` (Adam, the recipe's lr)."""
    method = build_model(cfg).train()
    opts = {k: torch.optim.Adam(v, lr=cfg.optim.lr_values[0], betas=tuple(cfg.optim.betas))
            for k, v in method.optimizer_groups().items()}
    ctx = StepContext(CPU)
    return _timed(cfg, steps, lambda x: method.training_step([{"image": x}], method, opts, ctx))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/pretext/tiny.yaml")
    parser.add_argument("--data", help="ImageFolder root (default: the config's data.root)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    args = parser.parse_args(argv)
    cfg = load_config(PretrainConfig, args.config, [f"data.root={args.data}"] if args.data else [])
    if not Path(cfg.data.root).is_dir():
        print(f"no data at {cfg.data.root}: run `colorbench make-data --out data/builtin` first", file=sys.stderr)
        return 2
    data = data_path_rate(cfg, args.steps)
    train = training_rate(cfg, args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {cfg.batch_size}, crop {cfg.data.crop}, "
          f"{cfg.method} {dict(cfg.method_kwargs)} on {cfg.encoder} {dict(cfg.encoder_kwargs)}, {cfg.data.num_workers} loader worker(s)")
    print(f"data path (decode+crop+Lab+encode): {data:8.1f} images/s")
    print(f"training step (all of it):          {train:8.1f} images/s")
    print(f"ratio data/training:                {data / train:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
