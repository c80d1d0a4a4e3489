"""Linear mode connectivity: the loss along the straight path between two models.

:func:`interpolate` evaluates ``L((1 - t) theta_a + t theta_b)`` and the loss barrier of Frankle et
al. (2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis"),
``B = max_t [L(theta(t)) - ((1 - t) L(theta_a) + t L(theta_b))]`` over t in [0, 1].
:func:`reset_buffers` recomputes BatchNorm running statistics at a point of the path, with
``torch.optim.swa_utils.update_bn`` semantics: this is **RESET** in the terms of Jordan et al. (2023, "REPAIR:
REnormalizing Permuted Activations for Interpolation Repair"), not REPAIR itself (which rescales every hidden
channel to the interpolated endpoint statistics: ``workbench.weightspace.repair``, with permutation alignment
and the barrier per method in ``workbench.weightspace.connectivity``). The older names ``bn_repair=`` and
``repaired_buffers`` still work and warn (``DeprecationWarning``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from numpy.typing import ArrayLike
from torch import nn

from ..data import Data, as_data
from ..objective import Objective
from ..params import ParamSpace, forward
from ..registry import Tags, probe
from ..state import modes
from ..testing import hostile_data, hostile_model
from ..validate import count
from .directions import check_same_space
from .grid import lattice_axis, mark_nonfinite

__all__ = ["batchnorms", "reset_buffers", "repaired_buffers", "interpolate"]


def batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm modules of ``model`` that track running statistics.

    >>> import torch
    >>> from workbench.landscape.connectivity import batchnorms
    >>> len(batchnorms(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))))
    1
    """
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reset_buffers(obj: Objective, theta: torch.Tensor, data: Data | None = None) -> dict[str, torch.Tensor]:
    """RESET: the model's buffers with BatchNorm running statistics recomputed at ``theta``: reset, then a
    cumulative average of batch statistics over one pass of ``data`` (default the objective's) with
    BatchNorm in train mode and every other module in the objective's mode
    (``torch.optim.swa_utils.update_bn`` semantics). Nothing of the model is written.

    >>> import torch
    >>> from workbench.objective import Objective
    >>> from workbench.landscape.connectivity import reset_buffers
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).eval()
    >>> obj = Objective(m, torch.nn.MSELoss(), (torch.randn(8, 2), torch.zeros(8, 2)))
    >>> b = reset_buffers(obj, obj.theta0)
    >>> sorted(b), torch.equal(m[1].running_mean, torch.zeros(2))   # the model's own are untouched
    (['1.num_batches_tracked', '1.running_mean', '1.running_var'], True)
    """
    model = obj.model
    bns = batchnorms(model)
    prefix = {m: n for n, m in model.named_modules()}
    base = obj.space.base_tensors(fresh_buffers=True)
    for m in bns:
        p = prefix[m] + "." if prefix[m] else ""
        base[p + "running_mean"].zero_()
        base[p + "running_var"].fill_(1)
        if p + "num_batches_tracked" in base:
            base[p + "num_batches_tracked"].zero_()
    tensors = dict(base)
    tensors.update(obj.space.unflatten(theta))
    with modes(model, obj.mode):
        saved = [(m, m.momentum, m.training) for m in bns]
        try:
            for m in bns:
                m.momentum = None  # cumulative moving average
                m.training = True
            for x, _, _ in obj.batches(data):
                forward(model, tensors, x)
        finally:
            for m, mom, tr in saved:
                m.momentum = mom
                m.training = tr
    params = dict(model.named_parameters(remove_duplicate=False))
    return {k: v for k, v in base.items() if k not in params}


def repaired_buffers(obj: Objective, theta: torch.Tensor, data: Data | None = None) -> dict[str, torch.Tensor]:
    """Deprecated name of :func:`reset_buffers` (it is RESET, not REPAIR); warns and calls it.

    >>> import warnings, torch
    >>> from workbench.objective import Objective
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).eval()
    >>> obj = Objective(m, torch.nn.MSELoss(), (torch.randn(8, 2), torch.zeros(8, 2)))
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     _ = repaired_buffers(obj, obj.theta0)
    >>> w[0].category.__name__
    'DeprecationWarning'
    """
    warnings.warn(
        "repaired_buffers is RESET (BatchNorm statistics recomputed), not REPAIR: use reset_buffers; REPAIR itself "
        "is workbench.weightspace.repair",
        DeprecationWarning,
        stacklevel=2,
    )
    return reset_buffers(obj, theta, data)


def _case_interp():
    return (hostile_model(0), hostile_model(1), nn.CrossEntropyLoss(), hostile_data()), dict(
        coords=[0.0, 0.5, 1.0], bn_reset=True
    )


@probe("landscape.interpolate", case=_case_interp, tags=Tags(inputs="two_models", uses=("mode", "params", "device")))
def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: Callable,
    data: Any,
    coords: ArrayLike | None = None,
    *,
    steps: int = 21,
    bn_reset: bool | Any = False,
    bn_repair: bool | Any = None,
    ctx,
) -> xr.Dataset:
    """Loss and accuracy along the linear path ``theta(t) = (1 - t) theta_a + t theta_b``.

    Attrs: ``barrier`` (Frankle et al. 2020), ``max_t L(theta(t)) - ((1 - t) L_a + t L_b)`` over t in
    [0, 1] on the grid, ``barrier_simple`` = ``max_t L(theta(t)) - max(L_a, L_b)``, and the endpoint
    losses ``loss_a`` and ``loss_b``. ``coords`` default ``linspace(0, 1, steps)``; values outside
    [0, 1] extrapolate the line. The endpoints (t = 0 and 1) are bitwise the two models' losses.

    ``bn_reset`` (RESET in Jordan et al. 2023): recompute BatchNorm running statistics at every point of the
    path from ``data`` (``True``) or from the data given as ``bn_reset`` before evaluating
    (:func:`reset_buffers`); without it BatchNorm buffers are interpolated linearly along with the weights,
    and interpolated running statistics are meaningless. REPAIR proper (every hidden channel rescaled) and
    permutation alignment are in :func:`workbench.weightspace.connectivity`. ``bn_repair``: the deprecated
    name of ``bn_reset`` (it warns).

    >>> import torch, workbench as wb
    >>> a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    >>> data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
    >>> r = wb.landscape.interpolate(a, b, torch.nn.CrossEntropyLoss(), data, steps=3, progress=False)
    >>> r.loss.dims, sorted(k for k in r.attrs if k.startswith("barrier"))
    (('t',), ['barrier', 'barrier_simple'])
    """
    obj = ctx.objective()  # model_a's: its data fingerprint and sizes are recorded
    space_b = ParamSpace(model_b, ctx.params, arg="model_b")
    check_same_space(obj.space, space_b)
    if space_b.device != obj.device:
        raise ValueError(
            f"model_b: its parameters are on {space_b.device}, model_a's on {obj.device}; move both "
            "models to one device"
        )
    t = lattice_axis(coords, count("steps", steps), (0.0, 1.0))
    obj.check_inputs()  # clear errors for inputs the model cannot take, before BatchNorm repair runs it
    ta, tb = obj.theta0, space_b.theta0
    diff = tb - ta
    repair = given = None
    if bn_repair is not None:
        if not (isinstance(bn_reset, (bool, np.bool_)) and not bn_reset):
            raise TypeError("bn_repair: the deprecated name of bn_reset; give bn_reset alone")
        warnings.warn(
            "interpolate(bn_repair=...) recomputes BatchNorm statistics, which is RESET, not REPAIR: use "
            "bn_reset=...; REPAIR itself is workbench.weightspace.repair / weightspace.connectivity",
            DeprecationWarning,
            stacklevel=4,
        )
        bn_reset = bn_repair
    if not (bn_reset is None or isinstance(bn_reset, (bool, np.bool_))):
        try:
            given = as_data(bn_reset, obj.device, obj.dtype)
        except (TypeError, ValueError) as e:
            raise type(e)(f"bn_reset: expected True, False or data for the BatchNorm statistics; {e}") from None
    if (given is not None or bool(bn_reset)) and batchnorms(model_a):
        repair = obj.data if given is None else given
    buf_a = dict(model_a.named_buffers())
    buf_b = dict(model_b.named_buffers())
    loss = np.full(len(t), np.nan)
    acc = np.full(len(t), np.nan)
    for i, ti in enumerate(ctx.iterate(t, desc="interpolate")):
        theta = ta if ti == 0.0 else tb if ti == 1.0 else ta + float(ti) * diff
        if repair is not None:
            bufs = reset_buffers(obj, theta, repair)
        else:  # buffers interpolated like the weights (integer counters taken from model_a)
            bufs = {
                k: (
                    v
                    if not v.is_floating_point()
                    else (v if ti == 0.0 else buf_b[k] if ti == 1.0 else torch.lerp(v, buf_b[k], float(ti)))
                )
                for k, v in buf_a.items()
            }
        l, a = obj.evaluate(theta, with_accuracy=True, buffers=bufs, finite=False)
        loss[i], acc[i] = l, (np.nan if a is None else a)
    mark_nonfinite(loss, "interpolate")
    ds = xr.Dataset(
        {
            "loss": ("t", loss, {"long_name": "mean loss", "units": "nats"}),
            "accuracy": ("t", acc, {"long_name": "top-1 accuracy", "units": "1"}),
        },
        coords={"t": ("t", t, {"long_name": "interpolation coefficient t", "units": "1"})},
    )
    inside = (t >= 0) & (t <= 1)
    la = _endpoint(obj, t, loss, 0.0, ta, repair, buf_a)
    lb = _endpoint(obj, t, loss, 1.0, tb, repair, buf_b)
    lin = (1 - t) * la + t * lb
    barrier = float(np.nanmax((loss - lin)[inside])) if inside.any() and np.isfinite(loss[inside]).any() else math.nan
    simple = float(np.nanmax(loss[inside]) - max(la, lb)) if inside.any() else math.nan
    ctx.record(bn_reset=repair is not None)
    if repair is not None and given is not None:
        ctx.record(bn_reset_data_fingerprint=repair.fingerprint())
    ds.attrs.update(barrier=barrier, barrier_simple=simple, loss_a=float(la), loss_b=float(lb))
    return ds


def _endpoint(obj, t, loss, where, theta, repair, bufs):
    hit = np.nonzero(t == where)[0]
    if hit.size:
        return float(loss[hit[0]])
    b = reset_buffers(obj, theta, repair) if repair is not None else bufs
    return float(obj.evaluate(theta, buffers=b, finite=False)[0])
