"""``colorbench colorize``: colorize photos (or legacy black-and-white photos) with a
trained pretext checkpoint, through the method's ``predict_ab`` (``pretext.methods``).

    colorbench colorize photo.jpg old_photos/ --checkpoint runs/tiny/checkpoints/last.pt \
        --out colorized/ [--decoder annealed] [--size 256] [--grid] [--overwrite] [--samples N --seed S]

Any size, aspect ratio and file mode (gray, RGB, RGBA, CMYK, 16-bit: see
``pretext.data.images.load_rgb``). A colour input is reduced to its L channel first.

Working size (the choice, documented): the network sees the image resized (aspect
kept) so that its *short side* is ``--size`` pixels; the predicted ab is upsampled
bilinearly back to the full original resolution and combined with the original
full-resolution L (DESIGN §3, "Output"). Reasons: (1) a colorizer learns objects at
the scale of its training images (the paper's ImageNet images had a 256-pixel short
side), so a 3000-pixel photo fed natively would look "zoomed in" to it and cost ~100x
the compute and memory; (2) ab is low-frequency and people are far less sensitive to
chroma resolution than to lightness, so upsampled ab loses little, while keeping the
full-resolution L keeps every edge and texture of the original. The default is the
short side the checkpoint's training images were resized to before cropping (its
config's ``data.resize``: the scale its objects were learnt at), else 256;
``--size 0`` runs at the native resolution. The working size is never below the
trunk's minimum input (``min_size``, 35 for ``alexnet_cc``).

Table 1's cost columns (parameters, activation memory, runtime) are measured on a
``Colorizer`` by ``downstream.color_quality.costs``.

Checkpoints: any checkpoint with a pretext method (``load_method``); the method decides
how a prediction becomes ab: ``--decoder`` is any of the loaded method's ``decoders``
(Zhang's ``mean`` / ``mode`` / ``annealed``, Larsson's ``median`` too), checked once the
checkpoint is loaded; without ``--decoder`` the checkpoint's own ``decoder`` field (imported
ECCV16 weights: ``mean``, the release's output), else ``annealed`` when the method has it,
else its first. A method with one output (``decoders == ()``: an ``l2`` head, a stochastic
method) ignores the decoder. A trunk-only checkpoint (supervised, k-means, an export) is
refused by ``load_method`` with a clear ``CheckpointError``.

Stochastic methods (``Method.stochastic``, e.g. Royer et al.) draw colorizations:
``--samples N`` writes ``<name>_s<j>.png`` for j = 0..N-1 (sample j of ``--seed``, the same
files on every run; sample 0 is what ``--samples 1`` writes as ``<name>.png``) and
``--grid`` puts the samples side by side; N > 1 on a deterministic method is an error.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image
from tqdm import tqdm

from pretext.color.lab import lab_to_rgb
from pretext.color.losses import colorful_mask
from pretext.color.targets import to_lab
from pretext.data.images import BadImage, BadSample, load_rgb
from pretext.data.sources import ImageSource, folder_samples
from pretext.encoders import normalize_l
from pretext.engine.config import git_revision
from pretext.methods import Method, build_method, list_methods, load_method

DEFAULT_SIZE = 256  # the paper's ImageNet images: short side 256
MIB = 2.0**20


class ColorizeError(ValueError):
    """An argument or an output folder that cannot be used to colorize."""


def method_decoders(method: Method) -> tuple[str, ...]:
    """The decoders ``method.predict_ab`` tells apart; () when it gives one output (e.g.
    Zhang's ``l2`` regression), so eval-color scores it once rather than once per decoder."""
    return tuple(method.decoders)


def registered_decoders() -> tuple[str, ...]:
    """Every decoder name some registered method knows (built with its default kwargs),
    in first-seen order: what eval-color's ``decoders`` may list before any checkpoint is
    loaded. Methods are built on the meta device (no memory, ~0.1 s for all of them)."""
    from pretext.encoders import build_encoder, list_encoders

    names: dict[str, None] = {}
    for name in list_methods():
        for encoder in list_encoders():  # the first trunk the method accepts
            try:
                with torch.device("meta"):
                    method = build_method(name, build_encoder(encoder, width=0.0625))
            except ValueError:  # e.g. liang_patch refuses strided trunks
                continue
            names.update(dict.fromkeys(method.decoders))
            break
    return tuple(names)


def resolve_decoder(method: Method, decoder: str | None, payload: dict | None = None) -> str:
    """The decoder a colorizer uses: ``decoder`` when the method has it (else a one-line
    ``ColorizeError`` naming the valid ones); None: the checkpoint's ``decoder`` field, else
    ``annealed`` when the method has it, else its first. A method without decoders ignores it."""
    valid = method_decoders(method)
    if not valid:
        return decoder or "annealed"  # passed on and ignored by predict_ab
    if decoder is not None:
        if decoder not in valid:
            raise ColorizeError(f"decoder must be one of {', '.join(valid)} for {method_label(method)}, "
                                f"got {decoder!r}")
        return decoder
    preferred = (payload or {}).get("decoder")
    return next(d for d in (preferred, "annealed", valid[0]) if d in valid)


def method_label(method: Method) -> str:
    """Record name of a method's rows (Zhang's keep the paper's ``colorization-<loss>``)."""
    return method.record_name


@dataclass
class Colorizer:
    """A loaded pretext method plus how to run it.

    ``size``: the short side the network sees (0 = native); ``decoder``: how the method
    turns its prediction into ab (one of ``method.decoders``; ignored by a method with one
    output); ``options``: method-specific ``predict_ab`` options (e.g. Iizuka's
    ``global_lightness``); ``seed``: a stochastic method's seed (``predict_ab`` gives
    sample 0 of it)."""

    method: Method
    payload: dict
    path: str
    size: int
    decoder: str = "annealed"
    options: dict = field(default_factory=dict)
    seed: int = 0

    @property
    def stochastic(self) -> bool:
        return bool(self.method.stochastic)

    def method_options(self) -> dict:
        return {**self.options, "seed": self.seed} if self.stochastic else dict(self.options)

    @property
    def encoder(self) -> str:
        return str(self.payload["encoder"])

    @property
    def device(self) -> torch.device:
        return next(self.method.parameters()).device

    @property
    def decoders(self) -> tuple[str, ...]:
        return method_decoders(self.method)

    def record_name(self, decoder: str | None = None) -> str:
        """``colorization-full-annealed``, ``colorization-l2`` (no decoder to name) ..."""
        if not self.decoders:
            return method_label(self.method)
        return f"{method_label(self.method)}-{decoder or self.decoder}"

    def working_shape(self, h: int, w: int) -> tuple[int, int]:
        """The size the network sees for an ``h x w`` image (short side -> ``size``)."""
        scale = 1.0 if self.size <= 0 else self.size / min(h, w)
        floor = getattr(self.method.trunk, "min_size", 1)
        return max(int(round(h * scale)), floor), max(int(round(w * scale)), floor)

    def network_input(self, lightness: torch.Tensor) -> torch.Tensor:
        """L in [0,100] [N,1,H,W] -> normalised L [N,1,h,w] at the working size."""
        x = lightness.to(self.device)
        work = self.working_shape(*x.shape[-2:])
        if tuple(x.shape[-2:]) != work:  # antialiased when shrinking (no aliasing of fine texture)
            x = F.interpolate(x, size=work, mode="bilinear", align_corners=False, antialias=True)
        return normalize_l(x)

    @torch.no_grad()
    def predict_ab(self, lightness: torch.Tensor, decoder: str | None = None, full_size: bool = True) -> torch.Tensor:
        """L in [0,100] [N,1,H,W] -> ab [N,2,H,W], bilinearly upsampled from the method's
        output size to the input's full resolution (``full_size=False``: not upsampled)."""
        self.method.eval()
        ab = self.method.predict_ab(self.network_input(lightness), decoder or self.decoder,
                                    **self.method_options()).float()  # [N,2,h,w]
        size = tuple(lightness.shape[-2:])
        if not full_size or tuple(ab.shape[-2:]) == size:
            return ab
        return F.interpolate(ab, size=size, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def sample_ab(self, lightness: torch.Tensor, samples: int, seed: int | None = None,
                  full_size: bool = True) -> torch.Tensor:
        """Stochastic methods: L in [0,100] [N,1,H,W] -> ``samples`` colorizations ab
        [N,samples,2,H,W] of ``seed`` (default ``self.seed``), upsampled as ``predict_ab``."""
        if not self.stochastic:
            raise ColorizeError(f"{method_label(self.method)} is deterministic: it has one colorization per image, "
                                f"not {samples} samples")
        self.method.eval()
        ab = self.method.sample_ab(self.network_input(lightness), samples, self.seed if seed is None else seed,
                                   **self.options).float()  # [N,S,2,h,w]
        size = tuple(lightness.shape[-2:])
        if not full_size or tuple(ab.shape[-2:]) == size:
            return ab
        n, s = ab.shape[:2]
        up = F.interpolate(ab.flatten(0, 1), size=size, mode="bilinear", align_corners=False)
        return up.view(n, s, 2, *size)


def default_size(payload: dict) -> int:
    """The short side the checkpoint's training images were resized to (``config.data.resize``), else 256."""
    data = (payload.get("config") or {}).get("data") or {}
    return int(data.get("resize") or DEFAULT_SIZE)


def load_colorizer(path: str | os.PathLike, device: torch.device | str = "cpu", size: int | None = None,
                   decoder: str | None = None, seed: int = 0) -> Colorizer:
    """Load a pretext checkpoint (strict, weights_only) as a ready-to-run ``Colorizer``;
    ``decoder`` is checked against the loaded method's (``resolve_decoder``). A trunk-only
    checkpoint raises ``load_method``'s ``CheckpointError``."""
    method, payload = load_method(os.fspath(path), map_location=device)
    size = default_size(payload) if size is None else int(size)
    return Colorizer(method, payload, os.fspath(path), size, resolve_decoder(method, decoder, payload), seed=int(seed))


def use_global_from(colorizer: Colorizer, path: str) -> None:
    """Style transfer (Iizuka et al. 2016): the method's global features come from the
    image at ``path`` (its L channel at the working size) for every colorized image. A
    method without global features refuses the option (ValueError) here, before any
    image is colorized."""
    from torchvision.transforms.functional import pil_to_tensor

    try:
        image = pil_to_tensor(load_rgb(path))  # uint8 [3,H,W]
    except BadImage as exc:
        raise ColorizeError(f"--global-from {exc}") from None
    g = colorizer.network_input(to_lab(image[None], colorizer.device)[:, :1])  # normalised L [1,1,h,w]
    colorizer.method.eval()
    colorizer.method.predict_ab(g, colorizer.decoder, **colorizer.method_options(), global_lightness=g)  # raises for methods without it
    colorizer.options = {"global_lightness": g}


# ----------------------------------------------------------------------------- one image

@dataclass
class Colorized:
    """Float RGB [3,H,W] in [0,1]: the result, the gray input, the original (None when gray);
    ``samples`` [S,3,H,W]: a stochastic method's S colorizations (None: one result)."""

    rgb: torch.Tensor
    gray: torch.Tensor
    original: torch.Tensor | None
    samples: torch.Tensor | None = None


def colorize_image(colorizer: Colorizer, image: torch.Tensor, gray_file: bool = False, samples: int = 1) -> Colorized:
    """uint8 RGB [3,H,W] -> full-resolution L + upsampled predicted ab (``samples`` > 1:
    that many sampled colorizations, ``rgb`` the first)."""
    lab = to_lab(image[None], colorizer.device)  # [1,3,H,W]
    lightness, ab_true = lab[:, :1], lab[:, 1:]
    if samples > 1:
        ab = colorizer.sample_ab(lightness, samples)[0]  # [S,2,H,W]
        lightness = lightness.expand(samples, -1, -1, -1)  # [S,1,H,W]
    else:
        ab = colorizer.predict_ab(lightness)  # [1,2,H,W]
    rgb = lab_to_rgb(torch.cat([lightness, ab], 1)).cpu()  # [S,3,H,W]
    gray = lab_to_rgb(torch.cat([lightness[:1], torch.zeros_like(ab[:1])], 1))[0]
    had_colour = not gray_file and bool(colorful_mask(ab_true)[0])
    return Colorized(rgb[0], gray.cpu(), image.float().div(255) if had_colour else None,
                     rgb if samples > 1 else None)


# ----------------------------------------------------------------------------- files

def list_inputs(inputs: list[str]) -> list[tuple[str, str]]:
    """(path, output name) for every file argument and every image under folder arguments.
    Names keep a folder's sub-paths; clashes get ``-1``, ``-2`` ... suffixes."""
    pairs = []
    for item in inputs:
        if os.path.isdir(item):
            found = folder_samples(item)
            if not found:
                print(f"colorize: no image files in folder {item}", file=sys.stderr)
            pairs += [(p, os.path.relpath(p, item)) for p, _ in found]
        else:  # a file (tried whatever its extension) or a missing path (reported as skipped)
            pairs.append((item, os.path.basename(item.rstrip("/")) or "image"))
    taken: set[str] = set()
    out = []
    for path, rel in pairs:
        stem = str(Path(rel).with_suffix(""))
        name, i = stem, 0
        while name in taken:
            i += 1
            name = f"{stem}-{i}"
        taken.add(name)
        out.append((path, name))
    return out


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless ``overwrite`` (never overwrite silently)."""
    if out.exists() and not out.is_dir():
        raise ColorizeError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ColorizeError(f"--out {out} already exists and is not empty; pass --overwrite to write into it "
                            "(files with the same names are replaced) or choose another folder")


def save_outputs(result: Colorized, out: Path, name: str, grid: bool) -> Path:
    """``<name>.png`` (or ``<name>_s<j>.png`` per sample) and the grid; returns the first file."""
    results = [result.rgb] if result.samples is None else list(result.samples)
    targets = [out / f"{name}.png"] if result.samples is None else [out / f"{name}_s{j}.png" for j in range(len(results))]
    targets[0].parent.mkdir(parents=True, exist_ok=True)
    for rgb, target in zip(results, targets):
        save_image(rgb, target)
    if grid:  # input gray | colorized (each sample) | original (when it had colour)
        panels = [result.gray, *results] + ([result.original] if result.original is not None else [])
        save_image(torch.stack(panels), out / f"{name}_grid.png", nrow=len(panels), padding=4, pad_value=1.0)
    return targets[0]


def colorize_paths(colorizer: Colorizer, inputs: list[str], out: Path, grid: bool = False,
                   samples: int = 1) -> tuple[list[Path], list[BadSample]]:
    """Colorize every input into ``out`` (``samples`` colorizations each); returns (the
    first written file per input, skipped unreadable files)."""
    pairs = list_inputs(inputs)
    if not pairs:
        raise ColorizeError("no input images (give files or folders)")
    source = ImageSource([(p, -1) for p, _ in pairs], name="colorize inputs")
    written, skipped = [], []
    for i in tqdm(range(len(source)), desc="colorize", unit="img", disable=len(source) < 2):
        item = source[i]
        if isinstance(item, BadSample):
            skipped.append(item)
            continue
        result = colorize_image(colorizer, item["image"], item["gray_file"], samples)
        written.append(save_outputs(result, out, pairs[i][1], grid))
    return written, skipped


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="a pretext checkpoint (written by 'colorbench pretrain')")
    parser.add_argument("--out", required=True, help="output folder: <name>.png at each input's full resolution")
    parser.add_argument("--decoder", "--decode", dest="decoder", default=None,
                        help="how the method's distribution becomes ab: any of the checkpoint's method's decoders "
                             "(zhang: mean, mode, annealed; larsson: also median). Default: the checkpoint's own "
                             "(imported ECCV16 weights: mean), else 'annealed' (T = 0.38, the paper's choice, between "
                             "the desaturated 'mean' and the blotchy 'mode'); ignored by methods with one output")
    parser.add_argument("--size", type=int, default=None,
                        help="short side the network sees; ab is upsampled to full resolution. Default: the "
                             "checkpoint's training short side (data.resize), else 256; 0 = native resolution")
    parser.add_argument("--grid", action="store_true",
                        help="also write <name>_grid.png: gray | colorized (each sample) | original")
    parser.add_argument("--samples", type=int, default=1,
                        help="stochastic methods (e.g. royer): N colorizations per image, <name>_s<j>.png for "
                             "j = 0..N-1 (default 1: <name>.png)")
    parser.add_argument("--seed", type=int, default=0,
                        help="stochastic methods: the seed of the samples (same seed, same files)")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    parser.add_argument("--global-from", metavar="IMG",
                        help="style transfer (methods with global features: iizuka): take the global features "
                             "from this image instead of each input's own")
    parser.add_argument("--device", default="auto", help="'auto' picks CUDA when present, else CPU")


def run(args: argparse.Namespace) -> int:
    from pretext.engine.dist import pick_device

    print(f"colorbench colorize | git {git_revision()} | args {vars(args)}")
    out = Path(args.out)
    try:
        check_out_dir(out, args.overwrite)
        if args.samples < 1:
            raise ColorizeError(f"--samples must be >= 1, got {args.samples}")
        colorizer = load_colorizer(args.checkpoint, pick_device(args.device), args.size, args.decoder, args.seed)
        if args.samples > 1 and not colorizer.stochastic:
            raise ColorizeError(f"--samples {args.samples}: {colorizer.record_name()} is deterministic (one "
                                "colorization per image); sampling needs a stochastic method such as royer")
        if args.global_from:
            use_global_from(colorizer, args.global_from)
            print(f"global features from {args.global_from}")
        how = (f"{colorizer.decoder} decoding" if colorizer.decoders else
               f"sampled, seed {colorizer.seed}" if colorizer.stochastic else "one output")
        if args.decoder and not colorizer.decoders:
            print(f"note: --decoder {args.decoder} ignored: {colorizer.record_name()} has one output")
        print(f"{colorizer.record_name()} on {colorizer.encoder}, {how}, network short side "
              f"{colorizer.size or 'native'}, output at full input resolution")
        written, skipped = colorize_paths(colorizer, args.inputs, out, args.grid, args.samples)
    except (ValueError, FileNotFoundError) as exc:  # ColorizeError, CheckpointError, unreadable checkpoints
        print(f"colorbench colorize: {exc}", file=sys.stderr)
        return 2
    each = f" ({args.samples} samples each)" if args.samples > 1 else ""
    print(f"wrote {len(written)} image(s){each} to {out}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for bad in skipped:
            print(f"  {bad.path}: {bad.reason}{f' ({bad.detail})' if bad.detail else ''}", file=sys.stderr)
    return 0 if written else 1
