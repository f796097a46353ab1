"""Which images may carry the wrong label: out-of-sample class probabilities from k-fold logistic
regression on the embeddings, ranked by the confident-learning rule.

Out-of-sample matters: a model asked about an image it trained on agrees with that image's label,
right or wrong. Each image's probabilities here come from a model that never saw it (stratified
k-fold), so a mislabelled image is judged by its neighbours' labels, not its own.

The rule (Northcutt et al., "Confident Learning", 2021): class j's threshold t_j is the mean
predicted probability of j over the images labelled j (how confident the models are, on average,
about an image that truly is j). An image labelled g is suspect when p_g < t_g and some other class
j has p_j >= t_j; the suggested label is the most probable of those classes. Per-class thresholds
keep a class the models are unsure about in general (hard, or small) from flooding the list.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

# lbfgs iterations per fold: on standardized embeddings the fit converges well before this
# (digits: 31); the cap bounds the time on a hard data set. Measured: 20k x 512 embeddings, 10
# classes, 5 folds: 25 s on 2 busy cores; time grows with N x D x classes.
MAX_ITER = 200
# Fewest images a class needs for a label check: one to train on and one to judge per fold.
MIN_PER_CLASS = 2
# Below this many embedding values (N x D) the fits run on one BLAS thread: for small matrices
# threads cost more than they save, and on a busy machine (CI, the digits tests) 50x more.
SMALL = 4_000_000


def folds_for(labels: np.ndarray, n_classes: int, folds: int = 5) -> int:
    """How many folds the check can use: `folds`, fewer when the smallest class has fewer images
    than that (each fold must hold out at least one image of every class), 0 when no check is
    possible (fewer than 2 classes with images, or a class with a single image)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < MIN_PER_CLASS:
        return 0
    return int(min(folds, present.min()))


def out_of_sample_probs(
    emb: np.ndarray, labels: np.ndarray, n_classes: int, folds: int, seed: int = 0
) -> np.ndarray:
    """(N, n_classes) probabilities, each row from a model fitted on the other folds.

    Features are standardized per fold (fitted on that fold's training part only): lbfgs then
    converges in far fewer iterations, and C=1 means the same for any backbone's embedding scale
    (an L2-normalized 2048-d embedding has coordinates ~0.02, which C=1 would shrink to nothing).
    A class with no images keeps probability 0.
    """
    x = np.asarray(emb, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    probs = np.zeros((len(y), n_classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with threadpool_limits(limits=1 if x.size < SMALL else None):
        for train, held in splitter.split(x, y):
            classes, held_probs = _fit_predict(x[train], y[train], x[held])
            probs[np.ix_(held, classes)] = held_probs
    return probs


def _fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_held: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(classes seen in training, their probabilities for x_held) from one fold's model."""
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(max_iter=MAX_ITER)
    with warnings.catch_warnings():
        # the iteration cap is deliberate; probabilities near convergence rank the same
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(scaler.transform(x_train), y_train)
    return model.classes_, model.predict_proba(scaler.transform(x_held))


def confident_suspects(probs: np.ndarray, labels: np.ndarray) -> list[dict]:
    """The confident-learning rule on out-of-sample `probs`, most suspicious first.

    Ranked by the margin p_suggested - p_given (largest first): how much more the models believe
    the suggested class than the given one. Ties keep row order.
    """
    y = np.asarray(labels, dtype=np.int64)
    n, k = probs.shape
    counts = np.bincount(y, minlength=k)
    given_p = probs[np.arange(n), y]
    sums = np.bincount(y, weights=given_p, minlength=k)
    # a class with no images is never suggested: its threshold is out of reach
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)
    above = probs >= thresholds[None, :]
    above[np.arange(n), y] = False
    flagged = (given_p < thresholds[y]) & above.any(axis=1)
    rows = np.flatnonzero(flagged)
    suggested = np.where(above[rows], probs[rows], -1.0).argmax(axis=1)
    margin = probs[rows, suggested] - given_p[rows]
    order = np.argsort(-margin, kind="stable")
    return [
        {
            "row": int(rows[i]),
            "given": int(y[rows[i]]),
            "suggested": int(suggested[i]),
            "p_given": float(given_p[rows[i]]),
            "p_suggested": float(probs[rows[i], suggested[i]]),
        }
        for i in order
    ]


def suspects(
    emb: np.ndarray, labels: np.ndarray, n_classes: int, folds: int = 5, seed: int = 0
) -> list[dict]:
    """Suspected label errors, most suspicious first: {"row", "given", "suggested", "p_given",
    "p_suggested"} with rows into `emb`/`labels` and probabilities out of sample.

    `emb` is (N, D) float32 (L2-normalized), `labels` (N,) ints in [0, n_classes). Uses
    `folds_for(...)` folds: fewer than asked when a class is smaller than that; none, and so
    [], when there is one class or a class has a single image (the caller says so:
    `folds_for` returning 0 is that case).
    """
    used = folds_for(labels, n_classes, folds)
    if used == 0:
        return []
    probs = out_of_sample_probs(emb, labels, n_classes, used, seed)
    return confident_suspects(probs, labels)
