"""PixColor's sampling speed at the paper's geometry (28 x 28 x 2 sequential steps, 32 bins),
the cached + batched sampler against a naive reference, in one run on one photo.

    python -m benchmarks.sample_speed [--checkpoint runs/pixcolor_tiny/checkpoints/last.pt]
                                      [--samples 8] [--naive-samples 1] [--image astronaut]

* ours: ``PixColor.condition`` once per image, the PixelCNN's per-layer conditioning
  terms once, the samples batched along N, the incremental sampler
  (``ConditionalPixelCNN.sample_with``: one column per step, matrix products);
* naive: ``pixelcnn.reference_sample``, one sample at a time, the conditioning network
  (trunk + head) recomputed and the whole PixelCNN run on the whole grid at every step.

Both draw from the same uniforms (one ``torch.Generator``), and the samples they give are
asserted identical. Seconds per sample of each and the ratio are printed, plus the whole
``sample_ab`` (with the refinement at the photo's size and the gamut fit) per sample.
Without ``--checkpoint`` the model is an untrained ``pixcolor`` with the paper's geometry
(grid 28, 32 bins) and the method's default widths for ``--encoder`` / ``--width``:
the timing does not depend on the weights. One thread (``--threads``).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from pretext.color.targets import to_lab
from pretext.encoders import build_encoder, normalize_l
from pretext.methods import build_method, load_method
from pretext.methods.pixelcnn import reference_sample


def photo_lightness(name: str, size: int) -> torch.Tensor:
    """scikit-image's bundled photo ``name`` -> normalised L [1,1,size,size] (bilinear, antialiased)."""
    from skimage import data

    try:
        image = getattr(data, name)()
    except AttributeError:
        raise ValueError(f"--image: scikit-image has no photo {name!r} (e.g. astronaut, coffee, chelsea)") from None
    rgb = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()  # uint8 [1,3,H,W]
    lightness = to_lab(rgb, torch.device("cpu"))[:, :1]
    return normalize_l(F.interpolate(lightness, size=(size, size), mode="bilinear", align_corners=False,
                                     antialias=True))


def build(args: argparse.Namespace):
    if args.checkpoint:
        method, _ = load_method(args.checkpoint)
    else:
        torch.manual_seed(0)
        method = build_method("pixcolor", build_encoder(args.encoder, width=args.width), grid=28, bins=32)
    if method.method_name != "pixcolor":
        raise ValueError(f"--checkpoint holds method {method.method_name!r}; this benchmark times pixcolor")
    return method.eval()


def timed(work):
    start = time.perf_counter()
    out = work()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sample_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a pixcolor checkpoint (default: an untrained model, paper geometry)")
    parser.add_argument("--encoder", default="alexnet_cc", help="trunk without --checkpoint (default alexnet_cc)")
    parser.add_argument("--width", type=float, default=0.25, help="its width (default 0.25)")
    parser.add_argument("--samples", type=int, default=8, help="samples drawn by our sampler, batched (default 8)")
    parser.add_argument("--naive-samples", type=int, default=1, help="samples drawn naively (default 1; each "
                        "takes about a minute at the paper's size)")
    parser.add_argument("--image", default="astronaut", help="scikit-image photo (default astronaut)")
    parser.add_argument("--size", type=int, default=224, help="the photo's side as the method sees it (default 224)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if not 1 <= args.naive_samples <= args.samples:
        parser.error("need 1 <= --naive-samples <= --samples")
    torch.set_num_threads(args.threads)
    try:
        method = build(args)
        x = photo_lightness(args.image, args.size)
    except ValueError as exc:
        print(f"sample_speed: {exc}", file=sys.stderr)
        return 2
    pcnn, s, g = method.head_pixelcnn, args.samples, method.grid
    uniforms = torch.rand((s, pcnn.channels, g, g), generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        def ours():
            terms = pcnn.condition(method.condition(x))  # once per image
            terms = [(v.expand(s, -1, -1, -1), h.expand(s, -1, -1, -1)) for v, h in terms]
            return pcnn.sample_with(terms, uniforms, method.temperature)

        def naive():
            return torch.cat([reference_sample(pcnn, lambda: method.condition(x), uniforms[i:i + 1],
                                               method.temperature) for i in range(args.naive_samples)])
        fast, t_fast = timed(ours)
        slow, t_slow = timed(naive)
        if not torch.equal(fast[:args.naive_samples], slow):
            raise AssertionError("sample_speed: the cached sampler's samples differ from the naive sampler's")
        _, t_full = timed(lambda: method.sample_ab(x, s, seed=0))
    per_fast, per_slow = t_fast / s, t_slow / args.naive_samples
    steps = g * g * pcnn.channels
    print(f"PixColor sampling, {g}x{g}x{pcnn.channels} = {steps} sequential steps, {pcnn.bins} bins, "
          f"{args.image} at {args.size}px, {method.trunk.encoder_name} (width {method.trunk.width}), "
          f"PixelCNN hidden {pcnn.hidden} x {len(pcnn.layers)} layers, {args.threads} thread(s)")
    print(f"  naive (conditioning every step, 1 sample at a time): {per_slow:8.3f} s/sample "
          f"({args.naive_samples} sample(s))")
    print(f"  ours  (conditioning once, {s} samples batched):       {per_fast:8.3f} s/sample   "
          f"ratio {per_slow / per_fast:6.1f}x")
    print(f"  ours + refinement + gamut fit (sample_ab):            {t_full / s:8.3f} s/sample")
    print(f"  samples identical for the first {args.naive_samples}: yes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
