"""Speed of the SVM protocol's cost search: ``train_svms`` (classes x costs x folds as
joblib worker-process tasks over memory-mapped features) against a plain sequential sklearn
loop over the same features in memory, in one run; the APs must be identical.

    python -m downstream.voc_cls.svm_speed                  # 20 classes x 5 costs x 3 folds
    python -m downstream.voc_cls.svm_speed --images 5011 --dim 9216   # VOC07 trainval, conv-sized

Features are synthetic (seeded): unit-norm vectors in which each class adds its own
direction to its positives, 20 classes with VOC07-like frequencies (5-40% positive,
10% of them difficult-only). Prints one JSON line: seconds of each, the speed-up, and
whether every cross-validated AP matched. Target: >= 1.8x with 2 workers on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from downstream.metrics import voc_ap
from downstream.voc_cls.svm import class_rows, plan_folds, train_svms
from downstream.voc_cls.svm_fit import fit


def synthetic(images: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [N, D] unit rows, labels int8 [N, K] in {1, 0, -1})."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.05, 0.4, classes)
    labels = np.where(rng.random((images, classes)) < freq, 1, -1).astype(np.int8)
    labels[(labels == 1) & (rng.random(labels.shape) < 0.1)] = 0
    directions = rng.standard_normal((classes, dim)) / np.sqrt(dim)
    x = rng.standard_normal((images, dim)) / np.sqrt(dim) + 0.6 * (labels != -1) @ directions
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def sequential(x: np.ndarray, labels: np.ndarray, test: np.ndarray, costs, folds: int, pos_weight: float,
               max_iter: int) -> tuple[dict, np.ndarray]:
    """The reference: nested loops, features in memory, one fit at a time; then the
    refit at each class's best cost scores ``test``. ({(class, cost): CV AP}, scores [T, K]).
    One BLAS thread, as each worker (more threads would change the sums)."""
    with threadpool_limits(1):
        return _sequential(x, labels, test, costs, folds, pos_weight, max_iter)


def _sequential(x, labels, test, costs, folds, pos_weight, max_iter):
    cv, scores = {}, np.zeros((len(test), labels.shape[1]))
    for k, (rows, y) in enumerate(class_rows(np.arange(len(x)), labels)):
        X = x[rows].astype(np.float64)
        n = plan_folds(y, folds)
        for c in costs:
            aps = []
            for tr, va in StratifiedKFold(n).split(X, y):
                clf, _ = fit(X[tr], y[tr], c, pos_weight, max_iter)
                aps.append(voc_ap(clf.decision_function(X[va]), y[va], "area"))
            cv[(k, c)] = float(np.mean(aps))
        best = max((cv[(k, c)], -i, c) for i, c in enumerate(costs))[2]
        scores[:, k] = fit(X, y, best, pos_weight, max_iter)[0].decision_function(test.astype(np.float64))
    return cv, scores


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1500, help="trainval images (VOC07: 5011)")
    p.add_argument("--dim", type=int, default=2304, help="feature dims (alexnet conv5 pooled at 227 px: 9216)")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--costs", type=float, nargs="+", default=[0.01, 0.1, 1.0, 10.0, 100.0])
    p.add_argument("--jobs", type=int, default=2, help="joblib workers (the machine's cores)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    x, labels = synthetic(a.images, a.dim, a.classes, a.seed)
    cfg = SimpleNamespace(svm=SimpleNamespace(costs=a.costs, folds=3, pos_weight=2.0, max_iter=2000, n_jobs=a.jobs))
    lbl = SimpleNamespace(labels=labels, classes=[f"c{k}" for k in range(a.classes)])
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "feats.npy")
        np.save(path, x)
        test = np.arange(min(200, a.images))  # refits score the first images: scores must match too
        start = time.perf_counter()
        ref, ref_scores = sequential(x, labels, x[test], a.costs, 3, 2.0, 2000)
        t_seq = time.perf_counter() - start
        start = time.perf_counter()
        out = train_svms(cfg, {"f": path}, np.arange(a.images), lbl, {"f": path}, test, len(test), lambda s: None)
        t_par = time.perf_counter() - start
    same = (all(np.isclose(out["f"]["cv_ap"][f"c{k}"], 100.0 * max(ref[(k, c)] for c in a.costs))
                for k in range(a.classes)) and np.allclose(out["f"]["scores"], ref_scores))
    result = {"images": a.images, "dim": a.dim, "fits": a.classes * (len(a.costs) * 3 + 1), "jobs": a.jobs,
              "sequential_s": round(t_seq, 2), "parallel_s": round(t_par, 2), "speedup": round(t_seq / t_par, 2),
              "identical_ap": bool(same)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
