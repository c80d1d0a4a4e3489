"""LogME (You, Liu, Wang & Long, ICML 2021; JMLR 2022) and the streaming statistics it can run on."""

from __future__ import annotations

from typing import Any

import numpy as np

from .validation import as_array, class_labels, feature_matrix, unit_scale

__all__ = ["FeatureStats", "logme"]


class FeatureStats:
    """Streaming sufficient statistics of (features, labels): N, sum F, F^T F, class sums and counts.
    Enough for :func:`logme` (classification) and :func:`~workbench.transfer.hscore` without the
    N x D matrix. Labels must already be 0..C-1.

    >>> import numpy as np
    >>> st = FeatureStats(2).update(np.eye(3)[:, :2], [0, 1, 1])
    >>> st.n, st.count.tolist()
    (3, [1.0, 2.0])
    """

    def __init__(self, n_classes: int):
        self.C = int(n_classes)
        self.n = 0
        self.FtF = self.s = self.class_sum = None
        self.count = np.zeros(self.C)

    def update(self, F: Any, y: Any) -> FeatureStats:
        """Add a batch of features ``F`` (n, D) with labels ``y`` in 0..C-1; returns ``self``."""
        F = feature_matrix(F)
        y = as_array(y, "labels").ravel().astype(np.int64)
        if y.min() < 0 or y.max() >= self.C:
            raise ValueError(f"labels: FeatureStats expects labels in 0..{self.C - 1}, got {y.min()}..{y.max()}")
        if self.FtF is None:
            D = F.shape[1]
            self.FtF, self.s, self.class_sum = np.zeros((D, D)), np.zeros(D), np.zeros((self.C, D))
        self.n += F.shape[0]
        self.FtF += F.T @ F
        self.s += F.sum(0)
        np.add.at(self.class_sum, y, F)
        self.count += np.bincount(y, minlength=self.C)
        return self


def _evidence(sig, x2, t2, N, D, tol=1e-10, max_iter=2000):
    """Evidence maximisation per target column. sig (k,) eigenvalues of F^T F (k <= D nonzero
    directions), x2 (k, C) squared projections of the columns on those directions, t2 (C,) ||t||^2."""
    k = sig.shape[0]
    r0 = np.maximum(t2 - x2.sum(0), 0.0)  # part of t outside the span of F
    # when t lies in the span of F (D >= N) the evidence keeps growing with beta: the residual is floored
    # at 1e-12 ||t||^2, which caps beta where the evidence has converged to its supremum
    floor = 1e-12 * np.maximum(t2, 1e-300)
    alpha = np.ones_like(t2)
    beta = np.ones_like(t2)
    for _ in range(max_iter):
        den = alpha[None] + beta[None] * sig[:, None]
        gamma = (beta[None] * sig[:, None] / den).sum(0)
        m2 = (beta[None] ** 2 * sig[:, None] * x2 / den**2).sum(0)
        res2 = np.maximum(r0 + (alpha[None] ** 2 * x2 / den**2).sum(0), floor)
        b_new = np.maximum(N - gamma, 1e-12) / res2
        # where the evidence grows without bound in alpha (the features explain nothing of t: w = 0 is best)
        # the iteration would run alpha to overflow; beyond 1e12 beta s_max the evidence is at its limit
        a_new = np.minimum(gamma / np.maximum(m2, 1e-300), 1e12 * b_new * sig.max())
        done = np.all(np.abs(a_new - alpha) <= tol * alpha) and np.all(np.abs(b_new - beta) <= tol * beta)
        alpha, beta = a_new, b_new
        if done:
            break
    den = alpha[None] + beta[None] * sig[:, None]
    m2 = (beta[None] ** 2 * sig[:, None] * x2 / den**2).sum(0)
    res2 = np.maximum(r0 + (alpha[None] ** 2 * x2 / den**2).sum(0), floor)
    logdet = np.log(den).sum(0) + (D - k) * np.log(alpha)  # zero eigenvalues padded up to D
    ev = (
        D / 2 * np.log(alpha)
        + N / 2 * np.log(beta)
        - N / 2 * np.log(2 * np.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - logdet / 2
    )
    return ev / N, alpha, beta


def _spectrum(F, T):
    """Nonzero eigenvalues s_i of F^T F and the squared projections (U^T T)^2 of the targets on the left
    singular vectors. Fast path: eigh of the smaller Gram matrix (F^T F or F F^T); when that spectrum is
    ill-conditioned (the Gram matrix squares the condition number), an SVD of F itself."""
    N, D = F.shape
    eps = np.finfo(np.float64).eps
    if N >= D:
        sig, V = np.linalg.eigh(F.T @ F)
    else:
        sig, U = np.linalg.eigh(F @ F.T)
    top = sig.max()
    keep = sig > top * eps * max(N, D) * 10
    if top <= 0 or sig[keep].min() < top * 1e-8:  # ill-conditioned: recompute accurately
        U, sv, _ = np.linalg.svd(F, full_matrices=False)
        keep = sv > sv.max() * eps * max(N, D)
        U, sig = U[:, keep], sv[keep] ** 2
        return sig, (U.T @ T) ** 2
    if N >= D:
        sig, V = sig[keep], V[:, keep]
        return sig, (V.T @ (F.T @ T)) ** 2 / sig[:, None]  # (U^T t)^2 with U = F V / s
    sig, U = sig[keep], U[:, keep]
    return sig, (U.T @ T) ** 2


def _stats_spectrum(st: FeatureStats):
    if st.FtF is None:
        raise ValueError("features: the FeatureStats hold no samples; update() them with features first")
    N, D = st.n, st.FtF.shape[0]
    c2 = np.trace(st.FtF) / (N * D)  # unit scale (the score does not depend on it)
    if not c2 > 0 or not np.isfinite(c2):
        raise ValueError("features: the FeatureStats hold no samples or only all-zero (or overflowing) features")
    sig, V = np.linalg.eigh(st.FtF / c2)
    keep = sig > sig.max() * 1e-12 * max(N, D)
    sig, V = sig[keep], V[:, keep]
    FtT = st.class_sum.T / np.sqrt(c2)  # (D, C): F^T t for one-hot t
    return sig, (V.T @ FtT) ** 2 / sig[:, None], st.count.copy(), N, D, c2


def logme(
    features: Any, labels: Any = None, *, regression: bool = False, return_params: bool = False
) -> float | tuple[float, dict]:
    """LogME (You, Liu, Wang & Long, ICML 2021; JMLR 2022): the maximum log evidence per sample of a
    Bayesian linear model ``t = F w + eps``, ``w ~ N(0, I / alpha)``, ``eps ~ N(0, I / beta)``:

    ``L(alpha, beta) = D/2 ln alpha + N/2 ln beta - N/2 ln 2 pi - beta/2 ||t - F m||^2 - alpha/2 ||m||^2
    - 1/2 ln |alpha I + beta F^T F|``, ``m = beta A^{-1} F^T t``,

    maximised by MacKay's fixed point ``alpha = gamma / ||m||^2``, ``beta = (N - gamma) / ||t - F m||^2``,
    ``gamma = sum_i beta s_i / (alpha + beta s_i)`` (s_i eigenvalues of F^T F), iterated to convergence
    (relative change 1e-10). The score is the mean over target columns (one-hot classes, or regression
    targets with ``regression=True``) of L*/N. The spectrum is padded with zeros up to D, so it is
    correct when D > N: all-zero feature columns leave it unchanged. ``features`` may also be a
    :class:`FeatureStats` (classification). ``return_params=True`` returns ``(score, {"alpha", "beta",
    "evidence_per_column"})``.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, 60)
    >>> F = np.eye(3)[y] * 3 + rng.normal(size=(60, 3))
    >>> bool(logme(F, y) > logme(rng.normal(size=(60, 3)), y))
    True
    """
    if isinstance(features, FeatureStats):
        sig, x2, t2, N, D, c2 = _stats_spectrum(features)
    else:
        F, c = unit_scale(feature_matrix(features))  # the evidence is invariant to the scale: run at scale 1
        with np.errstate(over="ignore"):
            c2 = c * c
        N, D = F.shape
        if regression:
            T = as_array(labels, "targets").astype(np.float64)
            T = T[:, None] if T.ndim == 1 else T
            if T.shape[0] != N or not np.all(np.isfinite(T)):
                raise ValueError(f"targets: expected N={N} finite regression targets, got shape {T.shape}")
        else:
            y, C = class_labels(labels, N)
            T = np.eye(C)[y]
        sig, x2 = _spectrum(F, T)
        t2 = (T**2).sum(0)
    ev, a, b = _evidence(sig, x2, t2, N, D)
    score = float(np.mean(ev))
    if not np.isfinite(score):  # a guard: the spectrum of finite, non-constant features gives a finite evidence
        raise ValueError("features: LogME's evidence is not finite for these features (report this as a bug)")
    if not return_params:
        return score
    with np.errstate(over="ignore"):
        a = a * c2  # the prior precision of the weights of the features as given (F = c F_unit: alpha_unit c^2)
    return score, {"alpha": a, "beta": b, "evidence_per_column": ev}
