"""The one state-safety mechanism every probe runs under.

:func:`preserve` snapshots a model's parameters, buffers, per-module train/eval flags, each
parameter's ``requires_grad`` and ``.grad``, and restores them bitwise on exit, whether the body
returned, raised, or was interrupted (``KeyboardInterrupt`` in a notebook). Probes evaluate
functionally (``torch.func.functional_call``), so weights are normally never written at all; the
snapshot is the guarantee, not the mechanism.

Cost. Every tensor's autograd version counter (``_version``, bumped by any in-place write) and
storage pointer are recorded, so restoring skips tensors that provably did not change. Tensors are
also *copied* when the model's parameters and buffers total at most ``WORKBENCH_SNAPSHOT_MB``
(default 32 MB): then any change is undone. Above that (a pre-trained transformer, say) no copy is
made, to keep memory near a plain forward pass: an unchanged version counter proves a tensor
untouched, and a changed one raises :class:`ModelModifiedError` naming it (it can only come from code
outside the probe, e.g. a loss or hook writing into the weights). Writes through ``tensor.data``
bypass version counters; none of workbench's code does that.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn


class ModelModifiedError(RuntimeError):
    pass


def _limit_bytes() -> int:
    return int(float(os.environ.get("WORKBENCH_SNAPSHOT_MB", "32")) * 2**20)


def _tag(t: torch.Tensor):
    return (t._version, t.data_ptr(), tuple(t.shape), t.dtype)


@dataclass
class ModelState:
    params: list  # (name, param, tag, value clone or None, requires_grad, grad obj, grad tag, grad clone or None)
    buffers: list  # (module, key, name, buffer obj, tag, value clone or None)
    training: list  # (module, flag)
    copied: bool

    def matches(self, model: nn.Module) -> bool:
        """True when the model is bitwise in this state (used by the tests)."""
        return not diff_state(self, model)


def snapshot(model: nn.Module, copy: bool | None = None) -> ModelState:
    if copy is None:
        total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        copy = total <= _limit_bytes()
    params = []
    for n, p in model.named_parameters():
        g = p.grad
        params.append(
            (
                n,
                p,
                _tag(p),
                p.detach().clone() if copy else None,
                p.requires_grad,
                g,
                None if g is None else _tag(g),
                None if (g is None or not copy) else g.detach().clone(),
            )
        )
    buffers = []
    for mn, mod in model.named_modules():
        for key, b in mod._buffers.items():
            if b is not None:
                buffers.append(
                    (mod, key, f"{mn}.{key}" if mn else key, b, _tag(b), b.detach().clone() if copy else None)
                )
    training = [(m, m.training) for m in model.modules()]
    return ModelState(params, buffers, training, copy)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    # bitwise: compare raw bytes so that NaN payloads and -0.0 count too
    if a.dtype.is_floating_point or a.dtype.is_complex:
        return torch.equal(_raw(a), _raw(b))
    return torch.equal(a, b)


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _changed(t, tag, value) -> bool:
    if _tag(t) == tag:
        return False  # no in-place write since the snapshot
    return value is None or not _same(t.detach(), value)


def diff_state(state: ModelState, model: nn.Module) -> list[str]:
    """List the ways ``model`` differs from ``state`` (empty when bitwise equal)."""
    out = []
    current = list(model.parameters())
    if len(current) != len(state.params) or any(p is not q for p, (_, q, *_) in zip(current, state.params)):
        out.append("the set of parameter objects changed")
    for name, p, tag, value, rg, g, gtag, gval in state.params:
        if _changed(p, tag, value):
            out.append(f"parameter {name} values changed")
        if p.requires_grad != rg:
            out.append(f"parameter {name} requires_grad changed")
        if (p.grad is None) != (g is None) or (g is not None and p.grad is not g):
            out.append(
                f"parameter {name} .grad presence changed"
                if (p.grad is None) != (g is None)
                else f"parameter {name} .grad object replaced"
            )
        elif g is not None and _changed(g, gtag, gval):
            out.append(f"parameter {name} .grad values changed")
    for mod, key, _name, b, tag, value in state.buffers:
        cur = mod._buffers.get(key)
        if cur is None or cur is not b or _changed(b, tag, value):
            out.append(f"buffer {type(mod).__name__}.{key} changed")
    for m, flag in state.training:
        if m.training != flag:
            out.append(f"{type(m).__name__}.training changed")
    return out


def restore(state: ModelState) -> None:
    lost = []
    with torch.no_grad():
        for name, p, tag, value, rg, g, gtag, gval in state.params:
            if _changed(p, tag, value):
                if value is None:
                    lost.append(name)
                else:
                    p.copy_(value)
            if p.requires_grad != rg:
                p.requires_grad_(rg)
            if g is not None and _changed(g, gtag, gval):
                if gval is None:
                    lost.append(f"{name}.grad")
                else:
                    g.copy_(gval)
            p.grad = g
        for mod, key, name, b, tag, value in state.buffers:
            if mod._buffers.get(key) is not b:
                mod._buffers[key] = b
            if _changed(b, tag, value):
                if value is None:
                    lost.append(name)
                else:
                    b.copy_(value)
    for m, flag in state.training:
        m.training = flag
    if lost:
        raise ModelModifiedError(
            f"the model's tensors {lost[:5]} were modified in place during the probe (by code outside workbench, e.g. "
            "a loss_fn or hook) and could not be restored: models over WORKBENCH_SNAPSHOT_MB are not copied. Raise "
            "WORKBENCH_SNAPSHOT_MB above the model's size to have them restored"
        )


@contextlib.contextmanager
def preserve(*models: nn.Module):
    """Context manager: every model given is bitwise restored on exit (return, raise, interrupt)."""
    states = [snapshot(m) for m in models]
    try:
        yield
    finally:
        errors = []
        for s in states:
            try:
                restore(s)
            except ModelModifiedError as e:
                errors.append(e)
        if errors:
            raise errors[0]


def _check_mode(mode: str) -> None:
    if mode not in ("eval", "train"):
        raise ValueError(
            f"mode: expected 'eval' (running statistics, no dropout) or 'train' (batch statistics), got {mode!r}"
        )


def set_mode(model: nn.Module, mode: str) -> None:
    """Put every module in ``mode`` ('eval' or 'train'); callers run this inside :func:`preserve`
    (or use :func:`modes`, which puts the flags back)."""
    _check_mode(mode)
    model.train(mode == "train")


@contextlib.contextmanager
def modes(model: nn.Module, mode: str, modules: list[nn.Module] | None = None):
    """Run the body with every module of ``model`` in ``mode``, then put each module's own flag back.
    ``modules``: ``list(model.modules())`` when the caller has it (saves the traversal per call)."""
    _check_mode(mode)
    want = mode == "train"
    mods = list(model.modules()) if modules is None else modules
    if all(m.training is want for m in mods):
        yield
        return
    flags = [(m, m.training) for m in mods]
    try:
        for m, _ in flags:
            m.training = want
        yield
    finally:
        for m, f in flags:
            m.training = f
