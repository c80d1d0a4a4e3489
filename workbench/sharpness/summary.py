"""Every sharpness scalar side by side, for one model or over checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import xarray as xr
from torch import nn

from ..curvature import hessian_eigenvalues, hessian_trace
from ..evaluate import evaluate
from ..registry import Tags, probe
from ..runs import load_run
from ..testing import hostile_data, hostile_model
from ..validate import count, integer, real
from .gam import gam_flatness
from .sam import average_sharpness, sam_sharpness

#: the provenance attrs of a probe result, stripped from the variables of a summary
PROVENANCE = (
    "probe",
    "probe_params",
    "model_fingerprint",
    "model_b_fingerprint",
    "data_fingerprint",
    "seed",
    "versions",
    "wall_time_s",
    "created",
)


def _case():
    return ([hostile_model(0), hostile_model(1)], nn.CrossEntropyLoss(), hostile_data()), {
        "k": 1,
        "n_hvp": 4,
        "n_draws": 2,
    }


def _items(models) -> tuple[list, bool]:
    if isinstance(models, nn.Module):
        return [("model", models)], True
    if isinstance(models, dict):
        items = list(models.items())
    elif isinstance(models, (list, tuple)):
        items = list(enumerate(models))
    else:
        raise TypeError(
            f"models: expected an nn.Module, a list of models or a dict name -> model, got {type(models).__name__}"
        )
    if not items:
        raise ValueError("models: empty; pass a model, a list of models or a dict name -> model")
    for label, m in items:
        if not isinstance(m, nn.Module):
            raise TypeError(f"models: entry {label!r} is a {type(m).__name__}, not an nn.Module")
    return items, False


def _row(
    ev: xr.Dataset,
    eig: xr.Dataset,
    tr: xr.DataArray,
    sam: xr.DataArray,
    asam: xr.DataArray,
    avg: xr.DataArray,
    gam: xr.DataArray,
    rho: float,
    adaptive_rho: float,
) -> xr.Dataset:
    lam = float(eig["eigenvalue"][0])
    ds = xr.Dataset(
        {
            "loss": ev.loss,
            "accuracy": ev.accuracy,
            "eigenvalues": eig["eigenvalue"].rename("eigenvalues"),
            "lambda_max": ((), lam, {"long_name": "largest Hessian eigenvalue"}),
            "trace": ((), float(tr), {"long_name": "Hessian trace (Hutch++)"}),
            "trace_stderr": ((), tr.attrs["stderr"]),
            "lambda_max_over_trace": ((), lam / float(tr)),
            "trace_per_param": ((), tr.attrs["trace_per_param"]),
            "sam_sharpness": ((), float(sam), {"long_name": f"SAM sharpness, rho={rho}"}),
            "sam_stderr": ((), float(sam.stderr)),
            "asam_sharpness": ((), float(asam), {"long_name": f"ASAM sharpness, rho={adaptive_rho}"}),
            "asam_stderr": ((), float(asam.stderr)),
            "average_sharpness": ((), float(avg), {"long_name": f"average-case sharpness, rho={rho / 10}"}),
            "average_stderr": ((), float(avg.stderr)),
            "gam_flatness": ((), float(gam), {"long_name": f"GAM first-order flatness, rho={rho}"}),
            "grad_norm": ((), gam.attrs["grad_norm"]),
        }
    )
    for v in ds.variables.values():
        for key in PROVENANCE:
            v.attrs.pop(key, None)
    return ds


@probe(
    "sharpness.summary",
    tags=Tags(inputs="models", stochastic=True, uses=("mode", "params", "seed", "device")),
    case=_case,
)
def summary(
    models: nn.Module | list[nn.Module] | dict[str, nn.Module] | str | os.PathLike,
    loss_fn: Callable,
    data: Any,
    *,
    k: int = 5,
    n_hvp: int = 99,
    rho: float = 0.05,
    adaptive_rho: float = 0.5,
    n_draws: int = 10,
    ctx,
) -> xr.Dataset:
    """All sharpness scalars side by side for one model, or over a list / dict of models (checkpoints)
    stacked along ``checkpoint``: loss, accuracy, the top-``k`` Hessian eigenvalues, the trace by
    Hutch++ with ``n_hvp`` HVPs (+ stderr), lambda_max / trace, trace / P, SAM sharpness at ``rho``
    and ASAM sharpness at ``adaptive_rho`` (+ stderr), average-case sharpness at ``rho / 10`` over
    ``n_draws`` draws (+ stderr), GAM flatness at ``rho`` and the gradient norm. The variables carry
    no provenance of their own (the summary's attrs hold it). ``models`` may be a run directory
    (:func:`workbench.runs.load_run`: Hugging Face ``checkpoint-<step>`` folders, TorchScript or Lightning files
    loadable without a builder): the checkpoints by increasing step, stacked along ``step``.

    >>> import torch
    >>> from workbench.sharpness import summary
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    >>> data = (torch.randn(8, 2), torch.randint(0, 2, (8,)))
    >>> ds = summary({"a": m, "b": m}, torch.nn.CrossEntropyLoss(), data, k=1, n_hvp=4, n_draws=2, progress=False)
    >>> ds.sizes["checkpoint"], "lambda_max" in ds, "probe" in ds["trace"].attrs
    (2, True, False)
    """
    run = isinstance(models, (str, os.PathLike))
    items, single = _items(load_run(models) if run else models)
    k, n_hvp, n_draws = integer("k", k, lo=1), count("n_hvp", n_hvp, lo=4), count("n_draws", n_draws, lo=2)
    rho, adaptive_rho = real("rho", rho, lo=0.0), real("adaptive_rho", adaptive_rho, lo=0.0)
    ctx.adopt_data(data)
    tail = dict(mode=ctx.mode, params=ctx.params, device=ctx.device, cancel=ctx.cancel, progress=False)
    rows = []
    with ctx.bar(7 * len(items), "sharpness summary") as bar:

        def done(result):
            bar.update()
            return result

        for _, m in items:
            ev = done(evaluate(m, loss_fn, data, **tail))
            eig = done(hessian_eigenvalues(m, loss_fn, data, k=k, seed=ctx.seed, **tail))
            tr = done(hessian_trace(m, loss_fn, data, n_hvp=n_hvp, seed=ctx.seed, **tail))
            sam = done(sam_sharpness(m, loss_fn, data, rho=rho, seed=ctx.seed, **tail))
            try:
                asam = done(sam_sharpness(m, loss_fn, data, rho=adaptive_rho, adaptive=True, seed=ctx.seed, **tail))
            except ValueError as e:  # its radius is this call's adaptive_rho
                if not str(e).startswith("rho:"):
                    raise
                raise ValueError("adaptive_rho:" + str(e)[4:]) from e
            avg = done(average_sharpness(m, loss_fn, data, rho=rho / 10, n_draws=n_draws, seed=ctx.seed, **tail))
            gam = done(gam_flatness(m, loss_fn, data, rho=rho, **tail))
            rows.append(_row(ev, eig, tr, sam, asam, avg, gam, rho, adaptive_rho))
    if single:
        return rows[0]
    dim = "step" if run else "checkpoint"
    return xr.concat(rows, dim=dim, combine_attrs="drop").assign_coords(
        {dim: [label if run else str(label) for label, _ in items]}
    )
