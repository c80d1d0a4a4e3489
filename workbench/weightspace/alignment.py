"""Permutation alignment of model B to model A: :func:`match` finds the permutations, :func:`permute` applies
them, :func:`align` does both and checks that the result computes what model B computes.

Two networks trained from different seeds differ, among other things, by a permutation of their hidden units;
undoing it before interpolating often removes the loss barrier between them (Entezari et al. 2022; Ainsworth
et al. 2023, "Git Re-Basin: Merging Models modulo Permutation Symmetries"). The groups of axes that share a
permutation come from the module graph (:func:`~workbench.weightspace.graph.permutation_groups`):
MLPs, CNNs, ResNets with BatchNorm (one permutation per residual stream) and transformer blocks (heads as
blocks, units within heads, the residual stream shared). Methods (:data:`ALIGN_METHODS`):

* ``"weight"``: weight matching, ``max_P sum_g <A_g, P_g B_g P'^T>`` by coordinate descent with exact linear
  assignments (:mod:`~workbench.weightspace.matching`); no data but one example for the shapes;
* ``"activation"``: activation matching, each group's permutation maximises the summed correlation of A's and
  B's unit activations over ``data`` (module outputs captured with :mod:`workbench.capture`, every position of
  a conv map or token sequence a sample); groups no module output shows (attention's q/k inside
  ``nn.MultiheadAttention``) are weight-matched given the others;
* ``"ste"``: the straight-through estimator (sec. 3.3 there, :mod:`~workbench.weightspace.ste`): weight matching,
  then ``ste_steps`` Adam steps (rate ``ste_lr``) on a proxy of A, B re-matched to the proxy at each step, for a
  low loss of the midpoint on ``data`` under ``loss_fn`` (labelled data and a loss needed).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..capture import stream
from ..data import call_model, input_batches
from ..landscape import check_same_space
from ..params import ParamSpace
from ..registry import Tags, probe
from ..state import modes
from ..testing import hostile_data, hostile_model
from ..validate import call_error, choice, count, positive
from .graph import Entry, PermutationSpec, example_input, permutation_groups
from .matching import apply_entry, coordinate_descent, objective, solve, units_of
from .ste import straight_through

__all__ = ["ALIGN_METHODS", "match", "permute", "align", "Aligned", "equivalence_error", "checked_pair"]

ALIGN_METHODS = ("weight", "activation", "ste")


def _state(model: nn.Module) -> dict:
    return {k: v.detach().double() for k, v in model.state_dict().items() if v.is_floating_point()}


def checked_pair(ctx, model_a: nn.Module, model_b: nn.Module, loss_fn, data, what: str = "data"):
    """Both models checked as every probe checks its model (modules, one floating dtype, finite parameters) and
    of one architecture; with a ``loss_fn``, its loss and labels on ``data`` checked once. Returns the inputs of
    ``data`` on model A's device, cast to its dtype (one tensor, or ``data`` itself for mappings)."""
    if loss_fn is not None and what == "data":
        obj = ctx.objective()
        obj.check_inputs()
        obj.loss()  # clear errors for a loss or labels that do not fit, before any matching
        space_a = obj.space
    else:
        space_a = ParamSpace(model_a, None, arg="model_a")
    check_same_space(space_a, ParamSpace(model_b, None, arg="model_b"))
    if loss_fn is not None and what == "data":  # the inputs as the adapter made them (labels of any accepted kind)
        batches = [obj.data.materialize()[0]]
    else:
        batches = input_batches(data, device=ctx.device or space_a.device, what=what, dtype=space_a.dtype)
    if loss_fn is None or what != "data":  # inputs the model cannot take: a clear error before tracing the graph
        with torch.no_grad(), modes(model_a, ctx.mode):
            try:
                call_model(model_a, _head(batches[0]))
            except (RuntimeError, TypeError, ValueError, IndexError) as e:  # torch's own errors explained, others pass
                err = call_error(e, what, "model_a cannot take these inputs", "Pass inputs the models take.")
                if err is None:
                    raise
                raise err from e
    _check_pair(model_a, model_b)
    try:  # labelled data: its fingerprint is recorded; bare inputs are fine too
        ctx.adopt_data(data)
    except (TypeError, ValueError):
        pass
    if all(isinstance(b, torch.Tensor) for b in batches):
        return torch.cat(batches)
    return batches[0] if len(batches) == 1 else batches


def _head(batch, n: int = 2):
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, Mapping):
        return {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return type(batch)(_head(b, n) for b in batch)


def _check_pair(model_a: nn.Module, model_b: nn.Module) -> None:
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if list(sa) != list(sb) or any(sa[k].shape != sb[k].shape for k in sa):
        bad = next((k for k in sa if k not in sb or sa[k].shape != sb[k].shape), next(iter(set(sb) - set(sa)), "?"))
        raise ValueError(
            f"model_b: its parameters differ from model_a's (first at {bad!r}); alignment needs two models of one "
            "architecture"
        )


def _unit_rows(t: torch.Tensor, point: tuple, n: int) -> torch.Tensor:
    """A captured, flattened module output ``(B, F)`` as samples x units (positions and factor as samples)."""
    _, axis, k, shape = point
    x = t.reshape((t.shape[0],) + tuple(shape)).movedim(axis, -1)
    x = x.reshape(-1, n, k).transpose(1, 2)
    return x.reshape(-1, n).double()


def _correlations(spec, model_a, model_b, data, device, check) -> dict[str, torch.Tensor]:
    """Per group with module outputs: the sum over its outputs of corr(A's unit i, B's unit j) over the data."""
    points = {g: grp.points for g, grp in spec.groups.items() if grp.points}
    layers = sorted({p[0] for ps in points.values() for p in ps})
    if not layers:
        return {}
    acc: dict = {}
    sa = stream(model_a, data, layers, pool="flatten", device=device)
    sb = stream(model_b, data, layers, pool="flatten", device=device)
    for (xa, _), (xb, _) in zip(sa, sb):
        check()
        for g, ps in points.items():
            n = spec.groups[g].size
            for p in ps:
                a, b = _unit_rows(xa[p[0]], p, n), _unit_rows(xb[p[0]], p, n)
                s = acc.setdefault((g, p), [0, 0, 0, 0, 0, 0])
                for i, v in enumerate((a.shape[0], a.sum(0), b.sum(0), (a * a).sum(0), (b * b).sum(0), a.T @ b)):
                    s[i] = s[i] + v
    out: dict[str, torch.Tensor] = {}
    for (g, _), (m, sa_, sb_, saa, sbb, sab) in acc.items():
        ma, mb = sa_ / m, sb_ / m
        sda, sdb = (saa / m - ma**2).clamp_min(0).sqrt(), (sbb / m - mb**2).clamp_min(0).sqrt()
        corr = (sab / m - torch.outer(ma, mb)) / (torch.outer(sda, sdb) + 1e-12)
        out[g] = out.get(g, 0) + corr
    return out


def _case():
    return (hostile_model(0), hostile_model(1), nn.CrossEntropyLoss(), hostile_data()), dict(method="activation")


_TAGS = Tags(inputs="two_models", uses=("mode", "seed", "device"), stochastic=True)


@probe("weightspace.match", case=_case, tags=_TAGS)
def match(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: Callable | None,
    data: Any,
    *,
    method: str = "weight",
    max_iter: int = 100,
    restarts: int = 3,
    ste_steps: int = 200,
    ste_lr: float = 1e-2,
    ctx,
) -> xr.Dataset:
    """The permutations of model B's hidden units that best align it to model A (Ainsworth et al. 2023).

    Returns a Dataset with one variable per permutation group (its name: the module that creates the units),
    ``perm[i]`` = the unit of B that becomes unit ``i`` (dim ``<group>.unit``; attrs: the axes it permutes),
    and one per attention head group (dim ``<group>.head``). Attrs: ``method``, ``iterations`` (passes of
    coordinate descent), ``n_identity`` (groups left as they were). ``data``: one example for tracing the shapes
    (``"weight"``) or the data the activations are read on (``"activation"``, in the probe's ``mode``);
    ``loss_fn`` is not used by these methods (None is fine). Coordinate descent can stop in a local optimum:
    it runs ``restarts`` times from the identity, groups visited in random orders drawn from ``seed``, and the
    best objective is kept (``iterations`` counts every pass).
    Apply with :func:`permute`, or use :func:`align`.

    >>> import torch
    >>> a = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    >>> b = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))
    >>> with torch.no_grad():                       # b = a with hidden units reordered
    ...     for p, q in zip(a.parameters(), b.parameters()):
    ...         _ = q.copy_(p)
    ...     idx = torch.tensor([3, 0, 4, 1, 2])
    ...     _ = b[0].weight.copy_(a[0].weight[idx]), b[0].bias.copy_(a[0].bias[idx])
    ...     _ = b[2].weight.copy_(a[2].weight[:, idx])
    >>> r = match(a, b, None, torch.randn(4, 3), progress=False)
    >>> r["0"].values.tolist()                       # B's unit perm[i] is A's unit i
    [1, 3, 4, 0, 2]
    """
    method = choice("method", method, ALIGN_METHODS)
    max_iter = count("max_iter", max_iter)
    restarts = count("restarts", restarts)
    ste_steps, ste_lr = count("ste_steps", ste_steps), positive("ste_lr", ste_lr)
    if method == "ste" and loss_fn is None:
        raise ValueError("loss_fn: method='ste' trains on the loss of the midpoint; pass the loss_fn")
    data = checked_pair(ctx, model_a, model_b, loss_fn, data)
    p0 = next(model_a.parameters(), None)
    device = ctx.device or (p0.device if p0 is not None else None)
    x = example_input(data)
    if p0 is not None:
        x = x.to(device, p0.dtype if x.is_floating_point() else x.dtype)
    spec = permutation_groups(model_a, x)
    a, b = _state(model_a), _state(model_b)
    perms = {g: torch.arange(grp.size) for g, grp in spec.groups.items()}
    heads = {hg: torch.arange(spec.groups[ms[0]].heads) for hg, ms in spec.head_groups.items()}
    units = units_of(spec)
    if method == "activation":
        with torch.no_grad(), modes(model_a, ctx.mode), modes(model_b, ctx.mode):
            corr = _correlations(spec, model_a, model_b, data, device, ctx.check_cancel)
        seen = [u for u in units if all(m in corr for m in u[1])]
        for hg, members in ctx.iterate(seen, desc="activation matching"):
            new, hp = solve(spec, members, {m: corr[m] for m in members}, spec.groups[members[0]].heads_pinned)
            perms.update(new)
            if hg is not None:
                heads[hg] = hp
        units = [u for u in units if u not in seen]
    iterations, best = 0, None
    for _ in ctx.iterate(range(restarts if units else 0), desc="weight matching"):
        p, h = dict(perms), dict(heads)
        it = coordinate_descent(spec, a, b, p, h, units, ctx.rng, max_iter, ctx.check_cancel)
        score = objective(spec, a, b, p)
        iterations += it
        if best is None or score > best[0] + 1e-12 * abs(best[0]):
            best = (score, p, h)
    if best is not None:
        perms, heads = best[1], best[2]
    if method == "ste" and units:
        with ctx.bar(None, "straight-through"):
            iterations += straight_through(spec, ctx.objective(), model_b, perms, heads, units, ctx.rng,
                                           steps=ste_steps, lr=ste_lr, check=ctx.check_cancel)  # fmt: skip
    return _dataset(spec, perms, heads, method, iterations)


def _dataset(spec: PermutationSpec, perms: dict, heads: dict, method: str, iterations: int) -> xr.Dataset:
    ds = xr.Dataset()
    for g, grp in spec.groups.items():
        entries = ";".join(f"{e.name}|{e.axis}|{e.offset}|{e.factor}" for e in grp.entries)
        ds[g] = xr.DataArray(
            perms[g].numpy().astype(np.int64),
            dims=(f"{g}.unit",),
            attrs=dict(kind="units", entries=entries, heads=grp.heads or 0, head_group=grp.head_group or "",
                       long_name=f"unit of model B placed at each unit of {g}"),
        )  # fmt: skip
    for hg, members in spec.head_groups.items():
        ds[hg] = xr.DataArray(
            heads[hg].numpy().astype(np.int64), dims=(f"{hg}.head",),
            attrs=dict(kind="heads", members=";".join(members), long_name="head of model B placed at each head"),
        )  # fmt: skip
    n_id = sum(bool((perms[g] == torch.arange(len(perms[g]))).all()) for g in spec.groups)
    ds.attrs.update(method=method, iterations=int(iterations), n_groups=len(spec.groups), n_identity=int(n_id))
    return ds


def permute(model: nn.Module, perms: xr.Dataset) -> nn.Module:
    """A copy of ``model`` with its hidden units reordered by ``perms`` (from :func:`match`): the same
    function (to float rounding), other weights. ``model`` itself is not changed.

    >>> import torch, xarray as xr
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    >>> p = xr.Dataset({"0": xr.DataArray([2, 0, 1], dims="0.unit",
    ...     attrs=dict(kind="units", entries="0.weight|0|0|1;0.bias|0|0|1;2.weight|1|0|1"))})
    >>> q = permute(m, p)
    >>> x = torch.randn(4, 2)
    >>> torch.allclose(q(x), m(x), atol=1e-6), torch.equal(q[0].bias, m[0].bias[[2, 0, 1]])
    (True, True)
    """
    if not isinstance(perms, xr.Dataset):
        raise TypeError(f"perms: expected the Dataset weightspace.match returns, got {type(perms).__name__}")
    new = copy.deepcopy(model)
    sd = new.state_dict()
    for name, var in perms.data_vars.items():
        if var.attrs.get("kind") != "units":
            continue
        if "entries" not in var.attrs:
            raise ValueError(f"perms: variable {name!r} lacks its 'entries' attribute; pass match(...)'s result")
        perm = torch.as_tensor(np.asarray(var.values), dtype=torch.long)
        if not torch.equal(perm.sort().values, torch.arange(len(perm))):
            raise ValueError(f"perms: {name!r} is not a permutation of 0..{len(perm) - 1}")
        for spec in str(var.attrs["entries"]).split(";"):
            key, axis, offset, factor = spec.split("|")
            e = Entry(key, int(axis), int(offset), int(factor))
            t = sd.get(key)
            if t is None or t.dim() <= e.axis or t.shape[e.axis] < e.offset + len(perm) * e.factor:
                raise ValueError(f"perms: {name!r} permutes {key}[{axis}], which the model does not have in that size")
            with torch.no_grad():
                t.copy_(apply_entry(t, e, perm))
    return new


def equivalence_error(model_a: nn.Module, model_b: nn.Module, inputs: torch.Tensor) -> float:
    """``max |f_a(x) - f_b(x)| / max(1, max |f_a(x)|)`` over ``inputs``, both models in eval mode.

    >>> m = torch.nn.Linear(2, 2)
    >>> equivalence_error(m, m, torch.randn(3, 2))
    0.0
    """
    with torch.no_grad(), modes(model_a, "eval"), modes(model_b, "eval"):
        ya, yb = model_a(inputs), model_b(inputs)
    return float((ya - yb).abs().max() / max(1.0, float(ya.abs().max())))


class Aligned(NamedTuple):
    """What :func:`align` returns: ``model`` (model B permuted) and ``perms`` (:func:`match`'s Dataset)."""

    model: nn.Module
    perms: xr.Dataset


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    *,
    method: str = "weight",
    max_iter: int = 100,
    loss_fn: Callable | None = None,
    **tail,
) -> Aligned:
    """``Aligned(model B permuted to align with model A, the permutations)``: :func:`match` then :func:`permute`;
    the aligned copy is checked to compute model B's outputs on ``data``'s first batch (eval mode) to float
    rounding (``RuntimeError`` otherwise; the error is in the attrs as ``equivalence_error``). The inputs are
    not changed. ``loss_fn``: for ``method="ste"``; ``tail``: :func:`match`'s other keywords (``restarts``,
    ``ste_steps``, ...) and the probe keywords (``mode``, ``seed``, ``progress``, ...).

    >>> import torch
    >>> a, b = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)), torch.nn.Sequential(
    ...     torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    >>> b2, perms = align(a, b, torch.randn(8, 3), progress=False)
    >>> perms.attrs["equivalence_error"] < 1e-6
    True
    """
    perms = match(model_a, model_b, loss_fn, data, method=method, max_iter=max_iter, **tail)
    aligned = permute(model_b, perms)
    x = example_input(data, 256)
    p0 = next(model_b.parameters(), None)
    if p0 is not None:
        x = x.to(p0.device, p0.dtype if x.is_floating_point() else x.dtype)
    err = equivalence_error(model_b, aligned, x)
    tol = 1000 * torch.finfo(p0.dtype if p0 is not None else torch.float32).eps
    if not err <= tol:
        raise RuntimeError(
            f"align: the permuted model B differs from model B by {err:.3g} (relative) on the data; the permutation "
            "groups found for this model are wrong; please report the model"
        )
    perms.attrs["equivalence_error"] = err
    return Aligned(aligned, perms)
