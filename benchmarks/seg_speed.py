"""Speed of ``colorbench seg-eval``'s confusion matrix against sklearn, as a ratio in one run.

    python -m benchmarks.seg_speed                      # ../shared's VOC masks, else built-in ones
    python -m benchmarks.seg_speed --gt VOCdevkit/VOC2012/SegmentationClass --limit 300

Label maps: real VOC ground truth (``../shared/data/voc_seg_fixture``, 500 x 375 photos
with the 255 border) when present, else the built-in data's masks (written to a temporary
folder). Each prediction is its truth as a segmenter gets it wrong: shifted by 3 pixels
(boundary errors), the border predicted as background, one pixel in ten a random class.
Both sides score the same maps over pixels with 0 <= gt < n: ours is
``downstream.metrics.ConfusionMatrix.update`` as seg-eval calls it (with its prediction
range check); the reference is ``sklearn.metrics.confusion_matrix`` on the kept pixels (it
cannot ignore 255 by itself). The matrices must agree. A second line adds the PNG decoding
seg-eval does per file (the same for both: it bounds the end-to-end gain).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.speed import best_time

SEG_FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_seg_fixture" / "VOCdevkit" / "VOC2012" \
    / "SegmentationClass"


def truth_maps(gt_dir: Path | None, limit: int) -> tuple[list[np.ndarray], list[Path], str]:
    """uint8 [H, W] ground-truth maps, their files, and where they came from."""
    from pretext.data.voc import read_label_png

    if gt_dir is None and SEG_FIXTURE.is_dir():
        gt_dir = SEG_FIXTURE
    if gt_dir is None:
        from pretext.data.synthetic.generate import make_dataset

        root = Path(tempfile.mkdtemp(prefix="seg_speed_"))
        make_dataset(root, size=64, num_train=1, num_val=1, num_voc=limit * 4, verbose=False)
        gt_dir = root / "VOCdevkit" / "VOC2007" / "SegmentationClass"
    if not Path(gt_dir).is_dir():
        raise FileNotFoundError(f"seg_speed: ground-truth folder not found: {gt_dir}")
    files = sorted(Path(gt_dir).glob("*.png"))[:limit]
    if not files:
        raise FileNotFoundError(f"seg_speed: no PNG in {gt_dir}")
    return [read_label_png(str(f)) for f in files], files, f"{len(files)} masks in {gt_dir}"


def predictions(truths: list[np.ndarray], num_classes: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for gt in truths:
        pred = np.roll(np.where(gt < num_classes, gt, 0), (3, 3), axis=(0, 1)).astype(np.uint8)
        noisy = rng.random(gt.shape) < 0.1
        pred[noisy] = rng.integers(0, num_classes, int(noisy.sum()), dtype=np.uint8)
        out.append(pred)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seg_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--gt", type=Path, help="folder of ground-truth PNGs (default: ../shared's VOC masks, "
                                                "else the built-in data's)")
    parser.add_argument("--limit", type=int, default=200, help="at most this many masks (default 200)")
    parser.add_argument("--num-classes", type=int, default=21, help="classes (default 21: VOC)")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds; the best is kept (default 3)")
    args = parser.parse_args(argv)
    import torch
    from sklearn.metrics import confusion_matrix as sk_confusion

    from downstream.metrics import ConfusionMatrix
    from pretext.data.voc import read_label_png

    torch.set_num_threads(1)
    n = args.num_classes
    truths, files, where = truth_maps(args.gt, args.limit)
    preds = predictions(truths, n)
    pixels = sum(g.size for g in truths)

    def ours():
        cm = ConfusionMatrix(n)
        for p, g in zip(preds, truths):
            cm.update(p, g)
        return cm.mat.numpy()

    def sklearn():
        mat = np.zeros((n, n), dtype=np.int64)
        for p, g in zip(preds, truths):
            keep = g < n
            mat += sk_confusion(g[keep], p[keep], labels=np.arange(n))
        return mat

    if not np.array_equal(ours(), sklearn()):
        raise AssertionError("seg_speed: the confusion matrices differ")
    t_ours, t_ref = best_time(ours, args.repeats), best_time(sklearn, args.repeats)
    t_decode = best_time(lambda: [read_label_png(str(f)) for f in files], args.repeats)
    print(f"seg-eval confusion matrix, {where} ({pixels / 1e6:.2f} Mpixels, {n} classes)")
    print(f"  matrix only:   ours {pixels / t_ours / 1e6:8.1f} Mpix/s   sklearn {pixels / t_ref / 1e6:8.1f} Mpix/s   "
          f"ratio {t_ref / t_ours:6.1f}x (target >= 10x)")
    print(f"  + PNG decode:  ours {len(files) / (t_ours + t_decode):8.1f} img/s    sklearn "
          f"{len(files) / (t_ref + t_decode):8.1f} img/s    ratio {(t_ref + t_decode) / (t_ours + t_decode):6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
