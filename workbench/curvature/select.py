"""Choosing a curvature matrix by name (``curvature=``), and blockwise runs (``blocks=``): the options every
curvature probe shares, validated and applied here once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from ..validate import choice, count
from .blocks import WHOLE, parameter_blocks
from .fisher import EmpiricalFisherOperator, FisherOperator, MCFisherOperator
from .gauss_newton import GGNOperator
from .operators import ENGINES, CurvatureOperator, HessianOperator, process_group

#: the curvature matrices by name, with the name used in labels
CURVATURES = {
    "hessian": "Hessian",
    "ggn": "GGN",
    "fisher": "Fisher",
    "mc_fisher": "MC Fisher",
    "empirical_fisher": "empirical Fisher",
}


def curvature_operator(
    objective: Any,
    curvature: str = "hessian",
    theta: torch.Tensor | None = None,
    *,
    engine: str = "auto",
    chunk: int = 16,
    callback: Callable | None = None,
    group: Any = None,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
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


def operator_maker(ctx, curvature: str, engine: str, mc_samples: int = 1, group: Any = None) -> Callable:
    """Validate a curvature probe's operator options (``curvature``, ``engine``, ``mc_samples``, ``group``) and
    return ``make(objective, callback=None, **kw)`` building that operator (MC Fisher labels from the call's
    seeded ``ctx.generator``)."""
    choice("curvature", curvature, tuple(CURVATURES))
    choice("engine", engine, ENGINES)
    mc_samples = count("mc_samples", mc_samples)
    if mc_samples != 1 and curvature != "mc_fisher":
        raise ValueError(f"mc_samples: only used with curvature='mc_fisher', got curvature={curvature!r}")
    group = process_group(group)
    if group is not None:
        ctx.record(world_size=int(torch.distributed.get_world_size(group)))

    def make(objective, callback=None, **kw):
        gen = ctx.generator if curvature == "mc_fisher" else None
        return curvature_operator(
            objective, curvature, engine=engine, callback=callback, group=group, mc_samples=mc_samples,
            generator=gen, **kw,
        )  # fmt: skip

    return make


def label(curvature: str) -> str:
    """The curvature's name in labels (``"Hessian"``, ``"GGN"``, ...)."""
    return CURVATURES[curvature]


def over_blocks(ctx, blocks: Any, run: Callable) -> Any:
    """``run(objective, name)`` for the call's objective and, with ``blocks`` (see
    :func:`~.blocks.parameter_blocks`), for every block's objective (the curvature's diagonal block ``C_bb``),
    concatenated over a ``block`` dimension whose first entry ``"(all)"`` is the whole model. Scalar attrs that
    differ between blocks (``n_hvp``, a trace's ``stderr`` ...) become coordinates along ``block``."""
    obj = ctx.objective()
    if blocks is None:
        return run(obj, None)
    parts = parameter_blocks(obj.model, blocks, ctx.params)
    ctx.record(blocks=blocks if isinstance(blocks, str) else {k: list(v) for k, v in parts.items()})
    objectives = [obj] + [ctx.objective(params=names) for names in parts.values()]
    results = [run(o, name) for o, name in zip(objectives, [WHOLE, *parts])]
    varying = {
        k
        for r in results
        for k, v in r.attrs.items()
        if np.isscalar(v) and any(not np.array_equal(v, q.attrs.get(k)) for q in results)
    }
    for r in results:
        for k in varying:
            r.coords[k] = r.attrs.pop(k, np.nan)
    names = pd.Index(np.array([WHOLE, *parts], dtype=object), name="block")
    out = xr.concat(results, dim=names, combine_attrs="drop_conflicts")
    out.coords["n_params"] = ("block", [o.space.numel for o in objectives], {"long_name": "parameters in the block"})
    return out
