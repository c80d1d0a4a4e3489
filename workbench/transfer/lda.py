"""Metrics built on a regularised linear discriminant analysis: SFDA and ETran (and the shrunk LDA
they share)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.linalg import eigh
from scipy.special import logsumexp

from .hscore import class_means
from .validation import MAX_ABS, class_labels, feature_matrix

__all__ = ["sfda", "etran", "shrunk_lda", "softmax"]


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a (N, C) array, shifted by the row maximum.

    >>> softmax(np.array([[0.0, 0.0], [1000.0, 0.0]])).round(3).tolist()
    [[0.5, 0.5], [1.0, 0.0]]
    """
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def shrunk_lda(X: np.ndarray, y: np.ndarray, C: int, lam: float | None = None) -> tuple[np.ndarray, float]:
    """Regularised LDA as in SFDA: returns ``(logits (N, C), lambda)``. Within-class scatter
    ``S_w = sum_c p_c cov_c``, ``lambda = max(exp(-5 lambda_max(S_w)), 1e-10)`` (unless given), both
    ``S_w`` and the total scatter ``S_t`` shrunk towards ``tr(S)/D I``; the directions solve the
    symmetric generalised eigenproblem ``(S_t - S_w) v = e S_w v``.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 40)
    >>> logits, lam = shrunk_lda(np.eye(2)[y] * 4 + rng.normal(size=(40, 2)), y, 2)
    >>> float((logits.argmax(1) == y).mean()) > 0.9
    True
    """
    N, D = X.shape
    mu = X.mean(0)
    M, counts = class_means(X, y, C)
    pri = counts / N
    Sw = np.zeros((D, D))
    for c in range(C):
        Xc = X[y == c] - M[c]
        Sw += pri[c] * (Xc.T @ Xc) / max(len(Xc), 1)
    if not np.trace(Sw) > 0:
        raise ValueError(
            "labels: no class has two distinct samples (every class is a single sample, or constant within itself), "
            "so the within-class scatter of the LDA is zero; pass more samples per class"
        )
    if lam is None:
        lam = float(max(np.exp(-5 * np.linalg.eigvalsh(Sw)[-1]), 1e-10))

    def shrink(S):
        return (1 - lam) * S + lam * np.trace(S) / D * np.eye(D)

    Xt = X - mu
    St = shrink(Xt.T @ Xt / N)
    Sw_s = shrink(Sw)
    Sb = St - Sw_s
    evals, evecs = eigh(Sb, Sw_s)  # symmetric generalised problem (ETran calls eigh on inv(Sw) Sb)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = (M @ evecs) @ evecs.T
    intercept = -0.5 * np.einsum("cd,cd->c", M, coef) + np.log(pri)
    return X @ coef.T + intercept, lam


def sfda(features: Any, labels: Any) -> float:
    """SFDA (Shao et al., ECCV 2022): regularised Fisher discriminant analysis on the features
    (:func:`shrunk_lda`), ConfMix (each sample moved towards the mean of the other classes' means by
    one minus its LDA probability of its own class: ``x <- p_y x + (1 - p_y) mean_{c != y} mu_c``), a
    second regularised LDA with the same lambda, and the score ``1/N sum_i p(y_i | x_i)``. The softmax
    is applied once (the reference applies it twice).

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 60)
    >>> bool(sfda(np.eye(3)[y] * 3 + rng.normal(size=(60, 3)), y) > sfda(rng.normal(size=(60, 3)), y))
    True
    """
    F = feature_matrix(features, max_abs=MAX_ABS)
    y, C = class_labels(labels, F.shape[0])
    logits, lam = shrunk_lda(F, y, C)
    p = softmax(logits)
    py = p[np.arange(len(y)), y]
    M, _ = class_means(F, y, C)
    others = (M.sum(0)[None] - M) / (C - 1)  # mean of the other classes' means, per class
    Fm = py[:, None] * F + (1 - py[:, None]) * others[y]
    logits2, _ = shrunk_lda(Fm, y, C, lam)
    p2 = softmax(logits2)
    return float(p2[np.arange(len(y)), y].mean())


def etran(features: Any, labels: Any = None, *, part: str = "lda", bottom: float = 0.5) -> float:
    """ETran (Gholami et al., ICCV 2023; no longer marked experimental: it ranks the demo zoo's sources above
    chance on every target, see :data:`~workbench.transfer.EXPERIMENTAL`). ``part="lda"``: mean probability of the true
    class under the regularised LDA of :func:`sfda` (first stage; a symmetric generalised eigenproblem,
    where the reference calls eigh on a non-symmetric matrix). ``part="energy"``: the mean of
    ``logsumexp_j F_j(x)`` over the lowest ``bottom`` percent of samples (features used as logits, as in
    the reference; no labels needed). The paper combines them after min-max normalisation across the
    zoo (0.15 energy + 0.85 LDA); :func:`~workbench.transfer.rank` does that as the ``etran`` metric.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 60)
    >>> 0 < etran(np.eye(3)[y] * 3 + rng.normal(size=(60, 3)), y) <= 1
    True
    """
    F = feature_matrix(features, max_abs=MAX_ABS)
    if part == "energy":
        e = np.sort(logsumexp(F, axis=1))
        k = max(1, int(math.ceil(len(e) * bottom / 100)))
        return float(e[:k].mean())
    if part != "lda":
        raise ValueError(f"part: expected 'lda' or 'energy', got {part!r}")
    y, C = class_labels(labels, F.shape[0])
    logits, _ = shrunk_lda(F, y, C)
    return float(softmax(logits)[np.arange(len(y)), y].mean())
