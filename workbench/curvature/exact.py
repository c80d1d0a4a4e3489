"""The dense Hessian of a small model, to calibrate the matrix-free estimators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import xarray as xr
from torch import nn

from ..registry import Tags, probe
from ..testing import hostile_case
from ..validate import count, integer
from .select import label, operator_maker


@probe(
    "curvature.exact_hessian",
    tags=Tags(inputs="pair", uses=("mode", "params", "device")),
    case=lambda: (hostile_case(), {"params": ["head"]}),
)
def exact_hessian(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    *,
    max_params: int = 20_000,
    engine: str = "auto",
    chunk: int = 256,
    curvature: str = "hessian",
    mc_samples: int = 1,
    ctx,
) -> xr.DataArray:
    """The dense Hessian ``H_ij = d^2 L / d theta_i d theta_j`` of the mean loss (float64 result,
    symmetrised ``(H + H^T) / 2``) over ``(row, col)``, built from P Hessian-vector products in
    blocks of ``chunk`` columns. Refuses more than ``max_params`` parameters. attrs: ``n_hvp``.
    ``curvature="ggn"``, ``"fisher"``, ... gives that matrix instead (:func:`~workbench.curvature.curvature_operator`).

    >>> import torch
    >>> from workbench.curvature import exact_hessian
    >>> m = torch.nn.Linear(2, 1, bias=False)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> sq = lambda out, y: (out - y).pow(2).mean()     # L = mean((w . x)^2): H = X^T X = diag(1, 4)
    >>> exact_hessian(m, sq, (x, torch.zeros(2, 1)), progress=False).values.tolist()
    [[1.0, 0.0], [0.0, 4.0]]
    """
    max_params = integer("max_params", max_params, lo=1)
    chunk = count("chunk", chunk, hi=None)
    make = operator_maker(ctx, curvature, engine, mc_samples)
    obj = ctx.objective()
    obj.loss()  # a clear error for bad inputs or a non-finite loss before any Hessian-vector product
    P = obj.space.numel
    if P > max_params:
        raise ValueError(
            f"params: the exact Hessian of {P} parameters needs {P * P * 8 / 2**30:.1f} GiB; choose a "
            f"parameter subset (params=...) or raise max_params (now {max_params})"
        )
    with ctx.bar(P, f"exact {label(curvature)}") as bar:
        op = make(obj, chunk=min(chunk, 64), callback=bar.update)
        H = op.dense(chunk=chunk)
    if not np.all(np.isfinite(H)):
        raise ValueError(
            "model: the Hessian has NaN or inf entries while the loss is finite: the loss is not twice "
            "differentiable at the parameters or its second derivatives overflow"
        )
    return xr.DataArray(
        H,
        dims=("row", "col"),
        name=curvature,
        attrs={
            "long_name": f"{label(curvature)} of the mean loss",
            "units": "nats / param^2",
            "n_hvp": int(op.n_products),
        },
    )
