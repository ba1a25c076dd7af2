"""Speed benchmarks: every figure is a ratio against a reference measured in the same run.

    python -m benchmarks.speed encode   # soft encoding vs sklearn NearestNeighbors(ball_tree)
    python -m benchmarks.speed lab      # rgb_to_lab vs skimage.color.rgb2lab
    colorbench speed all

The encode batch is the paper's: 40 targets of 44 x 44, the ab of 176 x 176 crops of real
photos point-sampled at the loss's stride 4 (Kodak24 from ../shared/data when present, else
scikit-image's bundled photos), as the trainer's targets are. Real ab crowds the grey axis,
where the nearest-centre search is hardest; ``--data random`` gives the Lab of uniformly
random RGB colours instead (saturated, independent per pixel: a flattering case).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

BENCHMARKS = ("encode", "lab")
KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak24"
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # bundled with scikit-image, no download


def best_time(fn: Callable[[], object], repeats: int, min_seconds: float = 0.2) -> float:
    """Best wall time of ``fn`` over ``repeats`` rounds (each round >= min_seconds, averaged)."""
    fn()  # warm-up (caches, lookup tables, lazy imports)
    return min(round_time(fn, min_seconds) for _ in range(repeats))


def round_time(fn: Callable[[], object], min_seconds: float = 0.2) -> float:
    """Wall time of one call of ``fn``, averaged over as many calls as fill ``min_seconds``."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def compare(ours: Callable[[], object], refs: dict[str, Callable[[], object]], repeats: int,
            min_seconds: float = 0.2) -> dict[str, dict]:
    """Time ``ours`` and each reference in ``repeats`` interleaved rounds (load on a shared
    machine hits both sides of a ratio alike). Per reference: the best times of both sides
    (noise only adds), their ratio, and the median of the per-round ratios."""
    for fn in (ours, *refs.values()):
        fn()  # warm-up (caches, lookup tables, lazy imports)
    times: dict[str, list[float]] = {name: [] for name in ("ours", *refs)}
    for _ in range(repeats):
        times["ours"].append(round_time(ours, min_seconds))
        for name, fn in refs.items():
            times[name].append(round_time(fn, min_seconds))
    return {name: {"ours": min(times["ours"]), "reference": min(times[name]),
                   "ratio": min(times[name]) / min(times["ours"]),
                   "median_ratio": float(np.median(np.array(times[name]) / np.array(times["ours"])))}
            for name in refs}


def load_photos(folder: Path | None = None) -> tuple[list[np.ndarray], str]:
    """uint8 RGB photos [H,W,3] and where they came from: the PNG/JPEG files of ``folder``
    (default: Kodak24 in ../shared when present, else scikit-image's bundled photos)."""
    folder = folder if folder is not None else (KODAK if KODAK.is_dir() else None)
    if folder is not None:
        from PIL import Image

        if not Path(folder).is_dir():
            raise FileNotFoundError(f"speed: photo folder {folder} does not exist")
        files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise FileNotFoundError(f"speed: no .png/.jpg photos in {folder}")
        return [np.asarray(Image.open(f).convert("RGB")) for f in files], f"{len(files)} photos in {folder}"
    from skimage import data

    return [getattr(data, name)() for name in SKIMAGE_PHOTOS], "scikit-image photos " + "/".join(SKIMAGE_PHOTOS)


def photo_ab(photos: list[np.ndarray], num: int = 40, crop: int = 176, stride: int = 4, seed: int = 0) -> torch.Tensor:
    """ab float32 [num,2,crop/stride,crop/stride]: random crops (photo, position from
    ``seed``) to Lab as the trainer does (uint8 / 255), point-sampled at ``stride``."""
    from pretext.color.lab import rgb_to_lab

    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(num):
        img = photos[rng.integers(len(photos))]
        if min(img.shape[:2]) < crop:
            raise ValueError(f"speed: a photo of {img.shape[1]}x{img.shape[0]} is smaller than the {crop} crop")
        y, x = rng.integers(img.shape[0] - crop + 1), rng.integers(img.shape[1] - crop + 1)
        crops.append(img[y:y + crop, x:x + crop])
    rgb = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float().div_(255.0)  # [num,3,crop,crop]
    return rgb_to_lab(rgb)[:, 1:, ::stride, ::stride].contiguous()


def original_soft_encode(ab: np.ndarray, centers: np.ndarray, k: int, sigma: float, dense: bool = True):
    """The original recipe, re-implemented: a ball tree over the 313 centres queried per
    batch on the CPU, Gaussian weights, and (as the original fed its Caffe loss) the
    dense [N,313,H,W] target. ``dense=False`` stops after the neighbour search."""
    from sklearn.neighbors import NearestNeighbors

    n, _, h, w = ab.shape
    pts = ab.transpose(0, 2, 3, 1).reshape(-1, 2)
    nn = NearestNeighbors(n_neighbors=k, algorithm="ball_tree").fit(centers)
    dist, idx = nn.kneighbors(pts)
    weights = np.exp(-(dist**2) / (2 * sigma**2))
    weights /= weights.sum(1, keepdims=True)
    if not dense:
        return idx, weights
    target = np.zeros((pts.shape[0], centers.shape[0]))
    target[np.arange(pts.shape[0])[:, None], idx] = weights
    return target.reshape(n, h, w, -1).transpose(0, 3, 1, 2)


def encode_data(data: str = "photos", folder: Path | None = None) -> tuple[torch.Tensor, str]:
    """The encode benchmark's ab [40,2,44,44] and a description of it."""
    if data == "random":
        from pretext.color.lab import rgb_to_lab

        torch.manual_seed(0)
        return rgb_to_lab(torch.rand(40, 3, 44, 44))[:, 1:].contiguous(), "Lab of uniformly random RGB colours"
    photos, source = load_photos(folder)
    return photo_ab(photos), f"40 crops 176x176 at stride 4 of {source}"


def bench_encode(repeats: int, k: int = 5, data: str = "photos", folder: Path | None = None) -> list[dict]:
    from pretext.color.bins import ab_centers, soft_encode, soft_encoder

    ab, source = encode_data(data, folder)
    paths = soft_encoder(k).path_fractions(ab)
    print(f"encode data: {source}; pixels decided by the lattice / lookup-table / coarse path: "
          + " / ".join(f"{100 * paths[name]:.2f}%" for name in ("lattice", "table", "coarse")), flush=True)
    ab_np, centers = ab.numpy().astype(np.float64), ab_centers().numpy().astype(np.float64)
    refs = {"original encode: ball tree + dense target": lambda: original_soft_encode(ab_np, centers, k, 5.0, True),
            "ball-tree kneighbors only": lambda: original_soft_encode(ab_np, centers, k, 5.0, False)}
    timed = compare(lambda: soft_encode(ab, k=k), refs, repeats)
    return [_result("encode", ab.numel() // 2, label + (f", K={k}" if k != 5 else ""), t, repeats)
            for label, t in timed.items()]


def bench_lab(repeats: int) -> list[dict]:
    from skimage import color as skcolor

    from pretext.color.lab import rgb_to_lab

    torch.manual_seed(0)
    rgb = torch.rand(16, 3, 176, 176)
    rgb_np = rgb.permute(0, 2, 3, 1).numpy()
    label = "skimage.color.rgb2lab"
    timed = compare(lambda: rgb_to_lab(rgb), {label: lambda: skcolor.rgb2lab(rgb_np)}, repeats)
    return [_result("lab", rgb.numel() // 3, label, timed[label], repeats)]


def _result(benchmark: str, pixels: int, reference: str, t: dict, repeats: int) -> dict:
    return {"benchmark": benchmark, "pixels": pixels, "reference": reference, "rounds": repeats,
            "reference_pixels_per_s": pixels / t["reference"], "ours_pixels_per_s": pixels / t["ours"],
            "ratio": t["ratio"], "median_ratio": t["median_ratio"]}


def report(result: dict) -> str:
    return (f"{result['benchmark']:<7} {result['pixels']:>9,d} px   reference ({result['reference']}): "
            f"{result['reference_pixels_per_s'] / 1e6:8.2f} Mpx/s   colorbench: {result['ours_pixels_per_s'] / 1e6:8.2f} Mpx/s"
            f"   ratio: {result['ratio']:6.1f}x (best times; median of {result['rounds']} rounds "
            f"{result['median_ratio']:.1f}x)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", nargs="?", default="all", choices=("all",) + BENCHMARKS,
                        help="which benchmark (default: all)")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timing rounds, ours and the references interleaved; best times kept (noise only adds)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: leave torch's default; use 1 on a loaded machine: the references "
                             "run on one core)")
    parser.add_argument("--k", type=int, default=5, help="encode: K nearest centres (paper 5, released Caffe code 10)")
    parser.add_argument("--data", choices=("photos", "random"), default="photos",
                        help="encode: ab of real photos (default: what training sees) or of random RGB colours")
    parser.add_argument("--photos", type=Path, default=None,
                        help="encode: a folder of photos (default: Kodak24 in ../shared, else scikit-image's)")


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.threads < 0 or args.k < 1:
        raise ValueError(f"--repeats and --k must be >= 1 and --threads >= 0 "
                         f"(got {args.repeats}, {args.k}, {args.threads})")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    runners = {"encode": lambda: bench_encode(args.repeats, args.k, args.data, args.photos),
               "lab": lambda: bench_lab(args.repeats)}
    for name in BENCHMARKS if args.which == "all" else (args.which,):
        for result in runners[name]():
            print(report(result), flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
