"""Gradient-norm measures: GAM's first-order flatness and the gradient norm itself."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import xarray as xr
from numpy.typing import ArrayLike
from torch import nn

from ..curvature import HessianOperator
from ..curvature.operators import ENGINES
from ..curvature.probing import finite_products
from ..registry import Tags, probe
from ..testing import hostile_case
from ..validate import choice, count
from .ball import radii, rho_result

DETERMINISTIC = Tags(inputs="pair", uses=("mode", "params", "device"))


@probe("sharpness.gam_flatness", tags=DETERMINISTIC, case=lambda: (hostile_case(), {"n_steps": 2}))
def gam_flatness(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    rho: float | ArrayLike = 0.05,
    *,
    n_steps: int = 1,
    engine: str = "auto",
    ctx,
) -> xr.DataArray:
    """First-order flatness of GAM (Zhang et al. 2023): ``R1 = rho max_{||theta' - theta|| <= rho} ||grad L(theta')||``.

    Ascent on ``||grad L||``, whose gradient is ``H g / ||g||`` (one HVP per step): a step to
    ``theta + rho u / ||u||`` then, for more steps, normalised steps of ``rho / n_steps`` projected on
    the ball; the largest gradient norm seen (theta included) is kept. ``rho`` may be an array (the
    result is then over ``rho``). attrs: ``grad_norm`` at theta, ``n_hvp``.

    >>> import torch
    >>> from workbench.sharpness import gam_flatness
    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(1.0)
    >>> sq = lambda out, y: (out - y).pow(2).mean()      # L = w^2: ||grad|| = 2 |w|, largest at w = 1 + rho
    >>> r = gam_flatness(m, sq, (torch.ones(2, 1), torch.zeros(2, 1)), rho=0.1)
    >>> round(float(r), 6), r.attrs["grad_norm"]          # 0.1 * 2 * 1.1
    (0.22, 2.0)
    """
    rhos, scalar = radii(rho)
    steps = n_steps = count("n_steps", n_steps)
    choice("engine", engine, ENGINES)
    obj = ctx.objective()
    l0, g0 = obj.loss_and_grad()
    g0n = float(g0.norm())
    vals, errs = [], []
    n_hvp = 0
    with ctx.bar(len(rhos) * steps, "GAM flatness") as bar:
        for r in rhos:
            best = g0n
            delta = torch.zeros_like(g0)
            for i in range(steps):
                bar.update()
                _, g = obj.loss_and_grad(obj.theta0 + delta, what="rho")
                gn = g.norm()
                if gn == 0:
                    break
                op = HessianOperator(obj, obj.theta0 + delta, engine=engine)
                u = finite_products(op.matvec, obj)(g / gn)
                engine = op.engine  # after a fallback to double backward, stay there (one warning)
                n_hvp += 1
                if u.norm() == 0:
                    break
                step = r if i == 0 else r / n_steps
                delta = delta + step * u / u.norm()
                if delta.norm() > r:
                    delta = delta * (r / delta.norm())
                best = max(best, float(obj.loss_and_grad(obj.theta0 + delta, what="rho")[1].norm()))
            vals.append(r * best)
            errs.append(math.nan)
    return rho_result(
        "gam_flatness", "first-order flatness (GAM)", rhos, vals, errs, scalar, {"grad_norm": g0n, "n_hvp": int(n_hvp)}
    )


@probe("sharpness.gradient_norm", tags=DETERMINISTIC)
def gradient_norm(model: nn.Module, loss_fn: Callable, data: Any, *, ctx) -> xr.DataArray:
    """The norm of the gradient of the mean loss, ``||grad L(theta)||_2`` (a 0-d DataArray).

    >>> import torch
    >>> from workbench.sharpness import gradient_norm
    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(1.0)
    >>> float(gradient_norm(m, lambda out, y: (out - y).pow(2).mean(), (torch.ones(2, 1), torch.zeros(2, 1))))
    2.0
    """
    g = ctx.objective().loss_and_grad()[1]
    return xr.DataArray(
        float(g.norm()), name="grad_norm", attrs={"long_name": "gradient norm ||grad L||", "units": "nats / param"}
    )
