"""The perturbation ball of the sharpness measures, and the statistics they share.

Sharpness is measured in ``{delta : ||delta / c||_p <= rho}`` with ``c = 1`` or, adaptive,
``c = |theta| + eta`` (Kwon et al. 2021, ASAM), always as a loss increase
``L(theta + delta) - L(theta)``. Every value carries a standard error: over disjoint subsets of m
samples when ``m`` is given (m-sharpness), else over the data's batches (the spread of the
per-batch loss increases, :func:`batch_rises`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
import xarray as xr
from numpy.typing import ArrayLike

from ..data import Data, as_data
from ..objective import Objective
from ..validate import boolean, finite_array, finite_nonneg, integer, real


def check_ball(norm, adaptive: bool, eta: float) -> None:
    """Clear errors for a bad ``norm`` (2 or ``"inf"``), ``adaptive`` (a bool) or ``eta`` (finite, >= 0).

    >>> check_ball("inf", True, 0.0)
    """
    if isinstance(norm, str):
        ok = norm in ("2", "inf")
    else:
        ok = isinstance(norm, numbers.Real) and not isinstance(norm, (bool, np.bool_)) and norm in (2, math.inf)
    if not ok:
        raise ValueError(f"norm: expected 2 or 'inf', got {norm!r}")
    boolean("adaptive", adaptive)
    finite_nonneg("eta", eta)


def _unit(v: torch.Tensor) -> torch.Tensor:
    """``v / ||v||`` (0 for v = 0), scaled first so that the norm of a huge gradient cannot overflow to inf."""
    s = v.abs().max()
    if s == 0:
        return torch.zeros_like(v)
    v = v / s
    return v / v.norm()


class Ball:
    """``{delta : ||delta / c||_p <= rho}`` with ``c = 1`` or ``c = |theta| + eta`` (``adaptive``).

    Optimisation works in ``u = delta / c``, where the set is a plain p-ball of radius rho (so the
    adaptive l2 "ellipsoid" projection is exact without bisection). ``norm``: 2 or ``"inf"``.

    >>> import torch
    >>> from workbench.sharpness import Ball
    >>> b = Ball(torch.tensor([1.0, -2.0]), rho=0.1)
    >>> [round(v, 6) for v in b.first_order(torch.tensor([3.0, 4.0])).tolist()]      # rho g / ||g||
    [0.06, 0.08]
    """

    def __init__(
        self, theta: torch.Tensor, rho: float, norm: int | float | str = 2, adaptive: bool = False, eta: float = 0.0
    ):
        check_ball(norm, adaptive, eta)
        self.rho = real("rho", rho, lo=0.0)
        self.p = 2 if norm in (2, "2") else math.inf
        self.c = (theta.abs() + eta) if adaptive else torch.ones_like(theta)

    def first_order(self, g: torch.Tensor) -> torch.Tensor:
        """argmax of ``g^T delta`` over the ball: ``rho c^2 g / ||c g||`` (p = 2) or ``rho c sign(g)`` (p = inf)."""
        cg = self.c * g
        if self.p == 2:
            return self.rho * self.c * _unit(cg)
        return self.rho * self.c * torch.sign(g)

    def project_u(self, u: torch.Tensor) -> torch.Tensor:
        """The nearest point of the plain p-ball of radius rho to ``u``."""
        if self.p == 2:
            n = u.norm()
            return u if n <= self.rho else u * (self.rho / n)
        return u.clamp(-self.rho, self.rho)

    def ascent_dir_u(self, g_u: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of the p-norm for the gradient ``g_u`` in u: ``g / ||g||`` or ``sign(g)``."""
        if self.p == 2:
            return _unit(g_u)
        return torch.sign(g_u)

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        """A random perturbation: ``rho c z``, z ~ N(0, I) (p = 2) or U[-1, 1]^P (p = inf), drawn from ``gen``."""
        z = torch.randn(self.c.shape, generator=gen, dtype=torch.float64).to(self.c)
        if self.p == 2:
            return self.rho * self.c * z
        u = torch.rand(self.c.shape, generator=gen, dtype=torch.float64).to(self.c) * 2 - 1
        return self.rho * self.c * u


def weighted_mean_se(v: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(weighted mean, standard error) of independent estimates ``v`` with weights ``w`` (NaN error for one).

    ``se^2 = sum w_i^2 * sum w_i (v_i - mean)^2 / (1 - sum w_i^2)`` with ``w`` normalised to sum 1.

    >>> import numpy as np
    >>> from workbench.sharpness.ball import weighted_mean_se
    >>> weighted_mean_se(np.array([1.0, 3.0]), np.array([1.0, 1.0]))
    (2.0, 1.0)
    """
    w = w / w.sum()
    mean = float((w * v).sum())
    if len(v) < 2:
        return mean, math.nan
    var = float((w * (v - mean) ** 2).sum()) / (1 - (w**2).sum())
    return mean, math.sqrt(var * (w**2).sum())


def batch_rises(
    obj: Objective, delta: torch.Tensor, data: Data | None = None, what: str = "rho"
) -> tuple[float, float]:
    """(sample-weighted mean, standard error over batches) of ``L_b(theta + delta) - L_b(theta)`` over the
    batches of ``data`` (default the objective's); a non-finite loss at ``theta + delta`` names ``what``.

    >>> import torch
    >>> from workbench.objective import Objective
    >>> from workbench.sharpness.ball import batch_rises
    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> obj = Objective(m, lambda out, y: out.mean(), [(torch.ones(2, 1), torch.zeros(2))] * 2)
    >>> batch_rises(obj, torch.tensor([0.5]))       # the same rise in both batches: no spread
    (0.5, 0.0)
    """
    th0 = obj.theta0
    rises, ns = [], []
    for x, y, n in obj.batches(data):
        one = as_data([(x, y)], obj.device, obj.dtype, check_finite=False)
        rises.append(obj.evaluate(th0 + delta, data=one, what=what)[0] - obj.evaluate(th0, data=one)[0])
        ns.append(n)
    return weighted_mean_se(np.array(rises), np.array(ns, float))


def radii(rho: float | ArrayLike) -> tuple[np.ndarray, bool]:
    """(radii as a 1-D float array, whether ``rho`` was a scalar); refuses negative or non-finite radii.

    >>> from workbench.sharpness.ball import radii
    >>> radii(0.05), radii([0.0, 0.1])[0].tolist()
    ((array([0.05]), True), [0.0, 0.1])
    """
    if isinstance(rho, (str, bytes)):
        raise TypeError(f"rho: expected a number or an array of numbers (radii), got {type(rho).__name__} {rho!r}")
    scalar = np.ndim(rho) == 0
    if scalar:
        return np.array([real("rho", rho, lo=0.0)]), True
    rhos = finite_array("rho", rho)
    if np.any(rhos < 0):
        raise ValueError(f"rho: expected finite radii >= 0, got {rho!r}")
    return rhos, False


def m_subsets(obj: Objective, m: int | None, seed: int) -> list[Data] | None:
    """Disjoint random subsets of ``m`` samples of the objective's data (m-sharpness), or None for ``m=None``.

    >>> import torch
    >>> from workbench.objective import Objective
    >>> from workbench.sharpness.ball import m_subsets
    >>> obj = Objective(torch.nn.Linear(1, 1), torch.nn.MSELoss(), (torch.zeros(7, 1), torch.zeros(7, 1)))
    >>> [s.n for s in m_subsets(obj, 3, seed=0)]          # the 7th sample is left out
    [3, 3]
    """
    m = integer("m", m, lo=1, none=True)
    if m is None:
        return None
    if not 1 <= m <= obj.data.n:
        raise ValueError(f"m: the m-sharpness subset size must be in 1..{obj.data.n} (the number of samples), got {m}")
    return [as_data([(x, y)], obj.device, obj.dtype, check_finite=False) for x, y, _ in obj.data.subsets(m, seed)]


def rho_result(
    name: str,
    long_name: str,
    rhos: np.ndarray,
    values: ArrayLike,
    errs: ArrayLike,
    scalar: bool,
    extra: dict | None = None,
) -> xr.DataArray:
    """A sharpness value per radius: a 0-d DataArray (coords ``rho``, ``stderr``) for a scalar ``rho``, else
    one over ``rho`` (coordinate ``stderr`` over ``rho``); units nats, ``extra`` in attrs.

    >>> import numpy as np
    >>> from workbench.sharpness.ball import rho_result
    >>> float(rho_result("s", "sharpness", np.array([0.1]), [0.5], [0.01], scalar=True).stderr)
    0.01
    """
    values, errs = np.asarray(values, float), np.asarray(errs, float)
    if scalar:
        da = xr.DataArray(values[0], name=name, coords={"rho": rhos[0], "stderr": errs[0]})
    else:
        da = xr.DataArray(values, dims="rho", coords={"rho": rhos, "stderr": ("rho", errs)}, name=name)
    da.attrs.update({"long_name": long_name, "units": "nats"})
    da.attrs.update(extra or {})
    return da
