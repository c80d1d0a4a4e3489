"""H-score (Bao et al., ICIP 2019) and its shrinkage estimate (Ibrahim, Ponomareva & Mazumder, ICLR 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

from .logme import FeatureStats
from .validation import class_labels, feature_matrix, unit_scale, warn_wide

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


def _standardised_trace(R: np.ndarray, Sb: np.ndarray) -> float:
    """``tr(R^+ Sb)`` for a correlation matrix R (unit diagonal): a pseudo-inverse with a relative cut-off is
    meaningful only once every feature has unit variance, which makes the H-score invariant to the scale of
    each feature (as it is in exact arithmetic: tr((D S D)^-1 D Sb D) = tr(S^-1 Sb))."""
    return float(np.trace(np.linalg.pinv(R, rcond=1e-10, hermitian=True) @ Sb))


def _hscore_of_stats(st: FeatureStats) -> float:
    N, C = st.n, st.C
    if st.FtF is None:
        raise ValueError("features: the FeatureStats hold no samples; update() them with features first")
    mu = st.s / N
    S = st.FtF / N - np.outer(mu, mu)
    M = st.class_sum / np.maximum(st.count[:, None], 1)
    Mc = M - mu
    Sb = (Mc.T * (st.count / N)) @ Mc
    warn_wide(N, S.shape[0], C, "hscore")
    var = np.diag(S)
    keep = var > 1e-12 * np.maximum(np.diag(st.FtF) / N, 1e-300)  # constant features (up to cancellation) carry nothing
    if not keep.any():
        raise ValueError("features: every feature is constant across the samples; the H-score is undefined")
    d = np.sqrt(var[keep])
    return _standardised_trace(S[np.ix_(keep, keep)] / np.outer(d, d), Sb[np.ix_(keep, keep)] / np.outer(d, d))


def hscore(features: Any, labels: Any = None, *, shrinkage: bool = False) -> float:
    """H-score (Bao et al., ICIP 2019): ``H = tr(cov(F)^+ cov(E[F | y]))``, where E[F|y] replaces each
    row by its class mean (a true matrix product, not an elementwise one). With ``shrinkage=True``
    (Ibrahim, Ponomareva & Mazumder, ICLR 2022): the Ledoit-Wolf estimate
    ``S_LW = (1 - a) S + a tr(S)/D I`` and ``H_a = tr(S_LW^{-1} (1 - a) cov(E[F|y]))``.
    Plain H-score saturates at C - 1 when D is not small against N (a RuntimeWarning says so); it is
    computed on standardised features (unit variance), so it does not depend on the scale of any feature.
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
    if shrinkage:  # invariant to a global scale (not per feature): run at unit scale, safe at any scale
        Fc = unit_scale(Fc)[0]
        M, counts = class_means(Fc, y, C)
        Sb = (M.T * (counts / N)) @ M  # cov of the class-mean-replaced features
        lw = LedoitWolf(assume_centered=True).fit(Fc)
        a = lw.shrinkage_
        # pinv: with few samples and no shrinkage (a = 0) the estimate can be singular
        return float(np.trace(np.linalg.pinv(lw.covariance_, rcond=1e-12, hermitian=True) @ ((1 - a) * Sb)))
    warn_wide(N, D, C, "hscore")
    Fc = Fc[:, np.any(Fc != 0, axis=0)]  # constant features carry nothing
    Z = Fc / np.sqrt(np.mean(Fc * Fc / np.abs(Fc).max(0) ** 2, axis=0)) / np.abs(Fc).max(0)  # unit variance
    M, counts = class_means(Z, y, C)
    return _standardised_trace(Z.T @ Z / N, (M.T * (counts / N)) @ M)
