"""VOC 2007 classification with linear SVMs on frozen features (Goyal et al. 2019).

1. Features, once: the frozen trunk (eval mode) on the centre crop of every trainval and
   test image; each tap pooled as the linear probes pool it (``downstream.probe.heads``:
   the published table for AlexNet@227 / ResNet-50@224, an adaptive ~9k-dim pool
   elsewhere), flattened and L2-normalised, written batch by batch into memory-mapped
   files (``downstream.probe.feature_cache``, keyed by the trunk's weights, the data and
   the pools: a second run with another cost grid reads them back). Never held in memory
   whole: workers open the files as memory maps.
2. Per tap and class: ``LinearSVC`` (squared hinge, L2, class_weight {1: 2, -1: 1}) for
   each cost of the grid, scored by ``folds``-fold cross-validated AP on trainval
   (stratified folds, unshuffled, as sklearn's ``cross_val_score``); the best cost (the
   smallest on ties) is refit on all of trainval and scores the test images. Images
   whose label for the class is 0 (difficult only) are left out of that class's
   training, folds and AP (VISSL trains on them as negatives). Every (tap, class, cost)
   is one joblib task; the refits are a second parallel pass.
3. AP: the area under the monotone precision envelope (``voc_ap(..., "area")``, as
   Goyal et al.'s ``calculate_ap``), in folds and on test. The headline tap is the one
   with the best cross-validated trainval mAP (chosen without the test set).
"""
from __future__ import annotations

import hashlib
import time
import warnings
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F
from joblib import Parallel, delayed, parallel_config
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from downstream.metrics import mean_ap, voc_ap
from downstream.probe.feature_cache import FeatureCache, state_fingerprint
from downstream.probe.heads import build_pool_specs, freeze
from downstream.voc_cls.data import class_aps, image_source
from downstream.voc_cls.svm_fit import cv_scores, fit_and_score
from pretext.data.loader import make_loader, val_transform


# ---------------------------------------------------------------------------- features

def extract_features(cfg, trunk, splits: dict, device, say) -> tuple[FeatureCache, dict]:
    """Pooled, L2-normalised features of every tap for each split in ``splits``
    ({name: VocLabels}) in the cache (built when missing); returns (cache, pool specs)."""
    s, d = cfg.svm, cfg.data
    freeze(trunk)
    taps = list(s.taps) or trunk.taps
    if set(taps) - set(trunk.taps):
        raise ValueError(f"svm.taps: unknown taps {sorted(set(taps) - set(trunk.taps))}; valid: {trunk.taps}")
    specs = build_pool_specs(trunk, taps, d.crop, s.pool.mode, s.pool.target_dim)
    pools = {t: spec.module().to(device) for t, spec in specs.items()}
    key = {"trunk": state_fingerprint(trunk), "describe": trunk.describe(), "root": d.root, "crop": d.crop,
           "resize": d.resize, "pools": {t: [sp.kind, sp.in_shape, sp.out_shape, sp.kernel, sp.stride, sp.padding]
                                         for t, sp in specs.items()},
           "ids": {n: hash_ids(lbl.ids) for n, lbl in splits.items()}, "l2": True}
    cache = FeatureCache(s.cache_dir, key, dtype="float32")

    @torch.no_grad()
    def featurize(images: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = trunk.forward_features(trunk.prepare(images, device), taps)        # {tap: [B, C, h, w]}
        return {t: F.normalize(pools[t](feats[t]).flatten(1), dim=1) for t in taps}  # {tap: [B, D]}, unit norm

    for sp in specs.values():
        say(f"  {sp.tap}: {list(sp.in_shape)} -> {sp.kind} pool -> {list(sp.out_shape)} = {sp.dim} dims")
    for name, lbl in splits.items():
        if cache.has(name):
            say(f"features {name}: cached in {cache.dir / name}")
            continue
        src = image_source(lbl, val_transform(d.crop, d.resize))
        loader = make_loader(src, s.batch_size, num_workers=d.num_workers)
        cache.build(name, loader, featurize, {t: sp.dim for t, sp in specs.items()}, len(src))
        say(f"features {name}: {len(src)} images -> {cache.dir / name}")
    return cache, specs


def hash_ids(ids: list[str]) -> str:
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------- the protocol

def class_rows(valid: np.ndarray, labels: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (feature rows with label 1 / -1 among ``valid`` rows, labels {1, -1})."""
    out = []
    for k in range(labels.shape[1]):
        rows = valid[labels[valid, k] != 0]
        out.append((rows, labels[rows, k].astype(np.int64)))
    return out


def fold_ap(scores: np.ndarray, fold: np.ndarray, unconverged: int, y: np.ndarray) -> tuple[float, int]:
    """(mean over folds of the held-out AP (envelope area), unconverged fits)."""
    return float(np.mean([voc_ap(scores[fold == f], y[fold == f], "area") for f in np.unique(fold)])), unconverged


def plan_folds(y: np.ndarray, folds: int) -> int:
    """Stratified folds possible for labels ``y`` (0 or 1: no cross-validation)."""
    return min(folds, int((y == 1).sum()), int((y == -1).sum()))


def train_svms(cfg, train_file: dict, train_valid: np.ndarray, train_lbl, test_file: dict, test_valid: np.ndarray,
               n_test: int, say, n_jobs: int | None = None) -> dict:
    """Cost search and refits for every tap and class; returns {tap: {"scores" [N_test, K]
    (NaN rows: unscored images), "costs", "cv_ap", "cv_mAP", "unconverged", "no_cv"}}."""
    s = cfg.svm
    n_jobs = s.n_jobs if n_jobs is None else n_jobs
    taps, classes = list(train_file), train_lbl.classes
    per_class = class_rows(train_valid, train_lbl.labels)
    search = [(t, k, c) for t, k, c in product(taps, range(len(classes)), s.costs)
              if plan_folds(per_class[k][1], s.folds) >= 2]
    search.sort(key=lambda task: -task[2])  # large costs train longest: first, so no long task is left for last
    say(f"svm: {len(taps)} taps x {len(classes)} classes x {len(s.costs)} costs, {s.folds}-fold CV "
        f"({len(search)} tasks, n_jobs {n_jobs})")
    # worker processes on one BLAS thread each (downstream.voc_cls.svm_fit says why not
    # threads), reused for the refits; with n_jobs 1 the same tasks run here, one thread too
    with (threadpool_limits(1), parallel_config(backend="loky", inner_max_num_threads=1),
          Parallel(n_jobs=n_jobs, return_as="generator") as pool):
        found = pool(delayed(cv_scores)(train_file[t], *per_class[k], c, plan_folds(per_class[k][1], s.folds),
                                        s.pos_weight, s.max_iter) for t, k, c in search)
        # exhaust the generator even when there is no task (a pool stays busy until its generator ends)
        found = list(tqdm(found, total=len(search), desc="svm cost search", unit="task"))
        cv = {key: fold_ap(*r, per_class[key[1]][1]) for key, r in zip(search, found)}
        best, refit = {}, []
        for t, k in product(taps, range(len(classes))):
            y = per_class[k][1]
            if not (y == 1).any() or not (y == -1).any():
                continue  # nothing to learn: NaN AP (a class without positives, or without negatives)
            scored = [(cv[(t, k, c)][0], -i, c) for i, c in enumerate(s.costs) if (t, k, c) in cv]
            best[(t, k)] = max(scored)[2] if scored else s.costs[len(s.costs) // 2]  # no CV possible: middle cost
            refit.append((t, k))
        scores = list(tqdm(pool(delayed(fit_and_score)(train_file[t], *per_class[k], test_file[t], test_valid,
                                                       best[(t, k)], s.pos_weight, s.max_iter) for t, k in refit),
                           total=len(refit), desc="svm refit", unit="task"))
    out = {}
    for t in taps:
        searched = {k: (t, k, best[(t, k)]) in cv for k in range(len(classes)) if (t, k) in best}
        out[t] = {"scores": np.full((n_test, len(classes)), np.nan),          # NaN: unscored image / class
                  "costs": {name: best.get((t, k)) for k, name in enumerate(classes)},
                  "cv_ap": {name: 100.0 * cv[(t, k, best[(t, k)])][0] if searched.get(k) else float("nan")
                            for k, name in enumerate(classes)},
                  "unconverged": sum(cv[key][1] for key in cv if key[0] == t),
                  "no_cv": [classes[k] for k, ok in searched.items() if not ok]}
    for (t, k), (sc, bad) in zip(refit, scores):
        out[t]["scores"][test_valid, k] = sc
        out[t]["unconverged"] += bad
    for t in taps:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[t]["cv_mAP"] = mean_ap(out[t]["cv_ap"])
    return out


def run_svm(cfg, trunk, train_lbl, test_lbl, device, run) -> dict:
    """Features, SVMs, test APs; returns {"taps": {tap: {"aps", "mAP", ...}}, "best", "extra"}."""
    start = time.perf_counter()
    cache, specs = extract_features(cfg, trunk, {"trainval": train_lbl, "test": test_lbl}, device, run.say)
    feat_seconds = time.perf_counter() - start
    shapes = {t: sp.out_shape for t, sp in specs.items()}
    train_r, test_r = cache.reader("trainval", shapes), cache.reader("test", shapes)
    files = {n: {t: str(cache.dir / n / f"{t}.npy") for t in specs} for n in ("trainval", "test")}
    skipped = {"trainval": len(train_lbl.ids) - len(train_r.valid), "test": len(test_lbl.ids) - len(test_r.valid)}
    if skipped["trainval"] or skipped["test"]:
        run.say(f"svm: images that could not be read (no features, left out): {skipped}")
    start = time.perf_counter()
    fitted = train_svms(cfg, files["trainval"], train_r.valid, train_lbl, files["test"], test_r.valid,
                        len(test_lbl.ids), run.say)
    svm_seconds = time.perf_counter() - start
    results = {}
    for t, r in fitted.items():
        aps, m, unscored = class_aps(r["scores"], test_lbl, "area")
        results[t] = {"aps": aps, "mAP": m, "cv_mAP": r["cv_mAP"], "costs": r["costs"],
                      "unconverged": r["unconverged"], "no_cv": r["no_cv"], "unscored": unscored}
        run.say(f"svm {t}: test mAP {m:.2f} (trainval CV mAP {r['cv_mAP']:.2f}); costs {r['costs']}")
    best = max(results, key=lambda t: (results[t]["cv_mAP"], -list(results).index(t)))
    extra = {"feature_seconds": round(feat_seconds, 2), "svm_seconds": round(svm_seconds, 2),
             "feature_cache": str(cache.dir), "images_without_features": skipped, "headline_tap": best,
             "headline_rule": "best trainval cross-validated mAP", "costs_grid": list(cfg.svm.costs),
             "pools": {t: {"kind": sp.kind, "out": list(sp.out_shape), "dim": sp.dim} for t, sp in specs.items()},
             "ap": "area under the monotone precision envelope, difficult excluded",
             "per_tap": {t: {k: v for k, v in r.items() if k != "aps"} for t, r in results.items()}}
    return {"taps": results, "best": best, "extra": extra}
