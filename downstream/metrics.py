"""Metrics of the transfer harnesses (DESIGN §4), one function per metric, on tensors.

* ``topk_correct``: how many samples have their label among the k best logits (the
  linear probes' top-1 / top-5; a harness sums the counts over batches and ranks and
  divides by the number of images).

Every metric takes plain tensors (no harness state), documents its input shapes and is
exact on a hand-computed case in ``tests/``.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["topk_correct"]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """``logits`` [N, classes], ``labels`` long [N] -> the number of samples whose label
    is among the top-k logits, for each k: long [len(ks)]. A ``k`` larger than the number
    of classes counts every sample as correct."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices                 # [N, kmax]
    hit = top.eq(labels[:, None])                          # [N, kmax]
    return torch.stack([hit[:, :min(k, kmax)].any(1).sum() for k in ks])


# --- detection ---
# The PASCAL devkit's AP from a precision / recall curve (VOCevaldet.m, VOCap.m). The
# classification engineer's ``voc_ap(scores, labels, method)`` should reuse this rather
# than a second copy of the 11-point / area rules.
AP_METHODS = ("11point", "area")
__all__ += ["AP_METHODS", "ap_from_pr"]


def ap_from_pr(recall, precision, method: str = "11point") -> float:
    """Average precision from ``recall`` / ``precision`` [D] (one point per ranked
    detection or score threshold, recall non-decreasing), as the VOC devkit:

    * ``11point`` (VOC2007): mean over t = 0, 0.1, ..., 1 of the largest precision at
      recall >= t (0 where recall never reaches t);
    * ``area`` (VOC2010+): the area under the monotone envelope of the curve (precision
      at recall r = the largest precision at any recall >= r), summed where recall changes.

    An empty curve gives 0."""
    rec = np.asarray(recall, dtype=np.float64).ravel()
    prec = np.asarray(precision, dtype=np.float64).ravel()
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.shape} vs {prec.shape}")
    if method == "11point":
        return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0
                              for t in np.linspace(0.0, 1.0, 11)]))
    if method != "area":
        raise ValueError(f"AP method must be one of {AP_METHODS}, got {method!r}")
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]      # the monotone envelope
    changed = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]))


# --- VOC classification average precision (issue 11) ---
# Image-level AP of one class from per-image scores and VOC labels 1 / 0 / -1 (0: only
# difficult objects of the class: neither positive nor negative, left out), on the
# devkit's 11-point / area rules above. Two APs are in use, and they differ:
#   * ``voc_ap(..., "area")``: the area under the monotone precision envelope (VOC2010+;
#     the linear-SVM protocol of Goyal et al. 2019);
#   * ``sklearn_ap``: sklearn's ``average_precision_score``, sum over thresholds of
#     (R_n - R_n-1) * P_n with no envelope (the fine-tuning protocol, DESIGN §4): never
#     above the envelope area, lower where precision dips and recovers.
__all__ += ["pr_curve", "voc_ap", "sklearn_ap", "mean_ap"]


def _valid(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {s.shape} vs {y.shape}")
    if not np.isin(y, (-1, 0, 1)).all():
        raise ValueError(f"labels must be 1 / 0 / -1 (VOC: present / difficult only / absent), got {np.unique(y)}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    keep = y != 0
    return s[keep], y[keep]


def pr_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) [T], one point per distinct score, highest first: a group of
    tied scores enters the ranking all at once, so the curve (and the AP) does not
    depend on the order of tied images (the devkit's stable sort would). ``labels``
    1 / 0 / -1; 0 is left out. Needs at least one positive."""
    s, y = _valid(scores, labels)
    npos = int((y == 1).sum())
    if npos == 0:
        raise ValueError("pr_curve: no positive image")
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], (y[order] == 1)
    last = np.r_[np.nonzero(s[1:] != s[:-1])[0], len(s) - 1]      # the last index of each tie group
    tp = np.cumsum(pos)[last]
    return tp / npos, tp / (last + 1)


def voc_ap(scores, labels, method: str = "11point") -> float:
    """AP of one class: ``scores`` [N] (higher = more confident), ``labels`` [N] in
    {1, 0, -1}; 0 (difficult only) is ignored. ``method``: ``11point`` (VOC2007's
    VOCevalcls) or ``area`` (the monotone precision envelope; ``ap_from_pr``). Ties as
    in ``pr_curve``. A class without positives gives NaN, never 0."""
    if method not in AP_METHODS:
        raise ValueError(f"AP method must be one of {AP_METHODS}, got {method!r}")
    s, y = _valid(scores, labels)
    if not (y == 1).any():
        return float("nan")
    return ap_from_pr(*pr_curve(s, y), method=method)


def sklearn_ap(scores, labels) -> float:
    """sklearn's ``average_precision_score`` over the images with label 1 / -1 (0 left
    out); NaN for a class without positives (sklearn itself warns and returns 0 there)."""
    from sklearn.metrics import average_precision_score

    s, y = _valid(scores, labels)
    if not (y == 1).any():
        return float("nan")
    return float(average_precision_score(y == 1, s))


def mean_ap(aps, names=None, what: str = "mAP") -> float:
    """The mean of per-class APs (fractions or percent) over the classes that have one:
    a NaN (no positive image) is left out with a warning naming the class, never
    counted as 0. All NaN -> NaN (and a warning)."""
    import warnings

    values = np.asarray(list(aps.values()) if isinstance(aps, dict) else aps, dtype=np.float64).ravel()
    names = list(aps) if isinstance(aps, dict) else (list(names) if names is not None else list(range(len(values))))
    missing = [str(n) for n, v in zip(names, values) if np.isnan(v)]
    if missing:
        warnings.warn(f"{what}: {len(missing)} class(es) without a positive image left out: {', '.join(missing)}",
                      RuntimeWarning, stacklevel=2)
    return float(np.nanmean(values)) if len(missing) < len(values) else float("nan")


# --- segmentation: confusion matrix ---
# FCN's scores (Long et al. 2015, DESIGN §4): one confusion matrix over every pixel whose
# truth is a class (0 <= gt < n; 255 = VOC's "void" border and any other value are not
# counted), rows = truth, columns = prediction; IU = diag / (row + col - diag).

__all__ += ["confusion_matrix", "segmentation_scores", "ConfusionMatrix"]


def confusion_matrix(pred, gt, num_classes: int, where: str = "") -> torch.Tensor:
    """``pred``, ``gt``: integer label maps of one shape (numpy or torch, any number of
    dims, e.g. [H, W] or [N, H, W]) -> int64 [n, n], ``[i, j]`` = pixels of truth i
    predicted as j. Pixels with gt outside [0, n) are not counted. A prediction outside
    [0, n) (anywhere) or a shape mismatch is a ValueError naming ``where`` (a file)."""
    n = int(num_classes)
    at = f" in {where}" if where else ""
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"prediction size {tuple(pred.shape)} != ground truth size {tuple(gt.shape)}{at}")
    if pred.numel() if torch.is_tensor(pred) else pred.size:
        lo, hi = int(pred.min()), int(pred.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"prediction values must be class indices in [0, {n}), found {lo}..{hi}{at}")
    if torch.is_tensor(pred) and pred.device.type != "cpu":  # on the accelerator: stay there
        g, p = gt.to(torch.int64).flatten(), pred.to(torch.int64).flatten()
        if g.numel() and int(g.min()) < 0:
            g = torch.where(g < 0, n, g)
        counts = torch.bincount(g * n + p, minlength=n * n)  # gt >= n lands at index >= n * n
        return counts[: n * n].reshape(n, n).cpu()
    g = gt.numpy() if torch.is_tensor(gt) else np.asarray(gt)
    p = pred.numpy() if torch.is_tensor(pred) else np.asarray(pred)
    g = g.astype(np.intp).ravel()
    if g.size and g.min() < 0:  # signed truth maps: negative values are not classes either
        g[g < 0] = n
    # One pass, no mask: a truth >= n (255 = void) gives an index >= n * n, dropped by the slice.
    counts = np.bincount(g * n + p.ravel(), minlength=n * n)  # ~25x sklearn's confusion_matrix
    return torch.from_numpy(counts[: n * n].reshape(n, n).astype(np.int64))


def segmentation_scores(conf: torch.Tensor) -> dict:
    """int [n, n] confusion matrix (rows truth) -> percentages:

        pixel_acc = sum(diag) / sum;  mean_acc = nanmean(diag / row)
        IU = diag / (row + col - diag) (float64 [n]);  mIU = nanmean(IU)
        fwIU = sum over classes with row > 0 of (row / sum) * IU

    A class absent from both truth and prediction has IU NaN (not 0) and leaves the
    means; one only predicted has IU 0. With no counted pixel every score is NaN."""
    c = conf.to(torch.float64)
    diag, rows, cols = c.diag(), c.sum(1), c.sum(0)
    total = rows.sum()
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iu = torch.where(rows + cols - diag > 0, diag / (rows + cols - diag), nan)  # [n]
    acc = torch.where(rows > 0, diag / rows, nan)                              # [n]
    freq = rows / total if total > 0 else rows * nan
    present = rows > 0

    def pct(x: torch.Tensor) -> float:
        return float(x) * 100.0

    return {"pixel_acc": pct(diag.sum() / total) if total > 0 else float("nan"),
            "mean_acc": pct(acc.nanmean()), "mIU": pct(iu.nanmean()),
            "fwIU": pct((freq[present] * iu[present]).sum()) if total > 0 else float("nan"),
            "IU": iu * 100.0}


class ConfusionMatrix:
    """Accumulates ``confusion_matrix`` over images; ``reduce()`` sums it over DDP ranks
    (every rank must call it; through ``pretext.engine.dist``, on the group's device)."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)  # [n, n]

    def update(self, pred, gt, where: str = "") -> None:
        self.mat += confusion_matrix(pred, gt, self.num_classes, where)

    def reduce(self) -> "ConfusionMatrix":
        from pretext.engine.dist import all_reduce_sum
        self.mat = all_reduce_sum(self.mat)
        return self

    def scores(self) -> dict:
        return segmentation_scores(self.mat)
