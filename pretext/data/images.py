"""Decoding one image file into RGB, or a reason why it cannot be used.

Truncated, corrupt, empty and missing files raise ``BadImage`` with a reason (a stable
metric key); CMYK, RGBA, palette, 16-bit and grayscale files are converted.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile

log = logging.getLogger(__name__)


# Skip reasons (stable metric keys). ``grayscale_excluded`` is also added by the
# trainer when its batched on-device non-gray rule drops an image.
REASONS = ("truncated", "corrupt", "empty", "missing", "unsupported", "grayscale_excluded")


# Modes that carry no colour at all (the file itself is grayscale).
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class BadImage(Exception):
    """A file that cannot be used as an image; ``reason`` is one of ``REASONS``."""

    def __init__(self, path: str, reason: str, detail: str = ""):
        super().__init__(f"{path}: {reason} ({detail})" if detail else f"{path}: {reason}")
        self.path, self.reason, self.detail = str(path), reason, detail


class BadSample(NamedTuple):
    """What the dataset returns instead of a sample; plain data, so it pickles across workers."""
    index: int
    path: str
    reason: str
    detail: str = ""


@contextmanager
def _strict_truncation():
    # Some libraries set ImageFile.LOAD_TRUNCATED_IMAGES = True globally; PIL then pads
    # a truncated JPEG with grey and we would train on it silently. Force it off while
    # we decode, and restore whatever the caller had.
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _classify(err: Exception) -> str:
    # PIL reports truncation as OSError("image file is truncated ...") or
    # OSError("Truncated File Read"), sometimes EOFError; anything else is corruption.
    if isinstance(err, Image.DecompressionBombError):
        return "unsupported"
    if isinstance(err, EOFError) or "truncat" in str(err).lower():
        return "truncated"
    return "corrupt"


def _sixteen_to_l(im: Image.Image) -> Image.Image:
    # PIL's own I -> L conversion clips at 255; 16-bit data must be scaled instead.
    # Rounded v / 257 maps 0..65535 exactly onto 0..255 (65535 -> 255, 32896 -> 128).
    # Mode I (32-bit) is read as 16-bit data; values outside 0..65535 are clipped.
    a = np.asarray(im).astype(np.int64)
    a = np.clip((a + 128) // 257, 0, 255).astype(np.uint8)
    return Image.fromarray(a, "L")


def _on_white(im: Image.Image) -> Image.Image:
    # Transparent pixels have undefined colour (often black or junk); compositing on
    # white gives them neutral ab = 0 instead of inventing colour, and matches how
    # viewers show them. Opaque pixels keep their exact values.
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")


def _to_rgb(im: Image.Image, path: str) -> Image.Image:
    """8-bit RGB from any PIL mode. CMYK uses PIL's naive (no ICC) conversion,
    R = (255 - C)(255 - K) / 255; 48-bit RGB PNGs arrive as RGB already (PIL keeps
    the high byte, within 1 of v / 257)."""
    if im.mode == "F":
        # Float images have no agreed range (0..1? 0..255? HDR?): refuse, don't guess.
        raise BadImage(path, "unsupported", "32-bit float image")
    if im.mode in _SIXTEEN_BIT:
        im = _sixteen_to_l(im)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        return _on_white(im)
    if im.mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError as e:  # e.g. LAB, exotic modes PIL cannot map to RGB
        raise BadImage(path, "unsupported", f"mode {im.mode}: {e}") from None


def decode_image(path: str) -> tuple[Image.Image, str]:
    """(RGB image, the file's own PIL mode); raises ``BadImage``."""
    try:
        f = open(path, "rb")
    except OSError as e:  # not found, permission denied, a directory...
        raise BadImage(path, "missing", str(e)) from None
    with f, _strict_truncation():
        if os.fstat(f.fileno()).st_size == 0:
            raise BadImage(path, "empty", "zero-byte file")
        try:
            im = Image.open(f)
            im.load()  # decode now, inside the strict block, so truncation raises here
        except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:
            raise BadImage(path, _classify(e), f"{type(e).__name__}: {e}") from None
    return _to_rgb(im, path), im.mode


def load_rgb(path: str) -> Image.Image:
    """Decode ``path`` to an 8-bit RGB PIL image or raise ``BadImage``.

    Conversions: gray / 1-bit -> replicated channels; 16-bit (I;16*, I) -> v / 257,
    rounded; alpha (RGBA, LA, PA, P or RGB with a transparency key) -> composited on
    white; CMYK -> PIL's naive formula (no colour management; ICC profiles ignored).
    """
    return decode_image(path)[0]
