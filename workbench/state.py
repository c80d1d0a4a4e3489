"""The one state-safety mechanism every probe runs under.

:func:`preserve` snapshots a model's parameters, buffers, per-module train/eval flags,
each parameter's ``requires_grad`` and ``.grad``, and restores them bitwise on exit, whether the
body returned, raised, or was interrupted (``KeyboardInterrupt`` in a notebook).
Probes additionally evaluate functionally (``torch.func.functional_call``) so the weights are
normally never written at all; the snapshot is the guarantee, not the mechanism.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ModelState:
    params: list  # (param object, value clone, requires_grad, grad object, grad clone)
    buffers: list  # (module, name, buffer object, value clone)
    training: list  # (module, flag)

    def matches(self, model: nn.Module) -> bool:
        """True when the model is bitwise in this state (used by the tests)."""
        return not diff_state(self, model)


def snapshot(model: nn.Module) -> ModelState:
    params = []
    for p in model.parameters():
        g = p.grad
        params.append((p, p.detach().clone(), p.requires_grad, g, None if g is None else g.detach().clone()))
    buffers = []
    for mod in model.modules():
        for name, b in mod._buffers.items():
            if b is not None:
                buffers.append((mod, name, b, b.detach().clone()))
    training = [(m, m.training) for m in model.modules()]
    return ModelState(params, buffers, training)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    # bitwise: compare raw bytes so that NaN payloads and -0.0 count too
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return torch.equal(_raw(a), _raw(b))
    return torch.equal(a, b)


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def diff_state(state: ModelState, model: nn.Module) -> list[str]:
    """List the ways ``model`` differs from ``state`` (empty when bitwise equal)."""
    out = []
    current = list(model.parameters())
    if len(current) != len(state.params) or any(p is not q for p, (q, *_) in zip(current, state.params)):
        out.append("the set of parameter objects changed")
    for i, (p, value, rg, g, gval) in enumerate(state.params):
        if not _same(p.detach(), value):
            out.append(f"parameter {i} values changed")
        if p.requires_grad != rg:
            out.append(f"parameter {i} requires_grad changed")
        if (p.grad is None) != (gval is None):
            out.append(f"parameter {i} .grad presence changed")
        elif gval is not None and not _same(p.grad, gval):
            out.append(f"parameter {i} .grad values changed")
    for mod, name, b, value in state.buffers:
        cur = mod._buffers.get(name)
        if cur is None or not _same(cur, value):
            out.append(f"buffer {type(mod).__name__}.{name} changed")
    for m, flag in state.training:
        if m.training != flag:
            out.append(f"{type(m).__name__}.training changed")
    return out


def restore(state: ModelState) -> None:
    with torch.no_grad():
        for p, value, rg, g, gval in state.params:
            if not _same(p.detach(), value):
                p.copy_(value)
            if p.requires_grad != rg:
                p.requires_grad_(rg)
            if g is None:
                p.grad = None
            else:
                if not _same(g, gval):
                    g.copy_(gval)
                p.grad = g
        for mod, name, b, value in state.buffers:
            if mod._buffers.get(name) is not b:
                mod._buffers[name] = b
            if not _same(b, value):
                b.copy_(value)
    for m, flag in state.training:
        m.training = flag


@contextlib.contextmanager
def preserve(*models: nn.Module):
    """Context manager: every model given is bitwise restored on exit (return, raise, interrupt)."""
    states = [snapshot(m) for m in models]
    try:
        yield
    finally:
        for s in states:
            restore(s)


def set_mode(model: nn.Module, mode: str) -> None:
    """Put every module in ``mode`` ('eval' or 'train'); callers run this inside :func:`preserve`."""
    if mode == "eval":
        model.eval()
    elif mode == "train":
        model.train()
    else:
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
