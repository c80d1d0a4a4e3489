"""Representation similarity of two sets of features on the same examples: the CKA family.

``X`` is ``(n, d_x)`` and ``Y`` ``(n, d_y)``, rows are the same ``n`` examples (numpy or torch, computed in
float64). Every measure here is a plain function returning a float.

* :func:`hsic`: the biased estimator ``tr(K H L H) / (n - 1)^2`` (Gretton et al. 2005) or, with
  ``unbiased=True``, the unbiased one of Song et al. (2012): with ``K~``, ``L~`` the Gram matrices with
  their diagonals set to 0, ``[tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n (n - 3))``.
* :func:`cka`: ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` (Kornblith et al. 2019) with a linear or RBF
  kernel (bandwidth ``sigma`` times the median pairwise distance, as in Kornblith et al.'s code);
  ``debiased=True`` uses the unbiased HSIC (the "debiased CKA" of Nguyen et al. 2021 / Davari et al.
  2022): plain CKA is biased upwards when ``d >> n`` (it is far from 0 on independent features).
* :class:`MinibatchCKA`: the minibatch estimator of Nguyen et al. (2021): the unbiased HSIC of every
  batch is *accumulated* (averaged over batches) for every pair, and the ratio is formed at the end;
  it is not the mean of per-batch CKAs.

Linear CKA (plain and debiased), Procrustes and the CCA family stream exactly over batches through
:class:`CrossCovariance` (:mod:`workbench.compare.cca`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..validate import choice, positive

__all__ = ["features_array", "gram", "hsic", "cka", "linear_cka", "rbf_cka", "MinibatchCKA"]

KERNELS = ("linear", "rbf")


def features_array(name: str, v: Any, min_rows: int = 2) -> np.ndarray:
    """``v`` (numpy, torch or nested lists) as a finite float64 ``(n, d)`` array; 1-D is one feature.

    >>> features_array("X", [1.0, 2.0]).shape
    (2, 1)
    """
    if isinstance(v, (str, bytes)) or v is None:
        raise TypeError(f"{name}: expected an (examples, features) array, got {type(v).__name__}")
    if hasattr(v, "detach"):
        v = v.detach().cpu().double().numpy()
    try:
        a = np.asarray(v)
    except (ValueError, TypeError):
        raise TypeError(f"{name}: expected an (examples, features) array, got {type(v).__name__}") from None
    if a.dtype == bool or a.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (examples, features) array, got shape {a.shape}; flatten it first")
    if a.shape[0] < min_rows or a.shape[1] == 0:
        raise ValueError(f"{name}: expected at least {min_rows} examples and 1 feature, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf; pass finite features")
    return a


def _pair(X, Y, min_rows: int = 2) -> tuple[np.ndarray, np.ndarray]:
    X, Y = features_array("X", X, min_rows), features_array("Y", Y, min_rows)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"Y: has {Y.shape[0]} examples, X has {X.shape[0]}; rows must be the same examples")
    return X, Y


def gram(X: Any, kernel: str = "linear", sigma: float = 0.8) -> np.ndarray:
    """The ``(n, n)`` Gram matrix: ``X X'`` (linear) or ``exp(-|x_i - x_j|^2 / (2 s^2))`` (rbf) with
    ``s^2 = sigma^2 median_ij |x_i - x_j|^2`` (the median over all pairs, diagonal included, as in
    Kornblith et al.'s reference code); a constant ``X`` gives ``s = 1``.

    >>> gram([[1.0], [2.0]]).tolist()
    [[1.0, 2.0], [2.0, 4.0]]
    """
    choice("kernel", kernel, KERNELS)
    X = features_array("X", X, 1)
    K = X @ X.T
    if kernel == "linear":
        return K
    sigma = positive("sigma", sigma)
    sq = np.diag(K)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * K, 0.0)
    med = float(np.median(d2))
    return np.exp(-d2 / (2 * sigma**2 * (med if med > 0 else 1.0)))


def _hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    Kc = K - K.mean(0, keepdims=True) - K.mean(1, keepdims=True) + K.mean()
    return float(np.sum(Kc * L) / (n - 1) ** 2)  # tr(HKH L) = tr(K H L H)


def _hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    sk, sl = K.sum(0), L.sum(0)
    t = np.sum(K * L) + sk.sum() * sl.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * float(sk @ sl)
    return float(t / (n * (n - 3)))


def hsic(K: Any, L: Any, unbiased: bool = False) -> float:
    """HSIC of two ``(n, n)`` Gram matrices: biased ``tr(K H L H) / (n-1)^2`` (``H`` the centring
    matrix), or the unbiased estimator of Song et al. (2012) (``n >= 4``; see the module docstring).

    >>> K = gram(np.arange(6.0)[:, None])
    >>> round(hsic(K, K), 4), round(hsic(K, K, unbiased=True), 4)
    (12.25, 10.5)
    """
    K, L = np.asarray(K, dtype=np.float64), np.asarray(L, dtype=np.float64)
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape != L.shape:
        raise ValueError(f"L: expected two square Gram matrices of one size, got shapes {K.shape} and {L.shape}")
    if unbiased:
        if K.shape[0] < 4:
            raise ValueError(f"K: the unbiased HSIC needs at least 4 examples, got {K.shape[0]}")
        return _hsic_unbiased(K, L)
    if K.shape[0] < 2:
        raise ValueError(f"K: HSIC needs at least 2 examples, got {K.shape[0]}")
    return _hsic_biased(K, L)


def _ratio(kl: float, kk: float, ll: float) -> float:
    den = kk * ll
    return float(kl / math.sqrt(den)) if den > 0 else math.nan


def cka(X: Any, Y: Any, kernel: str = "linear", *, sigma: float = 0.8, debiased: bool = False) -> float:
    """Centred kernel alignment ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` of Kornblith et al. (2019)
    between the features ``X`` (n, d_x) and ``Y`` (n, d_y) of the same n examples; ``kernel`` 'linear'
    or 'rbf' (bandwidth ``sigma`` times the median distance, see :func:`gram`); ``debiased=True`` uses
    the unbiased HSIC of Song et al. 2012 (``n >= 4``; may be slightly negative; NaN when a
    self-HSIC is not positive). 1 for ``Y = X``; invariant to rotations and isotropic scaling of either.

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(50, 5))
    >>> Q = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    >>> round(cka(X, 3 * X @ Q), 6), round(cka(X, X, "rbf"), 6)
    (1.0, 1.0)
    """
    choice("kernel", kernel, KERNELS)
    X, Y = _pair(X, Y, 4 if debiased else 2)
    K, L = gram(X, kernel, sigma), gram(Y, kernel, sigma)
    h = _hsic_unbiased if debiased else _hsic_biased
    return _ratio(h(K, L), h(K, K), h(L, L))


def linear_cka(X: Any, Y: Any, debiased: bool = False) -> float:
    """Linear CKA, ``|Yc' Xc|_F^2 / (|Xc' Xc|_F |Yc' Yc|_F)`` with column-centred features (equal to
    :func:`cka` with the linear kernel, computed in feature space: ``O(n d^2)``, no Gram matrix);
    ``debiased=True``: the unbiased-HSIC CKA, also in feature space
    (:meth:`workbench.compare.CrossCovariance.debiased_cka`; equal to ``cka(X, Y, debiased=True)``).

    >>> round(linear_cka([[0.0, 1], [1, 0], [2, 2]], [[0.0], [1], [2]]), 4)
    0.7906
    """
    if debiased:
        from .cca import CrossCovariance  # (cca imports this module)

        X, Y = _pair(X, Y, 4)
        return CrossCovariance().update(X, Y).debiased_cka()
    X, Y = _pair(X, Y)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return _ratio(
        float(np.sum((Yc.T @ Xc) ** 2)), float(np.linalg.norm(Xc.T @ Xc)) ** 2, float(np.linalg.norm(Yc.T @ Yc)) ** 2
    )


def rbf_cka(X: Any, Y: Any, sigma: float = 0.8, debiased: bool = False) -> float:
    """RBF-kernel CKA with bandwidth ``sigma`` times the median pairwise distance (:func:`cka`).

    >>> round(rbf_cka(np.eye(4), 2 * np.eye(4)), 6)
    1.0
    """
    return cka(X, Y, "rbf", sigma=sigma, debiased=debiased)


class MinibatchCKA:
    """Minibatch CKA of Nguyen et al. (2021, "Do wide and deep networks learn the same things?"),
    streaming over batches: for every batch ``b`` the unbiased HSIC (Song et al. 2012) of the pairs
    ``(K_b, L_b)``, ``(K_b, K_b)``, ``(L_b, L_b)`` is accumulated, and
    ``CKA = mean_b HSIC1(K_b, L_b) / sqrt(mean_b HSIC1(K_b, K_b) mean_b HSIC1(L_b, L_b))``.
    Batches need at least 4 examples. :attr:`per_batch` keeps the three HSICs of every batch (for
    intervals over batches).

    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(64, 3))
    >>> acc = MinibatchCKA()
    >>> for i in range(0, 64, 16):
    ...     _ = acc.update(X[i : i + 16], 2 * X[i : i + 16])
    >>> round(acc.value, 6), acc.n_batches
    (1.0, 4)
    """

    def __init__(self, kernel: str = "linear", sigma: float = 0.8):
        self.kernel = choice("kernel", kernel, KERNELS)
        self.sigma = positive("sigma", sigma)
        self.per_batch: list[tuple[float, float, float]] = []

    def update(self, X: Any, Y: Any) -> MinibatchCKA:
        """Accumulate one batch (rows the same examples in ``X`` and ``Y``); returns self."""
        X, Y = _pair(X, Y, 4)
        K, L = gram(X, self.kernel, self.sigma), gram(Y, self.kernel, self.sigma)
        self.per_batch.append((_hsic_unbiased(K, L), _hsic_unbiased(K, K), _hsic_unbiased(L, L)))
        return self

    @property
    def n_batches(self) -> int:
        return len(self.per_batch)

    @property
    def hsic(self) -> tuple[float, float, float]:
        """The accumulated means ``(HSIC(K, L), HSIC(K, K), HSIC(L, L))`` over the batches so far."""
        if not self.per_batch:
            raise ValueError("MinibatchCKA: no batch accumulated yet; call update(X, Y) first")
        return tuple(float(v) for v in np.mean(np.asarray(self.per_batch), axis=0))

    @property
    def value(self) -> float:
        """The minibatch CKA of the batches so far."""
        return _ratio(*self.hsic)

    @staticmethod
    def from_hsic(kl: Any, kk: Any, ll: Any) -> float:
        """The estimate from per-batch HSIC arrays (for a resampling of the batches).

        >>> MinibatchCKA.from_hsic([1.0, 1.0], [1.0, 4.0], [1.0, 1.0])
        0.6324555320336759
        """
        return _ratio(float(np.mean(kl)), float(np.mean(kk)), float(np.mean(ll)))
