"""What a segmentation run leaves behind: predictions as VOC palette PNGs and a
side-by-side picture (image | prediction | truth) of a few validation images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pretext.data.synthetic.voc_writer import voc_palette
from pretext.engine.checkpoint import atomic_write


def label_image(labels: np.ndarray) -> Image.Image:
    """uint8 [H, W] class indices -> a mode "P" image with VOC's colour map."""
    im = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L")
    im.putpalette(voc_palette())  # "L" -> "P", pixel values unchanged
    return im


def save_label_png(path: str | Path, labels: np.ndarray) -> None:
    """A prediction as VOC writes its ground truth: palette PNG, pixel = class index."""
    im = label_image(labels)
    atomic_write(path, lambda f: im.save(f, format="PNG"))


def side_by_side(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]], min_height: int = 128,
                 gap: int = 4) -> Image.Image:
    """One row per image: RGB uint8 [H, W, 3] | prediction [H, W] | truth [H, W]
    (palette colours; truth's 255 border in VOC's cream), scaled up (nearest) to at
    least ``min_height`` pixels."""
    tiles = []
    for rgb, pred, truth in rows:
        scale = max(1, -(-min_height // rgb.shape[0]))
        cells = [Image.fromarray(rgb), label_image(pred).convert("RGB"), label_image(truth).convert("RGB")]
        tiles.append([c.resize((c.width * scale, c.height * scale), Image.NEAREST) for c in cells])
    width = max(sum(c.width for c in row) + gap * 2 for row in tiles)
    height = sum(row[0].height for row in tiles) + gap * (len(tiles) - 1)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    for row in tiles:
        x = 0
        for cell in row:
            sheet.paste(cell, (x, y))
            x += cell.width + gap
        y += row[0].height + gap
    return sheet


def save_side_by_side(path: str | Path, rows: list) -> None:
    if rows:
        sheet = side_by_side(rows)
        atomic_write(path, lambda f: sheet.save(f, format="PNG"))
