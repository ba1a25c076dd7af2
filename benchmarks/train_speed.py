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

from pretext.engine.config import load_config
from pretext.color.targets import prepare_batch
from pretext.data.loader import SeededAugmentation, StepBatchSampler
from downstream.color_quality.classifier import train_transform
from pretext.data.sources import build_source
from pretext.data.loader import collate_skip_bad
from pretext.train import PretrainConfig, build_model


def _loader(cfg: PretrainConfig, steps: int):
    d = cfg.data
    source = build_source(d.kind, d.root, d.train_split, list_file=d.list_file, transform=train_transform(d.crop, d.resize))
    sampler = StepBatchSampler(len(source), cfg.batch_size, seed=cfg.seed, total_steps=steps)
    return torch.utils.data.DataLoader(SeededAugmentation(source, cfg.seed), batch_sampler=sampler,
                                       num_workers=d.num_workers, collate_fn=collate_skip_bad)


def data_path_rate(cfg: PretrainConfig, steps: int, out_size: tuple[int, int]) -> float:
    images, start = 0, None
    for i, batch in enumerate(_loader(cfg, steps + 1)):
        if i == 1:  # the first batch pays for worker start-up
            start, images = time.perf_counter(), 0
        prepare_batch(batch["image"], out_size, torch.device("cpu"), cfg.k, cfg.sigma)
        images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def training_rate(cfg: PretrainConfig, steps: int) -> float:
    model = build_model(cfg)
    from pretext.color.losses import colorization_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr_values[0], betas=tuple(cfg.optim.betas))
    weights = torch.ones(313)
    images, start = 0, None
    for i, batch in enumerate(_loader(cfg, steps + 1)):
        if i == 1:
            start, images = time.perf_counter(), 0
        x = batch["image"]
        pb = prepare_batch(x, model.feature_size(*x.shape[2:]), torch.device("cpu"), cfg.k, cfg.sigma, cfg.loss != "l2")
        loss = colorization_loss(cfg.loss, model(pb.lightness), pb.target_ab, pb.encoding, weights, pb.mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images += x.shape[0]
    return images / (time.perf_counter() - start)


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
    out_size = build_model(cfg).feature_size(cfg.data.crop, cfg.data.crop)
    data = data_path_rate(cfg, args.steps, out_size)
    train = training_rate(cfg, args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {cfg.batch_size}, crop {cfg.data.crop}, "
          f"{cfg.encoder} {dict(cfg.encoder_kwargs)}, {cfg.data.num_workers} loader worker(s)")
    print(f"data path (decode+crop+Lab+encode): {data:8.1f} images/s")
    print(f"training step (all of it):          {train:8.1f} images/s")
    print(f"ratio data/training:                {data / train:8.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
