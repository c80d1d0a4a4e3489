"""H-score (Bao et al., ICIP 2019) and its shrinkage estimate (Ibrahim, Ponomareva & Mazumder, ICLR 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

from .logme import FeatureStats
from .validation import class_labels, feature_matrix, warn_wide

__all__ = ["hscore", "class_means"]


def class_means(F: np.ndarray, y: np.ndarray, C: int) -> tuple[np.ndarray, np.ndarray]:
    """``(M, counts)``: the (C, D) class means of the rows of ``F`` and the class sizes (y in 0..C-1).

    >>> M, n = class_means(np.array([[0.0], [2.0], [5.0]]), np.array([0, 0, 1]), 2)
    >>> M.ravel().tolist(), n.tolist()
    ([1.0, 5.0], [2.0, 1.0])
    """
    counts = np.bincount(y, minlength=C).astype(np.float64)
    sums = np.zeros((C, F.shape[1]))
    np.add.at(sums, y, F)
    return sums / counts[:, None], counts


def _hscore_of_stats(st: FeatureStats) -> float:
    N, C = st.n, st.C
    mu = st.s / N
    S = st.FtF / N - np.outer(mu, mu)
    M = st.class_sum / np.maximum(st.count[:, None], 1)
    Mc = M - mu
    Sb = (Mc.T * (st.count / N)) @ Mc
    warn_wide(N, S.shape[0], C, "hscore")
    return float(np.trace(np.linalg.pinv(S, rcond=1e-10, hermitian=True) @ Sb))


def hscore(features: Any, labels: Any = None, *, shrinkage: bool = False) -> float:
    """H-score (Bao et al., ICIP 2019): ``H = tr(cov(F)^+ cov(E[F | y]))``, where E[F|y] replaces each
    row by its class mean (a true matrix product, not an elementwise one). With ``shrinkage=True``
    (Ibrahim, Ponomareva & Mazumder, ICLR 2022): the Ledoit-Wolf estimate
    ``S_LW = (1 - a) S + a tr(S)/D I`` and ``H_a = tr(S_LW^{-1} (1 - a) cov(E[F|y]))``.
    Plain H-score saturates at C - 1 when D is not small against N (a RuntimeWarning says so).
    ``features`` may be a :class:`~workbench.transfer.FeatureStats` (plain H-score only).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 80)
    >>> F = np.eye(3)[y] * 2 + rng.normal(size=(80, 3))
    >>> 0 < hscore(F, y) < 2  # between 0 and C - 1
    True
    """
    if isinstance(features, FeatureStats):
        if shrinkage:
            raise ValueError("shrinkage: the Ledoit-Wolf H-score needs the features themselves, not FeatureStats")
        return _hscore_of_stats(features)
    F = feature_matrix(features)
    y, C = class_labels(labels, F.shape[0])
    N, D = F.shape
    Fc = F - F.mean(0)
    M, counts = class_means(Fc, y, C)
    Sb = (M.T * (counts / N)) @ M  # cov of the class-mean-replaced features
    if shrinkage:
        lw = LedoitWolf(assume_centered=True).fit(Fc)
        a = lw.shrinkage_
        return float(np.trace(np.linalg.solve(lw.covariance_, (1 - a) * Sb)))
    warn_wide(N, D, C, "hscore")
    S = Fc.T @ Fc / N
    return float(np.trace(np.linalg.pinv(S, rcond=1e-10, hermitian=True) @ Sb))
