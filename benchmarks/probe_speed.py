"""Linear-probe benchmarks; every figure is a ratio measured in one run (DESIGN §7).

    python -m benchmarks.probe_speed              # both
    python -m benchmarks.probe_speed heads        # 5-head vs 1-head wall time
    python -m benchmarks.probe_speed memory       # peak memory, N vs 4N images

heads: one training step = uint8 batch -> Lab L -> frozen trunk -> pools -> BN + Linear
heads -> loss -> SGD, over the same in-memory batches (decoding excluded: it is the same
for both and would only shrink the ratio). The 5-head probe (every tap from one trunk
pass) is timed against a 1-head probe on the deepest tap (the same trunk pass), so the
ratio is the price of the four extra heads. Bar: <= 1.5x. For context it also times the
five taps probed one at a time (five trunk passes, each as deep as its tap).
Default: full-width AlexNet, 227 crops, the published pools, 1000 classes (ImageNet).

memory: a whole streaming probe run (``downstream.probe.linear_probe.main``: data loading,
training for one epoch, validation) over N and over 4N images of the built-in data,
each in a fresh subprocess; peak resident memory (``ru_maxrss``; on CUDA also
``torch.cuda.max_memory_allocated``). Streaming never holds the data set's features,
so 4N must not need more memory. Bar: <= 1.2x.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

BENCHMARKS = ("heads", "memory")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_probe(trunk, taps: list[str], batches: list[torch.Tensor], labels: list[torch.Tensor],
               crop: int, num_classes: int, device: torch.device, repeats: int) -> float:
    """Best-of-``repeats`` seconds per training step of a probe on ``taps``."""
    from downstream.probe.linear_probe import ProbeOptim, make_optimizer
    from downstream.probe.feeds import featurize
    from downstream.probe.heads import ProbeHeads, build_pool_specs

    heads = ProbeHeads(build_pool_specs(trunk, taps, crop), num_classes).to(device)
    opt = make_optimizer(list(heads.parameters()), ProbeOptim())

    def step(images, y):
        out = heads(featurize(trunk, heads, images, device))
        loss = sum(torch.nn.functional.cross_entropy(o, y) for o in out.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    heads.train()
    step(batches[0], labels[0])  # warm-up (allocator, kernels)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for images, y in zip(batches, labels):
            step(images, y)
        _sync(device)
        best = min(best, (time.perf_counter() - start) / len(batches))
    return best


def bench_heads(args, device: torch.device) -> dict:
    from downstream.probe.heads import freeze
    from downstream.trunks import encoder_trunk

    torch.manual_seed(0)
    trunk = freeze(encoder_trunk(args.encoder, {"width": args.width})).to(device)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (args.batch, 3, args.crop, args.crop), generator=g, dtype=torch.uint8)
               for _ in range(args.steps)]
    labels = [torch.randint(0, args.classes, (args.batch,), generator=g).to(device) for _ in batches]
    batches = [b.to(device) for b in batches]
    taps = trunk.taps
    t_all = time_probe(trunk, taps, batches, labels, args.crop, args.classes, device, args.repeats)
    t_one = time_probe(trunk, taps[-1:], batches, labels, args.crop, args.classes, device, args.repeats)
    t_sep = {t: time_probe(trunk, [t], batches, labels, args.crop, args.classes, device, args.repeats) for t in taps}
    return {"benchmark": "heads", "encoder": args.encoder, "width": args.width, "crop": args.crop,
            "batch": args.batch, "classes": args.classes, "device": str(device), "threads": torch.get_num_threads(),
            "s_per_step_all_taps": t_all, "s_per_step_deepest_tap": t_one,
            "ratio_all_vs_one": t_all / t_one, "bar": 1.5, "passes": t_all / t_one <= 1.5,
            "s_per_step_taps_one_at_a_time": sum(t_sep.values()),
            "speedup_joint_vs_separate": sum(t_sep.values()) / t_all}


# ----------------------------------------------------------------------------- memory

def _child_memory(root: str, images: int, device: str) -> dict:
    """One streaming probe run over ``images`` training images; peak memory."""
    from downstream.probe.linear_probe import ProbeConfig, main
    from pretext.engine.config import load_config

    sets = [f"data.root={root}", f"data.train_limit={images}", "data.val_limit=64", "batch_size=32",
            "data.num_workers=0", f"optim.iterations={images // 32}", "optim.milestones=[]",
            f"device={device}", "log_every=1000", "trunk.init=gaussian"]
    cfg = load_config(ProbeConfig, os.path.join(os.path.dirname(__file__), "..", "configs", "downstream",
                                                "probe_tiny.yaml"), sets)
    with tempfile.TemporaryDirectory() as out:
        main(cfg, ["probe_speed", "memory"], run_dir=out)
    peak_cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return {"images": images, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_cuda_mib": peak_cuda / 2**20}


def bench_memory(args, device: torch.device) -> dict:
    from pretext.data.synthetic.generate import make_dataset

    with tempfile.TemporaryDirectory() as tmp:
        per_class = -(-4 * args.images // 8)
        make_dataset(tmp, size=64, num_train=per_class, num_val=8, num_voc=0, verbose=False)
        root = os.path.join(tmp, "imagefolder")
        runs = []
        for n in (args.images, 4 * args.images):
            cmd = [sys.executable, "-m", "benchmarks.probe_speed", "_child", "--root", root,
                   "--images", str(n), "--device", str(device)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
            if out.returncode:
                raise RuntimeError(f"memory child failed:\n{out.stderr[-3000:]}")
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratio_rss = runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"]
    result = {"benchmark": "memory", "N": args.images, "runs": runs, "ratio_rss_4N_vs_N": ratio_rss, "bar": 1.2,
              "passes": ratio_rss <= 1.2}
    if runs[0]["peak_cuda_mib"]:
        result["ratio_cuda_4N_vs_N"] = runs[1]["peak_cuda_mib"] / runs[0]["peak_cuda_mib"]
        result["passes"] = result["passes"] and result["ratio_cuda_4N_vs_N"] <= 1.2
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.probe_speed", description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="all", choices=("all", *BENCHMARKS, "_child"))
    parser.add_argument("--encoder", default="alexnet_cc", help="the protocol's encoder (its pooling table)")
    parser.add_argument("--width", type=float, default=1.0, help="full width: the real head / trunk cost balance")
    parser.add_argument("--crop", type=int, default=227, help="the protocol's crop (AlexNet table)")
    parser.add_argument("--classes", type=int, default=1000, help="ImageNet's 1000 classes: the largest heads")
    parser.add_argument("--batch", type=int, default=64,
                        help="images per step (the protocol's 256 would take a 2-core CPU ~10 min)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best one counts")
    parser.add_argument("--images", type=int, default=256, help="N for the memory benchmark (4N is the other run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from pretext.engine.config import git_revision
    from pretext.engine.dist import pick_device

    device = pick_device(args.device)
    if args.which == "_child":
        print(json.dumps(_child_memory(args.root, args.images, str(device))))
        return 0
    print(f"probe_speed | git {git_revision()} | {vars(args)}", file=sys.stderr)
    ok = True
    for name in BENCHMARKS if args.which == "all" else (args.which,):
        result = (bench_heads if name == "heads" else bench_memory)(args, device)
        ok = ok and result["passes"]
        print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
