"""The Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019).

For a Rademacher start ``v``, ``m`` Lanczos steps give the tridiagonal ``T = U diag(lambda) U^T``;
the Gauss quadrature nodes ``lambda_k`` with weights ``tau_k = U[0, k]^2`` approximate the spectral
measure ``v^T delta(t - H) v / ||v||^2``, whose mean over starts is the eigenvalue density.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from numpy.typing import ArrayLike
from torch import nn

from ..registry import probe
from ..testing import hostile_case
from ..validate import choice, count, finite_array, positive
from .lanczos import REORTH, STOCHASTIC, lanczos
from .probing import BASES, finite_products, rademacher, resolve_basis, working_dtype
from .select import label, operator_maker


def slq(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    P: int,
    n_runs: int,
    m: int,
    rng: np.random.Generator,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    basis: str = "auto",
    reorth: str = "full",
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature: for each of ``n_runs`` Rademacher starts (on ``device`` in ``dtype``),
    ``m`` Lanczos steps (:func:`~workbench.curvature.lanczos`, with its ``basis`` and ``reorth``) give nodes
    ``lambda_k`` (eigenvalues of T) and weights ``tau_k = u_k[0]^2`` (they sum to 1). Returns (nodes, weights),
    each of shape ``(n_runs, m)`` (NaN nodes, zero weights where Lanczos stopped early).

    >>> import numpy as np, torch
    >>> from workbench.curvature import slq
    >>> A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    >>> nodes, w = slq(lambda v: A @ v, 3, 2, 3, np.random.default_rng(0))
    >>> np.round(nodes, 6).tolist(), np.round(w.sum(1), 6).tolist()
    ([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], [1.0, 1.0])
    """
    nodes = np.full((n_runs, m), np.nan)
    weights = np.zeros((n_runs, m))
    for r in range(n_runs):
        v = rademacher(rng, P, device, dtype)
        res = lanczos(matvec, v, m, keep_basis=False, basis=basis, reorth=reorth)
        vals, U = np.linalg.eigh(res.tridiagonal())
        nodes[r, : len(vals)] = vals
        weights[r, : len(vals)] = U[0] ** 2
    return nodes, weights


def gaussian_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """``phi(t) = (1/n_runs) sum_runs sum_k tau_k N(t; lambda_k, sigma^2)`` on ``grid`` (NaN nodes skipped).

    >>> import numpy as np
    >>> from workbench.curvature import gaussian_density
    >>> d = gaussian_density(np.array([[0.0]]), np.array([[1.0]]), np.array([0.0]), 1.0)
    >>> round(float(d[0]), 6)        # 1 / sqrt(2 pi)
    0.398942
    """
    ok = np.isfinite(nodes)
    lam = nodes[ok]
    w = weights[ok] / nodes.shape[0]
    z = (grid[:, None] - lam[None, :]) / sigma
    return (np.exp(-0.5 * z**2) / (sigma * np.sqrt(2 * np.pi))) @ w


def density_from_nodes(
    nodes: ArrayLike, weights: ArrayLike, sigma: float | None = None, grid: ArrayLike | None = None, n_grid: int = 400
) -> xr.DataArray:
    """Gaussian-smoothed SLQ density over an ``eigenvalue`` grid from nodes and weights ``(n_runs, m)``
    (a 1-D pair is one run): re-smooth a :func:`spectral_density` at any width without new HVPs.

    ``sigma`` defaults to 1 % of the node range; ``grid`` to ``n_grid`` points spanning the nodes
    +- 5 sigma. attrs: ``sigma``, ``slq_nodes``, ``slq_weights`` (flattened) and ``n_runs``.

    >>> import numpy as np
    >>> from workbench.curvature import density_from_nodes
    >>> d = density_from_nodes([0.0, 1.0], [0.5, 0.5], sigma=0.1)
    >>> d.dims, round(float(np.trapezoid(d.values, d.eigenvalue.values)), 4)
    (('eigenvalue',), 1.0)
    """
    nodes, weights = np.asarray(nodes, float), np.asarray(weights, float)
    if nodes.ndim == 1:
        nodes, weights = nodes[None], weights[None]
    if nodes.shape != weights.shape:
        raise ValueError(f"weights: expected the shape of nodes {nodes.shape}, got {weights.shape}")
    if not np.isfinite(nodes).any() or np.isinf(nodes).any() or not np.all(np.isfinite(weights)):
        raise ValueError("nodes: expected finite SLQ nodes and weights (NaN nodes only where a run stopped early)")
    sigma = positive("sigma", sigma, none=True)
    n_grid = count("n_grid", n_grid, lo=2)
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    span = max(hi - lo, 1e-12)
    sigma = sigma if sigma is not None else 0.01 * span
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, n_grid) if grid is None else finite_array("grid", grid)
    dens = gaussian_density(nodes, weights, grid, sigma)
    return xr.DataArray(
        dens,
        dims="eigenvalue",
        coords={"eigenvalue": grid},
        name="density",
        attrs={
            "long_name": "Hessian eigenvalue density",
            "units": "1 / eigenvalue",
            "sigma": sigma,
            "slq_nodes": np.nan_to_num(nodes.ravel(), nan=0.0),
            "slq_weights": weights.ravel(),
            "n_runs": int(nodes.shape[0]),
        },
    )


@probe("curvature.spectral_density", tags=STOCHASTIC, case=lambda: (hostile_case(), {"n_runs": 2, "n_lanczos": 6}))
def spectral_density(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    n_runs: int = 5,
    n_lanczos: int = 60,
    *,
    sigma: float | None = None,
    grid: ArrayLike | None = None,
    n_grid: int = 400,
    basis: str = "auto",
    reorth: str = "full",
    curvature: str = "hessian",
    mc_samples: int = 1,
    group: Any = None,
    engine: str = "auto",
    ctx,
) -> xr.DataArray:
    """Hessian (or ``curvature``: GGN, Fisher ...; see :func:`~workbench.curvature.hessian_eigenvalues`)
    eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019):
    ``phi(t) = (1/n_runs) sum_runs sum_k tau_k N(t; lambda_k, sigma^2)`` with nodes lambda_k and
    weights tau_k from ``n_lanczos`` Lanczos steps (HVPs) per Rademacher start.

    ``sigma`` defaults to 1 % of the node range. The nodes and weights are kept in attrs
    (``slq_nodes``, ``slq_weights``, shape n_runs x n_lanczos flattened) so the density can be
    re-smoothed at any width without new HVPs (:func:`density_from_nodes`). The density integrates to
    1 and its first moment is a Hutchinson estimate of ``tr(H) / P``. attrs: ``n_hvp``. The Lanczos runs
    are torch-native on the model's device; ``basis`` and ``reorth`` as for :func:`lanczos` (the storage
    ``"auto"`` chose is recorded in ``probe_params``).

    >>> import numpy as np, torch
    >>> from workbench.curvature import spectral_density
    >>> m = torch.nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> sq = lambda out, y: (out - y).pow(2).mean()     # L = mean((w . x)^2): H = X^T X = diag(1, 4)
    >>> d = spectral_density(m, sq, (x, torch.zeros(2, 1)), n_runs=2, progress=False)
    >>> sorted(set(np.round(d.attrs["slq_nodes"], 4).tolist())), d.attrs["n_hvp"]    # 2 steps: exact nodes
    ([1.0, 4.0], 4)
    """
    n_runs = count("n_runs", n_runs)
    n_lanczos = count("n_lanczos", n_lanczos, lo=2)
    positive("sigma", sigma, none=True)
    if grid is not None:
        finite_array("grid", grid)
    count("n_grid", n_grid, lo=2)
    choice("basis", basis, BASES)
    choice("reorth", reorth, REORTH)
    make = operator_maker(ctx, curvature, engine, mc_samples, group)
    obj = ctx.objective()
    obj.loss()  # a clear error for bad inputs or a non-finite loss before any Hessian-vector product
    P = obj.space.numel
    m = min(n_lanczos, P)
    ctx.record(n_lanczos=m)
    with ctx.bar(n_runs * m, f"{label(curvature)} spectral density (SLQ)") as bar:
        op = make(obj, callback=bar.update)
        on = {"device": op.device, "dtype": working_dtype(op.dtype)}
        if basis == "auto":  # the storage for all runs, recorded with the call
            basis = resolve_basis(basis, P, m, op.device, on["dtype"])
        ctx.record(basis=basis)
        nodes, weights = slq(finite_products(op.matvec, obj), P, n_runs, m, ctx.rng, basis=basis, reorth=reorth, **on)
    da = density_from_nodes(nodes, weights, sigma=sigma, grid=grid, n_grid=n_grid)
    da.attrs["n_hvp"] = int(op.n_products)
    da.attrs["long_name"] = f"{label(curvature)} eigenvalue density"
    return da
