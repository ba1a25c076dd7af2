"""One SVM task of the linear-SVM protocol, run in a joblib worker process.

Workers are processes (loky), not threads: liblinear trains without the GIL, but its
random coordinate order comes from one generator shared by the whole process, so
concurrent fits in threads would not be reproducible (nor equal to a sequential run).
Each task opens the memory-mapped feature file itself (only a path and row indices are
sent) and runs on one BLAS thread (``train_svms`` starts the workers that way), so every
fit is the one a sequential loop makes. Tasks return decision values, not APs: this
module imports numpy and scikit-learn only, so a worker starts in about a second.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC


def features(path: str, rows: np.ndarray) -> np.ndarray:
    """Rows of a memory-mapped ``.npy`` feature file: float64 [n, D] (liblinear's type)."""
    return np.asarray(np.load(path, mmap_mode="r")[rows], dtype=np.float64)


def svc(cost: float, pos_weight: float, max_iter: int) -> LinearSVC:
    """Goyal et al.'s SVM: squared hinge, L2, class_weight {1: pos_weight, -1: 1}, dual."""
    return LinearSVC(C=cost, loss="squared_hinge", penalty="l2", dual=True, class_weight={1: pos_weight, -1: 1},
                     intercept_scaling=1.0, tol=1e-4, max_iter=max_iter, random_state=0)  # liblinear shuffles: seeded


def fit(X: np.ndarray, y: np.ndarray, cost: float, pos_weight: float, max_iter: int) -> tuple[LinearSVC, bool]:
    """(fitted SVM, whether liblinear stopped at ``max_iter``: counted by the caller;
    its ConvergenceWarning is muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = svc(cost, pos_weight, max_iter).fit(X, y)
    return clf, int(clf.n_iter_) >= max_iter


def cv_scores(path: str, rows: np.ndarray, y: np.ndarray, cost: float, folds: int, pos_weight: float,
              max_iter: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``folds``-fold cross-validation of one class and cost on ``rows`` of the feature
    file, labels ``y`` in {1, -1}, stratified unshuffled folds (as sklearn's
    ``cross_val_score``): (held-out decision values [n], fold of each row [n], fits that
    did not converge)."""
    X = features(path, rows)
    scores, fold = np.zeros(len(y)), np.zeros(len(y), dtype=np.int64)
    unconverged = 0
    for f, (tr, va) in enumerate(StratifiedKFold(folds).split(X, y)):
        clf, bad = fit(X[tr], y[tr], cost, pos_weight, max_iter)
        unconverged += bad
        scores[va], fold[va] = clf.decision_function(X[va]), f
    return scores, fold, unconverged


def fit_and_score(train_path: str, rows: np.ndarray, y: np.ndarray, test_path: str, test_rows: np.ndarray,
                  cost: float, pos_weight: float, max_iter: int) -> tuple[np.ndarray, int]:
    """Refit on all of ``rows`` and score ``test_rows``: (scores [n_test], unconverged)."""
    clf, bad = fit(features(train_path, rows), y, cost, pos_weight, max_iter)
    return clf.decision_function(features(test_path, test_rows)), int(bad)
