"""Matrix-free linear algebra for symmetric operators given by a mat-vec (numpy float64).

* :func:`lanczos`: Lanczos with full reorthogonalisation, extreme Ritz pairs and their residuals;
* :func:`hutchinson`, :func:`hutchpp`, :func:`xtrace`: stochastic trace estimators with standard errors;
* :func:`slq`: stochastic Lanczos quadrature nodes and weights (Ghorbani et al. 2019).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rademacher(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2 - 1


@dataclass
class LanczosResult:
    alpha: np.ndarray  # diagonal of T
    beta: np.ndarray  # off-diagonal of T
    Q: np.ndarray | None  # (P, m) Lanczos basis (None if not kept)
    n_matvec: int

    def tridiagonal(self) -> np.ndarray:
        m = len(self.alpha)
        return np.diag(self.alpha) + np.diag(self.beta[: m - 1], 1) + np.diag(self.beta[: m - 1], -1)


def lanczos(matvec, v0: np.ndarray, m: int, k: int | None = None, which: str = "largest", tol: float | None = None,
            keep_basis: bool = True, min_steps: int | None = None) -> LanczosResult:
    """``m`` steps of Lanczos with full reorthogonalisation from ``v0``.

    With ``k`` and ``tol`` the iteration stops as soon as the ``k`` extreme Ritz values on the
    ``which`` side have residuals ``|beta_j e_j^T s_i| <= tol * |theta_i|`` (in exact arithmetic this is
    ``||H y_i - theta_i y_i||``; full reorthogonalisation keeps it reliable in floating point).
    """
    P = v0.shape[0]
    m = int(min(m, P))
    Q = np.zeros((P, m))
    alpha = np.zeros(m)
    beta = np.zeros(m)
    q = v0 / np.linalg.norm(v0)
    n = 0
    for j in range(m):
        Q[:, j] = q
        w = matvec(q)
        n += 1
        alpha[j] = q @ w
        w = w - Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)
        w = w - Q[:, : j + 1] @ (Q[:, : j + 1].T @ w)  # twice is enough (Kahan-Parlett)
        b = np.linalg.norm(w)
        beta[j] = b
        done = b <= 1e-12 * max(1.0, np.abs(alpha[: j + 1]).max())
        if k is not None and tol is not None and j + 1 >= max(k, min_steps or 0):
            res = LanczosResult(alpha[: j + 1], beta[: j + 1], None, n)
            vals, _, resid = ritz(res, k, which)
            if np.all(resid <= tol * np.maximum(np.abs(vals), 1e-30)):
                done = True
        if done or j == m - 1:
            m = j + 1
            break
        q = w / b
    return LanczosResult(alpha[:m], beta[:m], Q[:, :m] if keep_basis else None, n)


def ritz(res: LanczosResult, k: int, which: str = "largest"):
    """(values, vectors in the Lanczos basis, residual norms) of the k extreme Ritz pairs."""
    T = res.tridiagonal()
    vals, S = np.linalg.eigh(T)
    if which == "largest":
        idx = np.argsort(vals)[::-1][:k]
    elif which == "smallest":
        idx = np.argsort(vals)[:k]
    else:
        raise ValueError(f"which: expected 'largest' or 'smallest', got {which!r}")
    resid = np.abs(res.beta[len(res.alpha) - 1] * S[-1, idx])
    return vals[idx], S[:, idx], resid


def hutchinson(matmat, P: int, n: int, rng: np.random.Generator):
    """Girard-Hutchinson: tr(A) ~ mean_i z_i^T A z_i, z_i Rademacher. Returns (estimate, stderr, samples)."""
    Z = rademacher(rng, (P, n))
    s = np.einsum("ij,ij->j", Z, matmat(Z))
    return s.mean(), s.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan, s


def hutchpp(matmat, P: int, n: int, rng: np.random.Generator):
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021), with n mat-vecs in all.

    k = n // 3 sketch vectors S give Q = orth(A S); the trace is tr(Q^T A Q) (k more mat-vecs) plus a
    Hutchinson estimate of tr((I - QQ^T) A (I - QQ^T)) from the remaining n - 2k Rademacher vectors G;
    the standard error is that of the Hutchinson part.
    """
    k = n // 3
    g = n - 2 * k
    if k < 1 or g < 2:
        raise ValueError(f"n_hvp: Hutch++ needs at least 4 Hessian-vector products, got {n}")
    S = rademacher(rng, (P, k))
    Qm, _ = np.linalg.qr(matmat(S))
    t_low = np.trace(Qm.T @ matmat(Qm))
    G = rademacher(rng, (P, g))
    Gp = G - Qm @ (Qm.T @ G)
    s = np.einsum("ij,ij->j", Gp, matmat(Gp))
    return t_low + s.mean(), s.std(ddof=1) / np.sqrt(g), t_low + s


def xtrace(matmat, P: int, n: int, rng: np.random.Generator):
    """XTrace (Epperly, Tropp & Webber 2024, SIMAX): the exchangeable Hutch++ with n mat-vecs.

    m = n // 2 Rademacher test vectors W, Y = A W = QR. For each i, Q_i spans Y without its i-th
    column (Q_i Q_i^T = Q (I - s_i s_i^T) Q^T, s_i the normalised i-th column of R^{-T}); the
    estimate t_i = tr(Q_i^T A Q_i) + w_i^T (I - Q_i Q_i^T) A (I - Q_i Q_i^T) w_i, and the result is the
    mean of the t_i with standard error std(t_i) / sqrt(m).
    """
    m = n // 2
    if m < 2:
        raise ValueError(f"n_hvp: XTrace needs at least 4 Hessian-vector products, got {n}")
    W = rademacher(rng, (P, m))
    AW = matmat(W)
    Q, R = np.linalg.qr(AW)
    AQ = matmat(Q)
    QtAQ = Q.T @ AQ
    Rinv_t = np.linalg.inv(R).T
    S = Rinv_t / np.linalg.norm(Rinv_t, axis=0, keepdims=True)
    t_full = np.trace(QtAQ)
    t_drop = np.einsum("ji,jk,ki->i", S, QtAQ, S)  # s_i^T (Q^T A Q) s_i
    QtW = Q.T @ W
    # (I - Q_i Q_i^T) w_i and the products we need, for all i at once
    c = QtW - S * np.einsum("ji,ji->i", S, QtW)  # (I - s s^T) Q^T w_i
    AP_w = AW - AQ @ c  # A (I - Q_i Q_i^T) w_i
    QtAPw = Q.T @ AP_w
    PtAPw = AP_w - Q @ (QtAPw - S * np.einsum("ji,ji->i", S, QtAPw))
    est = t_full - t_drop + np.einsum("ji,ji->i", W, PtAPw)
    return est.mean(), est.std(ddof=1) / np.sqrt(m), est


def slq(matvec, P: int, n_runs: int, m: int, rng: np.random.Generator):
    """Stochastic Lanczos quadrature: for each of ``n_runs`` Rademacher starts, ``m`` Lanczos steps give
    nodes lambda_k (eigenvalues of T) and weights tau_k = u_k[0]^2 (sum to 1). Returns (nodes, weights),
    each of shape (n_runs, m)."""
    nodes = np.full((n_runs, m), np.nan)
    weights = np.zeros((n_runs, m))
    for r in range(n_runs):
        v = rademacher(rng, P)
        res = lanczos(matvec, v, m, keep_basis=True)
        vals, U = np.linalg.eigh(res.tridiagonal())
        nodes[r, : len(vals)] = vals
        weights[r, : len(vals)] = U[0] ** 2
    return nodes, weights


def gaussian_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """phi(t) = (1/n_runs) sum_runs sum_k tau_k N(t; lambda_k, sigma^2)."""
    ok = np.isfinite(nodes)
    lam = nodes[ok]
    w = weights[ok] / nodes.shape[0]
    z = (grid[:, None] - lam[None, :]) / sigma
    return (np.exp(-0.5 * z ** 2) / (sigma * np.sqrt(2 * np.pi))) @ w
