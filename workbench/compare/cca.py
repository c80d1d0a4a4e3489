"""Measures from the (cross-)covariances of two representations, streamed exactly over batches.

:class:`CrossCovariance` accumulates ``n``, the feature sums and the products ``X'X``, ``Y'Y``, ``X'Y``
batch by batch; the centred products ``Sxx = Xc'Xc`` etc. follow exactly, so every measure below is the
full-data value whatever the batching:

* linear CKA ``|Sxy|_F^2 / (|Sxx|_F |Syy|_F)`` (Kornblith et al. 2019), and the debiased linear CKA (the
  unbiased HSIC of Song et al. 2012 in one pass: ``tr(K~L~)``, ``1'K~1`` and ``1'K~L~1`` of the linear kernels
  follow from the sums above plus the row norms ``|x_i|^2``, ``|y_i|^2`` and their products with the rows);
* the orthogonal Procrustes distance of Ding et al. (2021) on features centred and scaled to unit
  Frobenius norm, ``2 - 2 |Sxy|_* / sqrt(tr Sxx tr Syy)`` (0 for identical representations up to rotation
  and scale, at most 2);
* CCA: canonical correlations ``rho_i``, the singular values of ``Sxx^-1/2 Sxy Syy^-1/2`` (directions
  with variance below ``eps`` times the largest are dropped); :func:`cca` is their mean;
* SVCCA (Raghu et al. 2017): CCA after keeping, per side, the top principal directions that explain
  ``keep`` (0.99) of the variance;
* PWCCA (Morcos et al. 2018): ``sum_i a_i rho_i / sum_i a_i`` with ``a_i = sum_j |<h_i, x_j>|`` the
  weight of the canonical variate ``h_i = Xc w_i`` of ``X`` in X's neurons ``x_j`` (not symmetric).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..validate import fraction
from .similarity import features_array

__all__ = ["CrossCovariance", "procrustes", "cca", "svcca", "pwcca", "canonical_correlations"]


class CrossCovariance:
    """Streaming sums of two representations of the same examples (see the module docstring).

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 4))
    >>> acc = CrossCovariance().update(X[:10], X[:10, :2]).update(X[10:], X[10:, :2])
    >>> acc.n, round(acc.linear_cka(), 10) == round(CrossCovariance().update(X, X[:, :2]).linear_cka(), 10)
    (30, True)
    """

    def __init__(self):
        self.n = 0
        self._shift: tuple | None = None  # the first batch's means: sums of shifted rows keep their precision
        self._s: dict | None = None

    def update(self, X: Any, Y: Any) -> CrossCovariance:
        """Add one batch (the same examples in the rows of ``X`` and ``Y``); returns self."""
        X, Y = features_array("X", X, 1), features_array("Y", Y, 1)
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"Y: has {Y.shape[0]} examples, X has {X.shape[0]}; rows must be the same examples")
        if self._shift is None:
            self._shift = (X.mean(0), Y.mean(0))
        elif self._shift[0].shape[0] != X.shape[1] or self._shift[1].shape[0] != Y.shape[1]:
            raise ValueError(
                f"X: batch widths {X.shape[1]}, {Y.shape[1]} differ from the first batch's "
                f"{self._shift[0].shape[0]}, {self._shift[1].shape[0]}"
            )
        X, Y = X - self._shift[0], Y - self._shift[1]
        a, b = np.einsum("ij,ij->i", X, X), np.einsum("ij,ij->i", Y, Y)
        parts = dict(
            sx=X.sum(0), sy=Y.sum(0), xx=X.T @ X, yy=Y.T @ Y, xy=X.T @ Y,
            a=a.sum(), b=b.sum(), aa=a @ a, bb=b @ b, ab=a @ b,
            ax=a @ X, bx=b @ X, ay=a @ Y, by=b @ Y,
        )  # fmt: skip
        self._s = parts if self._s is None else {k: v + parts[k] for k, v in self._s.items()}
        self.n += X.shape[0]
        return self

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(Sxx, Syy, Sxy)``: the centred products ``Xc'Xc``, ``Yc'Yc``, ``Xc'Yc``."""
        if self._s is None or self.n < 2:
            raise ValueError("X: at least 2 examples are needed; update() with more data")
        s = self._s
        mx, my = s["sx"] / self.n, s["sy"] / self.n
        n = self.n
        return s["xx"] - n * np.outer(mx, mx), s["yy"] - n * np.outer(my, my), s["xy"] - n * np.outer(mx, my)

    def _hsic1(self, ZZ: str, sa: str, sb: str, za: str, zb: str, s1: str, s2: str, cross: str) -> float:
        """The unbiased HSIC of the linear kernels (Song et al. 2012) from the accumulated sums."""
        s, n = self._s, self.n
        trace = float(np.sum(s[ZZ] ** 2)) - float(s[cross])
        one_k = float(s[s1] @ s[s1]) - float(s[sa])
        one_l = float(s[s2] @ s[s2]) - float(s[sb])
        kl1 = float(s[s1] @ s[ZZ] @ s[s2]) - float(s[s1] @ s[zb]) - float(s[s2] @ s[za]) + float(s[cross])
        return (trace + one_k * one_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1) / (n * (n - 3))

    def debiased_cka(self) -> float:
        """Debiased linear CKA (the unbiased HSIC of Song et al. 2012) of everything accumulated, exactly as
        :func:`workbench.compare.cka` ``(X, Y, debiased=True)`` on all rows at once (at least 4).

        >>> rng = np.random.default_rng(0)
        >>> X, Y = rng.normal(size=(40, 5)), rng.normal(size=(40, 3))
        >>> acc = CrossCovariance().update(X[:13], Y[:13]).update(X[13:], Y[13:])
        >>> from workbench.compare import cka
        >>> bool(np.isclose(acc.debiased_cka(), cka(X, Y, debiased=True), rtol=1e-10))
        True
        """
        if self._s is None or self.n < 4:
            raise ValueError("X: the debiased CKA needs at least 4 examples; update() with more data")
        kl = self._hsic1("xy", "a", "b", "ay", "bx", "sx", "sy", "ab")
        kk = self._hsic1("xx", "a", "a", "ax", "ax", "sx", "sx", "aa")
        ll = self._hsic1("yy", "b", "b", "by", "by", "sy", "sy", "bb")
        den = kk * ll
        return float(kl / math.sqrt(den)) if den > 0 else math.nan

    def linear_cka(self) -> float:
        """Linear CKA of everything accumulated."""
        sxx, syy, sxy = self.centred()
        den = float(np.linalg.norm(sxx) * np.linalg.norm(syy))
        return float(np.sum(sxy**2) / den) if den > 0 else math.nan

    def procrustes(self) -> float:
        """Orthogonal Procrustes distance (Ding et al. 2021) of everything accumulated."""
        sxx, syy, sxy = self.centred()
        den = math.sqrt(max(float(np.trace(sxx)) * float(np.trace(syy)), 0.0))
        if den == 0:
            return math.nan
        nuc = float(np.linalg.svd(sxy, compute_uv=False).sum())
        return max(2.0 - 2.0 * nuc / den, 0.0)

    def canonical(self, keep: float | None = None, eps: float = 1e-10):
        """``(rho, a)``: canonical correlations (descending) and PWCCA weights of X's variates; ``keep``:
        the variance fraction kept per side before CCA (SVCCA), None for all."""
        sxx, syy, sxy = self.centred()
        Wx, Ux = _whitener(sxx, keep, eps)
        Wy, _ = _whitener(syy, keep, eps)
        if Wx.shape[1] == 0 or Wy.shape[1] == 0:
            return np.zeros(0), np.zeros(0)
        u, rho, _ = np.linalg.svd(Wx.T @ sxy @ Wy, full_matrices=False)
        w = Wx @ u  # canonical directions of X (columns), in the original coordinates
        a = np.abs(sxx @ w).sum(0)  # sum_j |<h_i, x_j>| up to one constant (h_i = Xc w_i)
        return np.clip(rho, 0.0, 1.0), a


def _whitener(s: np.ndarray, keep: float | None, eps: float) -> tuple[np.ndarray, np.ndarray]:
    lam, V = np.linalg.eigh(s)
    lam, V = lam[::-1], V[:, ::-1]
    top = lam[0] if lam.size and lam[0] > 0 else 0.0
    ok = lam > eps * top if top > 0 else np.zeros(lam.shape, bool)
    lam, V = lam[ok], V[:, ok]
    if keep is not None and lam.size:
        k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), keep - 1e-12) + 1)
        lam, V = lam[:k], V[:, :k]
    return V / np.sqrt(lam), V


def _acc(X, Y) -> CrossCovariance:
    if isinstance(X, CrossCovariance):
        if Y is not None:
            raise TypeError("Y: give either a CrossCovariance as X (and no Y) or two arrays")
        return X
    X, Y = features_array("X", X), features_array("Y", Y)
    return CrossCovariance().update(X, Y)


def procrustes(X: Any, Y: Any = None) -> float:
    """Orthogonal Procrustes distance of Ding et al. (2021) between ``X`` and ``Y`` (or of a
    :class:`CrossCovariance`): ``min_Q |Xn - Yn Q|_F^2 = 2 - 2 |Xn'Yn|_*`` with centred features scaled to
    unit Frobenius norm; 0 for identical representations up to rotation and isotropic scaling.

    >>> X = np.random.default_rng(0).normal(size=(20, 3))
    >>> round(procrustes(X, -2 * X), 8), round(procrustes(X, X[:, :1]), 3)
    (0.0, 0.518)
    """
    return _acc(X, Y).procrustes()


def canonical_correlations(X: Any, Y: Any = None, keep: float | None = None) -> np.ndarray:
    """The canonical correlations of ``X`` and ``Y`` (descending, ``min(rank X, rank Y)`` of them);
    ``keep``: SVCCA's variance fraction per side.

    >>> X = np.random.default_rng(0).normal(size=(20, 2))
    >>> np.round(canonical_correlations(X, X @ [[1.0, 2.0], [0.0, 1.0]]), 6).tolist()
    [1.0, 1.0]
    """
    return _acc(X, Y).canonical(None if keep is None else fraction("keep", keep, closed=True))[0]


def cca(X: Any, Y: Any = None) -> float:
    """Mean canonical correlation (Raghu et al. 2017's "mean CCA similarity"); 1 when ``Y`` is an
    invertible linear map of ``X``.

    >>> X = np.random.default_rng(0).normal(size=(20, 2))
    >>> round(cca(X, X @ [[1.0, 2.0], [0.0, 1.0]] + 5), 6)
    1.0
    """
    rho = canonical_correlations(X, Y)
    return float(rho.mean()) if rho.size else math.nan


def svcca(X: Any, Y: Any = None, keep: float = 0.99) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation after keeping, on each side, the top
    principal directions explaining ``keep`` of the variance.

    >>> X = np.random.default_rng(0).normal(size=(40, 3)) * [10.0, 5.0, 0.01]
    >>> round(svcca(X, X[:, :2]), 6)
    1.0
    """
    rho = canonical_correlations(X, Y, keep)
    return float(rho.mean()) if rho.size else math.nan


def pwcca(X: Any, Y: Any = None) -> float:
    """Projection-weighted CCA (Morcos et al. 2018): canonical correlations weighted by how much of
    ``X``'s neurons each canonical variate of ``X`` accounts for (see the module docstring).

    >>> X = np.random.default_rng(0).normal(size=(20, 2))
    >>> round(pwcca(X, 3 * X), 6)
    1.0
    """
    rho, a = _acc(X, Y).canonical()
    return float(np.sum(a * rho) / np.sum(a)) if rho.size and np.sum(a) > 0 else math.nan
