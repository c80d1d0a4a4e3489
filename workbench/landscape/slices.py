"""1-D and 2-D slices of the loss around a model.

* :func:`slice_1d`: ``f(alpha) = L(theta + alpha d)``;
* :func:`slice_2d`: ``f(alpha, beta) = L(theta + alpha d1 + beta d2)`` (Li et al. 2018,
  "Visualizing the Loss Landscape of Neural Nets").

Random directions are filter-normalised Gaussians (:mod:`workbench.landscape.directions`) drawn from
the call's ``seed``; the grid is an exact lattice (:mod:`workbench.landscape.grid`): where 0 is
among the coordinates the cell is ``L(theta)`` itself. Non-finite losses are NaN cells with one
warning. Both return an ``xr.Dataset`` with ``loss`` (and ``accuracy`` when ``accuracy=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import xarray as xr
from numpy.typing import ArrayLike
from torch import nn

from ..registry import Tags, probe
from ..testing import hostile_case
from ..validate import boolean, choice, finite_array, int_list
from .directions import NORMALIZATIONS, ONE_D, as_direction, random_direction, random_directions
from .grid import Grid, lattice_axis, mark_nonfinite

__all__ = ["slice_1d", "slice_2d"]

_LOSS = {"long_name": "mean loss", "units": "nats"}
_ACC = {"long_name": "top-1 accuracy", "units": "1"}


def _resolve(space, given, n, seed, normalization, one_d, arg="directions"):
    """(flat directions, recorded seeds or None, kind, trajectory or None) for n directions."""
    if given is None or (isinstance(given, str) and given == "random"):
        dirs, seeds = random_directions(space, n, seed, normalization, one_d)
        return [as_direction(space, d) for d in dirs], seeds, "random", None
    if isinstance(given, str):
        raise ValueError(f"{arg}: expected None, 'random', or explicit directions, got {given!r}")
    if not isinstance(given, (xr.Dataset, xr.DataArray, np.ndarray, torch.Tensor, dict, list, tuple)):
        raise TypeError(
            f"{arg}: expected None, 'random', a dict by parameter name, a list of tensors, a flat vector or "
            f"pca_directions(...)'s Dataset; got {type(given).__name__}"
        )
    traj, kind, split = None, "explicit", True
    if isinstance(given, xr.Dataset):
        if "direction" not in given or given["direction"].ndim != 2:
            raise ValueError(
                f"{arg}: a Dataset must be pca_directions(...)'s, with a 'direction' variable "
                f"(component, param); got variables {sorted(given.data_vars)}"
            )
        if given["direction"].shape[0] < n:
            raise ValueError(
                f"{arg}: the Dataset has {given['direction'].shape[0]} component(s), {n} needed; "
                f"call pca_directions(..., n_components={n})"
            )
        if "coords" in given.data_vars:
            traj = given["coords"].values[:, :n]
        given, kind = [given["direction"].values[k] for k in range(n)], "pca"
    elif isinstance(given, (xr.DataArray, np.ndarray, torch.Tensor)) and given.ndim == 2:
        given = [given[k] for k in range(given.shape[0])]  # rows of (component, param), e.g. eigenvectors
    else:
        split = False
    if (
        n == 1
        and not split
        and not (isinstance(given, (list, tuple)) and len(given) == 1 and isinstance(given[0], (dict, list, tuple)))
    ):
        given = [given]  # one direction given as a dict, a list of tensors or a flat vector
    given = list(given)
    if len(given) != n:
        raise ValueError(f"{arg}: expected {n} directions, got {len(given)}")
    return [as_direction(space, d, f"direction {i}") for i, d in enumerate(given)], None, kind, traj


def _check(normalization, one_d, accuracy):
    choice("normalization", normalization, NORMALIZATIONS)
    choice("one_d", one_d, ONE_D)
    boolean("accuracy", accuracy)


def _loss_at_theta0(obj, coords, loss):
    """The loss at the model's own parameters: the lattice cell at 0 when there is one (steps odd), else
    one more evaluation (so that an even number of steps loses nothing)."""
    hit = np.nonzero(np.all(coords == 0.0, axis=1))[0]
    return float(loss.reshape(-1)[hit[0]]) if hit.size else obj.evaluate(finite=False)[0]


def _case_1d():
    m, lf, d = hostile_case()
    return (m, lf, d), dict(coords=[-0.5, 0.0, 0.5], seed=1, accuracy=True)


@probe("landscape.slice_1d", case=_case_1d, tags=Tags(inputs="pair", stochastic=True))
def slice_1d(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    direction: Any = None,
    coords: ArrayLike | None = None,
    *,
    steps: int | None = None,
    span: float | tuple[float, float] = 1.0,
    seeds: Iterable[int] | None = None,
    normalization: str = "filter",
    one_d: str = "zero",
    engine: str = "auto",
    chunk: int = 32,
    accuracy: bool = False,
    ctx,
) -> xr.Dataset:
    """Mean loss along one direction: ``f(alpha) = L(theta + alpha d)``.

    Parameters
    ----------
    direction : None (a filter-normalised Gaussian direction drawn from ``seed``), a dict by
        parameter name, a list of tensors in ``model.parameters()`` order, or a flat vector.
    coords : 1-D coefficients alpha; or ``steps`` points on ``[-span, span]`` (default 21 on [-1, 1]).
    seeds : an iterable of seeds: one random direction per seed, along a ``seed`` dim, so that
        ``.mean("seed")`` and ``.std("seed")`` give a band (one random direction is not evidence).
    normalization, one_d : see :mod:`workbench.landscape.directions`.
    engine, chunk : ``"auto"``, ``"loop"`` or ``"vmap"`` and grid points per vmap call
        (:class:`~workbench.landscape.grid.Grid`).
    accuracy : also compute top-1 accuracy along the slice.

    Returns an ``xr.Dataset`` with ``loss`` over ``alpha`` (``(seed, alpha)`` with ``seeds``) and
    ``accuracy`` when asked. The per-direction seeds are recorded as ``direction_seeds``; attr
    ``loss_theta0`` is the loss at the model itself (read it rather than ``sel(alpha=0)``: an even
    number of ``steps`` has no 0 on the lattice).

    >>> import torch, workbench as wb
    >>> m = torch.nn.Linear(3, 2)
    >>> data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
    >>> s = wb.landscape.slice_1d(m, torch.nn.CrossEntropyLoss(), data, steps=5, progress=False)
    >>> s.loss.dims, float(s.loss.sel(alpha=0.0)) == float(wb.evaluate(m, torch.nn.CrossEntropyLoss(), data).loss)
    (('alpha',), True)
    """
    _check(normalization, one_d, accuracy)
    c = lattice_axis(coords, steps, span)
    if seeds is not None:
        if direction is not None:
            raise ValueError("seeds: give either seeds (random directions) or an explicit direction, not both")
        used = int_list("seeds", seeds, lo=0)
    obj = ctx.objective()
    grid = c[:, None]
    if seeds is not None:
        rows, accs = [], []
        with ctx.bar(len(used) * len(c), "slice_1d") as bar:
            for s in used:
                d = as_direction(obj.space, random_direction(obj.space, s, normalization, one_d))
                l, a = Grid(obj, [d], engine, chunk, accuracy).run(grid, bar)
                rows.append(l)
                accs.append(a)
        loss, acc, dims, kind = np.stack(rows), np.stack(accs), ("seed", "alpha"), "random"
    else:
        dirs, used, kind, _ = _resolve(obj.space, direction, 1, ctx.seed, normalization, one_d, "direction")
        with ctx.bar(len(c), "slice_1d") as bar:
            loss, acc = Grid(obj, dirs, engine, chunk, accuracy).run(grid, bar)
        dims = ("alpha",)
    mark_nonfinite(loss, "slice_1d")
    ctx.record(direction=kind, direction_seeds=used)
    if seeds is not None:
        ctx.record(seeds=used)  # the list, not the iterable's repr (e.g. range(0, 3))
    coords_ = {"alpha": ("alpha", c, {"long_name": "alpha (step along the direction)", "units": "direction units"})}
    if seeds is not None:
        coords_["seed"] = used
    ds = xr.Dataset({"loss": (dims, loss, _LOSS)}, coords=coords_)
    if accuracy:
        ds["accuracy"] = (dims, acc, _ACC)
    ds.attrs["loss_theta0"] = _loss_at_theta0(obj, grid, loss[0] if seeds is not None else loss)
    return ds


def _case_2d():
    m, lf, d = hostile_case()
    return (m, lf, d), dict(coords=[-0.5, 0.0, 0.5], seed=2, one_d="scale", trajectory=[[0.0, 0.0], [0.1, -0.2]])


@probe("landscape.slice_2d", case=_case_2d, tags=Tags(inputs="pair", stochastic=True))
def slice_2d(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    directions: Any = None,
    coords: ArrayLike | None = None,
    *,
    steps: int | None = None,
    span: float | tuple[float, float] = 1.0,
    normalization: str = "filter",
    one_d: str = "zero",
    engine: str = "auto",
    chunk: int = 32,
    accuracy: bool = False,
    trajectory: ArrayLike | None = None,
    ctx,
) -> xr.Dataset:
    """Mean loss on a plane: ``f(alpha, beta) = L(theta + alpha d1 + beta d2)`` (Li et al. 2018).

    Parameters
    ----------
    directions : None (two independent filter-normalised Gaussian directions; their seeds, derived
        from ``seed``, are recorded as ``direction_seeds``), a pair of explicit directions (dicts by
        name, lists of tensors, flat vectors, or a (2, param) array), or the Dataset of
        :func:`~workbench.landscape.pca_directions`: its first two directions, and its checkpoint
        ``coords`` as the trajectory (the slice should then be centred at the last checkpoint).
    coords : one 1-D array for both axes, or a pair ``(alphas, betas)``; or ``steps``/``span``.
    engine, chunk, accuracy, normalization, one_d : as in :func:`slice_1d`.
    trajectory : optional (n, 2) coordinates stored as ``trajectory_alpha``/``trajectory_beta`` over
        ``step`` for the plots to overlay (overrides a PCA Dataset's own).

    Returns an ``xr.Dataset`` with ``loss`` over (alpha, beta), ``accuracy`` when asked, and the
    trajectory variables when there is one; attr ``loss_theta0`` as in :func:`slice_1d`.

    >>> import torch, workbench as wb
    >>> m = torch.nn.Linear(3, 2)
    >>> data = (torch.randn(16, 3), torch.randint(0, 2, (16,)))
    >>> s = wb.landscape.slice_2d(m, torch.nn.CrossEntropyLoss(), data, steps=3, progress=False)
    >>> s.loss.dims, s.loss.shape
    (('alpha', 'beta'), (3, 3))
    """
    _check(normalization, one_d, accuracy)
    if isinstance(coords, (tuple, list)) and len(coords) == 2 and np.ndim(coords[0]) == 1:
        ca, cb = lattice_axis(coords[0], steps, span), lattice_axis(coords[1], steps, span)
    else:
        ca = cb = lattice_axis(coords, steps, span)
    if trajectory is not None:
        trajectory = finite_array("trajectory", trajectory, ndim=2)
        if trajectory.shape[1] != 2:
            raise ValueError(f"trajectory: expected an (n, 2) array of coordinates, got shape {trajectory.shape}")
    obj = ctx.objective()
    dirs, used, kind, traj = _resolve(obj.space, directions, 2, ctx.seed, normalization, one_d)
    if trajectory is not None:
        traj = trajectory
    if traj is not None:
        traj = np.asarray(traj, dtype=np.float64)
    grid = np.array([(a, b) for a in ca for b in cb])
    with ctx.bar(len(grid), "slice_2d") as bar:
        loss, acc = Grid(obj, dirs, engine, chunk, accuracy).run(grid, bar)
    loss = mark_nonfinite(loss.reshape(len(ca), len(cb)), "slice_2d")
    ctx.record(directions=kind, direction_seeds=used)
    ds = xr.Dataset({"loss": (("alpha", "beta"), loss, _LOSS)}, coords={"alpha": ca, "beta": cb})
    ds.attrs["loss_theta0"] = _loss_at_theta0(obj, grid, loss)
    if accuracy:
        ds["accuracy"] = (("alpha", "beta"), acc.reshape(len(ca), len(cb)), _ACC)
    if traj is not None:
        ds["trajectory_alpha"] = ("step", traj[:, 0], {"long_name": "trajectory alpha"})
        ds["trajectory_beta"] = ("step", traj[:, 1], {"long_name": "trajectory beta"})
    return ds
