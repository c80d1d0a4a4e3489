"""Extreme Hessian eigenvalues by Lanczos with full or selective reorthogonalisation, and Ritz pairs.

:func:`lanczos` and :func:`ritz` work on any symmetric operator given by a torch mat-vec on its device (the
basis in float32 or float64, on the device or in host memory: :class:`~workbench.curvature.probing.KrylovBasis`);
the probe :func:`hessian_eigenvalues` applies them to the Hessian of the data loss
(:class:`~workbench.curvature.HessianOperator`). scipy's ``eigsh`` stays available through
``HessianOperator(...).to_scipy()`` as a cross-check.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..registry import Tags, probe
from ..testing import hostile_case
from ..validate import boolean, choice, count, finite_nonneg, integer
from .blocks import WHOLE
from .probing import BASES, KrylovBasis, finite_products, inner, norm, rademacher, working_dtype
from .select import label, operator_maker, over_blocks

STOCHASTIC = Tags(inputs="pair", stochastic=True, uses=("mode", "params", "seed", "device"))
REORTH = ("full", "selective")


@dataclass
class LanczosResult:
    """The tridiagonal ``T`` of a Lanczos run: diagonal ``alpha``, off-diagonal ``beta`` (float64 numpy), the
    basis ``Q`` (a torch ``(P, m)`` view of the stored vectors, or None when not kept), the number of mat-vecs,
    the basis storage used (``basis``: ``"float64"``, ``"float32"``, ``"host-float64"`` or ``"host-float32"``),
    the reorthogonalisation (``reorth``) and ``basis_reads``, the stored vectors read back by it."""

    alpha: np.ndarray
    beta: np.ndarray
    Q: torch.Tensor | None
    n_matvec: int
    basis: str = "float64"
    reorth: str = "full"
    basis_reads: int = 0
    store: KrylovBasis | None = field(default=None, repr=False)

    def tridiagonal(self) -> np.ndarray:
        """``T`` as a dense ``(m, m)`` array."""
        m = len(self.alpha)
        return np.diag(self.alpha) + np.diag(self.beta[: m - 1], 1) + np.diag(self.beta[: m - 1], -1)

    def vectors(self, S: np.ndarray) -> torch.Tensor:
        """``Q S``: the Ritz vectors of coefficients ``S`` (from :func:`ritz`) as a torch ``(P, k)`` tensor
        on the operator's device in the working precision (block by block from a host basis)."""
        if self.store is None:
            raise ValueError("keep_basis: this Lanczos run did not keep its basis; run it with keep_basis=True")
        return self.store.combine(S)


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    v0: torch.Tensor,
    m: int,
    k: int | None = None,
    which: str = "largest",
    tol: float | None = None,
    keep_basis: bool = True,
    min_steps: int | None = None,
    reorth: str = "full",
    basis: str = "auto",
) -> LanczosResult:
    """``m`` steps of Lanczos from ``v0`` (a torch vector on the operator's device) with a reorthogonalised basis.

    ``reorth="full"``: each new vector is orthogonalised against the whole basis twice (Kahan-Parlett: twice is
    enough) by block Gram-Schmidt, two reads of the basis per step. ``reorth="selective"`` (Parlett & Scott 1979):
    the three-term recurrence ``w = A q_j - alpha_j q_j - beta_{j-1} q_{j-1}`` (re-orthogonalised against
    ``q_j``), then orthogonalised twice against the *good* Ritz vectors ``y_i = Q_j s_i`` of
    ``T_j = S diag(theta) S^T``, those with error bound ``|beta_j s_ji| <= sqrt(eps) ||T_j||`` (``eps`` the
    unit roundoff of the coarser of the working and basis precisions, ``||T_j|| = max_i |theta_i|``). By Paige's
    theorem the Lanczos vectors lose orthogonality only along converged Ritz vectors, so this keeps the basis
    semi-orthogonal (``|q_i^T q_j| <~ sqrt(eps)``) and the Ritz values free of spurious copies; the good Ritz
    vectors are computed (one read of the basis) only when their number grows, and kept.

    ``basis``: where the ``m`` stored vectors live, ``"auto"``, ``"float64"``, ``"float32"`` (on the device),
    ``"host-float64"`` or ``"host-float32"`` (host memory, pinned for CUDA; see
    :func:`~workbench.curvature.probing.resolve_basis`). Vectors, dot products and norms are in the working
    precision, float64 for a float64 ``v0``, else float32 (never less: bf16 / fp16 products are promoted; the
    sums in ``alpha``, ``beta`` and the norms are cascade / tree reductions: :func:`.probing.inner`);
    ``alpha`` and ``beta`` are float64 numpy. The run stops at an invariant subspace
    (``beta_j <= max(1e-12, 1000 eps) max(1, max |alpha|)``), and, with ``k`` and ``tol``, as soon as the ``k``
    extreme Ritz values on the ``which`` side have residuals ``|beta_j e_j^T s_i| <= tol * |theta_i|`` (in exact
    arithmetic ``||A y_i - theta_i y_i||``; reorthogonalisation keeps it reliable in floating point).

    >>> import torch
    >>> from workbench.curvature import lanczos, ritz
    >>> A = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    >>> res = lanczos(lambda v: A @ v, torch.ones(4, dtype=torch.float64), m=4)
    >>> [round(float(x), 10) for x in ritz(res, 2)[0]], res.n_matvec, res.basis
    ([3.0, 2.0], 4, 'float64')
    """
    choice("reorth", reorth, REORTH)
    choice("basis", basis, BASES)
    wd = working_dtype(v0.dtype)
    P = v0.shape[0]
    m = int(min(m, P))
    B = KrylovBasis(P, m, v0.device, wd, basis)
    eps = max(torch.finfo(wd).eps, torch.finfo(B.rows.dtype).eps)
    tiny = max(1e-12, 1000 * torch.finfo(wd).eps)
    alpha, beta = np.zeros(m), np.zeros(m)
    q = v0.to(wd)
    q = q / norm(q)
    q_prev, Y, n_good, n = None, None, 0, 0
    for j in range(m):
        B.append(q)
        w = matvec(q).to(wd)
        n += 1
        alpha[j] = inner(q, w)
        if reorth == "full":
            w = B.project_out(B.project_out(w.clone()))
        else:
            w = w - alpha[j] * q
            if q_prev is not None:
                w.sub_(beta[j - 1] * q_prev)
            w.sub_(inner(q, w) * q)
            theta, S = np.linalg.eigh(LanczosResult(alpha[: j + 1], beta[: j + 1], None, n).tridiagonal())
            bound = np.abs(norm(w) * S[-1])
            good = bound <= np.sqrt(eps) * np.abs(theta).max()
            if good.sum() > n_good:  # a Ritz vector has converged: (re)compute the good ones
                Y, n_good = torch.linalg.qr(B.combine(S[:, good]))[0], int(good.sum())
            if Y is not None:
                for _ in range(2):
                    w.sub_(Y @ (Y.T @ w))
        b = norm(w)
        beta[j] = b
        done = b <= tiny * max(1.0, np.abs(alpha[: j + 1]).max())
        if k is not None and tol is not None and j + 1 >= max(k, min_steps or 0):
            vals, _, resid = ritz(LanczosResult(alpha[: j + 1], beta[: j + 1], None, n), k, which)
            if np.all(resid <= tol * np.maximum(np.abs(vals), 1e-30)):
                done = True
        if done or j == m - 1:
            m = j + 1
            break
        q_prev, q = q, w / b
    keep = B if keep_basis else None
    Q = B.matrix() if keep_basis else None
    return LanczosResult(alpha[:m], beta[:m], Q, n, B.kind, reorth, B.reads, keep)


def ritz(res: LanczosResult, k: int, which: str = "largest") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, vectors in the Lanczos basis, residual norms ``|beta_m s_i[-1]|``) of the ``k`` extreme
    Ritz pairs of a Lanczos run, most extreme first (float64 numpy; :meth:`LanczosResult.vectors` maps the
    vectors to parameter space).

    >>> import torch
    >>> from workbench.curvature import lanczos, ritz
    >>> A = torch.diag(torch.tensor([-4.0, 1.0, 2.0], dtype=torch.float64))
    >>> res = lanczos(lambda v: A @ v, torch.ones(3, dtype=torch.float64), m=3)
    >>> [round(float(x), 10) for x in ritz(res, 1, "smallest")[0]]
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
    reorth: str = "full",
    basis: str = "auto",
    curvature: str = "hessian",
    blocks: Any = None,
    mc_samples: int = 1,
    group: Any = None,
    engine: str = "auto",
    ctx,
) -> xr.Dataset:
    """The ``k`` largest (or smallest) algebraic eigenvalues of the Hessian (or another curvature matrix) of
    the data loss.

    ``curvature``: ``"hessian"``, ``"ggn"``, ``"fisher"``, ``"mc_fisher"`` (``mc_samples`` labels per sample)
    or ``"empirical_fisher"`` (:func:`~workbench.curvature.curvature_operator`). ``blocks``: ``"layer"``,
    ``"module"`` or ``{name: parameter selection}`` (:func:`~workbench.curvature.parameter_blocks`): the
    eigenvalues of every diagonal block ``C_bb`` too, over a ``block`` dimension whose first entry ``"(all)"``
    is the whole model. ``group``: a ``torch.distributed`` process group (``True``: the default one) over which
    the data is sharded: every rank passes its shard and the same ``seed`` and gets the full-data result.

    Lanczos (:func:`lanczos`) on the operator's device from a seeded Rademacher start, stopped when every wanted
    Ritz pair has residual ``||H y - lambda y|| <= tol |lambda|`` or after ``max_hvp`` Hessian-vector products
    (default ``min(P, max(60, 10 k))``). Eigenvalue errors shrink like residual^2 / gap, so the default
    ``tol=1e-3`` gives eigenvalues near the precision of the products. ``reorth``: ``"full"`` or
    ``"selective"``; ``basis``: ``"auto"``, ``"float64"``, ``"float32"``, ``"host-float64"`` or
    ``"host-float32"`` (the storage of the Lanczos vectors; the one ``"auto"`` chose is recorded in
    ``probe_params``). A float32 model runs the solver in float32: eigenvalues within about ``1e-6 ||H||``
    of the float64 ones (products and basis both carry float32 rounding). ``method`` is ``"lanczos"``, the only
    method: for scipy's ARPACK use ``scipy.sparse.linalg.eigsh(HessianOperator(objective).to_scipy(), ...)``.

    Returns a Dataset over ``rank`` (0 = most extreme) with ``eigenvalue``, ``residual`` and ``converged``
    (residual <= tol |eigenvalue|) and attrs ``n_hvp``; fewer than ``k`` eigenvalues (a Krylov space of
    smaller dimension) or unconverged ones come with a RuntimeWarning; with ``return_eigenvectors=True``
    also ``eigenvector`` over (rank, param): unit flat float64 vectors in ``model.parameters()`` order, usable
    as landscape directions.

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
    if method == "eigsh":
        raise ValueError(
            "method: 'eigsh' was removed (the solvers are torch-native now); 'lanczos' is the only method. For "
            "scipy's ARPACK as a cross-check use scipy.sparse.linalg.eigsh(workbench.curvature.HessianOperator("
            "workbench.objective.Objective(model, loss_fn, data)).to_scipy(), k=k, which='LA')"
        )
    choice("method", method, ("lanczos",))
    tol = finite_nonneg("tol", tol)
    max_hvp = count("max_hvp", max_hvp, none=True)
    boolean("return_eigenvectors", return_eigenvectors)
    choice("reorth", reorth, REORTH)
    choice("basis", basis, BASES)
    make = operator_maker(ctx, curvature, engine, mc_samples, group)
    if blocks is not None and return_eigenvectors:
        raise ValueError("return_eigenvectors: not available with blocks= (each block has its own parameter space)")
    what = f"{label(curvature)} eigenvalues"

    def run(obj, block):
        P = obj.space.numel
        if k > P and block in (None, WHOLE):
            raise ValueError(f"k: expected an int in 1..{P} (the number of parameters), got {k}")
        obj.loss()  # a clear error for bad inputs or a non-finite loss before any product
        steps = min(P, max(60, 10 * k)) if max_hvp is None else max_hvp
        with ctx.bar(steps, what if block is None else f"{what} [{block}]") as bar:
            op = make(obj, callback=bar.update)
            mv = finite_products(op.matvec, obj)
            v0 = rademacher(ctx.rng, P, device=op.device, dtype=working_dtype(op.dtype))
            res = lanczos(mv, v0, steps, k=min(k, P), which=which, tol=tol, reorth=reorth, basis=basis)
            ctx.record(basis=res.basis)
            vals, S, resid = ritz(res, k, which)
            vecs = res.vectors(S).double().cpu().numpy() if return_eigenvectors else None
        converged = resid <= max(tol, 1e-12) * np.maximum(np.abs(vals), 1e-30)
        if (len(vals) < k and len(vals) < P) or not converged.all():
            warnings.warn(
                f"hessian_eigenvalues{'' if block is None else f' [{block}]'}: {int(converged.sum())} of the k={k} "
                f"requested {what} converged (residual <= tol |lambda| after {op.n_products} products"
                + (
                    f"; only {len(vals)} were found: the Krylov space of the start vector has that dimension"
                    if len(vals) < k
                    else ""
                )
                + "); see the result's 'converged' variable, raise max_hvp or tol",
                RuntimeWarning,
                stacklevel=5,
            )
        units = "nats / param^2"
        ds = xr.Dataset(
            {
                "eigenvalue": ("rank", vals, {"long_name": f"{which} {what}", "units": units}),
                "residual": ("rank", resid, {"long_name": "Ritz residual ||C y - lambda y||", "units": units}),
                "converged": ("rank", converged, {"long_name": "residual <= tol |eigenvalue|"}),
            },
            coords={"rank": np.arange(len(vals))},
            attrs={"n_hvp": int(op.n_products), "curvature": curvature},
        )
        if vecs is not None:
            ds["eigenvector"] = (
                ("rank", "param"),
                vecs.T,
                {"long_name": "unit eigenvectors (flat, parameters() order)"},
            )
        return ds

    return over_blocks(ctx, blocks, run)
