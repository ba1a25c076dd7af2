"""Scenes of the built-in benchmark: the shape classes, their colours and lightness,
backgrounds and clutter, painted in Lab (see ``generate``'s docstring for why).

Colours are built in Lab (L fixed per pixel, ab from the hue, chroma limited to the
sRGB gamut at that L) so converting to sRGB does not move the lightness.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image

_XYZ_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


@dataclass(frozen=True)
class ShapeClass:
    name: str
    hue: float  # class-typical Lab hue angle atan2(b, a), degrees
    inside: Callable[[np.ndarray, np.ndarray], np.ndarray]  # unit-radius local (u, v) -> bool


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    return rho <= 0.4 + 0.6 * ((1.0 + np.cos(5.0 * phi)) / 2.0) ** 2


# Hues 45 degrees apart, so a jittered hue (sd 8) still points at its own class.
# Every shape fits in the unit disc, so a placement's radius bounds its extent.
SHAPE_CLASSES = (
    ShapeClass("disc", 45.0, lambda u, v: u * u + v * v <= 1.0),
    ShapeClass("square", 90.0, lambda u, v: np.maximum(abs(u), abs(v)) <= 0.7),
    ShapeClass("triangle", 135.0, lambda u, v: (v >= -0.5) & (np.sqrt(3) * abs(u) + v <= 1.0)),
    ShapeClass("star", 180.0, _star),
    ShapeClass("ring", 225.0, lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.3)),
    ShapeClass("cross", 270.0, lambda u, v: (np.minimum(abs(u), abs(v)) <= 0.28) & (np.maximum(abs(u), abs(v)) <= 0.95)),
    ShapeClass("ellipse", 315.0, lambda u, v: u * u + (v / 0.5) ** 2 <= 1.0),
    ShapeClass("bar", 0.0, lambda u, v: (abs(u) <= 0.95) & (abs(v) <= 0.28)),
)


CLASSES = [c.name for c in SHAPE_CLASSES]


OFF_COLOUR_P = 0.12   # share of objects whose hue ignores their class (real objects vary too)


HUE_JITTER_SD = 8.0   # degrees


_XYZ_TO_LINEAR_RGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                               [-0.9692660, 1.8760108, 0.0415560],
                               [0.0556434, -0.2040259, 1.0572252]])


def lab_to_linear_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab [..., 3] (D65) -> unclipped linear sRGB [..., 3]; outside [0, 1] = out of gamut."""
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f ** 3, 3 * delta ** 2 * (f - 4.0 / 29.0)) * _XYZ_WHITE_D65
    return xyz @ _XYZ_TO_LINEAR_RGB.T


def lab_to_srgb8(lab: np.ndarray) -> np.ndarray:
    """Lab [H, W, 3] -> uint8 sRGB [H, W, 3]."""
    lin = np.clip(lab_to_linear_rgb(lab), 0.0, 1.0)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)
    return np.round(srgb * 255.0).astype(np.uint8)


@lru_cache(maxsize=None)
def _max_chroma_table() -> np.ndarray:
    """[100, 180] largest in-gamut chroma for L in [i, i+1], hue in [2j, 2j+2] degrees.
    Limiting chroma (never lightness) keeps every pixel in gamut, so sRGB clipping cannot
    shift L by hue, which would leak the class into the lightness channel."""
    hues = np.deg2rad(np.arange(0.0, 362.0, 2.0))[:, None]   # [181, 1]
    chromas = np.arange(0.0, 151.0)[None, :]                  # [1, 151]
    cmax = np.empty((101, hues.shape[0]))
    for i in range(101):
        lab = np.stack(np.broadcast_arrays(float(i), chromas * np.cos(hues), chromas * np.sin(hues)), axis=-1)
        rgb = lab_to_linear_rgb(lab)
        ok = np.logical_and.accumulate(np.all((rgb >= -1e-6) & (rgb <= 1 + 1e-6), axis=-1), axis=-1)
        cmax[i] = ok.sum(-1) - 1
    # the gamut is curved between grid nodes: take the smallest corner, minus a margin
    corners = np.minimum(np.minimum(cmax[:-1, :-1], cmax[1:, :-1]), np.minimum(cmax[:-1, 1:], cmax[1:, 1:]))
    return np.maximum(corners - 1.0, 0.0)


def gamut_chroma(lightness: np.ndarray, hue_deg: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    table = _max_chroma_table()
    li = np.clip(lightness.astype(np.int64), 0, 99)
    hj = np.clip((np.mod(hue_deg, 360.0) / 2.0).astype(np.int64), 0, 179)
    return np.minimum(chroma, table[li, hj])


# ---------------------------------------------------------------- geometry --------
@dataclass(frozen=True)
class Placement:
    cls: int
    cx: float  # centre, pixels
    cy: float
    r: float  # radius of the disc that holds the shape, pixels
    angle: float  # radians


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    return ys, xs


def shape_mask(p: Placement, size: int) -> np.ndarray:
    """bool [size, size]: pixels whose centre lies inside the placed shape."""
    ys, xs = _grid(size)
    dx, dy = (xs - p.cx) / p.r, (ys - p.cy) / p.r
    c, s = np.cos(p.angle), np.sin(p.angle)
    return SHAPE_CLASSES[p.cls].inside(c * dx + s * dy, -s * dx + c * dy)


def _random_placement(rng: np.random.Generator, size: int, radius: tuple[float, float],
                      centre: tuple[float, float] = (0.0, 1.0), cls: int | None = None) -> Placement:
    kind = int(rng.integers(len(CLASSES))) if cls is None else cls
    cx, cy = size * rng.uniform(*centre, size=2)
    return Placement(kind, float(cx), float(cy), float(size * rng.uniform(*radius)), float(rng.uniform(0, 2 * np.pi)))


def imagefolder_scene(rng: np.random.Generator, size: int, cls: int) -> list[Placement]:
    """Small clutter of random classes behind one large, central-ish object of ``cls``;
    sometimes one more clutter object in front, so the main object is not always whole."""
    behind = [_random_placement(rng, size, (0.06, 0.13)) for _ in range(int(rng.integers(0, 4)))]
    main = _random_placement(rng, size, (0.22, 0.34), centre=(0.35, 0.65), cls=cls)
    front = [_random_placement(rng, size, (0.06, 0.12))] if rng.random() < 0.2 else []
    return behind + [main] + front


def voc_scene(rng: np.random.Generator, size: int) -> tuple[list[Placement], list[np.ndarray], np.ndarray]:
    """1-4 objects anywhere (some cut by the border, some hiding others). Objects left
    with almost no visible pixels are dropped: nobody could annotate them."""
    min_visible = max(4, int(0.003 * size * size))
    while True:
        count = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.3, 0.2, 0.15]))
        placements = [_random_placement(rng, size, (0.08, 0.3), centre=(0.1, 0.9)) for _ in range(count)]
        masks = [shape_mask(p, size) for p in placements]
        visible = np.bincount(instance_map(masks).ravel(), minlength=count + 1)[1:]
        keep = [k for k in range(count) if visible[k] >= min_visible]
        if keep:  # dropping an object only uncovers others, so one pass is enough
            masks = [masks[k] for k in keep]
            return [placements[k] for k in keep], masks, instance_map(masks)


def instance_map(masks: list[np.ndarray]) -> np.ndarray:
    """int32 [H, W]: 0 = background, k + 1 = the k-th mask where it is on top."""
    inst = np.zeros(masks[0].shape, dtype=np.int32)
    for k, mask in enumerate(masks):
        inst[mask] = k + 1
    return inst


# ---------------------------------------------------------------- painting --------
def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in about [-1, 1]: a cells x cells random grid, bicubically upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L, hue, chroma) [size, size]: sky gradient above a tilted, wavy horizon,
    textured green or brown ground below. Drawn without looking at the objects."""
    ys, xs = _grid(size)
    horizon = size * (rng.uniform(0.3, 0.7) + rng.uniform(-0.15, 0.15) * (xs / size - 0.5)
                      + rng.uniform(0.0, 0.05) * np.sin(2 * np.pi * rng.uniform(0.5, 2.0) * xs / size + rng.uniform(0, 2 * np.pi)))
    t = np.clip(ys / horizon, 0.0, 1.0)  # 0 at the top, 1 at the horizon
    sky_chroma = rng.uniform(0.0, 6.0) if rng.random() < 0.15 else rng.uniform(15.0, 40.0)  # overcast or blue
    sky = (rng.uniform(50.0, 72.0) + rng.uniform(4.0, 12.0) * t, np.full_like(t, rng.uniform(225.0, 265.0)),
           sky_chroma * (1.0 - 0.5 * t))  # lighter and greyer towards the horizon
    green = rng.random() < 0.6
    hue = rng.uniform(120.0, 145.0) if green else rng.uniform(60.0, 80.0)
    chroma = rng.uniform(15.0, 35.0) if green else rng.uniform(10.0, 28.0)
    cells = int(rng.integers(4, 9))
    ground = (rng.uniform(30.0, 60.0) + rng.uniform(5.0, 12.0) * _value_noise(rng, size, cells)
              + rng.normal(0.0, 1.5, size=(size, size)),  # blotches + grain
              hue + 6.0 * _value_noise(rng, size, cells), chroma * (1.0 + 0.25 * _value_noise(rng, size, cells)))
    is_sky = ys < horizon
    return tuple(np.where(is_sky, s, g) for s, g in zip(sky, ground))


def _object_lightness(rng: np.random.Generator, p: Placement, size: int, base: float) -> np.ndarray:
    """[size, size] lightness of an object: flat, shaded, striped or blotchy, chosen
    independently of the class so lightness patterns do not name the class."""
    ys, xs = _grid(size)
    kind = int(rng.integers(4))
    theta = rng.uniform(0, 2 * np.pi)
    along = ((xs - p.cx) * np.cos(theta) + (ys - p.cy) * np.sin(theta)) / p.r  # ~[-1, 1] on the object
    if kind == 1:  # shading
        return base + rng.uniform(8.0, 22.0) * along
    if kind == 2:  # stripes, at least 3 px a period so they survive at small sizes
        cycles = min(rng.uniform(1.0, 3.0), p.r / 3.0)
        return base + rng.uniform(5.0, 12.0) * np.sin(2 * np.pi * cycles * along + rng.uniform(0, 2 * np.pi))
    if kind == 3:  # blotches about half the object's radius across
        cells = int(np.clip(2 * size / p.r, 3, 16))
        return base + rng.uniform(8.0, 18.0) * _value_noise(rng, size, cells)
    return np.full((size, size), base)


def _base_lightness(rng: np.random.Generator, local: float) -> float:
    """An object's mean lightness: the mean lightness of what it hides, moved up
    or down with equal odds by the same amount. Symmetric, so on average an object is
    as light as what it hides: otherwise its area (which depends on the class) would
    show in the mean lightness of its pixels, a linear cue to the class."""
    room = float(np.clip(min(local - 8.0, 95.0 - local), 6.0, 40.0))
    return local + (1.0 if rng.random() < 0.5 else -1.0) * rng.uniform(0.4, 1.0) * room


def _object_colour(rng: np.random.Generator, cls: int, class_colours: bool) -> tuple[float, float]:
    """(hue, chroma). The same draws happen either way, so with ``class_colours=False``
    a seed gives the same scenes and lightness, only the hues change (the ablation)."""
    off_colour, jitter, any_hue = rng.random() < OFF_COLOUR_P, rng.normal(0.0, HUE_JITTER_SD), rng.uniform(0, 360)
    chroma = rng.uniform(30.0, 70.0)
    if off_colour or not class_colours:
        return float(any_hue), float(chroma)
    return float((SHAPE_CLASSES[cls].hue + np.clip(jitter, -20, 20)) % 360.0), float(chroma)


def paint(rng: np.random.Generator, size: int, placements: list[Placement], masks: list[np.ndarray],
          class_colours: bool = True) -> np.ndarray:
    """Lab float [size, size, 3] of a scene; later placements cover earlier ones."""
    lightness, hue, chroma = _background(rng, size)
    for p, mask in zip(placements, masks):
        hidden = float(lightness[mask].mean()) if mask.any() else float(lightness.mean())
        obj_l = _object_lightness(rng, p, size, _base_lightness(rng, hidden))
        obj_hue, obj_chroma = _object_colour(rng, p.cls, class_colours)
        lightness[mask], hue[mask], chroma[mask] = obj_l[mask], obj_hue, obj_chroma
    lightness = np.clip(lightness, 3.0, 97.0)
    chroma = gamut_chroma(lightness, hue, np.maximum(chroma, 0.0))
    rad = np.deg2rad(hue)
    return np.stack([lightness, chroma * np.cos(rad), chroma * np.sin(rad)], axis=-1)
