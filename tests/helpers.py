"""Small data sets written on the fly for tests (no ../shared needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# class -> (hue RGB of the object); backgrounds are gray-green with noise
CLASS_COLOURS = {"red_disc": (200, 40, 40), "blue_square": (40, 60, 200), "yellow_bar": (220, 200, 40)}


def tiny_image(rng: np.random.Generator, colour, size: int) -> Image.Image:
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = (90, 120, 80)
    img += rng.normal(0, 8, img.shape)
    y0, x0 = rng.integers(0, size // 3, 2)
    h, w = rng.integers(size // 3, size // 2, 2)
    img[y0:y0 + h, x0:x0 + w] = np.asarray(colour) * rng.uniform(0.6, 1.0)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def tiny_imagefolder(root: Path, per_class: int = 8, size: int = 48, seed: int = 0) -> Path:
    """root/{train,val}/<class>/*.png with colours that follow the class."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(2, per_class // 2))):
        for name, colour in CLASS_COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                tiny_image(rng, colour, size).save(folder / f"{i:03d}.png")
    return root
