"""``colorbench colorize``: colorize photos (or legacy black-and-white photos) with a
trained pretext checkpoint.

    colorbench colorize photo.jpg old_photos/ --checkpoint runs/tiny/checkpoints/last.pt \
        --out colorized/ [--decode annealed --T 0.38] [--size 256] [--grid] [--overwrite]

Any size, aspect ratio and file mode (gray, RGB, RGBA, CMYK, 16-bit: see
``pretext.sources.load_rgb``). A colour input is reduced to its L channel first.

Working size (the choice, documented): the network sees the image resized (aspect
kept) so that its *short side* is ``--size`` pixels; the predicted ab is upsampled
bilinearly back to the full original resolution and combined with the original
full-resolution L (DESIGN §3, "Output"). Reasons: (1) a colorizer learns objects at
the scale of its training images (the paper's ImageNet images had a 256-pixel short
side), so a 3000-pixel photo fed natively would look "zoomed in" to it and cost ~100x
the compute and memory; (2) ab is low-frequency and people are far less sensitive to
chroma resolution than to lightness, so upsampled ab loses little, while keeping the
full-resolution L keeps every edge and texture of the original. The default is the
short side the checkpoint was trained at (its config's ``data.resize``), else 256;
``--size 0`` runs at the native resolution. The working size is never below the
encoder's minimum input (``min_size``, 35 for ``alexnet_cc``).

``Colorizer.costs`` measures Table 1's cost columns (parameters, activation memory via
forward hooks, runtime) for ``colorbench eval-color``.

Checkpoints: any registered encoder with a colorization head: 313-way heads (``full``
and ``class`` losses) are decoded by ``mean`` / ``mode`` / ``annealed``; 2-channel heads
(``l2`` loss, ``encoder_kwargs.num_bins = 2``) predict ab directly. A checkpoint without
head weights (a trunk, a probe or a supervised model) is refused with a clear error.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image
from tqdm import tqdm

from pretext.color import NUM_BINS, decode as decode_logits, lab_to_rgb
from pretext.config import git_revision
from pretext.encoders import build_encoder, normalize_l
from pretext.losses import colorful_mask
from pretext.pipeline import to_lab
from pretext.runs import CHECKPOINT_FORMAT, load_checkpoint, load_state_strict
from pretext.sources import BadSample, ImageSource, folder_samples

DECODERS = ("mean", "mode", "annealed")
DEFAULT_SIZE = 256  # the paper's ImageNet images: short side 256
MIB = 2.0**20


class ColorizeError(ValueError):
    """A checkpoint or an argument that cannot be used to colorize."""


@dataclass
class Colorizer:
    """A loaded colorization model plus how to run it.

    ``size``: the short side the network sees (0 = native); ``decode``/``T``: how a
    313-way distribution becomes ab (ignored by a 2-channel l2 head)."""

    model: torch.nn.Module
    payload: dict
    path: str
    size: int
    decode: str = "annealed"
    T: float = 0.38

    @property
    def regression(self) -> bool:
        return self.model.num_bins == 2

    @property
    def loss(self) -> str:
        return self.payload.get("loss") or ("l2" if self.regression else "full")

    @property
    def encoder(self) -> str:
        return str(self.payload["encoder"])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def method(self, decode: str | None = None) -> str:
        """Record name: ``colorization-full-annealed``, ``colorization-l2``, ..."""
        if self.regression:
            return f"colorization-{self.loss}"
        return f"colorization-{self.loss}-{decode or self.decode}"

    def working_shape(self, h: int, w: int) -> tuple[int, int]:
        """The size the network sees for an ``h x w`` image (short side -> ``size``)."""
        scale = 1.0 if self.size <= 0 else self.size / min(h, w)
        floor = getattr(self.model, "min_size", 1)
        return max(int(round(h * scale)), floor), max(int(round(w * scale)), floor)

    @torch.no_grad()
    def network_output(self, lightness: torch.Tensor) -> torch.Tensor:
        """L in [0,100] [N,1,H,W] -> the head's output at the working size: logits
        [N,313,h,w] (or ab [N,2,h,w] for an l2 head)."""
        self.model.eval()
        x = lightness.to(self.device)
        work = self.working_shape(*x.shape[-2:])
        if tuple(x.shape[-2:]) != work:  # antialiased when shrinking (no aliasing of fine texture)
            x = F.interpolate(x, size=work, mode="bilinear", align_corners=False, antialias=True)
        return self.model(normalize_l(x)).float()

    def to_ab(self, output: torch.Tensor, size: tuple[int, int] | None = None, decode: str | None = None) -> torch.Tensor:
        """Head output -> ab [N,2,h,w], bilinearly upsampled to ``size`` when given."""
        ab = output if self.regression else decode_logits(output, decode or self.decode, self.T)
        if size is None or tuple(ab.shape[-2:]) == tuple(size):
            return ab
        return F.interpolate(ab, size=tuple(size), mode="bilinear", align_corners=False)

    def predict_ab(self, lightness: torch.Tensor, decode: str | None = None) -> torch.Tensor:
        """L in [0,100] [N,1,H,W] -> ab [N,2,H,W] at the input's full resolution."""
        return self.to_ab(self.network_output(lightness), lightness.shape[-2:], decode)

    def costs(self, decode: str | None = None, runs: int = 10) -> dict:
        """Table 1's cost columns, measured on one square image of the working size (256
        when native): parameters and activations in MiB (float32), runtime in ms."""
        side = max(self.size or DEFAULT_SIZE, getattr(self.model, "min_size", 1))
        x = torch.rand(1, 1, side, side, generator=torch.Generator().manual_seed(0)).mul(100).to(self.device)
        params = sum(p.numel() for p in self.model.parameters()) * 4 / MIB
        return {"params_mb": params, "feature_mb": feature_memory_mb(self.model, normalize_l(x)),
                "runtime_ms": self.runtime_ms(x, decode, runs), "working_size": side}

    def runtime_ms(self, x: torch.Tensor, decode: str | None = None, runs: int = 10) -> float:
        """Median ms of network + decoding on ``x`` (L [1,1,h,w] at the working size),
        after 2 warm-up runs, CUDA synchronised."""
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
        decode = decode if decode in DECODERS else None
        times = []
        for i in range(runs + 2):
            sync()
            start = time.perf_counter()
            self.to_ab(self.network_output(x), decode=decode)
            sync()
            if i >= 2:
                times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)


def feature_memory_mb(model: torch.nn.Module, x: torch.Tensor) -> float:
    """MiB of every leaf module's output in one forward pass on ``x`` (4 bytes a value;
    in-place results, which share their input's storage, are counted once)."""
    outputs: list[torch.Tensor] = []  # kept alive so no storage is freed and reused mid-pass

    def hook(module, inputs, out):
        outputs.extend(t for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor))
    handles = [m.register_forward_hook(hook) for m in model.modules() if next(m.children(), None) is None]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    sizes: dict[int, int] = {}
    for t in outputs:
        ptr = t.untyped_storage().data_ptr()
        sizes[ptr] = max(sizes.get(ptr, 0), t.numel())
    return sum(sizes.values()) * 4 / MIB


def default_size(payload: dict) -> int:
    """The short side the checkpoint was trained at (``config.data.resize``), else 256."""
    data = (payload.get("config") or {}).get("data") or {}
    return int(data.get("resize") or DEFAULT_SIZE)


def check_colorization_payload(payload: dict, path: str) -> int:
    """Raise ColorizeError unless ``payload`` carries a colorization head; returns its bins."""
    if payload.get("format") != CHECKPOINT_FORMAT or "encoder" not in payload:
        raise ColorizeError(f"{path} is not a colorbench encoder checkpoint (format {CHECKPOINT_FORMAT}); "
                            "colorize needs a checkpoint written by 'colorbench pretrain'")
    if not any(k.startswith("head.") for k in payload["model"]):
        raise ColorizeError(f"{path} has no colorization head (no head.* weights): it is a trunk, probe or "
                            "supervised checkpoint. Colorize with a checkpoint written by 'colorbench pretrain'")
    bins = int((payload.get("encoder_kwargs") or {}).get("num_bins", NUM_BINS))
    if bins not in (NUM_BINS, 2):
        raise ColorizeError(f"{path}: the head predicts {bins} channels, neither {NUM_BINS} ab bins nor 2 "
                            "(ab regression): it is not a colorization head")
    if payload.get("loss") == "l2" and bins != 2:
        raise ColorizeError(f"{path}: loss 'l2' but the head has {bins} channels (expected 2)")
    return bins


def load_colorizer(path: str | os.PathLike, device: torch.device | str = "cpu", size: int | None = None,
                   decode: str = "annealed", T: float = 0.38) -> Colorizer:
    """Load a pretext checkpoint strictly (weights_only) as a ready-to-run ``Colorizer``."""
    if decode not in DECODERS:
        raise ColorizeError(f"decode must be one of {', '.join(DECODERS)}, got {decode!r}")
    if T <= 0:
        raise ColorizeError(f"--T must be > 0, got {T}")
    payload = load_checkpoint(path)
    check_colorization_payload(payload, str(path))
    model = build_encoder(payload["encoder"], **(payload.get("encoder_kwargs") or {}))
    load_state_strict(model, payload["model"])
    model.to(device).eval()
    size = default_size(payload) if size is None else int(size)
    return Colorizer(model, payload, str(path), size, decode, T)


# ----------------------------------------------------------------------------- one image

@dataclass
class Colorized:
    """Float RGB [3,H,W] in [0,1]: the result, the gray input, the original (None when gray)."""

    rgb: torch.Tensor
    gray: torch.Tensor
    original: torch.Tensor | None


def colorize_image(colorizer: Colorizer, image: torch.Tensor, gray_file: bool = False) -> Colorized:
    """uint8 RGB [3,H,W] -> full-resolution L + upsampled predicted ab."""
    lab = to_lab(image[None], colorizer.device)  # [1,3,H,W]
    lightness, ab_true = lab[:, :1], lab[:, 1:]
    ab = colorizer.predict_ab(lightness)  # [1,2,H,W]
    rgb = lab_to_rgb(torch.cat([lightness, ab], 1))[0]
    gray = lab_to_rgb(torch.cat([lightness, torch.zeros_like(ab)], 1))[0]
    had_colour = not gray_file and bool(colorful_mask(ab_true)[0])
    return Colorized(rgb.cpu(), gray.cpu(), image.float().div(255) if had_colour else None)


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
    target = out / f"{name}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_image(result.rgb, target)
    if grid:  # input gray | colorized | original (when it had colour)
        panels = [result.gray, result.rgb] + ([result.original] if result.original is not None else [])
        save_image(torch.stack(panels), out / f"{name}_grid.png", nrow=len(panels), padding=4, pad_value=1.0)
    return target


def colorize_paths(colorizer: Colorizer, inputs: list[str], out: Path, grid: bool = False) -> tuple[list[Path], list[BadSample]]:
    """Colorize every input into ``out``; returns (written files, skipped unreadable files)."""
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
        result = colorize_image(colorizer, item["image"], item["gray_file"])
        written.append(save_outputs(result, out, pairs[i][1], grid))
    return written, skipped


# ----------------------------------------------------------------------------- command line

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="a pretext checkpoint with a colorization head")
    parser.add_argument("--out", required=True, help="output folder: <name>.png at each input's full resolution")
    parser.add_argument("--decode", default="annealed", choices=DECODERS,
                        help="313-bin heads: 'annealed' (default) is the paper's choice, between the desaturated "
                             "'mean' and the blotchy 'mode'; ignored by l2 heads")
    parser.add_argument("--T", type=float, default=0.38, help="annealing temperature (paper: 0.38)")
    parser.add_argument("--size", type=int, default=None,
                        help="short side the network sees; ab is upsampled to full resolution. Default: the "
                             "checkpoint's training short side (data.resize), else 256; 0 = native resolution")
    parser.add_argument("--grid", action="store_true", help="also write <name>_grid.png: gray | colorized | original")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    parser.add_argument("--device", default="auto", help="'auto' picks CUDA when present, else CPU")


def run(args: argparse.Namespace) -> int:
    from pretext.distributed import pick_device

    print(f"colorbench colorize | git {git_revision()} | args {vars(args)}")
    out = Path(args.out)
    try:
        check_out_dir(out, args.overwrite)
        colorizer = load_colorizer(args.checkpoint, pick_device(args.device), args.size, args.decode, args.T)
    except (ValueError, FileNotFoundError) as exc:  # ColorizeError, unreadable or foreign checkpoints
        print(f"colorbench colorize: {exc}", file=sys.stderr)
        return 2
    try:
        how = "ab regression (l2 head)" if colorizer.regression else f"{colorizer.decode} decoding (T={colorizer.T})"
        print(f"{colorizer.encoder} ({colorizer.loss}), {how}, network short side "
              f"{colorizer.size or 'native'}, output at full input resolution")
        written, skipped = colorize_paths(colorizer, args.inputs, out, args.grid)
    except ColorizeError as exc:
        print(f"colorbench colorize: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} image(s) to {out}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
        for bad in skipped:
            print(f"  {bad.path}: {bad.reason}{f' ({bad.detail})' if bad.detail else ''}", file=sys.stderr)
    return 0 if written else 1
