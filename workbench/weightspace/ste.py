"""Straight-through estimation of the alignment (Ainsworth et al. 2023, "Git Re-Basin", sec. 3.3, alg. 2).

Weight and activation matching align B to A without looking at the loss of the path. The straight-through
estimator learns a proxy ``theta~`` (started at A): at each step, B is weight-matched to ``theta~``, giving
``pi(theta_B)``; the loss of the midpoint ``(theta_A + pi(theta_B)) / 2`` on a batch is back-propagated to
``theta~`` as if ``pi(theta_B)`` were ``theta~`` (``pi(theta_B) + theta~ - stopgrad(theta~)``), and ``theta~``
takes an Adam step. The permutation of the last matching is the result: it is chosen for a low loss halfway.
"""

from __future__ import annotations

import itertools

import torch

from .matching import coordinate_descent, permuted_state

__all__ = ["straight_through"]


def straight_through(spec, obj, model_b, perms, heads, units, rng, *, steps: int, lr: float, check) -> int:
    """``steps`` straight-through steps on the batches of ``obj`` (the Objective of model A, its loss and
    data), updating ``perms`` and ``heads`` in place; returns the coordinate-descent passes made."""
    model_a = obj.model
    params = dict(model_a.named_parameters())
    a_state = {k: v.detach() for k, v in model_a.state_dict().items()}
    b_state = {k: v.detach().double() for k, v in model_b.state_dict().items() if v.is_floating_point()}
    proxy = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    opt = torch.optim.Adam(list(proxy.values()), lr=lr)
    batches = itertools.cycle(list(obj.batches()))
    passes = 0
    for _ in range(steps):
        check()
        cur = {k: v.double() for k, v in a_state.items() if v.is_floating_point()}
        cur.update({n: t.detach().double() for n, t in proxy.items()})
        passes += coordinate_descent(spec, cur, b_state, perms, heads, units, rng, 100, check)
        pb = permuted_state(b_state, spec, perms)
        mid = {}
        for n, p in params.items():
            straight = pb[n].to(p.dtype) + proxy[n] - proxy[n].detach()  # forward: pi(B); backward: to the proxy
            mid[n] = 0.5 * (p.detach() + straight)
        base = dict(obj.base())
        for k, v in a_state.items():
            if k not in params and v.is_floating_point():  # BatchNorm statistics: the midpoint's too
                base[k] = 0.5 * (v + pb[k].to(v.dtype))
        x, y, _ = next(batches)
        with torch.enable_grad():
            loss, _ = obj.batch_loss(mid, x, y, base)
            opt.zero_grad()
            loss.backward()
        opt.step()
    cur = {k: v.double() for k, v in a_state.items() if v.is_floating_point()}
    cur.update({n: t.detach().double() for n, t in proxy.items()})
    return passes + coordinate_descent(spec, cur, b_state, perms, heads, units, rng, 100, check)
