"""Merging operators: weight averaging, soups, task arithmetic and TIES.

Every operator returns a **new** module (a deep copy of the first model with the merged tensors loaded); the
models given are never written. What is merged: every floating-point parameter and buffer (BatchNorm running
statistics are averaged like the weights, as a soup of state dicts does); integer buffers
(``num_batches_tracked``) are taken from the first model. ``models`` is a list or a dict label -> model of one
architecture (same names, shapes and dtypes: otherwise a clear error names the model and the tensor).

* :func:`uniform_soup`: ``theta = sum_i w_i theta_i`` (Wortsman et al. 2022, "Model soups").
* :func:`greedy_soup`: ingredients sorted by their held-out score, each added to the soup when the soup's score
  does not drop (Wortsman et al. 2022, recipe 2).
* :func:`task_vectors`, :func:`task_arithmetic`: ``tau_i = theta_i - theta_base``,
  ``theta = theta_base + sum_i s_i tau_i`` (Ilharco et al. 2023, "Editing models with task arithmetic").
* :func:`ties_merge`, :func:`sign_conflicts`: trim, elect sign, disjoint merge (Yadav et al. 2023,
  "TIES-Merging"), and the per-layer sign conflicts it resolves.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..validate import real

__all__ = [
    "uniform_soup",
    "greedy_soup",
    "Soup",
    "task_vectors",
    "task_arithmetic",
    "ties_merge",
    "sign_conflicts",
    "merged_state",
    "build_merged",
]

Models = Sequence[nn.Module] | Mapping[str, nn.Module]


def labelled(models, what: str = "models", least: int = 1) -> tuple[list[str], list[nn.Module]]:
    """(labels, modules) of a list or dict of models, checked: at least ``least`` modules."""
    if isinstance(models, nn.Module):
        raise TypeError(f"{what}: expected a list or dict label -> model, got one model; pass [model, ...]")
    if isinstance(models, Mapping):
        labels, ms = [str(k) for k in models], list(models.values())
    elif isinstance(models, (list, tuple)):
        labels, ms = [str(i) for i in range(len(models))], list(models)
    else:
        raise TypeError(f"{what}: expected a list or dict label -> model, got {type(models).__name__}")
    if len(ms) < least:
        raise ValueError(f"{what}: expected at least {least} model(s), got {len(ms)}")
    for lab, m in zip(labels, ms):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{what}[{lab}]: expected an nn.Module, got {type(m).__name__}")
    return labels, ms


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a merge acts on: every floating-point parameter and buffer by name (detached, float64).

    >>> sorted(merged_state(torch.nn.Linear(2, 1)))
    ['bias', 'weight']
    """
    return {k: v.detach().double() for k, v in model.state_dict(keep_vars=True).items() if v.is_floating_point()}


def checked_states(ms: list[nn.Module], labels: list[str], what: str) -> list[dict[str, torch.Tensor]]:
    """:func:`merged_state` of each model, checked to be of one architecture, finite, on one device."""
    states = [merged_state(m) for m in ms]
    ref = states[0]
    if not ref:
        raise ValueError(f"{what}[{labels[0]}]: the model has no floating-point parameters or buffers to merge")
    for lab, s in zip(labels[1:], states[1:]):
        if set(s) != set(ref):
            diff = sorted(set(s) ^ set(ref))
            raise ValueError(
                f"{what}[{lab}]: its tensors differ by name from {what}[{labels[0]}] ({diff[:4]}); merging needs "
                "one architecture (align the models first when they differ by permutation only)"
            )
        for k, v in s.items():
            if v.shape != ref[k].shape:
                raise ValueError(
                    f"{what}[{lab}]: tensor {k!r} has shape {tuple(v.shape)}, {what}[{labels[0]}]'s "
                    f"{tuple(ref[k].shape)}; merging needs one architecture"
                )
            if v.device != ref[k].device:
                raise ValueError(f"{what}[{lab}]: tensor {k!r} is on {v.device}, not {ref[k].device}; move the models")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{what}[{lab}]: tensor {k!r} has NaN or inf values; a merge of it is undefined")
    if not all(bool(torch.isfinite(v).all()) for v in ref.values()):
        raise ValueError(f"{what}[{labels[0]}]: its tensors have NaN or inf values; a merge of it is undefined")
    return states


def build_merged(template: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``template`` with ``state`` (by name, any float dtype) loaded; ``template`` is untouched.

    >>> m = torch.nn.Linear(2, 1)
    >>> new = build_merged(m, {"weight": torch.zeros(1, 2, dtype=torch.float64)})
    >>> new.weight.abs().sum().item(), new is m, bool(m.weight.abs().sum() > 0)
    (0.0, False, True)
    """
    new = copy.deepcopy(template)
    own = new.state_dict(keep_vars=True)
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    for p in new.parameters():
        p.grad = None
    return new


def normalized_weights(weights, n: int) -> list[float]:
    """``weights`` (default uniform) checked finite and non-negative, normalised to sum to 1."""
    if weights is None:
        return [1.0 / n] * n
    w = np.asarray(weights, dtype=float).reshape(-1)
    if w.size != n:
        raise ValueError(f"weights: expected one weight per model ({n}), got {w.size}")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights: expected finite non-negative weights with a positive sum, got {w.tolist()}")
    return (w / w.sum()).tolist()


def uniform_soup(models: Models, weights: Sequence[float] | None = None) -> nn.Module:
    """The weight average ``theta = sum_i w_i theta_i`` (``w`` default ``1/n``; given weights are normalised to sum
    to 1) of models of one architecture: the uniform soup of Wortsman et al. (2022, "Model soups").

    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> s = uniform_soup([a, b])
    >>> torch.allclose(s.weight, (a.weight + b.weight) / 2)
    True
    """
    labels, ms = labelled(models)
    states = checked_states(ms, labels, "models")
    w = normalized_weights(weights, len(ms))
    return build_merged(ms[0], {k: sum(wi * s[k] for wi, s in zip(w, states)) for k in states[0]})


class Soup(NamedTuple):
    """A greedy soup: the merged ``model`` and the ``record`` of the recipe (an ``xr.Dataset`` over
    ``ingredient``, in the order tried: ``score`` alone, ``soup_score`` after trying it, ``kept``)."""

    model: nn.Module
    record: xr.Dataset


def greedy_soup(models: Models, score: Callable[[nn.Module], float], *, maximize: bool = True) -> Soup:
    """The greedy soup of Wortsman et al. (2022, "Model soups", recipe 2): sort the ingredients by their held-out
    ``score`` (best first); start from the best; add each next one when the uniform soup of the kept ones with it
    scores at least as well as without it (``>=``, as in the paper's algorithm), else leave it out.

    ``score(model) -> float`` is the held-out metric (accuracy: ``maximize=True``; a loss: ``maximize=False``).

    >>> ms = [torch.nn.Linear(1, 1, bias=False) for _ in range(3)]
    >>> with torch.no_grad():
    ...     for m, w in zip(ms, [1.0, 3.0, -5.0]):
    ...         _ = m.weight.fill_(w)
    >>> soup = greedy_soup(ms, lambda m: -abs(m.weight.item() - 2.0))   # best at weight 2
    >>> soup.model.weight.item(), soup.record.kept.values.tolist()
    (2.0, [True, True, False])
    """
    labels, ms = labelled(models)
    if not callable(score):
        raise TypeError(f"score: expected a callable score(model) -> float, got {type(score).__name__}")
    states = checked_states(ms, labels, "models")
    sign = 1.0 if maximize else -1.0

    def scored(m: nn.Module) -> float:
        out = score(m)
        try:
            v = float(out)
        except (TypeError, ValueError):
            raise TypeError(f"score: must return a number (higher is better), got {type(out).__name__}") from None
        if not np.isfinite(v):
            raise ValueError(f"score: returned {v} for a model; it must return a finite number")
        return v

    alone = [scored(m) for m in ms]
    order = sorted(range(len(ms)), key=lambda i: -sign * alone[i])
    kept = [order[0]]
    best = alone[order[0]]
    soup_scores, flags = [best], [True]
    soup = ms[order[0]]
    for i in order[1:]:
        trial = kept + [i]
        cand = build_merged(ms[0], {k: sum(states[j][k] for j in trial) / len(trial) for k in states[0]})
        v = scored(cand)
        soup_scores.append(v)
        if sign * v >= sign * best:
            kept, best, soup = trial, v, cand
            flags.append(True)
        else:
            flags.append(False)
    if soup is ms[order[0]]:
        soup = build_merged(ms[0], states[order[0]])
    record = xr.Dataset(
        {
            "score": ("ingredient", np.array([alone[i] for i in order]), {"long_name": "held-out score alone"}),
            "soup_score": ("ingredient", np.array(soup_scores), {"long_name": "soup's score with it added"}),
            "kept": ("ingredient", np.array(flags)),
        },
        coords={"ingredient": [labels[i] for i in order]},
        attrs={"maximize": int(maximize), "final_score": best, "n_kept": len(kept)},
    )
    return Soup(soup, record)


def task_vectors(base: nn.Module, models: Models) -> dict[str, dict[str, torch.Tensor]]:
    """The task vectors ``tau_i = theta_i - theta_base`` (float64, by model label, then parameter name) of models
    fine-tuned from ``base`` (Ilharco et al. 2023): parameters only (frozen ones too), no buffers.

    >>> base, ft = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> tv = task_vectors(base, [ft])
    >>> list(tv), torch.allclose(tv["0"]["bias"], (ft.bias - base.bias).double())
    (['0'], True)
    """
    if not isinstance(base, nn.Module):
        raise TypeError(f"base: expected the nn.Module the models were fine-tuned from, got {type(base).__name__}")
    labels, ms = labelled(models)
    states = checked_states([base, *ms], ["base", *labels], "models")
    names = [n for n, p in base.named_parameters() if p.is_floating_point()]
    b = states[0]
    return {lab: {k: s[k] - b[k] for k in names} for lab, s in zip(labels, states[1:])}


def _scales(scale, n: int) -> list[float]:
    s = np.asarray(scale, dtype=float).reshape(-1)
    if s.size == 1:
        s = np.repeat(s, n)
    if s.size != n or not np.isfinite(s).all():
        raise ValueError(f"scale: expected one finite number or one per model ({n}), got {np.asarray(scale).tolist()}")
    return s.tolist()


def task_arithmetic(base: nn.Module, models: Models, scale: float | Sequence[float] = 1.0) -> nn.Module:
    """``theta = theta_base + sum_i s_i (theta_i - theta_base)``: task arithmetic (Ilharco et al. 2023). ``scale``
    is one ``s`` for every task vector or one per model (negative: forgetting a task). Floating buffers (BatchNorm
    statistics) follow the same formula.

    >>> base, ft = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> torch.equal(task_arithmetic(base, [ft], scale=0.0).weight, base.weight)
    True
    """
    if not isinstance(base, nn.Module):
        raise TypeError(f"base: expected the nn.Module the models were fine-tuned from, got {type(base).__name__}")
    labels, ms = labelled(models)
    b, *states = checked_states([base, *ms], ["base", *labels], "models")
    s = _scales(scale, len(ms))
    return build_merged(base, {k: b[k] + sum(si * (st[k] - b[k]) for si, st in zip(s, states)) for k in b})


def _trimmed(tv: Mapping[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Keep the ``max(floor(density * d), 1)`` entries of largest magnitude over the whole task vector (``d``
    entries; ties at the threshold kept), the rest zero: TIES' trim step. (The authors' code, ``kthvalue`` at
    ``d - floor(density * d)``, keeps one entry more.)"""
    flat = torch.cat([v.reshape(-1) for v in tv.values()])
    d = flat.numel()
    keep = max(int(d * density), 1)
    thr = flat.abs().kthvalue(d - keep + 1).values
    return {n: torch.where(v.abs() >= thr, v, torch.zeros_like(v)) for n, v in tv.items()}


def _elect(trimmed: list[dict[str, torch.Tensor]], name: str):
    stack = torch.stack([t[name] for t in trimmed])  # (tasks, ...)
    gamma = torch.sign(stack.sum(0))  # the sign of the total mass
    agree = (torch.sign(stack) == gamma) & (stack != 0)
    return stack, gamma, agree


def ties_merge(base: nn.Module, models: Models, *, density: float = 0.2, scale: float = 1.0) -> nn.Module:
    """TIES-merging (Yadav et al. 2023): for each task vector ``tau_i`` keep its top ``density`` fraction of entries
    by magnitude (over the whole vector; the rest set to 0), elect each entry's sign
    ``gamma = sign(sum_i trim(tau_i))`` (the sign of the total mass), and average only the kept entries that agree
    with it: ``tau_m = sum_{i in A} trim(tau_i) / |A|``, ``A = {i : sign(trim(tau_i)) = gamma, trim(tau_i) != 0}``
    (0 where ``A`` is empty or the mass is exactly 0); ``theta = theta_base + scale * tau_m``. Parameters only:
    floating buffers (BatchNorm statistics) are the uniform mean of the models'.

    >>> base = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = base.weight.zero_()
    >>> a, b = copy.deepcopy(base), copy.deepcopy(base)
    >>> with torch.no_grad():
    ...     _ = a.weight.copy_(torch.tensor([[3.0, -1.0]]))
    ...     _ = b.weight.copy_(torch.tensor([[1.0, 2.0]]))
    >>> ties_merge(base, [a, b], density=1.0).weight.tolist()   # [mean(3, 1), 2 (the -1 is outvoted)]
    [[2.0, 2.0]]
    """
    density = real("density", density, lo=0.0, hi=1.0, lo_open=True)
    scale = _scales(scale, 1)[0]
    tv = task_vectors(base, models)
    trimmed = [_trimmed(t, density) for t in tv.values()]
    labels, ms = labelled(models)
    b = merged_state(base)
    states = [merged_state(m) for m in ms]
    out = {k: sum(st[k] for st in states) / len(ms) for k in b if k not in tv[labels[0]]}
    for name in tv[labels[0]]:
        stack, _, agree = _elect(trimmed, name)
        n = agree.sum(0)
        tau = torch.where(agree, stack, torch.zeros_like(stack)).sum(0) / n.clamp_min(1)
        out[name] = b[name] + scale * tau
    return build_merged(base, out)


def sign_conflicts(task_vectors: Mapping[str, Mapping[str, torch.Tensor]], *, density: float = 0.2) -> xr.Dataset:
    """Per-tensor sign conflicts between task vectors after TIES' trim step (Yadav et al. 2023, fig. 3).

    Over dim ``layer`` (tensor names): ``n`` (entries), ``kept`` (fraction of the tasks' entries kept by the trim),
    ``conflict`` (of the entries kept nonzero by at least two tasks, the fraction where their signs differ),
    ``mass_discarded`` (the fraction of kept mass ``sum |trim(tau_i)|`` whose sign loses the election),
    ``elected_zero`` (fraction of entries where the merge is 0: nothing kept or the mass is exactly 0).
    ``task_vectors`` as :func:`task_vectors` returns them (label -> name -> tensor).

    >>> tv = {"a": {"w": torch.tensor([3.0, -1.0])}, "b": {"w": torch.tensor([1.0, 2.0])}}
    >>> float(sign_conflicts(tv, density=1.0).conflict.sel(layer="w"))   # entry 2: -1 vs 2 -> 1 of 2 entries
    0.5
    """
    if not isinstance(task_vectors, Mapping) or not task_vectors:
        raise TypeError("task_vectors: expected a non-empty dict label -> {name: tensor}, as task_vectors() returns")
    density = real("density", density, lo=0.0, hi=1.0, lo_open=True)
    tvs = [{k: torch.as_tensor(v).double() for k, v in t.items()} for t in task_vectors.values()]
    names = list(tvs[0])
    if any(list(t) != names for t in tvs[1:]):
        raise ValueError("task_vectors: every task vector must have the same tensor names")
    trimmed = [_trimmed(t, density) for t in tvs]
    cols = {k: [] for k in ("n", "kept", "conflict", "mass_discarded", "elected_zero")}
    for name in names:
        stack, gamma, agree = _elect(trimmed, name)
        nz = stack != 0
        multi = nz.sum(0) >= 2
        pos, neg = ((stack > 0) & nz).any(0), ((stack < 0) & nz).any(0)
        mass = stack.abs().sum()
        lost = torch.where(nz & ~agree, stack.abs(), torch.zeros_like(stack)).sum()
        cols["n"].append(gamma.numel())
        cols["kept"].append(float(nz.double().mean()))
        cols["conflict"].append(float((pos & neg & multi).sum() / multi.sum()) if bool(multi.any()) else np.nan)
        cols["mass_discarded"].append(float(lost / mass) if float(mass) > 0 else np.nan)
        cols["elected_zero"].append(float((agree.sum(0) == 0).double().mean()))
    return xr.Dataset(
        {k: ("layer", np.asarray(v)) for k, v in cols.items()},
        coords={"layer": names},
        attrs={"density": density, "n_tasks": len(tvs)},
    )
