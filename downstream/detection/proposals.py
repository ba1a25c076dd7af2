"""Region proposals for Fast R-CNN: selective search cached per image, or a user's file.

Selective search (Uijlings et al., the proposals of Fast R-CNN; OpenCV's
``cv2.ximgproc.segmentation``) runs once per image in worker processes
behind a progress bar. Each image's boxes go to their own file
``<cache_dir>/ss-<hash>/<image_id>.npz``, written atomically
(``pretext.engine.checkpoint.atomic_write``): an interrupted run resumes where it
stopped, and two runs on the same data (a colorization and a Gaussian trunk) share one
cache. The folder's hash covers the VOC folder and the search settings; its
``meta.json`` says which. An unreadable image (e.g. a truncated JPEG) is cached as
such, with its reason, and the harness skips it.

Users who have the classic proposal sets load them instead (``source: file``):

* ``.mat`` with cells ``images`` (ids) and ``boxes`` (one [K, 4] array per image), as
  Fast R-CNN's ``selective_search_data/voc_2007_{trainval,test}.mat`` (name the file
  ``.../voc_2007_{split}.mat``: ``{split}`` becomes each split's name): boxes 1-based
  ``y1 x1 y2 x2`` (``box_order: auto`` reads .mat files that way); read with scipy.
* ``.npz`` with one [K, 4] array per image id: 1-based ``x1 y1 x2 y2`` (VOC pixels, as
  the annotations).

Every box returned here is float32 [K, 4] ``x1 y1 x2 y2`` in continuous 0-based pixel
coordinates of the original image (a VOC box ``xmin..xmax``, 1-based and inclusive, is
``xmin - 1 .. xmax``), clipped to the image; duplicates and boxes thinner than
``min_size`` pixels are dropped.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pretext.data.images import BadImage, load_rgb
from pretext.engine.checkpoint import atomic_write, atomic_write_text

CACHE_VERSION = 1  # bump whenever the same settings would give other boxes
SOURCES = ("selective_search", "file")
MODES = ("fast", "quality", "single")


@dataclass
class ProposalConfig:
    source: str = "selective_search"  # selective_search | file (a user's .npz / .mat proposals)
    file: str = ""  # source=file: .npz / .mat; "{split}" in the name is replaced (voc_2007_{split}.mat)
    box_order: str = "auto"  # file boxes: xyxy | yxyx | auto (.mat: yxyx as Fast R-CNN's files; .npz: xyxy)
    mode: str = "fast"  # fast (Fast R-CNN's, ~2k per VOC image) | quality (slower, more) | single (see search_single)
    k: int = 150  # graph segmentation scale (OpenCV's fast-mode default); smaller -> more, smaller regions
    min_region: int = 0  # single mode: smallest segment in pixels (0 = k, as Uijlings et al.)
    max_boxes: int = 2000  # Fast R-CNN used ~2k selective search boxes per image
    min_side: int = 0  # search on a copy upscaled to this short side (tiny images give few regions)
    min_size: float = 2.0  # drop boxes narrower or shorter than this (original pixels)
    cache_dir: str = "runs/cache/proposals"  # one .npz per image under a folder per data set + settings
    workers: int = 2  # selective search processes (1 = in this process)


def check_proposal_config(cfg: ProposalConfig) -> None:
    if cfg.source not in SOURCES:
        raise ValueError(f"proposals.source must be one of {SOURCES}, got {cfg.source!r}")
    if cfg.source == "file" and not cfg.file:
        raise ValueError("proposals.source=file needs proposals.file (a .npz or .mat with boxes per image id)")
    if cfg.mode not in MODES:
        raise ValueError(f"proposals.mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.box_order not in ("auto", "xyxy", "yxyx"):
        raise ValueError(f"proposals.box_order must be auto, xyxy or yxyx, got {cfg.box_order!r}")
    if cfg.max_boxes < 1 or cfg.workers < 1:
        raise ValueError("proposals.max_boxes and proposals.workers must be >= 1")


# ---------------------------------------------------------------------------- boxes

def clean_boxes(boxes: np.ndarray, height: int, width: int, min_size: float = 0.0) -> np.ndarray:
    """[K, 4] x1 y1 x2 y2 -> clipped to the image, without duplicates (first kept) and
    without boxes narrower or shorter than ``min_size``: float32 [K', 4]."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = b[:, 0::2].clip(0, width)
    b[:, 1::2] = b[:, 1::2].clip(0, height)
    keep = ((b[:, 2] - b[:, 0]) >= max(min_size, 1e-3)) & ((b[:, 3] - b[:, 1]) >= max(min_size, 1e-3))
    b = b[keep]
    _, first = np.unique(b, axis=0, return_index=True)
    return b[np.sort(first)]


def selective_search(rgb: np.ndarray, mode: str = "fast", k: int = 150, max_boxes: int = 2000,
                     min_side: int = 0, min_region: int = 0) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [K <= max_boxes, 4] x1 y1 x2 y2 (continuous, original
    pixels), in OpenCV's order (larger merged regions later). ``fast`` / ``quality``:
    OpenCV's presets (2 / 5 colour spaces, several k, 2 / 4 strategies); ``single``:
    Uijlings et al.'s single strategy (HSV, one k, colour + texture + size + fill), ~3x
    faster than ``fast``: the built-in benchmark's choice."""
    import cv2

    h, w = rgb.shape[:2]
    scale = max(1.0, min_side / min(h, w)) if min_side else 1.0
    img = np.ascontiguousarray(rgb[:, :, ::-1])  # OpenCV wants BGR
    if scale > 1.0:
        img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(img)
    if mode == "fast":
        ss.switchToSelectiveSearchFast(k, k, 0.8)
    elif mode == "quality":
        ss.switchToSelectiveSearchQuality(k, k, 0.8)
    else:
        seg = cv2.ximgproc.segmentation
        ss.clearImages()
        ss.addImage(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
        ss.addGraphSegmentation(seg.createGraphSegmentation(0.8, float(k), min_region or k))
        ss.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(
            seg.createSelectiveSearchSegmentationStrategyColor(), seg.createSelectiveSearchSegmentationStrategyTexture(),
            seg.createSelectiveSearchSegmentationStrategySize(), seg.createSelectiveSearchSegmentationStrategyFill()))
    rects = ss.process().astype(np.float32).reshape(-1, 4)  # x, y, w, h
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / scale
    return clean_boxes(boxes, h, w)[:max_boxes]


# ---------------------------------------------------------------------------- the cache

class ProposalCache:
    """``<cache_dir>/ss-<hash>/<image_id>.npz`` (``boxes`` float32 [K, 4], ``size`` [H, W],
    and ``bad`` = the reason for an unreadable image)."""

    def __init__(self, cfg: ProposalConfig, voc_root: str):
        settings = {"version": CACHE_VERSION, "voc_root": os.path.abspath(voc_root), "mode": cfg.mode,
                    "k": cfg.k, "max_boxes": cfg.max_boxes, "min_side": cfg.min_side, "min_region": cfg.min_region}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        self.folder = Path(cfg.cache_dir) / f"ss-{digest}"
        self.settings = settings
        self.folder.mkdir(parents=True, exist_ok=True)
        meta = self.folder / "meta.json"
        if not meta.is_file():
            atomic_write_text(meta, json.dumps(settings, indent=1))

    def path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.npz"

    def load(self, image_id: str) -> tuple[np.ndarray, tuple[int, int], str] | None:
        """(boxes, (H, W), bad reason or "") or None when not cached (or unreadable)."""
        try:
            with np.load(self.path(image_id)) as z:
                return z["boxes"], tuple(int(v) for v in z["size"]), str(z["bad"]) if "bad" in z else ""
        except (OSError, ValueError, KeyError, EOFError):
            return None


def _write_entry(path: Path, boxes: np.ndarray, size: tuple[int, int], bad: str = "") -> None:
    extra = {"bad": np.array(bad)} if bad else {}

    def write(f: io.BufferedWriter) -> None:
        np.savez(f, boxes=boxes.astype(np.float32), size=np.array(size, dtype=np.int64), **extra)
    atomic_write(path, write)


def _search_one(job: tuple) -> tuple[str, int, str]:
    """Worker: search one image and write its cache file -> (id, boxes, bad reason)."""
    image_id, image_path, out_path, params = job
    try:
        rgb = np.asarray(load_rgb(image_path))
    except BadImage as exc:
        _write_entry(Path(out_path), np.zeros((0, 4), np.float32), (0, 0), f"{exc.reason}: {exc.detail}"[:300])
        return image_id, 0, exc.reason
    boxes = selective_search(rgb, **params)
    _write_entry(Path(out_path), boxes, rgb.shape[:2])
    return image_id, len(boxes), ""


def _worker_init() -> None:
    import cv2
    cv2.setNumThreads(1)  # one image per process; OpenCV's own threads would only compete


def run_search(jobs: list[tuple], workers: int, desc: str = "selective search") -> float:
    """Run ``_search_one`` over ``jobs`` with a tqdm bar; returns the images per second.
    Workers come from a fork server (a clean process started before any thread): forking
    the caller itself deadlocks when its OpenMP / OpenCV thread pools hold a lock at the
    fork (measured: a hang under pytest without OMP_NUM_THREADS=1)."""
    from tqdm import tqdm

    start = time.perf_counter()
    with tqdm(total=len(jobs), desc=desc, unit="img", mininterval=2.0, leave=False) as bar:
        if workers <= 1 or len(jobs) <= 1:
            _worker_init()
            for job in jobs:
                _search_one(job)
                bar.update()
        else:
            ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
            with ctx.Pool(workers, initializer=_worker_init) as pool:
                for _ in pool.imap_unordered(_search_one, jobs, chunksize=2):
                    bar.update()
    return len(jobs) / max(time.perf_counter() - start, 1e-9)


def cached_selective_search(items: list[tuple[str, str]], cfg: ProposalConfig, voc_root: str,
                            say=print) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, int]], dict[str, str]]:
    """Proposals of ``items`` ((image id, image path) pairs), searching only the images
    not cached yet -> ({id: boxes}, {id: (H, W)}, {id: reason} for unreadable images)."""
    cache = ProposalCache(cfg, voc_root)
    params = {"mode": cfg.mode, "k": cfg.k, "max_boxes": cfg.max_boxes, "min_side": cfg.min_side,
              "min_region": cfg.min_region}
    todo = [(i, p, str(cache.path(i)), params) for i, p in items if cache.load(i) is None]
    if todo:
        say(f"selective search ({cfg.mode}) on {len(todo)} of {len(items)} images, {cfg.workers} worker(s); "
            f"cache {cache.folder}")
        rate = run_search(todo, cfg.workers)
        say(f"selective search: {rate:.1f} images/s")
    boxes, sizes, bad = {}, {}, {}
    for image_id, _ in items:
        entry = cache.load(image_id)
        if entry is None:
            raise OSError(f"proposal cache entry missing after the search: {cache.path(image_id)}")
        if entry[2]:
            bad[image_id] = entry[2]
        else:
            boxes[image_id], sizes[image_id] = clean_boxes(entry[0], *entry[1], cfg.min_size), entry[1]
    return boxes, sizes, bad


# ---------------------------------------------------------------------------- a user's file

def load_proposal_file(path: str | Path, box_order: str = "auto") -> dict[str, np.ndarray]:
    """{image id: float32 [K, 4] x1 y1 x2 y2, continuous 0-based} from a .mat / .npz file
    whose boxes are 1-based VOC pixels (see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "proposal file not found", str(path))
    if path.suffix == ".mat":
        raw = _read_mat(path)
        order = "yxyx" if box_order == "auto" else box_order
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            raw = {key: np.asarray(z[key]) for key in z.files}
        order = "xyxy" if box_order == "auto" else box_order
    else:
        raise ValueError(f"proposal file {path}: expected .npz or .mat, got {path.suffix!r}")
    out = {}
    for image_id, b in raw.items():
        b = np.asarray(b, dtype=np.float32)
        if b.size and (b.ndim != 2 or b.shape[1] != 4):
            raise ValueError(f"proposal file {path}: boxes of image {image_id!r} have shape {list(b.shape)}, "
                             "expected [K, 4]")
        b = b.reshape(-1, 4)
        if order == "yxyx":
            b = b[:, [1, 0, 3, 2]]
        out[image_id] = b - np.array([1, 1, 0, 0], dtype=np.float32)  # 1-based inclusive -> continuous
    return out


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ValueError(f"reading {path} needs scipy (pip install scipy), or convert it to .npz") from None
    try:
        mat = loadmat(str(path))
    except NotImplementedError:  # MATLAB v7.3 = HDF5
        raise ValueError(f"{path} is a MATLAB v7.3 (HDF5) file: convert it to .npz (one [K,4] array "
                         "per image id) or to an older .mat version") from None
    if "images" not in mat or "boxes" not in mat:
        raise ValueError(f"{path}: expected variables 'images' and 'boxes', found {sorted(k for k in mat if not k.startswith('__'))}")
    ids = [str(np.asarray(i).ravel()[0]) for i in np.asarray(mat["images"]).ravel()]
    boxes = list(np.asarray(mat["boxes"]).ravel())
    if len(ids) != len(boxes):
        raise ValueError(f"{path}: {len(ids)} image ids but {len(boxes)} box arrays")
    return dict(zip(ids, boxes))


def file_proposals(items: list[tuple[str, str]], cfg: ProposalConfig, sizes: dict[str, tuple[int, int]],
                   split: str = "") -> dict[str, np.ndarray]:
    """A user's proposals for ``items`` of ``split``, cleaned with the image ``sizes``
    ({id: (H, W)}); an image the file does not cover is an error."""
    path = cfg.file.replace("{split}", split)
    table = load_proposal_file(path, cfg.box_order)
    missing = [i for i, _ in items if i not in table]
    if missing:
        raise ValueError(f"proposal file {path} has no boxes for {len(missing)} of {len(items)} images "
                         f"(e.g. {missing[:3]}): it must cover every image of the split")
    return {i: clean_boxes(table[i], *sizes[i], cfg.min_size) for i, _ in items}


def describe(cfg: ProposalConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in ("cache_dir", "workers")}


def search_speed(items: list[tuple[str, str]], cfg: ProposalConfig, workers: tuple[int, ...] = (1, 2)) -> dict:
    """Selective search images/s over ``items`` for each worker count, measured in one
    run into throw-away cache folders (for ``benchmarks``: a ratio, not a timed test)."""
    import tempfile

    params = {"mode": cfg.mode, "k": cfg.k, "max_boxes": cfg.max_boxes, "min_side": cfg.min_side,
              "min_region": cfg.min_region}
    rates = {}
    for n in workers:
        with tempfile.TemporaryDirectory() as tmp:
            rates[n] = run_search([(i, p, f"{tmp}/{i}.npz", params) for i, p in items], n, f"{n} worker(s)")
    return rates
