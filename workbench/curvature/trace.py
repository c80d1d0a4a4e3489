"""Stochastic trace estimation: Girard-Hutchinson, Hutch++ and XTrace, with standard errors.

The estimators work on any symmetric operator given by a torch ``matmat`` (``(P, k) -> (P, k)``) on its
device: the probe vectors are drawn (:func:`~workbench.curvature.rademacher`) on ``device`` in ``dtype``
and the QR factorisations run there (``torch.linalg``); the ``k x k`` algebra of XTrace is float64. They
return (estimate, standard error, samples) as Python floats and a float64 numpy array. The probe
:func:`hessian_trace` applies them to the Hessian of the data loss on the model's device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy.stats import norm
from torch import nn

from ..registry import probe
from ..testing import hostile_case
from ..validate import choice, count, fraction, positive
from .lanczos import STOCHASTIC
from .probing import finite_products, rademacher, working_dtype
from .select import label, operator_maker, over_blocks

MatMat = Callable[[torch.Tensor], torch.Tensor]
ROWS = 1 << 20  # rows per block of the column-wise dot products (bounded temporaries for large P)


def coldots(A: torch.Tensor, B: torch.Tensor) -> np.ndarray:
    """``a_j^T b_j`` for every column pair of two ``(P, k)`` tensors, as float64 numpy, in row blocks.

    >>> import torch
    >>> coldots(torch.ones(3, 2), torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])).tolist()
    [9.0, 12.0]
    """
    out = torch.zeros(A.shape[1], dtype=A.dtype, device=A.device)
    for s in range(0, A.shape[0], ROWS):
        out += (A[s : s + ROWS] * B[s : s + ROWS]).sum(0)
    return out.double().cpu().numpy()


def _stderr(s: np.ndarray) -> float:
    return float(s.std(ddof=1) / np.sqrt(len(s))) if len(s) > 1 else math.nan


def hutchinson(
    matmat: MatMat, P: int, n: int, rng: np.random.Generator, *, device=None, dtype: torch.dtype = torch.float64
) -> tuple[float, float, np.ndarray]:
    """Girard-Hutchinson: ``tr(A) ~ mean_i z_i^T A z_i``, z_i Rademacher (on ``device`` in ``dtype``).
    Returns (estimate, stderr, samples).

    >>> import numpy as np
    >>> from workbench.curvature import hutchinson
    >>> est, se, s = hutchinson(lambda Z: 2.0 * Z, 5, 3, np.random.default_rng(0))   # tr(2 I) = 10, exactly
    >>> float(est), float(se)
    (10.0, 0.0)
    """
    Z = rademacher(rng, (P, n), device, dtype)
    s = coldots(Z, matmat(Z).to(dtype))
    return float(s.mean()), _stderr(s), s


def hutchpp_basis(
    matmat: MatMat, P: int, n: int, rng: np.random.Generator, *, device=None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """The sketch basis ``Q = orth(A S)`` of Hutch++ with ``n`` mat-vecs in all: ``n // 3`` Rademacher
    columns ``S`` drawn first from ``rng`` (the same draws as :func:`hutchpp` from the same stream).

    >>> import numpy as np
    >>> from workbench.curvature import hutchpp_basis
    >>> tuple(hutchpp_basis(lambda Z: Z, 4, 6, np.random.default_rng(0)).shape)
    (4, 2)
    """
    S = rademacher(rng, (P, n // 3), device, dtype)
    return torch.linalg.qr(matmat(S).to(dtype))[0]


def hutchpp(
    matmat: MatMat, P: int, n: int, rng: np.random.Generator, *, device=None, dtype: torch.dtype = torch.float64
) -> tuple[float, float, np.ndarray]:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021), with ``n`` mat-vecs in all.

    ``k = n // 3`` sketch vectors S give ``Q = orth(A S)``; the trace is ``tr(Q^T A Q)`` (k more
    mat-vecs) plus a Hutchinson estimate of ``tr((I - QQ^T) A (I - QQ^T))`` from the remaining
    ``n - 2k`` Rademacher vectors G; the standard error is that of the Hutchinson part. Returns
    (estimate, stderr, samples ``t_low + g_i^T A g_i``).

    >>> import numpy as np, torch
    >>> from workbench.curvature import hutchpp
    >>> A = torch.diag(torch.tensor([5.0, 1.0, 0.5], dtype=torch.float64))
    >>> round(float(hutchpp(lambda Z: A @ Z, 3, 9, np.random.default_rng(0))[0]), 6)   # the sketch spans R^3: exact
    6.5
    """
    k = n // 3
    g = n - 2 * k
    if k < 1 or g < 2:
        raise ValueError(f"n_hvp: Hutch++ needs at least 4 Hessian-vector products, got {n}")
    Qm = hutchpp_basis(matmat, P, n, rng, device=device, dtype=dtype)
    t_low = float(coldots(Qm, matmat(Qm).to(dtype)).sum())
    G = rademacher(rng, (P, g), device, dtype)
    Gp = G - Qm @ (Qm.T @ G)
    s = coldots(Gp, matmat(Gp).to(dtype))
    return t_low + float(s.mean()), _stderr(s), t_low + s


def xtrace(
    matmat: MatMat, P: int, n: int, rng: np.random.Generator, *, device=None, dtype: torch.dtype = torch.float64
) -> tuple[float, float, np.ndarray]:
    """XTrace (Epperly, Tropp & Webber 2024, SIMAX): the exchangeable Hutch++ with ``n`` mat-vecs.

    ``m = n // 2`` Rademacher test vectors W, ``Y = A W = QR``. For each i, ``Q_i`` spans Y without its
    i-th column (``Q_i Q_i^T = Q (I - s_i s_i^T) Q^T``, s_i the normalised i-th column of ``R^{-T}``);
    ``t_i = tr(Q_i^T A Q_i) + w_i^T (I - Q_i Q_i^T) A (I - Q_i Q_i^T) w_i``, and the result is the mean
    of the t_i with standard error ``std(t_i) / sqrt(m)``. The ``m x m`` algebra (``R^{-1}``, ``Q^T A Q``)
    is float64 whatever ``dtype``. Returns (estimate, stderr, t).

    >>> import numpy as np, torch
    >>> from workbench.curvature import xtrace
    >>> A = torch.diag(torch.tensor([5.0, 1.0, 0.5, 0.2, 0.1, 0.1], dtype=torch.float64))
    >>> round(float(xtrace(lambda Z: A @ Z, 6, 8, np.random.default_rng(4))[0]), 2)   # tr A = 6.9
    6.97
    """
    m = n // 2
    if m < 2:
        raise ValueError(f"n_hvp: XTrace needs at least 4 Hessian-vector products, got {n}")
    W = rademacher(rng, (P, m), device, dtype)
    AW = matmat(W).to(dtype)
    Q, R = torch.linalg.qr(AW)
    AQ = matmat(Q).to(dtype)
    QtAQ = (Q.T @ AQ).double()
    Rinv_t = torch.linalg.inv(R.double()).T
    S = Rinv_t / torch.linalg.vector_norm(Rinv_t, dim=0, keepdim=True)
    t_full = torch.trace(QtAQ)
    t_drop = ((QtAQ @ S) * S).sum(0)  # s_i^T (Q^T A Q) s_i
    QtW = (Q.T @ W).double()
    # (I - Q_i Q_i^T) w_i and the products we need, for all i at once
    c = QtW - S * (S * QtW).sum(0)  # (I - s s^T) Q^T w_i
    AP_w = AW - AQ @ c.to(dtype)  # A (I - Q_i Q_i^T) w_i
    QtAPw = (Q.T @ AP_w).double()
    PtAPw = AP_w - Q @ (QtAPw - S * (S * QtAPw).sum(0)).to(dtype)
    est = (t_full - t_drop).cpu().numpy() + coldots(W, PtAPw)
    return float(est.mean()), _stderr(est), est


def _trace_result(
    est, se, n_hvp: int, method: str, confidence: float, P: int, what: str = "Hessian trace"
) -> xr.DataArray:
    z = float(norm.ppf(0.5 + confidence / 2))
    se = float(se) if se is not None else math.nan
    return xr.DataArray(
        float(est),
        name="trace",
        attrs={
            "long_name": what,
            "units": "nats / param^2",
            "stderr": se,
            "ci_low": float(est) - z * se,
            "ci_high": float(est) + z * se,
            "confidence": float(confidence),
            "n_hvp": int(n_hvp),
            "method": method,
            "trace_per_param": float(est) / P,
        },
    )


METHODS = ("hutchinson", "hutch++", "xtrace", "exact")


@probe("curvature.hessian_trace", tags=STOCHASTIC, case=lambda: (hostile_case(), {"n_hvp": 12}))
def hessian_trace(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    n_hvp: int = 99,
    method: str = "hutch++",
    *,
    rtol: float | None = None,
    max_hvp: int = 2000,
    confidence: float = 0.95,
    curvature: str = "hessian",
    blocks: Any = None,
    mc_samples: int = 1,
    group: Any = None,
    engine: str = "auto",
    ctx,
) -> xr.DataArray:
    """Trace of the Hessian (or another curvature matrix) of the data loss, ``tr H = sum_i H_ii``.

    ``curvature``, ``mc_samples``, ``blocks`` and ``group`` as in
    :func:`~workbench.curvature.hessian_eigenvalues`: with ``blocks`` the result runs over a ``block``
    dimension (``"(all)"`` first; ``stderr``, ``ci_low``, ``ci_high``, ``n_hvp`` become coordinates along it),
    and the traces of a partition's blocks sum to the whole model's.

    ``method``: ``"hutchinson"`` (``mean z^T H z`` over Rademacher z), ``"hutch++"`` (low-rank part
    exact, Hutchinson on the rest; Meyer et al. 2021), ``"xtrace"`` (exchangeable Hutch++; Epperly et
    al. 2024), or ``"exact"`` (P HVPs). attrs: ``stderr``, a normal ``confidence`` interval
    (``ci_low``, ``ci_high``), ``n_hvp``, ``method`` and ``trace_per_param``. With ``rtol``
    (Hutchinson and Hutch++), Rademacher probes are added in blocks until the CI half-width is at
    most ``rtol |trace|`` or ``max_hvp`` is spent (Hutch++ keeps deflating with its sketch basis,
    recomputed from the same random stream, its HVPs counted).

    >>> import torch
    >>> from workbench.curvature import hessian_trace
    >>> m = torch.nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> sq = lambda out, y: (out - y).pow(2).mean()     # L = mean((w . x)^2): H = X^T X = diag(1, 4)
    >>> t = hessian_trace(m, sq, (x, torch.zeros(2, 1)), method="exact", progress=False)
    >>> round(float(t), 4), t.attrs["n_hvp"]
    (5.0, 2)
    """
    choice("method", method, METHODS)
    n_hvp = count("n_hvp", n_hvp, lo=1 if method == "exact" else 4)
    rtol = positive("rtol", rtol, none=True)
    max_hvp = count("max_hvp", max_hvp)
    confidence = fraction("confidence", confidence)
    make = operator_maker(ctx, curvature, engine, mc_samples, group)
    if rtol is not None and method == "xtrace":
        raise ValueError(
            "rtol: CI-based stopping is available for 'hutchinson' and 'hutch++'; XTrace is not incremental"
        )
    what = f"{label(curvature)} trace"

    def run(obj, name):
        obj.loss()  # a clear error for bad inputs or a non-finite loss before any product
        P = obj.space.numel
        rng = ctx.rng
        total = P if method == "exact" else max(n_hvp, max_hvp) if rtol is not None else n_hvp
        with ctx.bar(total, f"{what} ({method})" + ("" if name is None else f" [{name}]")) as bar:
            op = make(obj, callback=bar.update)
            est, se = estimate(op, obj, P, rng)
        return _trace_result(est, se, op.n_products, method, confidence, P, what)

    def estimate(op, obj, P, rng):
        mm = finite_products(op.matmat, obj)
        on = {"device": op.device, "dtype": working_dtype(op.dtype)}
        if method == "exact":
            H = finite_products(lambda _: op.dense(), obj)(None)
            return np.trace(H), 0.0
        if method == "xtrace":
            return xtrace(mm, P, n_hvp, rng, **on)[:2]
        replay = copy.deepcopy(rng)  # the stream of the Hutch++ sketch, to rebuild its basis for rtol
        if method == "hutchinson":
            est, se, s = hutchinson(mm, P, n_hvp, rng, **on)
            t_low = 0.0
        else:
            est, se, s = hutchpp(mm, P, n_hvp, rng, **on)
            t_low = est - s.mean()
            s = s - t_low
        if rtol is not None:
            z = float(norm.ppf(0.5 + confidence / 2))
            Q = hutchpp_basis(mm, P, n_hvp, replay, **on) if method == "hutch++" else None  # unbiased deflation
            while z * se > rtol * abs(est) and op.n_products < max_hvp:
                block = min(len(s), max_hvp - op.n_products)
                G = rademacher(rng, (P, block), **on)
                if Q is not None:
                    G = G - Q @ (Q.T @ G)
                s = np.r_[s, coldots(G, mm(G).to(G.dtype))]
                est, se = t_low + s.mean(), s.std(ddof=1) / np.sqrt(len(s))
        return est, se

    return over_blocks(ctx, blocks, run)
