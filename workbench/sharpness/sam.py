"""Sharpness in a rho-ball: first-order SAM, worst case and average case.

* :func:`sam_sharpness`: ``L(theta + eps*) - L(theta)`` with the first-order maximiser eps* (Foret
  et al. 2021; adaptive: Kwon et al. 2021); m-sharpness with ``m``;
* :func:`worst_case_sharpness`: ``max_{delta in ball} L(theta + delta) - L(theta)`` by projected
  gradient ascent (Andriushchenko et al. 2023);
* :func:`average_sharpness`: ``E_delta L(theta + delta) - L(theta)`` for random delta in the ball's
  scale (Andriushchenko et al. 2023).

All take ``rho`` (a radius or an array of radii) and ``adaptive`` with the shared defaults
``rho=0.05, adaptive=False``; the ball is :class:`~workbench.sharpness.Ball`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from numpy.typing import ArrayLike
from torch import nn

from ..registry import Tags, probe
from ..testing import hostile_case
from ..validate import count
from .ball import Ball, batch_rises, check_ball, m_subsets, radii, rho_result, weighted_mean_se

STOCHASTIC = Tags(inputs="pair", stochastic=True, uses=("mode", "params", "seed", "device"))


@probe("sharpness.sam_sharpness", tags=STOCHASTIC, case=lambda: (hostile_case(), {"rho": [0.01, 0.05], "m": 10}))
def sam_sharpness(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    rho: float | ArrayLike = 0.05,
    adaptive: bool = False,
    *,
    norm: int | float | str = 2,
    eta: float = 0.0,
    m: int | None = None,
    ctx,
) -> xr.DataArray:
    """First-order SAM sharpness ``L(theta + eps*) - L(theta)`` (Foret et al. 2021); ``adaptive=True``
    gives ASAM's (Kwon et al. 2021) with ``c = |theta| + eta``. ``eps* = rho c^2 g / ||c g||_2``
    (p = 2) or ``rho c sign(g)`` (p = inf) maximises the linearised loss in the ball. With ``m``:
    m-sharpness, the mean over disjoint random subsets of m samples (drawn with ``seed``), each with its
    own eps* (stderr over subsets); else one eps* from the full gradient and a stderr over batches.
    ``rho`` may be an array: the result is then over ``rho``. Named ``asam_sharpness`` when adaptive.

    >>> import torch
    >>> from workbench.sharpness import sam_sharpness
    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(1.0)
    >>> sq = lambda out, y: (out - y).pow(2).mean()      # L(w) = (w - 0)^2 at w = 1: g = 2
    >>> r = sam_sharpness(m, sq, (torch.ones(3, 1), torch.zeros(3, 1)), rho=0.1, progress=False)
    >>> round(float(r), 6)                                # (1 + 0.1)^2 - 1
    0.21
    """
    rhos, scalar = radii(rho)
    check_ball(norm, adaptive, eta)
    obj = ctx.objective()
    ctx.record(norm=str(norm))
    subsets = m_subsets(obj, m, ctx.seed)
    vals, errs = [], []
    with ctx.bar(len(subsets or [0]) * (1 + len(rhos)), "SAM sharpness") as bar:
        grads = []
        for s in subsets or [None]:
            grads.append(obj.loss_and_grad(data=s)[1])
            bar.update()
        for r in rhos:
            if subsets:
                rises = []
                for s, g in zip(subsets, grads):
                    eps = Ball(obj.theta0, r, norm, adaptive, eta).first_order(g)
                    lr = obj.evaluate(obj.theta0 + eps, data=s, what="rho")[0]
                    rises.append(lr - obj.evaluate(obj.theta0, data=s)[0])
                    bar.update()
                v, e = weighted_mean_se(np.array(rises), np.ones(len(rises)))
            else:
                eps = Ball(obj.theta0, r, norm, adaptive, eta).first_order(grads[0])
                v, e = batch_rises(obj, eps)
                bar.update()
            vals.append(v)
            errs.append(e)
    name = "asam_sharpness" if adaptive else "sam_sharpness"
    return rho_result(name, f"first-order {'adaptive ' if adaptive else ''}SAM sharpness", rhos, vals, errs, scalar)


@probe("sharpness.worst_case_sharpness", tags=STOCHASTIC, case=lambda: (hostile_case(), {"rho": 0.05, "n_steps": 3}))
def worst_case_sharpness(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    rho: float | ArrayLike = 0.05,
    adaptive: bool = False,
    *,
    norm: int | float | str = 2,
    eta: float = 0.0,
    n_steps: int = 20,
    m: int | None = None,
    ctx,
) -> xr.DataArray:
    """Worst-case sharpness ``max_{||delta / c||_p <= rho} L(theta + delta) - L(theta)``
    (Andriushchenko et al. 2023), by projected gradient ascent in ``u = delta / c`` from the
    first-order SAM point: normalised (p = 2) or sign (p = inf) steps, momentum 0.75, initial step
    ``2 rho`` halved whenever a step fails to improve, the best iterate kept. A lower bound on the
    true maximum, at least the first-order SAM value. At a critical point (zero gradient) the ascent
    starts from a random point of the ball drawn with ``seed``. With ``m``: the mean over disjoint
    random m-subsets. attrs: ``n_gradient_evals``.

    >>> import torch
    >>> from workbench.sharpness import worst_case_sharpness
    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> x = torch.ones(3, 1)
    >>> sq = lambda out, y: (out - y).pow(2).mean()      # L = (w - w0)^2 at its minimum w0: max rise rho^2
    >>> r = worst_case_sharpness(m, sq, (x, m(x).detach()), rho=0.1, n_steps=5, progress=False)
    >>> round(float(r), 6)
    0.01
    """
    rhos, scalar = radii(rho)
    check_ball(norm, adaptive, eta)
    n_steps = count("n_steps", n_steps, lo=0)
    obj = ctx.objective()
    ctx.record(norm=str(norm))
    subsets = m_subsets(obj, m, ctx.seed) or [obj.data]
    vals, errs, nfe = [], [], 0
    with ctx.bar(len(rhos) * len(subsets) * n_steps, "worst-case sharpness") as bar:
        for r in rhos:
            rises = []
            for s in subsets:
                ball = Ball(obj.theta0, r, norm, adaptive, eta)
                l0, g0 = obj.loss_and_grad(data=s)
                u = ball.project_u(ball.first_order(g0) / torch.where(ball.c > 0, ball.c, torch.ones_like(ball.c)))
                if not bool((u != 0).any()):  # zero gradient (a critical point): start from a random point
                    z = torch.randn(u.shape, generator=torch.Generator().manual_seed(ctx.seed), dtype=torch.float64).to(
                        u
                    )
                    u = ball.project_u(z * (r / z.norm() if ball.p == 2 else r))
                best_u, best = u, obj.evaluate(obj.theta0 + ball.c * u, data=s, what="rho")[0]
                step, mom = 2 * r, torch.zeros_like(u)
                for _ in range(n_steps):
                    l, g = obj.loss_and_grad(obj.theta0 + ball.c * u, data=s, what="rho")
                    nfe += 1
                    if l > best:
                        best, best_u = l, u
                    mom = 0.75 * mom + ball.ascent_dir_u(ball.c * g)
                    cand = ball.project_u(u + step * ball.ascent_dir_u(mom))
                    lc = obj.evaluate(obj.theta0 + ball.c * cand, data=s, what="rho")[0]
                    if lc > best:
                        best, best_u, u = lc, cand, cand
                    else:
                        step *= 0.5
                        u = best_u
                    bar.update()
                rises.append(best - l0 if len(subsets) > 1 else batch_rises(obj, ball.c * best_u, s))
            v, e = weighted_mean_se(np.array(rises), np.ones(len(rises))) if len(subsets) > 1 else rises[0]
            vals.append(v)
            errs.append(e)
    return rho_result(
        "worst_case_sharpness",
        "worst-case sharpness (projected ascent)",
        rhos,
        vals,
        errs,
        scalar,
        {"n_gradient_evals": int(nfe)},
    )


@probe("sharpness.average_sharpness", tags=STOCHASTIC, case=lambda: (hostile_case(), {"n_draws": 3}))
def average_sharpness(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    rho: float | ArrayLike = 0.05,
    adaptive: bool = False,
    *,
    norm: int | float | str = 2,
    eta: float = 0.0,
    n_draws: int = 20,
    ctx,
) -> xr.DataArray:
    """Average-case sharpness ``E_delta L(theta + delta) - L(theta)`` with delta ~ N(0, rho^2 diag(c^2))
    (p = 2) or U[-rho c, rho c] (p = inf) (Andriushchenko et al. 2023); Monte Carlo over ``n_draws``
    draws seeded by ``seed`` (the same draws for every radius), stderr over draws.

    >>> import torch
    >>> from workbench.sharpness import average_sharpness
    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> x = torch.ones(3, 1)
    >>> sq = lambda out, y: (out - y).pow(2).mean()      # L = (w - w0)^2 at its minimum w0: E rise = rho^2
    >>> r = average_sharpness(m, sq, (x, m(x).detach()), rho=0.1, n_draws=400, progress=False)
    >>> abs(float(r) - 0.01) < 3 * float(r.stderr)
    True
    """
    rhos, scalar = radii(rho)
    check_ball(norm, adaptive, eta)
    n_draws = count("n_draws", n_draws, lo=2)
    obj = ctx.objective()
    ctx.record(norm=str(norm))
    l0 = obj.loss()
    vals, errs = [], []
    with ctx.bar(len(rhos) * n_draws, "average sharpness") as bar:
        for r in rhos:
            gen = torch.Generator().manual_seed(ctx.seed)
            ball = Ball(obj.theta0, r, norm, adaptive, eta)
            draws = []
            for _ in range(n_draws):
                draws.append(obj.loss(obj.theta0 + ball.sample(gen), what="rho") - l0)
                bar.update()
            draws = np.array(draws)
            vals.append(float(draws.mean()))
            errs.append(float(draws.std(ddof=1) / np.sqrt(len(draws))))
    return rho_result("average_sharpness", "average-case sharpness", rhos, vals, errs, scalar)
