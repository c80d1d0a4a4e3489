"""Extreme Hessian eigenvalues by Lanczos with full reorthogonalisation, and Ritz pairs.

:func:`lanczos` and :func:`ritz` work on any symmetric operator given by a float64 numpy mat-vec;
the probe :func:`hessian_eigenvalues` applies them (or ``scipy.sparse.linalg.eigsh``) to the Hessian
of the data loss (:class:`~workbench.curvature.HessianOperator`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn

from ..registry import Tags, probe
from ..testing import hostile_case
from ..validate import boolean, choice, count, finite_nonneg, integer
from .operators import ENGINES, HessianOperator
from .probing import finite_products, rademacher

STOCHASTIC = Tags(inputs="pair", stochastic=True, uses=("mode", "params", "seed", "device"))


@dataclass
class LanczosResult:
    """The tridiagonal ``T`` of a Lanczos run: diagonal ``alpha``, off-diagonal ``beta``, the basis ``Q``
    (``(P, m)``, or None when not kept) and the number of mat-vecs."""

    alpha: np.ndarray
    beta: np.ndarray
    Q: np.ndarray | None
    n_matvec: int

    def tridiagonal(self) -> np.ndarray:
        """``T`` as a dense ``(m, m)`` array."""
        m = len(self.alpha)
        return np.diag(self.alpha) + np.diag(self.beta[: m - 1], 1) + np.diag(self.beta[: m - 1], -1)


def lanczos(
    matvec: Callable[[np.ndarray], np.ndarray],
    v0: np.ndarray,
    m: int,
    k: int | None = None,
    which: str = "largest",
    tol: float | None = None,
    keep_basis: bool = True,
    min_steps: int | None = None,
) -> LanczosResult:
    """``m`` steps of Lanczos with full reorthogonalisation (twice, Kahan-Parlett) from ``v0``.

    With ``k`` and ``tol`` the iteration stops as soon as the ``k`` extreme Ritz values on the
    ``which`` side have residuals ``|beta_j e_j^T s_i| <= tol * |theta_i|`` (in exact arithmetic this is
    ``||A y_i - theta_i y_i||``; full reorthogonalisation keeps it reliable in floating point).

    >>> import numpy as np
    >>> from workbench.curvature import lanczos, ritz
    >>> A = np.diag([3.0, 2.0, 1.0, 0.5])
    >>> res = lanczos(lambda v: A @ v, np.ones(4), m=4)
    >>> np.round(ritz(res, 2)[0], 10).tolist(), res.n_matvec
    ([3.0, 2.0], 4)
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


def ritz(res: LanczosResult, k: int, which: str = "largest") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, vectors in the Lanczos basis, residual norms ``|beta_m s_i[-1]|``) of the ``k`` extreme
    Ritz pairs of a Lanczos run, most extreme first.

    >>> import numpy as np
    >>> from workbench.curvature import lanczos, ritz
    >>> res = lanczos(lambda v: np.diag([-4.0, 1.0, 2.0]) @ v, np.ones(3), m=3)
    >>> np.round(ritz(res, 1, "smallest")[0], 10).tolist()
    [-4.0]
    """
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


@probe("curvature.hessian_eigenvalues", tags=STOCHASTIC, case=lambda: (hostile_case(), {"k": 2}))
def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    k: int = 5,
    which: str = "largest",
    *,
    method: str = "lanczos",
    tol: float = 1e-3,
    max_hvp: int | None = None,
    return_eigenvectors: bool = False,
    engine: str = "auto",
    ctx,
) -> xr.Dataset:
    """The ``k`` largest (or smallest) algebraic eigenvalues of the Hessian of the data loss.

    ``method="lanczos"``: Lanczos with full reorthogonalisation from a seeded Rademacher start,
    stopped when every wanted Ritz pair has residual ``||H y - lambda y|| <= tol |lambda|`` or after
    ``max_hvp`` Hessian-vector products (default ``min(P, max(60, 10 k))``). Eigenvalue errors shrink
    like residual^2 / gap, so the default ``tol=1e-3`` gives eigenvalues near float32 precision.
    ``method="eigsh"``: ``scipy.sparse.linalg.eigsh(which='LA' / 'SA')`` over the same operator.

    Returns a Dataset over ``rank`` (0 = most extreme) with ``eigenvalue``, ``residual`` and ``converged``
    (residual <= tol |eigenvalue|) and attrs ``n_hvp``; fewer than ``k`` eigenvalues (a Krylov space of
    smaller dimension) or unconverged ones come with a RuntimeWarning; with ``return_eigenvectors=True``
    also ``eigenvector`` over (rank, param): unit flat vectors in ``model.parameters()`` order, usable as
    landscape directions.

    >>> import torch
    >>> from workbench.curvature import hessian_eigenvalues
    >>> m = torch.nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> sq = lambda out, y: (out - y).pow(2).mean()     # L = mean((w . x)^2): H = X^T X = diag(1, 4)
    >>> ds = hessian_eigenvalues(m, sq, (x, torch.zeros(2, 1)), k=2, progress=False)
    >>> [round(v, 4) for v in ds["eigenvalue"].values.tolist()], ds.attrs["n_hvp"]
    ([4.0, 1.0], 2)
    """
    k = integer("k", k, lo=1)
    choice("which", which, ("largest", "smallest"))
    choice("method", method, ("lanczos", "eigsh"))
    tol = finite_nonneg("tol", tol)
    max_hvp = count("max_hvp", max_hvp, none=True)
    boolean("return_eigenvectors", return_eigenvectors)
    choice("engine", engine, ENGINES)
    obj = ctx.objective()
    P = obj.space.numel
    if k > P - (method == "eigsh"):
        raise ValueError(
            f"k: expected an int in 1..{P - (method == 'eigsh')} (the number of parameters"
            f"{'' if method == 'lanczos' else ' - 1, for eigsh'}), got {k}"
        )
    obj.loss()  # a clear error for bad inputs or a non-finite loss before any Hessian-vector product
    max_hvp = min(P, max(60, 10 * k)) if max_hvp is None else max_hvp
    with ctx.bar(max_hvp, "Hessian eigenvalues") as bar:
        op = HessianOperator(obj, engine=engine, callback=bar.update)
        mv, mm = finite_products(op.matvec_np, obj), finite_products(op.matmat_np, obj)
        v0 = rademacher(ctx.rng, P)
        if method == "lanczos":
            res = lanczos(mv, v0, max_hvp, k=k, which=which, tol=tol)
            vals, S, resid = ritz(res, k, which)
            vecs = res.Q @ S if return_eigenvectors else None
        else:
            lin = LinearOperator(op.shape, matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)
            try:
                vals, vecs = eigsh(
                    lin, k=k, which="LA" if which == "largest" else "SA", v0=v0, tol=tol * 1e-3, maxiter=max_hvp
                )
            except ArpackNoConvergence as e:  # the pairs that did converge
                vals, vecs = e.eigenvalues, e.eigenvectors
            order = np.argsort(vals)[::-1] if which == "largest" else np.argsort(vals)
            vals, vecs = vals[order], vecs[:, order]
            resid = np.linalg.norm(mm(vecs) - vecs * vals, axis=0) if len(vals) else np.zeros(0)
    converged = resid <= max(tol, 1e-12) * np.maximum(np.abs(vals), 1e-30)
    if len(vals) < k or not converged.all():
        warnings.warn(
            f"hessian_eigenvalues: {int(converged.sum())} of the k={k} requested eigenvalues converged (residual "
            f"<= tol |lambda| after {op.n_products} Hessian-vector products"
            + (
                f"; only {len(vals)} were found: the Krylov space of the start vector has that dimension"
                if len(vals) < k
                else ""
            )
            + "); see the result's 'converged' variable, raise max_hvp or tol",
            RuntimeWarning,
            stacklevel=3,
        )
    units = "nats / param^2"
    ds = xr.Dataset(
        {
            "eigenvalue": ("rank", vals, {"long_name": f"{which} Hessian eigenvalues", "units": units}),
            "residual": ("rank", resid, {"long_name": "Ritz residual ||H y - lambda y||", "units": units}),
            "converged": ("rank", converged, {"long_name": "residual <= tol |eigenvalue|"}),
        },
        coords={"rank": np.arange(len(vals))},
        attrs={"n_hvp": int(op.n_products)},
    )
    if return_eigenvectors:
        ds["eigenvector"] = (("rank", "param"), vecs.T, {"long_name": "unit eigenvectors (flat, parameters() order)"})
    return ds
