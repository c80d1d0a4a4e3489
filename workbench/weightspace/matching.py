"""The solvers behind :func:`~workbench.weightspace.alignment.match`: permuting tensors along a group's axes,
the weight-matching cost, activation correlations, and the linear assignment (heads as blocks).

Weight matching (Ainsworth et al. 2023, "Git Re-Basin", alg. 1): for one group ``g`` with the others held
fixed, ``P_g = argmax_P <C_g, P>`` with ``C_g = sum_{axes of g} A_(g) B'_(g)^T``, where ``A_(g)`` is the
tensor of model A with g's axis first (one row per unit) and ``B'`` is model B's with every *other* group's
current permutation applied; solved exactly by ``scipy.optimize.linear_sum_assignment``, the groups visited in
random order until no group improves. Activation matching (sec. 3.1 there; Li et al. 2016) takes ``C_g`` as
the correlation of A's and B's units over the data. Attention heads: every pair of heads (h, h') is matched
within (an assignment of ``d_head`` units), then the heads by the summed within-scores, shared by the groups of
one head group (q/k and v/o), so the result is one permutation of heads and one within each head.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .graph import Entry, PermutationSpec

__all__ = [
    "apply_entry", "unit_matrix", "permuted_state", "weight_cost", "solve", "units_of",
    "coordinate_descent", "objective",
]  # fmt: skip


def apply_entry(t: torch.Tensor, e: Entry, perm: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` whose units along ``e`` are reordered: new unit ``i`` is old unit ``perm[i]``.

    >>> apply_entry(torch.arange(6.).reshape(3, 2), Entry("w", 0), torch.tensor([2, 0, 1])).tolist()
    [[4.0, 5.0], [0.0, 1.0], [2.0, 3.0]]
    """
    n, k = perm.numel(), e.factor
    sl = t.narrow(e.axis, e.offset, n * k)
    shp = tuple(sl.shape)
    v = sl.reshape(shp[: e.axis] + (n, k) + shp[e.axis + 1 :]).index_select(e.axis, perm.to(t.device)).reshape(shp)
    out = t.clone()
    out.narrow(e.axis, e.offset, n * k).copy_(v)
    return out


def unit_matrix(t: torch.Tensor, e: Entry, n: int) -> torch.Tensor:
    """The slice of ``t`` that ``e`` covers as a matrix, one row per unit: ``(n, everything else)``."""
    return t.narrow(e.axis, e.offset, n * e.factor).movedim(e.axis, 0).reshape(n, -1)


def permuted_state(state: dict, spec: PermutationSpec, perms: dict, skip: str | None = None) -> dict:
    """``state`` with every group's permutation applied (but ``skip``'s)."""
    out = dict(state)
    for name, ents in spec.by_param.items():
        t = state[name]
        for g, e in ents:
            if g != skip and g in perms:
                t = apply_entry(t, e, perms[g])
        out[name] = t
    return out


def weight_cost(spec: PermutationSpec, g: str, a: dict, b: dict, perms: dict) -> torch.Tensor:
    """``C_g[i, j] = <A's unit i, B's unit j>`` over every axis of group ``g``, B with the other groups'
    current permutations applied (float64)."""
    grp = spec.groups[g]
    n = grp.size
    c = torch.zeros(n, n, dtype=torch.float64, device=next(iter(a.values())).device)
    for e in grp.entries:
        t = b[e.name]
        for g2, e2 in spec.by_param[e.name]:
            if g2 != g:
                t = apply_entry(t, e2, perms[g2])
        c += unit_matrix(a[e.name], e, n) @ unit_matrix(t, e, n).T
    return c


def _lap(c: np.ndarray) -> np.ndarray:
    return linear_sum_assignment(c, maximize=True)[1]


def solve(spec: PermutationSpec, members: list[str], costs: dict, heads_fixed: bool = False):
    """The assignment maximising ``sum_g <C_g, P_g>`` over ``members`` (one group, or the groups of one head
    group); returns ``({group: perm}, head perm or None)``."""
    grp = spec.groups[members[0]]
    if grp.heads is None:
        return {members[0]: torch.as_tensor(_lap(costs[members[0]].cpu().numpy()))}, None
    h = grp.heads
    d = grp.size // h
    score = np.zeros((h, h))
    within: dict = {}
    for m in members:
        c = costs[m].cpu().numpy()
        for i in range(h):
            for j in range(h):
                blk = c[i * d : (i + 1) * d, j * d : (j + 1) * d]
                col = _lap(blk)
                score[i, j] += blk[np.arange(d), col].sum()
                within[m, i, j] = col
    hp = np.arange(h) if heads_fixed else _lap(score)
    perms = {m: torch.as_tensor(np.concatenate([hp[i] * d + within[m, i, hp[i]] for i in range(h)])) for m in members}
    return perms, torch.as_tensor(hp)


def units_of(spec: PermutationSpec) -> list[tuple[str | None, list[str]]]:
    """The units of coordinate descent: ``(head group or None, its groups)``."""
    out: list = [(None, [g]) for g, grp in spec.groups.items() if grp.head_group is None]
    return out + [(hg, list(ms)) for hg, ms in spec.head_groups.items()]


def _score(costs: dict, perms: dict) -> float:
    return float(sum(c[torch.arange(c.shape[0]), perms[m].to(c.device)].sum() for m, c in costs.items()))


def objective(spec: PermutationSpec, a: dict, b: dict, perms: dict) -> float:
    """Weight matching's objective ``sum over tensors <A, P(B)>`` at ``perms`` (float64)."""
    pb = permuted_state({k: b[k] for k in spec.by_param}, spec, perms)
    return float(sum((a[k] * pb[k]).sum() for k in spec.by_param))


def coordinate_descent(spec, a, b, perms, heads, units, rng, max_iter: int, check=None) -> int:
    """Weight matching over ``units`` (others held at ``perms``), in place; returns the passes made."""
    for it in range(1, max_iter + 1):
        improved = False
        for k in rng.permutation(len(units)):
            hg, members = units[k]
            costs = {m: weight_cost(spec, m, a, b, perms) for m in members}
            fixed = spec.groups[members[0]].heads_pinned
            new, hp = solve(spec, members, costs, fixed)
            old_s, new_s = _score(costs, perms), _score(costs, new)
            if new_s > old_s + 1e-12 * max(1.0, abs(old_s)):
                improved = True
                perms.update(new)
                if hg is not None:
                    heads[hg] = hp
            if check is not None:
                check()
        if not improved:
            return it
    return max_iter
