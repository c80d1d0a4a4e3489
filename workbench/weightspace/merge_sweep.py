"""The loss landscape over merge coefficients: every task's loss and accuracy at ``theta_0 + sum_i c_i (theta_i -
theta_0)`` on a 1-D or 2-D grid of coefficients (Ilharco et al. 2023, fig. 2; Yadav et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike
from torch import nn

from ..landscape import check_same_space
from ..params import ParamSpace
from ..registry import Tags, probe
from ..testing import hostile_data, hostile_model
from ..validate import count, finite_array
from .merging import labelled

__all__ = ["merge_landscape", "endpoint_losses"]


def _case():
    return ([hostile_model(0), hostile_model(1)], nn.CrossEntropyLoss(), hostile_data()), dict(steps=3)


def _axis(coords, steps: int, n_dirs: int) -> list[np.ndarray]:
    if coords is None:
        return [np.linspace(0.0, 1.0, steps)] * n_dirs
    if n_dirs == 1 and not (isinstance(coords, (list, tuple)) and coords and np.ndim(coords[0]) == 1):
        return [finite_array("coords", coords)]
    if not isinstance(coords, (list, tuple)) or len(coords) != n_dirs:
        raise ValueError(f"coords: expected one 1-D array of coefficients per merged model ({n_dirs}), got {coords!r}")
    return [finite_array(f"coords[{i}]", c) for i, c in enumerate(coords)]


@probe("weightspace.merge_landscape", case=_case, tags=Tags(inputs="models", uses=("mode", "device")))
def merge_landscape(
    models: list[nn.Module] | dict[str, nn.Module],
    loss_fn: Callable,
    data: Any,
    coords: ArrayLike | list[ArrayLike] | None = None,
    *,
    steps: int = 11,
    tasks: Mapping[str, Any] | None = None,
    ctx,
) -> xr.Dataset:
    """Loss and accuracy of each task over the merge coefficients ``c``: at
    ``theta(c) = theta_0 + sum_{i>=1} c_i (theta_i - theta_0)`` (float64), ``models = [theta_0, theta_1(, theta_2)]``.

    With a base model and fine-tuned ones first-to-last (``[base, ft_a, ft_b]``) it is task arithmetic's landscape
    (Ilharco et al. 2023), 2-D over ``(c1, c2)``; with two models (``[a, b]``) it is the linear path of
    ``landscape.interpolate``, 1-D over ``c1``. Every parameter (frozen ones too) and every floating buffer
    (BatchNorm statistics) is merged, as the merging operators do: a cell is the loss of
    ``task_arithmetic(models[0], models[1:], scale=c)``. At ``c = 0`` and ``c = e_i`` the tensors are the models'
    own (bitwise), so those cells are the endpoint models' losses.

    ``coords``: the coefficients of each axis (default ``linspace(0, 1, steps)`` for each); one array with two
    models, a list of arrays with more. ``data`` is the task ``"data"``; ``tasks`` adds other tasks by name (each
    evaluated with ``loss_fn``): dim ``task`` lists them.

    Returns an ``xr.Dataset``: ``loss`` and ``accuracy`` over (``task``, ``c1``, ``c2``...); attrs ``models``
    (the labels of the models along each axis).

    >>> import torch
    >>> from workbench.weightspace.merge_sweep import merge_landscape
    >>> base, a, b = (torch.nn.Linear(3, 2) for _ in range(3))
    >>> data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
    >>> ds = merge_landscape([base, a, b], torch.nn.CrossEntropyLoss(), data, steps=3, progress=False)
    >>> ds.loss.dims, ds.loss.shape
    (('task', 'c1', 'c2'), (1, 3, 3))
    """
    labels, ms = labelled(models, least=2)
    if len(ms) > 3:
        raise ValueError(f"models: a landscape over merge coefficients takes 2 or 3 models (1-D or 2-D), got {len(ms)}")
    steps = count("steps", steps)
    task_data = {"data": data}
    if tasks is not None:
        if not isinstance(tasks, Mapping) or not all(isinstance(k, str) for k in tasks):
            raise TypeError("tasks: expected a dict task name -> data (evaluated with loss_fn)")
        if "data" in tasks:
            raise ValueError("tasks: the name 'data' is the task of the data argument; name the others differently")
        task_data.update(tasks)
    axes = _axis(coords, steps, len(ms) - 1)
    every = [n for n, _ in ms[0].named_parameters()]
    objs = {name: ctx.objective(model=ms[0], data=d, params=every) for name, d in task_data.items()}
    ctx.adopt_data(data)
    first = objs["data"]
    spaces = [first.space] + [ParamSpace(m, every, arg=f"models[{lab}]") for lab, m in zip(labels[1:], ms[1:])]
    for lab, s in zip(labels[1:], spaces[1:]):
        check_same_space(first.space, s, (f"models[{labels[0]}]", f"models[{lab}]"))
        if s.device != first.device:
            raise ValueError(f"models[{lab}]: its parameters are on {s.device}, not {first.device}; move the models")
    for o in objs.values():
        o.check_inputs()
        o.loss()  # the loss and labels of every task checked once at the first model: NaN inside is data, not this
    thetas = [s.theta0 for s in spaces]
    dirs = [t.double() - thetas[0].double() for t in thetas[1:]]
    bufs = [{k: v.detach() for k, v in m.named_buffers()} for m in ms]
    for lab, b in zip(labels[1:], bufs[1:]):
        if set(b) != set(bufs[0]) or any(b[k].shape != v.shape for k, v in bufs[0].items()):
            raise ValueError(
                f"models[{lab}]: its buffers differ from models[{labels[0]}]'s; merging needs one architecture"
            )
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(axes))
    shape = tuple(len(a) for a in axes)
    loss = np.full((len(objs), len(grid)), np.nan)
    acc = np.full((len(objs), len(grid)), np.nan)
    for j, c in enumerate(ctx.iterate(grid, desc="merge_landscape")):
        unit = [i for i, ci in enumerate(c) if ci != 0.0]
        if not unit:
            theta, buf = thetas[0], bufs[0]
        elif len(unit) == 1 and c[unit[0]] == 1.0:  # the model itself, bitwise
            theta, buf = thetas[unit[0] + 1], bufs[unit[0] + 1]
        else:
            th = thetas[0].double() + sum(float(ci) * d for ci, d in zip(c, dirs))
            theta = th.to(thetas[0].dtype)
            buf = {}
            for k, v in bufs[0].items():
                if v.is_floating_point():
                    m = v.double() + sum(float(ci) * (b[k].double() - v.double()) for ci, b in zip(c, bufs[1:]))
                    buf[k] = m.to(v.dtype)
                else:
                    buf[k] = v
        for t, o in enumerate(objs.values()):
            lv, av = o.evaluate(theta, with_accuracy=True, buffers=buf, finite=False)
            loss[t, j], acc[t, j] = lv, (np.nan if av is None else av)
    dims = ("task",) + tuple(f"c{i + 1}" for i in range(len(axes)))
    cds: dict = {"task": list(objs)}
    for i, a in enumerate(axes):
        name = f"coefficient of models[{labels[i + 1]}] - models[{labels[0]}]"
        cds[f"c{i + 1}"] = (f"c{i + 1}", a, {"long_name": name})
    fps = {name: o.data.fingerprint() for name, o in objs.items() if name != "data"}
    ctx.record(n_tasks=len(objs), n_points=len(grid), **({"task_data_fingerprints": fps} if fps else {}))
    return xr.Dataset(
        {
            "loss": (dims, loss.reshape((len(objs),) + shape), {"long_name": "mean loss"}),
            "accuracy": (dims, acc.reshape((len(objs),) + shape), {"long_name": "top-1 accuracy", "units": "1"}),
        },
        coords=cds,
        attrs={"models": labels, "anchor": labels[0]},
    )


def endpoint_losses(ds: xr.Dataset) -> dict[str, Any]:
    """The cells of a :func:`merge_landscape` result at ``c = 0`` and ``c = e_i`` (the models themselves), by
    model label, as arrays over ``task`` (NaN where the grid misses the point).

    >>> import torch
    >>> ds = merge_landscape([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)], torch.nn.CrossEntropyLoss(),
    ...                      (torch.randn(4, 2), torch.tensor([0, 1, 0, 1])), steps=2, progress=False)
    >>> sorted(endpoint_losses(ds))
    ['0', '1']
    """
    labels = list(ds.attrs["models"])
    cdims = [d for d in ds.loss.dims if d != "task"]
    out = {}
    for i, lab in enumerate(labels):
        sel = {d: (1.0 if k + 1 == i else 0.0) for k, d in enumerate(cdims)}
        try:
            out[lab] = ds.loss.sel(sel).values
        except KeyError:
            out[lab] = np.full(ds.sizes["task"], np.nan)
    return out
