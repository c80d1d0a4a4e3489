"""Loss-landscape probe: 1-D / 2-D slices of the loss around a model, and the linear path
between two models (mode connectivity).

* :func:`slice_1d`: ``f(alpha) = L(theta + alpha d)``;
* :func:`slice_2d`: ``f(alpha, beta) = L(theta + alpha d1 + beta d2)`` (Li et al. 2018);
* :func:`interpolate`: ``L((1 - t) theta_a + t theta_b)`` with the loss barrier of
  Frankle et al. (2020), ``B = max_t [L(theta(t)) - ((1 - t) L(theta_a) + t L(theta_b))]`` over t in [0, 1].

The grid is an exact lattice on the coordinates given; where 0 is among them the cell is
``L(theta)`` itself (``theta + 0*d`` is bitwise ``theta``). Non-finite losses are data: the cell is
NaN and one warning says how many. Evaluation is functional (the model is never written) and
sample-weighted over batches. Engines: ``"loop"`` (one full-data evaluation per grid point; on a
CPU this is already at the forward-pass floor) and ``"vmap"`` (``torch.func.vmap`` over chunks of
grid points, which pays off on a GPU for small models); ``"auto"`` picks vmap on CUDA.
"""
from __future__ import annotations

import math
import threading
import warnings

import numpy as np
import torch
import xarray as xr
from torch import nn

from . import directions as _dirs
from .objective import Objective, accuracy_count
from .params import ParamSpace, forward
from .registry import probe
from .results import provenance
from .state import set_mode


class Cancelled(KeyboardInterrupt):
    """Raised inside a probe when its ``cancel`` event is set (a widget's Stop button)."""


def _coords(coords, steps, span, default_steps=21):
    if coords is None:
        n = default_steps if steps is None else int(steps)
        if n < 1:
            raise ValueError(f"steps: need at least 1 grid point, got {steps}")
        lo, hi = (-span, span) if np.isscalar(span) else span
        c = np.linspace(lo, hi, n)
        if n % 2 == 1 and lo == -hi:
            c[n // 2] = 0.0  # exactly zero at the centre, not 1e-17
        return c
    c = np.asarray(coords, dtype=np.float64).ravel()
    if c.size == 0:
        raise ValueError("coords: empty; pass at least one coefficient, e.g. np.linspace(-1, 1, 21)")
    if not np.all(np.isfinite(c)):
        raise ValueError("coords: contains NaN or inf; pass finite coefficients")
    return c


def _as_direction(space: ParamSpace, d, what="direction") -> torch.Tensor:
    if isinstance(d, np.ndarray) and d.ndim == 1:  # e.g. a Hessian eigenvector from hessian_eigenvalues
        d = torch.from_numpy(d)
    if isinstance(d, torch.Tensor) and d.dim() == 1 and d.numel() != space.numel and d.numel() > len(space.names):
        raise ValueError(f"{what}: a flat vector must have {space.numel} entries (the parameter space), got {d.numel()}; "
                         "give one value per parameter in model.parameters() order, or a dict by parameter name")
    if isinstance(d, torch.Tensor) and d.dim() == 1 and d.numel() == space.numel:
        v = d.to(space.device, space.dtype)
    else:
        try:
            v = space.flatten(d)
        except ValueError as e:
            raise ValueError(str(e).replace("direction:", f"{what}:")) from None
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{what}: contains NaN or inf values")
    if not bool((v != 0).any()):
        raise ValueError(f"{what}: is all zeros; a slice along it would be constant")
    return v


class _Grid:
    """Evaluates L (and accuracy) at theta0 + sum_k c_k d_k for many coefficient vectors."""

    def __init__(self, obj: Objective, dirs: list[torch.Tensor], engine="auto", chunk=32, progress=True,
                 cancel: threading.Event | None = None, accuracy=False, desc="landscape"):
        self.obj, self.dirs, self.cancel, self.accuracy = obj, dirs, cancel, accuracy
        if engine == "auto":
            engine = "vmap" if obj.device.type == "cuda" else "loop"
        if engine not in ("loop", "vmap"):
            raise ValueError(f"engine: expected 'auto', 'loop' or 'vmap', got {engine!r}")
        if engine == "vmap" and obj.mode == "train":
            engine = "loop"  # train-mode BatchNorm/dropout are not batched over grid points
        self.engine, self.chunk, self.progress, self.desc = engine, int(chunk), progress, desc

    def theta(self, c) -> torch.Tensor:
        th = self.obj.theta0
        for ck, d in zip(c, self.dirs):
            if ck != 0.0:
                th = th + float(ck) * d
        return th

    def run(self, coeffs: np.ndarray):
        from tqdm.auto import tqdm

        n = len(coeffs)
        loss = np.full(n, np.nan)
        acc = np.full(n, np.nan)
        # progress: True/False for a tqdm.auto bar, or a callable progress(done, total) (widgets)
        cb = self.progress if callable(self.progress) else None
        bar = tqdm(total=n, desc=self.desc, disable=cb is not None or not self.progress or n < 2, leave=False)
        if cb is not None:
            bar.update = lambda k, _u=bar.update: (_u(k), cb(bar.n, n))
        try:
            if self.engine == "loop":
                for i, c in enumerate(coeffs):
                    self._check_cancel()
                    l, a = self.obj.evaluate(self.theta(c), with_accuracy=self.accuracy)
                    loss[i] = l
                    acc[i] = np.nan if a is None else a
                    bar.update(1)
            else:
                for s in range(0, n, self.chunk):
                    self._check_cancel()
                    part = coeffs[s:s + self.chunk]
                    l, a = self._vmap_eval(part)
                    loss[s:s + len(part)] = l
                    acc[s:s + len(part)] = a
                    bar.update(len(part))
        finally:
            bar.close()
        return loss, acc

    def _check_cancel(self):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("landscape computation cancelled")

    @torch.no_grad()
    def _vmap_eval(self, part):
        from torch.func import vmap

        obj = self.obj
        thetas = torch.stack([self.theta(c) for c in part])
        total = torch.zeros(len(part), dtype=torch.float64, device=thetas.device)
        correct = torch.zeros_like(total)
        is_clf = self.accuracy
        for x, y, nb in obj.data.batches():
            base = obj._base()

            def one(th):
                t = dict(base)
                t.update(obj.space.unflatten(th))
                out = forward(obj.model, t, x)
                return obj.loss_fn(out, y), out

            ls, outs = vmap(one)(thetas)
            total += ls.double() * nb
            if is_clf:
                c = [accuracy_count(o, y) for o in outs]
                if c[0] is None:
                    is_clf = False
                else:
                    correct += torch.tensor(c, dtype=torch.float64, device=total.device)
        loss = (total / obj.data.n).cpu().numpy()
        acc = (correct / obj.data.n).cpu().numpy() if is_clf else np.full(len(part), np.nan)
        return loss, acc


def _warn_nonfinite(values: np.ndarray, what: str):
    bad = ~np.isfinite(values)
    values[bad] = np.nan
    if bad.any():
        warnings.warn(f"{what}: {int(bad.sum())} of {values.size} grid cells have a non-finite loss; "
                      "they are NaN in the result", RuntimeWarning, stacklevel=3)


def _resolve_directions(obj, given, n, seed, normalization, one_d):
    if given is None or (isinstance(given, str) and given == "random"):
        dirs, seeds = _dirs.random_directions(obj.space, n, seed, normalization, one_d)
        return [_as_direction(obj.space, d) for d in dirs], seeds, "random"
    if isinstance(given, str):
        raise ValueError(f"directions: expected None, 'random', or explicit directions, got {given!r}")
    if n == 1 and not (isinstance(given, (list, tuple)) and len(given) == 1 and isinstance(given[0], (dict, list, tuple))):
        given = [given]
    given = list(given)
    if len(given) != n:
        raise ValueError(f"directions: expected {n} directions, got {len(given)}")
    return [_as_direction(obj.space, d, f"direction {i}") for i, d in enumerate(given)], None, "explicit"


def _case_1d():
    from .testing import hostile_case

    m, lf, d = hostile_case()
    return (m, lf, d), dict(coords=[-0.5, 0.0, 0.5], seed=1, progress=False)


@probe("landscape.slice_1d", case=_case_1d)
def slice_1d(model: nn.Module, loss_fn, data, direction=None, coords=None, *, steps=None, span=1.0, seed: int = 0,
             seeds=None, normalization: str = "filter", one_d: str = "zero", mode: str = "eval", params=None,
             engine: str = "auto", chunk: int = 32, accuracy: bool = False, progress: bool = True,
             cancel=None) -> xr.DataArray:
    """Mean loss along one direction: ``f(alpha) = L(theta + alpha d)``.

    Parameters
    ----------
    direction : None (a filter-normalised Gaussian direction drawn with ``seed``), a dict by
        parameter name or a list of tensors in ``model.parameters()`` order, or a flat vector.
    coords : 1-D coefficients alpha; or ``steps`` points on ``[-span, span]`` (default 21 on [-1, 1]).
    seeds : a list of seeds: one random direction per seed, returned along a ``seed`` dim so that
        ``.mean("seed")`` and ``.std("seed")`` give a band (one random direction is not evidence).
    normalization, one_d : see :mod:`workbench.directions`.
    mode : ``"eval"`` (default) or ``"train"`` (batch statistics, running statistics not updated).
    params : the parameter subset (regex or names); default all trainable parameters.
    accuracy : also return accuracy along the slice (then the result is a Dataset).
    """
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    c = _coords(coords, steps, span)
    if seeds is not None:
        if direction is not None:
            raise ValueError("seeds: give either seeds (random directions) or an explicit direction, not both")
        seeds = [int(s) for s in seeds]
        rows, accs = [], []
        for s in seeds:
            d = _as_direction(obj.space, _dirs.random_direction(obj.space, s, normalization, one_d))
            l, a = _Grid(obj, [d], engine, chunk, progress, cancel, accuracy).run(c[:, None])
            rows.append(l)
            accs.append(a)
        loss, acc, dims, used = np.stack(rows), np.stack(accs), ("seed", "alpha"), seeds
        kind = "random"
    else:
        dirs, used, kind = _resolve_directions(obj, direction, 1, seed, normalization, one_d)
        loss, acc = _Grid(obj, dirs, engine, chunk, progress, cancel, accuracy).run(c[:, None])
        dims = ("alpha",)
    _warn_nonfinite(loss, "slice_1d")
    coords_ = {"alpha": c}
    if seeds is not None:
        coords_["seed"] = seeds
    out = xr.DataArray(loss, dims=dims, coords=coords_, name="loss",
                       attrs={"long_name": "mean loss", "units": "nats"})
    out.alpha.attrs.update(long_name="alpha (step along the direction)", units="direction units")
    params_ = dict(normalization=normalization, one_d=one_d, mode=mode, direction=kind, params=params,
                   direction_seeds=used, n_samples=obj.data.n, engine=engine)
    out.attrs.update(provenance("landscape.slice_1d", params_, model, obj.data, seed if kind == "random" else None))
    if accuracy:
        ds = out.to_dataset()
        ds["accuracy"] = xr.DataArray(acc, dims=dims, attrs={"long_name": "top-1 accuracy", "units": "1"})
        ds.attrs = out.attrs
        return ds
    return out


def _case_2d():
    from .testing import hostile_case

    m, lf, d = hostile_case()
    return (m, lf, d), dict(coords=[-0.5, 0.0, 0.5], seed=2, progress=False, one_d="scale")


@probe("landscape.slice_2d", case=_case_2d)
def slice_2d(model: nn.Module, loss_fn, data, directions=None, coords=None, *, steps=None, span=1.0, seed: int = 0,
             normalization: str = "filter", one_d: str = "zero", mode: str = "eval", params=None,
             engine: str = "auto", chunk: int = 32, trajectory=None, progress: bool = True,
             cancel=None) -> xr.DataArray:
    """Mean loss on a plane: ``f(alpha, beta) = L(theta + alpha d1 + beta d2)`` (Li et al. 2018).

    ``directions``: None (two independent filter-normalised Gaussian directions; their seeds are
    derived from ``seed`` and recorded in attrs), or a pair of explicit directions (dicts by name,
    lists of tensors, or flat vectors), e.g. from :func:`workbench.directions.pca_directions`.
    ``coords``: one 1-D array for both axes, or a pair ``(alphas, betas)``; or ``steps``/``span``.
    ``trajectory``: optional (n, 2) coordinates (e.g. ``pca_directions(...)[1]["coords"]``) stored in
    the result as ``trajectory_alpha``/``trajectory_beta`` for the plots to overlay.
    """
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    if isinstance(coords, (tuple, list)) and len(coords) == 2 and np.ndim(coords[0]) == 1:
        ca, cb = _coords(coords[0], None, span), _coords(coords[1], None, span)
    else:
        ca = cb = _coords(coords, steps, span)
    dirs, used, kind = _resolve_directions(obj, directions, 2, seed, normalization, one_d)
    grid = np.array([(a, b) for a in ca for b in cb])
    loss, _ = _Grid(obj, dirs, engine, chunk, progress, cancel).run(grid)
    loss = loss.reshape(len(ca), len(cb))
    _warn_nonfinite(loss, "slice_2d")
    out = xr.DataArray(loss, dims=("alpha", "beta"), coords={"alpha": ca, "beta": cb}, name="loss",
                       attrs={"long_name": "mean loss", "units": "nats"})
    params_ = dict(normalization=normalization, one_d=one_d, mode=mode, direction=kind, params=params,
                   direction_seeds=used, n_samples=obj.data.n, engine=engine)
    out.attrs.update(provenance("landscape.slice_2d", params_, model, obj.data, seed if kind == "random" else None))
    if trajectory is not None:
        tr = np.asarray(trajectory, dtype=np.float64)
        if tr.ndim != 2 or tr.shape[1] != 2:
            raise ValueError(f"trajectory: expected an (n, 2) array of coordinates, got shape {tr.shape}")
        out = out.to_dataset()
        out["trajectory_alpha"] = ("step", tr[:, 0])
        out["trajectory_beta"] = ("step", tr[:, 1])
        out.attrs = out["loss"].attrs.copy()
        out.attrs.update(provenance("landscape.slice_2d", params_, model, obj.data, seed if kind == "random" else None))
        out["loss"].attrs = {"long_name": "mean loss", "units": "nats"}
    return out


# -- linear mode connectivity ---------------------------------------------------------------

def _bn_modules(model):
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def _repaired_buffers(obj: Objective, theta: torch.Tensor, repair_data) -> dict:
    """BatchNorm running statistics recomputed at ``theta`` (torch.optim.swa_utils.update_bn semantics:
    a cumulative average of batch statistics over one pass of ``repair_data``, in train mode)."""
    model = obj.model
    bns = _bn_modules(model)
    prefix = {m: n for n, m in model.named_modules()}
    base = obj.space.base_tensors(fresh_buffers=True)
    for m in bns:
        p = prefix[m] + "." if prefix[m] else ""
        base[p + "running_mean"].zero_()
        base[p + "running_var"].fill_(1)
        if p + "num_batches_tracked" in base:
            base[p + "num_batches_tracked"].zero_()
    saved = [(m, m.momentum, m.training) for m in bns]
    try:
        for m in bns:
            m.momentum = None  # cumulative moving average
            m.train()
        tensors = dict(base)
        tensors.update(obj.space.unflatten(theta))
        for x, _, _ in repair_data.batches():
            forward(model, tensors, x)
    finally:
        for m, mom, tr in saved:
            m.momentum = mom
            m.training = tr
    return {k: v for k, v in base.items() if k not in dict(model.named_parameters(remove_duplicate=False))}


def _case_interp():
    from .testing import hostile_data, hostile_model

    return (hostile_model(0), hostile_model(1), nn.CrossEntropyLoss(), hostile_data()), dict(
        coords=[0.0, 0.5, 1.0], progress=False, bn_repair=True)


@probe("landscape.interpolate", case=_case_interp)
def interpolate(model_a: nn.Module, model_b: nn.Module, loss_fn, data, coords=None, *, steps: int = 21,
                bn_repair=False, mode: str = "eval", params=None, progress: bool = True, cancel=None) -> xr.Dataset:
    """Loss and accuracy along the linear path ``theta(t) = (1 - t) theta_a + t theta_b``.

    Attrs: ``barrier`` (Frankle et al. 2020), ``max_t L(theta(t)) - ((1 - t) L_a + t L_b)`` over t in
    [0, 1] on the grid, and ``barrier_simple`` = ``max_t L(theta(t)) - max(L_a, L_b)``.
    ``coords`` default ``linspace(0, 1, steps)``; values outside [0, 1] extrapolate the line.

    ``bn_repair``: recompute BatchNorm running statistics at every point of the path from ``data``
    (or from the data given as ``bn_repair``) before evaluating; without it the interpolated running
    statistics are meaningless (Jordan et al. 2023, "REPAIR"). BatchNorm buffers are otherwise
    interpolated linearly along with the weights.
    """
    obj = Objective(model_a, loss_fn, data, params=params, mode=mode)
    set_mode(model_b, mode)
    space_b = ParamSpace(model_b, params)
    _dirs.check_same_space(obj.space, space_b)
    t = _coords(coords, steps, (0.0, 1.0)) if coords is not None else np.linspace(0.0, 1.0, steps)
    ta, tb = obj.theta0, space_b.theta0
    diff = tb - ta
    repair = None
    if bn_repair is not False and bn_repair is not None and _bn_modules(model_a):
        from .data import as_data

        repair = obj.data if bn_repair is True else as_data(bn_repair, obj.device, obj.dtype)
    buf_a = dict(model_a.named_buffers())
    buf_b = dict(model_b.named_buffers())
    from tqdm.auto import tqdm

    loss = np.full(len(t), np.nan)
    acc = np.full(len(t), np.nan)
    for i, ti in enumerate(tqdm(t, desc="interpolate", disable=not progress, leave=False)):
        if cancel is not None and cancel.is_set():
            raise Cancelled("interpolation cancelled")
        theta = ta if ti == 0.0 else tb if ti == 1.0 else ta + float(ti) * diff
        if repair is not None:
            bufs = _repaired_buffers(obj, theta, repair)
        else:  # buffers interpolated like the weights (integer counters taken from model_a)
            bufs = {k: (v if not v.is_floating_point() else
                        (v if ti == 0.0 else buf_b[k] if ti == 1.0 else torch.lerp(v, buf_b[k], float(ti))))
                    for k, v in buf_a.items()}
        l, a = obj.evaluate(theta, with_accuracy=True, buffers=bufs)
        loss[i], acc[i] = l, (np.nan if a is None else a)
    _warn_nonfinite(loss, "interpolate")
    ds = xr.Dataset(
        {"loss": ("t", loss, {"long_name": "mean loss", "units": "nats"}),
         "accuracy": ("t", acc, {"long_name": "top-1 accuracy", "units": "1"})},
        coords={"t": ("t", t, {"long_name": "interpolation coefficient t", "units": "1"})},
    )
    inside = (t >= 0) & (t <= 1)
    la = _endpoint(obj, t, loss, 0.0, ta, repair, buf_a)
    lb = _endpoint(obj, t, loss, 1.0, tb, repair, buf_b)
    lin = (1 - t) * la + t * lb
    barrier = float(np.nanmax((loss - lin)[inside])) if inside.any() and np.isfinite(loss[inside]).any() else math.nan
    simple = float(np.nanmax(loss[inside]) - max(la, lb)) if inside.any() else math.nan
    params_ = dict(bn_repair=repair is not None, mode=mode, params=params, n_samples=obj.data.n,
                   model_b_fingerprint=None)
    ds.attrs.update(provenance("landscape.interpolate", params_, model_a, obj.data))
    from .results import model_fingerprint

    ds.attrs.update(model_b_fingerprint=model_fingerprint(model_b), barrier=barrier, barrier_simple=simple,
                    loss_a=float(la), loss_b=float(lb))
    return ds


def _endpoint(obj, t, loss, where, theta, repair, bufs):
    hit = np.nonzero(t == where)[0]
    if hit.size:
        return float(loss[hit[0]])
    b = _repaired_buffers(obj, theta, repair) if repair is not None else bufs
    return float(obj.evaluate(theta, buffers=b)[0])
