"""Choosing a curvature matrix by name: the one switch every curvature probe takes (``curvature=``)."""

from __future__ import annotations

from .fisher import EmpiricalFisherOperator, FisherOperator, MCFisherOperator
from .gauss_newton import GGNOperator
from .operators import CurvatureOperator, HessianOperator

#: the curvature matrices by name, with the name used in labels
CURVATURES = {
    "hessian": "Hessian",
    "ggn": "GGN",
    "fisher": "Fisher",
    "mc_fisher": "MC Fisher",
    "empirical_fisher": "empirical Fisher",
}


def curvature_operator(
    objective,
    curvature: str = "hessian",
    theta=None,
    *,
    engine: str = "auto",
    chunk: int = 16,
    callback=None,
    group=None,
    mc_samples: int = 1,
    generator=None,
) -> CurvatureOperator:
    """The curvature matrix ``curvature`` of ``objective`` as a :class:`~.operators.CurvatureOperator`:
    ``"hessian"`` (:class:`~.operators.HessianOperator`), ``"ggn"`` (:class:`~.gauss_newton.GGNOperator`),
    ``"fisher"`` (:class:`~.fisher.FisherOperator`), ``"mc_fisher"`` (:class:`~.fisher.MCFisherOperator`, with
    ``mc_samples`` labels per sample drawn from ``generator``) or ``"empirical_fisher"``
    (:class:`~.fisher.EmpiricalFisherOperator`).

    >>> import torch
    >>> from workbench.objective import Objective
    >>> from workbench.curvature import curvature_operator
    >>> obj = Objective(torch.nn.Linear(2, 1), torch.nn.MSELoss(), (torch.randn(8, 2), torch.randn(8, 1)))
    >>> type(curvature_operator(obj, "ggn")).__name__
    'GGNOperator'
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature: expected one of {', '.join(map(repr, CURVATURES))}, got {curvature!r}")
    kw = dict(theta=theta, engine=engine, chunk=chunk, callback=callback, group=group)
    if curvature == "hessian":
        return HessianOperator(objective, **kw)
    if curvature == "ggn":
        return GGNOperator(objective, **kw)
    if curvature == "fisher":
        return FisherOperator(objective, **kw)
    if curvature == "mc_fisher":
        return MCFisherOperator(objective, mc_samples=mc_samples, generator=generator, **kw)
    return EmpiricalFisherOperator(objective, **kw)
