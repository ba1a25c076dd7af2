"""``colorbench study create``: the design of a real-vs-fake study, written to a folder.

    STUDY/manifest.json   the design: photos, methods, pairs (which side is fake), settings
    STUDY/images/*.png    every image shown, re-encoded to PNG at one size per pair

Each test pair is a ground-truth photo beside one method's colorization of it (matched by
file name: the path under the folder without its extension, so ``class/x.JPEG`` pairs with
``class/x.png`` as ``colorbench colorize`` writes it). A stochastic method's folder from
``colorize --samples N`` (``class/x_s0.png`` ...) gives one fake per sample, or only the
sample ``--sample J`` (``samples.py``). Both images of a pair are decoded,
resized the same way and saved as PNG with opaque names, so nothing but colour tells them
apart (not a file name, not JPEG artefacts, not metadata).

Designs (who sees what):
- ``latin`` (default): every rater sees each photo once, paired with one method; methods
  rotate over photos and raters (rater k gets block k mod M), so M consecutive raters
  judge every (photo, method) pair once. This keeps the paper's condition that no one
  sees the same photo twice, which would let them spot the real one by memory.
- ``all``: every rater judges every (photo, method) pair (each photo M times).

Sanity pairs (ground truth vs an obviously wrong colorization: R and B swapped, or hue
rotated by 180 degrees) screen out inattentive raters. Practice pairs, of the same kind,
come first with feedback (the paper's sessions began with 10 practice trials with
feedback) and are never analysed.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from downstream.study import StudyError
from downstream.study.samples import Condition, method_conditions

FORMAT = "colorbench-study-v1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm"}
SANITY_KINDS = ("channel_swap", "hue_rotate")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def parse_method(spec: str) -> tuple[str, Path]:
    """``NAME=DIR`` -> (name, folder); names are plain words so records and URLs stay clean."""
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise StudyError(f"--method {spec!r}: expected NAME=DIR, e.g. --method zhang_full=colorized/")
    if not NAME_RE.match(name):
        raise StudyError(f"--method {spec!r}: the name may hold letters, digits and _ . + - only")
    return name, Path(folder)


def index_images(folder: Path, what: str) -> dict[str, Path]:
    """Relative path without suffix -> file, for every image under ``folder`` (recursive)."""
    if not folder.is_dir():
        raise StudyError(f"{what} {folder}: no such folder")
    found: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for fname in sorted(files):
            path = Path(root) / fname
            if fname.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            key = path.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                raise StudyError(f"{what} {folder}: two images share the name {key!r} "
                                 f"({found[key].name}, {fname}); keep one")
            found[key] = path
    if not found:
        raise StudyError(f"{what} {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    return found


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise StudyError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def _examples(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def check_methods(real: dict[str, Path], methods: dict[str, dict[str, Path]], dirs: dict[str, Path]) -> dict[str, tuple]:
    """Every real photo needs a colorization of the same size in every method folder.

    Returns key -> (width, height). Extra files in a method folder (``*_grid.png``, photos
    not in the study) are ignored."""
    sizes = {key: header_size(path) for key, path in real.items()}
    for name, files in methods.items():
        missing = sorted(k for k in real if k not in files)
        if missing:
            raise StudyError(f"method {name!r} ({dirs[name]}) lacks colorizations of {len(missing)} of {len(real)} "
                             f"photos: {_examples(missing)} (matched by file name without extension)")
        bad = [(k, header_size(files[k])) for k in sorted(real)]
        bad = [f"{k}: {s[0]}x{s[1]} vs ground truth {sizes[k][0]}x{sizes[k][1]}" for k, s in bad if s != sizes[k]]
        if bad:
            raise StudyError(f"method {name!r}: {len(bad)} colorization(s) differ in size from the ground truth, "
                             f"e.g. {_examples(bad, 2)}")
    return sizes


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Süsstrunk (2003) colourfulness; sanity pairs use the most colourful
    photos so that swapped or rotated colours are plainly wrong."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def is_gray(rgb: np.ndarray) -> bool:
    # a ground truth with no colour makes the pair meaningless (within 4 levels of gray)
    return int((rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)).max()) <= 4


def wrong_colours(im: Image.Image, kind: str) -> Image.Image:
    """An obviously wrong colorization of ``im`` for a sanity pair."""
    if kind == "channel_swap":  # red <-> blue: blue faces, orange skies
        r, g, b = im.split()
        return Image.merge("RGB", (b, g, r))
    if kind == "hue_rotate":  # 180 degrees round the HSV hue circle; saturation and value kept
        h, s, v = im.convert("HSV").split()
        h = h.point(lambda x: (x + 128) % 256)
        return Image.merge("HSV", (h, s, v)).convert("RGB")
    raise ValueError(f"unknown sanity kind {kind!r}; choose from {SANITY_KINDS}")


def load_shown(path: Path, max_side: int) -> Image.Image:
    """Decode (with the suite's decoder: CMYK, 16-bit, alpha handled) and shrink to ``max_side``."""
    from pretext.data.images import BadImage, decode_image

    try:
        im = decode_image(str(path))[0]
    except BadImage as exc:
        raise StudyError(f"cannot use {exc}") from None
    if max_side and max(im.size) > max_side:
        scale = max_side / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
    return im


class ImageWriter:
    """Saves PNGs under opaque random names (the name must not say real or fake)."""

    def __init__(self, folder: Path, rng: random.Random):
        self.folder, self.rng = folder, rng
        folder.mkdir(parents=True)

    def save(self, im: Image.Image) -> str:
        name = f"{self.rng.getrandbits(64):016x}.png"
        im.save(self.folder / name, format="PNG")
        return f"images/{name}"


def _balanced_sides(n: int, rng: random.Random) -> list[str]:
    """Where the fake goes: half left, half right (one more at random when n is odd)."""
    sides = ["left", "right"] * (n // 2) + ([rng.choice(["left", "right"])] if n % 2 else [])
    rng.shuffle(sides)
    return sides


def _pair(pid: str, kind: str, photo: str, method: str, real: str, fake: str, side: str, block) -> dict:
    left, right = (fake, real) if side == "left" else (real, fake)
    return {"id": pid, "kind": kind, "photo": photo, "method": method, "left": left, "right": right,
            "fake": side, "block": block}


def _check_args(method_specs: list[str], out: Path, photos, sanity, practice, design, exposure, max_side,
                consent_file, sample=None) -> tuple[list[tuple[str, Path]], str | None]:
    """Everything that can be refused before reading a pixel; returns (methods, consent text)."""
    if design not in ("latin", "all"):
        raise StudyError(f"--design {design!r}: choose latin or all")
    if not 0.05 <= exposure <= 60:
        raise StudyError(f"--exposure {exposure}: expected seconds between 0.05 and 60 (the paper used 1)")
    if sanity < 0 or practice < 0 or (photos is not None and photos < 1) or max_side < 0 or (sample or 0) < 0:
        raise StudyError("--sanity, --practice, --max-side and --sample must be >= 0, --photos >= 1")
    parsed = [parse_method(s) for s in method_specs]
    if not parsed:
        raise StudyError("give at least one --method NAME=DIR")
    names = [n for n, _ in parsed]
    if len(set(names)) != len(names):
        raise StudyError(f"--method names must differ; got {names}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise StudyError(f"--out {out} already exists and is not empty; a study folder holds one design "
                         "(and its answers): choose a new folder")
    if consent_file is None:
        return parsed, None
    try:
        return parsed, Path(consent_file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise StudyError(f"--consent {consent_file}: {getattr(exc, 'strerror', None) or exc}") from None


def _test_pairs(test_keys: list[str], conditions: list[Condition], shown: dict, design: str,
                writer: ImageWriter, rng: random.Random, max_side: int) -> list[dict]:
    """Every (photo, condition) pair (a condition: a method, or one sample of a sampled
    method). Latin blocks: photo i goes with condition (i + b) mod M in block b, so each
    block holds every photo once; sides are balanced per (block, condition)."""
    groups: dict[tuple, list] = {}
    for i, key in enumerate(test_keys):
        for m in range(len(conditions)):
            block = (m - i) % len(conditions) if design == "latin" else 0
            groups.setdefault((block, m), []).append(key)
    pairs = []
    for (block, m), group in sorted(groups.items()):
        cond = conditions[m]
        for key, side in zip(group, _balanced_sides(len(group), rng)):
            real_im, real_png = shown[key]
            fake = load_shown(cond.files[key], max_side)
            if fake.size != real_im.size:  # the headers agreed; a decoder that disagrees is worth stopping for
                raise StudyError(f"method {cond.label!r}: {key} decodes to {fake.size}, ground truth to {real_im.size}")
            pair = _pair("", "test", key, cond.method, real_png, writer.save(fake), side, block)
            pairs.append(pair if cond.sample is None else {**pair, "sample": cond.sample})
    return pairs


def _check_pairs(pool: list[str], real: dict[str, Path], shown: dict, sanity: int, practice: int,
                 writer: ImageWriter, rng: random.Random, max_side: int) -> list[dict]:
    """Sanity and practice pairs on the most colourful photos of a sample of ``pool``, so
    that swapped or rotated colours are plainly wrong; the kinds alternate."""
    if not sanity + practice:
        return []
    decoded = {}
    for key in rng.sample(pool, min(len(pool), 48)):
        im = shown[key][0] if key in shown else load_shown(real[key], max_side)
        if not is_gray(np.asarray(im)):
            decoded[key] = im
    ranked = sorted(decoded, key=lambda k: -colourfulness(np.asarray(decoded[k])))
    if not ranked:
        raise StudyError("no colour photo available for sanity/practice pairs")
    saved = {k: v[1] for k, v in shown.items()}
    sides = {"sanity": _balanced_sides(sanity, rng), "practice": _balanced_sides(practice, rng)}
    pairs = []
    for j, kind in enumerate(["sanity"] * sanity + ["practice"] * practice):
        key, how = ranked[j % len(ranked)], SANITY_KINDS[j % len(SANITY_KINDS)]
        if key not in saved:  # a spare photo: its real image is written once, however often it is used
            saved[key] = writer.save(decoded[key])
        fake_png = writer.save(wrong_colours(decoded[key], how))
        pairs.append(_pair("", kind, key, f"{kind}:{how}", saved[key], fake_png, sides[kind].pop(), None))
    return pairs


def create_study(real_dir: Path, method_specs: list[str], out: Path, *, photos: int | None = None,
                 sanity: int = 4, practice: int = 2, design: str = "latin", exposure: float = 1.0,
                 max_side: int = 256, seed: int = 0, dataset: str | None = None,
                 consent_file: Path | None = None, sample: int | None = None) -> dict:
    """Validate the inputs, write ``out/images`` and ``out/manifest.json``; return the manifest.
    ``sample``: only that sample of sampled method folders (default: each sample a fake).
    The study is built in a temporary sibling folder and renamed into place, so a failure
    half-way leaves nothing behind."""
    from tqdm import tqdm

    out = Path(out)
    parsed, consent = _check_args(method_specs, out, photos, sanity, practice, design, exposure, max_side,
                                  consent_file, sample)
    real = index_images(Path(real_dir), "--real")
    dirs = dict(parsed)
    conditions = [c for n, d in parsed for c in method_conditions(n, index_images(d, f"--method {n}"), sorted(real),
                                                                   sample)]
    check_methods(real, {c.label: c.files for c in conditions}, {c.label: dirs[c.method] for c in conditions})

    rng = random.Random(seed)
    keys = sorted(real)
    chosen = sorted(rng.sample(keys, photos)) if photos and photos < len(keys) else keys
    spare = sorted(set(keys) - set(chosen))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        writer = ImageWriter(tmp / "images", rng)
        shown, skipped_gray = {}, []  # photo -> (image as shown, its PNG)
        for key in tqdm(chosen, desc="study photos", unit="photo", disable=None):
            im = load_shown(real[key], max_side)
            if is_gray(np.asarray(im)):
                skipped_gray.append(key)
                continue
            shown[key] = (im, writer.save(im))
        if not shown:
            raise StudyError(f"--real {real_dir}: every chosen photo is grayscale; a real-vs-fake test needs colour")
        test_keys = list(shown)
        rng.shuffle(test_keys)  # the order fixes the latin rotation: shuffled, not alphabetical
        pairs = _test_pairs(test_keys, conditions, shown, design, writer, rng, max_side)
        # sanity/practice photos from outside the test when there are enough: seeing a test
        # photo's real colours in a sanity pair would help spot its fake later
        pool = spare if len(spare) >= sanity + practice else test_keys
        pairs += _check_pairs(pool, real, shown, sanity, practice, writer, rng, max_side)
        for i, p in enumerate(pairs):
            p["id"] = f"p{i + 1:04d}"
        manifest = {
            "format": FORMAT, "dataset": dataset or Path(real_dir).resolve().name, "seed": seed,
            "real_dir": str(Path(real_dir).resolve()), "methods": [n for n, _ in parsed],
            "method_dirs": {n: str(d.resolve()) for n, d in parsed},
            "samples": {n: [c.sample for c in conditions if c.method == n] for n, _ in parsed
                        if any(c.sample is not None for c in conditions if c.method == n)},
            "conditions": len(conditions), "design": design, "blocks": len(conditions) if design == "latin" else 1,
            "exposure_ms": round(exposure * 1000), "max_side": max_side,
            "photos": test_keys, "skipped_gray": skipped_gray, "sanity_photos_in_test": pool is test_keys,
            "consent_text": consent, "pairs": pairs,
        }
        write_json(tmp / "manifest.json", manifest)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a study folder is an ordinary folder
        os.replace(tmp, out)  # onto a missing or empty folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def write_json(path: Path, payload: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def load_manifest(study: Path) -> dict:
    path = Path(study) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(f"{study}: not a study folder (no manifest.json); make one with 'colorbench study create'") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise StudyError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StudyError(f"{path}: not a {FORMAT} manifest")
    return manifest


def rater_plan(manifest: dict, rater_index: int) -> list[str]:
    """The pair ids rater ``rater_index`` (0, 1, ...) judges, in order; the same on every
    call, so a rater who leaves resumes where they were. Practice first, then the rater's
    block of test pairs and the sanity pairs shuffled together."""
    block = rater_index % manifest["blocks"]
    pairs = manifest["pairs"]
    practice = [p["id"] for p in pairs if p["kind"] == "practice"]
    rest = [(p["id"], p["photo"]) for p in pairs
            if p["kind"] == "sanity" or (p["kind"] == "test" and p["block"] == block)]
    rng = random.Random(f"{manifest['seed']}:{rater_index}")
    best, best_repeats = list(rest), None
    for _ in range(200):  # no photo twice in a row: side-by-side memory would give the answer away
        rng.shuffle(rest)
        repeats = sum(a[1] == b[1] for a, b in zip(rest, rest[1:]))
        if best_repeats is None or repeats < best_repeats:
            best, best_repeats = list(rest), repeats
        if repeats == 0:
            break
    return practice + [pid for pid, _ in best]
