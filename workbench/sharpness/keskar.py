"""Keskar et al. (2017) epsilon-sharpness: the largest loss rise in a box, relative to 1 + L."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy.optimize import minimize
from torch import nn

from ..registry import Tags, probe
from ..testing import hostile_case
from ..validate import count, positive


@probe(
    "sharpness.keskar_sharpness",
    tags=Tags(inputs="pair", uses=("mode", "params", "device")),
    case=lambda: (hostile_case(), {"maxiter": 2}),
)
def keskar_sharpness(
    model: nn.Module, loss_fn: Callable, data: Any, eps: float = 1e-3, *, maxiter: int = 10, ctx
) -> xr.DataArray:
    """Keskar et al. (2017) epsilon-sharpness (full space, A = I):
    ``phi = 100 (max_{y in C} L(theta + y) - L(theta)) / (1 + L(theta))`` in percent, over the box
    ``C = {|y_i| <= eps (|theta_i| + 1)}``, maximised by L-BFGS-B (``maxiter`` iterations) from y = 0.
    attrs: ``n_gradient_evals``, ``eps``.

    >>> import torch
    >>> from workbench.sharpness import keskar_sharpness
    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(1.0)
    >>> lin = lambda out, y: out.mean()                   # L(w) = w: the box corner w = 1 + eps * 2
    >>> r = keskar_sharpness(m, lin, (torch.ones(2, 1), torch.zeros(2)), eps=0.01)
    >>> round(float(r), 4)                                # 100 * 0.02 / (1 + 1)
    1.0
    """
    eps = positive("eps", eps)
    maxiter = count("maxiter", maxiter)
    obj = ctx.objective()
    th0 = obj.theta0
    l0 = obj.loss()
    bound = (eps * (th0.abs() + 1)).double().cpu().numpy()

    def f(y):
        l, g = obj.loss_and_grad(th0 + torch.from_numpy(y).to(th0), what="eps")
        return -l, -g.double().cpu().numpy()

    with ctx.bar(int(maxiter), "Keskar sharpness") as bar:
        r = minimize(
            f,
            np.zeros_like(bound),
            jac=True,
            method="L-BFGS-B",
            bounds=np.c_[-bound, bound],
            options={"maxiter": int(maxiter)},
            callback=lambda xk: bar.update(),
        )
    best = max(-float(r.fun), l0)
    val = 100 * (best - l0) / (1 + l0)
    return xr.DataArray(
        val,
        name="keskar_sharpness",
        attrs={
            "long_name": "Keskar epsilon-sharpness",
            "units": "percent",
            "n_gradient_evals": int(r.nfev),
            "eps": float(eps),
        },
    )
