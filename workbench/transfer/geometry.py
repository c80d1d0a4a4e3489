"""Metrics of the feature geometry: TransRate (coding rates), GBC (class overlap) and TMI (class spread)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.decomposition import PCA

from .validation import MAX_ABS, class_labels, feature_matrix, unit_scale

__all__ = ["transrate", "gbc", "tmi", "coding_rate", "pca"]


def coding_rate(Z: np.ndarray, eps: float) -> float:
    """``R(Z, eps) = 1/2 ln det(I + Z^T Z / (n eps))`` of the n rows of Z (0 for no rows).

    >>> round(coding_rate(np.eye(2), 0.5), 6)  # 1/2 ln det(2 I) = ln 2
    0.693147
    """
    n, d = Z.shape
    if n == 0:
        return 0.0
    G = Z @ Z.T if n < d else Z.T @ Z  # logdet(I + c Z^T Z) = logdet(I + c Z Z^T)
    return float(0.5 * np.linalg.slogdet(np.eye(G.shape[0]) + G / (n * eps))[1])


def pca(F: np.ndarray, variance: float | None, seed: int = 0, max_dims: int | None = None) -> np.ndarray:
    """``F`` projected on the principal components that explain the fraction ``variance`` of its
    variance (at most ``max_dims``); unchanged when ``variance`` is None or F has at most 2 columns.

    >>> pca(np.c_[np.arange(6.0), np.zeros(6), np.ones(6)], 0.8).shape
    (6, 1)
    """
    if variance is None or F.shape[1] <= 2:
        return F
    Z = PCA(n_components=variance, svd_solver="full", random_state=seed).fit_transform(F)
    return Z[:, :max_dims] if max_dims else Z


def transrate(features: Any, labels: Any, eps: float = 1e-4) -> float:
    """TransRate (Huang et al., ICML 2022): ``TrR = R(F, eps) - 1/C sum_c R(F_c, eps)`` with the coding
    rate :func:`coding_rate` of the centred features (the constant follows the TLlib implementation;
    the paper's d/(n eps^2) could not be verified). Not scale-invariant, and grows with D.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 60)
    >>> F = np.eye(3)[y] * 3 + rng.normal(size=(60, 3))
    >>> bool(transrate(F, y) > transrate(rng.normal(size=(60, 3)), y))
    True
    """
    F = feature_matrix(features, max_abs=MAX_ABS)
    y, C = class_labels(labels, F.shape[0])
    Fc = F - F.mean(0)
    return float(coding_rate(Fc, eps) - np.mean([coding_rate(Fc[y == c], eps) for c in range(C)]))


def gbc(features: Any, labels: Any, *, gaussian: str = "spherical", pca_variance: float | None = 0.8) -> float:
    """GBC (Pandy et al., CVPR 2022): ``-sum_{i != j} exp(-D_B(c_i, c_j))`` over pairs of classes with
    per-class Gaussians (``spherical`` or ``diagonal``, variances floored at 1e-4) on PCA-reduced
    features (80 % variance), Bhattacharyya distance
    ``D_B = 1/8 sum (mu_1 - mu_2)^2 / s + 1/2 sum [ln s - (ln s_1 + ln s_2) / 2]``, ``s = (s_1 + s_2) / 2``.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 60)
    >>> -6 <= gbc(np.eye(3)[y] * 3 + rng.normal(size=(60, 3)), y) <= 0  # 0: well separated
    True
    """
    F = feature_matrix(features, max_abs=MAX_ABS)
    y, C = class_labels(labels, F.shape[0])
    if gaussian not in ("spherical", "diagonal"):
        raise ValueError(f"gaussian: expected 'spherical' or 'diagonal', got {gaussian!r}")
    Z = pca(F, pca_variance)
    mus, vars_ = [], []
    for c in range(C):
        Zc = Z[y == c]
        v = np.maximum(Zc.var(0), 1e-4)
        if gaussian == "spherical":
            v = np.full_like(v, v.mean())
        mus.append(Zc.mean(0))
        vars_.append(v)
    total = 0.0
    for i in range(C):
        for j in range(C):
            if i == j:
                continue
            s = (vars_[i] + vars_[j]) / 2
            db = 0.125 * np.sum((mus[i] - mus[j]) ** 2 / s) + 0.5 * np.sum(
                np.log(s) - 0.5 * np.log(vars_[i]) - 0.5 * np.log(vars_[j])
            )
            total += np.exp(-db)
    return float(-total)


def tmi(features: Any, labels: Any) -> float:
    """EXPERIMENTAL (in :data:`~workbench.transfer.EXPERIMENTAL`: on the demo zoo's 12 sources its weighted tau
    against fine-tuned accuracy is near 0 or negative on every target). After Xu & Kang (ICCV 2023), who score
    transferability by intra-class feature variance (no reference code; estimator not verified against the
    paper): the negative mean over classes of the total within-class variance of L2-normalised features.
    Higher (tighter classes) is more transferable.

    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 60)
    >>> bool(tmi(np.eye(3)[y] * 3 + rng.normal(size=(60, 3)), y) > tmi(rng.normal(size=(60, 3)), y))
    True
    """
    F = unit_scale(feature_matrix(features))[0]  # scale-invariant: at unit scale the norm floor never binds
    y, C = class_labels(labels, F.shape[0])
    Fn = F / np.maximum(np.linalg.norm(F, axis=1, keepdims=True), 1e-12)
    return float(-np.mean([Fn[y == c].var(0).sum() for c in range(C)]))
