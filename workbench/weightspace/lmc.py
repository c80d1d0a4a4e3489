"""Linear mode connectivity with and without alignment, and the singular directions weight matching aligns.

:func:`connectivity` evaluates the loss and accuracy along ``theta(t) = (1 - t) theta_A + t pi(theta_B)`` for
several methods at once: ``"none"`` (pi the identity), ``"weight"`` and ``"activation"`` (pi from
:func:`~workbench.weightspace.alignment.match`), each optionally ``"+repair"`` (REPAIR at every t) or
``"+reset"`` (BatchNorm statistics recomputed at every t, RESET); see :mod:`~workbench.weightspace.repair`.
Barriers per method:

* ``barrier`` (Entezari et al. 2022; Ainsworth et al. 2023): ``max_t [L(t) - ((1 - t) L_A + t L_B)]``, the
  largest excess over the straight line between the endpoint losses (the max-over-path definition);
* ``barrier_frankle`` (Frankle et al. 2020, instability): ``max_t L(t) - (L_A + L_B) / 2``;
* ``error_barrier_frankle``: the same on the error ``1 - accuracy``, as Frankle et al. report it.

:func:`singular_cosines` checks the claim of Ito et al. (2024, "Analysis of Linear Mode Connectivity via
Permutation-Based Weight Matching") that weight matching aligns the dominant singular directions of each layer:
``|cos|`` of A's and B's top singular vectors, before and after the permutation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from numpy.typing import ArrayLike
from torch import nn

from ..registry import Tags, probe
from ..testing import hostile_data, hostile_model
from ..validate import count, finite_array
from .alignment import checked_pair, match, permute
from .graph import example_input
from .repair import interpolate_models, repair, repair_points, reset_batchnorm, unit_statistics

__all__ = ["LMC_METHODS", "connectivity", "singular_cosines", "barriers"]

LMC_METHODS = ("none", "weight", "activation", "weight+repair", "weight+reset")
_BASES, _FIXES = ("none", "weight", "activation", "ste"), ("repair", "reset")


def _methods(methods) -> list[tuple[str, str, str | None]]:
    if not isinstance(methods, (str, list, tuple)):
        raise TypeError(
            f"methods: expected a method name or a list of them (e.g. {LMC_METHODS}), got {type(methods).__name__}"
        )
    methods = [methods] if isinstance(methods, str) else list(methods)
    if not methods:
        raise ValueError(f"methods: empty; choose from {LMC_METHODS} (any of {_BASES} with '+repair' or '+reset')")
    out = []
    for m in methods:
        base, _, fix = str(m).partition("+")
        if base not in _BASES or (fix and fix not in _FIXES):
            raise ValueError(
                f"methods: {m!r} is not a method; expected one of {_BASES}, optionally with '+repair' or '+reset' "
                f"(e.g. {LMC_METHODS})"
            )
        out.append((str(m), base, fix or None))
    if len({m[0] for m in out}) < len(out):
        raise ValueError(f"methods: {methods} names a method twice")
    return out


def barriers(t: np.ndarray, loss: np.ndarray, acc: np.ndarray) -> dict[str, float]:
    """The barriers of one path (see the module docstring) on the grid points with ``0 <= t <= 1``; the endpoint
    values are those at t = 0 and t = 1.

    >>> barriers(np.array([0, .5, 1]), np.array([1., 3., 2.]), np.array([.9, .5, .8]))
    {'barrier': 1.5, 'barrier_frankle': 1.5, 'error_barrier_frankle': 0.35}
    """
    inside = (t >= 0) & (t <= 1)
    la, lb = loss[t == 0][0], loss[t == 1][0]
    ea, eb = 1 - acc[t == 0][0], 1 - acc[t == 1][0]
    ti, li, ei = t[inside], loss[inside], 1 - acc[inside]
    return dict(
        barrier=float(np.nanmax(li - ((1 - ti) * la + ti * lb))),
        barrier_frankle=float(np.nanmax(li) - (la + lb) / 2),
        error_barrier_frankle=float(round(np.nanmax(ei) - (ea + eb) / 2, 12)) if np.isfinite(ei).any() else math.nan,
    )


def _case():
    return (hostile_model(0), hostile_model(1), nn.CrossEntropyLoss(), hostile_data()), dict(
        steps=3, methods=("none", "weight+repair", "activation+reset")
    )


_TAGS = Tags(inputs="two_models", uses=("mode", "seed", "device"), stochastic=True)


@probe("weightspace.connectivity", case=_case, tags=_TAGS)
def connectivity(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: Callable,
    data: Any,
    coords: ArrayLike | None = None,
    *,
    methods: str | Sequence[str] = LMC_METHODS,
    steps: int = 11,
    repair_data: Any = None,
    ctx,
) -> xr.Dataset:
    """Loss and accuracy along the linear path from model A to model B, before and after aligning B to A.

    Returns a Dataset over ``(path, t)`` with ``loss`` and ``accuracy``, and per path ``barrier``,
    ``barrier_frankle``, ``error_barrier_frankle`` (module docstring), ``loss_a`` and ``loss_b`` (the path's
    endpoints) and ``n_identity`` (permutation groups alignment left unchanged). ``coords``: the t values
    (default ``linspace(0, 1, steps)``; 0 and 1 are always included). ``methods``: from :data:`LMC_METHODS`
    (any of ``"none"``, ``"weight"``, ``"activation"``, each optionally ``"+repair"`` or ``"+reset"``), one
    path each: the coordinate ``path`` holds their names (not ``method``, which ``Dataset.sel`` takes as a
    keyword of its own).
    ``repair_data``: the data REPAIR, RESET and activation matching read, and ``"ste"`` trains on (labelled, with
    ``loss_fn``; default ``data``). ``seed``: weight matching's order of groups.

    >>> import torch, workbench as wb
    >>> a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> b = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    >>> r = wb.weightspace.connectivity(a, b, torch.nn.CrossEntropyLoss(), data, steps=3, progress=False)
    >>> r.loss.dims, r.path.values.tolist()
    (('path', 't'), ['none', 'weight', 'activation', 'weight+repair', 'weight+reset'])
    """
    plan = _methods(methods)
    t = np.linspace(0.0, 1.0, count("steps", steps, lo=2)) if coords is None else finite_array("coords", coords)
    t = np.unique(np.concatenate([t, [0.0, 1.0]]))
    obj = ctx.objective()
    x = checked_pair(ctx, model_a, model_b, loss_fn, data)  # the models, the loss and labels checked once
    rdata = x if repair_data is None else checked_pair(ctx, model_a, model_b, None, repair_data, what="repair_data")
    ctx.data = obj.data  # the provenance records the call's data, not the repair data
    tail = dict(seed=ctx.seed, mode=ctx.mode, progress=False, cancel=ctx.cancel)
    partner, n_id = {"none": model_b}, {"none": 0}
    for base in dict.fromkeys(b for _, b, _ in plan):
        if base != "none":
            labelled = data if repair_data is None else repair_data  # STE trains on the loss: labels needed
            args = (loss_fn, labelled) if base == "ste" else (None, rdata)
            perms = match(model_a, model_b, *args, method=base, **tail)
            partner[base], n_id[base] = permute(model_b, perms), perms.attrs["n_identity"]
    shape = (len(plan), len(t))
    loss, acc = np.full(shape, np.nan), np.full(shape, np.nan)
    points = stats = None
    with ctx.bar(len(plan) * len(t), "connectivity") as bar:
        for i, (_, base, fix) in enumerate(plan):
            b = partner[base]
            if fix == "repair":
                if points is None:
                    points = repair_points(model_a, example_input(rdata))
                sa = unit_statistics(model_a, rdata, points, ctx.mode, ctx.device)
                stats = (sa, unit_statistics(b, rdata, points, ctx.mode, ctx.device))
            for j, tj in enumerate(t):
                if fix == "repair":
                    m = repair(
                        model_a, b, rdata, float(tj), points=points, stats=stats, mode=ctx.mode, device=ctx.device
                    )
                else:
                    m = interpolate_models(model_a, b, float(tj))
                    if fix == "reset":
                        m = reset_batchnorm(m, rdata, ctx.device)
                l, a = ctx.objective(model=m).evaluate(with_accuracy=True, finite=False)
                loss[i, j], acc[i, j] = l, (np.nan if a is None else a)
                bar.update()
    names = [p[0] for p in plan]
    per = [barriers(t, loss[i], acc[i]) for i in range(len(plan))]
    ds = xr.Dataset(
        {
            "loss": (("path", "t"), loss, {"long_name": "mean loss", "units": "nats"}),
            "accuracy": (("path", "t"), acc, {"long_name": "top-1 accuracy", "units": "1"}),
            "loss_a": ("path", loss[:, 0], {"long_name": "loss at t = 0"}),
            "loss_b": ("path", loss[:, -1], {"long_name": "loss at t = 1"}),
            "n_identity": ("path", [n_id[p[1]] for p in plan], {"long_name": "groups left unpermuted"}),
        },
        coords={"path": names, "t": ("t", t, {"long_name": "interpolation coefficient t", "units": "1"})},
    )
    for k in per[0]:
        ds[k] = ("path", [p[k] for p in per], {"long_name": k.replace("_", " ")})
    return ds


def _top(w: torch.Tensor, k: int):
    u, _, vh = torch.linalg.svd(w.detach().double().reshape(w.shape[0], -1), full_matrices=False)
    return u[:, :k].cpu(), vh[:k].T.cpu()


def _case_sc():
    return (hostile_model(0), hostile_model(1), nn.CrossEntropyLoss(), hostile_data()), dict(k=2)


@probe("weightspace.singular_cosines", case=_case_sc, tags=Tags(inputs="two_models", uses=("seed",), stochastic=True))
def singular_cosines(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: Callable | None,
    data: Any,
    *,
    perms: xr.Dataset | None = None,
    k: int = 1,
    ctx,
) -> xr.Dataset:
    """``|cos|`` between the top-``k`` singular vectors of each weight matrix of A and of B, before (B as it is)
    and after :func:`~workbench.weightspace.alignment.permute` (B aligned by ``perms``; default: weight matching,
    :func:`~workbench.weightspace.alignment.match` on ``data`` with this ``seed``). Conv kernels are read as
    ``(out, in * kh * kw)`` matrices. Dims ``(layer, side, k)``, side ``"left"`` (output units) or ``"right"``
    (inputs); variables ``cos_before``, ``cos_after``. ``loss_fn`` is not used (None is fine).

    >>> import torch
    >>> a = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> b = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> with torch.no_grad():
    ...     _ = [q.copy_(p) for p, q in zip(a.parameters(), b.parameters())]
    ...     _ = b[0].weight.copy_(a[0].weight.flip(0)), b[0].bias.copy_(a[0].bias.flip(0))
    ...     _ = b[2].weight.copy_(a[2].weight.flip(1))
    >>> r = singular_cosines(a, b, None, torch.randn(2, 3), progress=False)
    >>> float(r.cos_after.min().round(6))
    1.0
    """
    k = count("k", k)
    data = checked_pair(ctx, model_a, model_b, loss_fn, data)
    if perms is None:
        perms = match(model_a, model_b, None, data, seed=ctx.seed, progress=False, cancel=ctx.cancel)
    aligned = permute(model_b, perms)
    sa, sb, sc = model_a.state_dict(), model_b.state_dict(), aligned.state_dict()
    layers = [n for n, v in sa.items() if n.endswith("weight") and v.dim() >= 2 and min(v.shape[0], v[0].numel()) >= k]
    before = np.zeros((len(layers), 2, k))
    after = np.zeros_like(before)
    for i, n in enumerate(layers):
        ua, va = _top(sa[n], k)
        for out, other in ((before, sb[n]), (after, sc[n])):
            ub, vb = _top(other, k)
            out[i, 0] = (ua * ub).sum(0).abs().numpy()
            out[i, 1] = (va * vb).sum(0).abs().numpy()
    dims = ("layer", "side", "k")
    return xr.Dataset(
        {
            "cos_before": (dims, before, {"long_name": "|cos| of top singular vectors, B as trained"}),
            "cos_after": (dims, after, {"long_name": "|cos| of top singular vectors, B aligned"}),
        },
        coords={"layer": layers, "side": ["left", "right"], "k": np.arange(k)},
    )
