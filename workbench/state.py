"""The one state-safety mechanism every probe runs under, interrupts included.

:func:`preserve` snapshots a model and puts it back on exit, whether the body returned, raised, or was
interrupted (Ctrl-C, a widget's Stop): the *objects* in every parameter and buffer slot of every module
(functional calls swap tensors into them; an interrupt in the middle of a swap would leave plain or
batched tensors there), their values, each parameter's ``requires_grad`` and ``.grad``, every module's
train/eval flag and normalisation settings (``momentum``, ``track_running_stats``), no hook added during
the body, and grad mode. The restore is shielded (:func:`run_shielded`): a second Ctrl-C while it runs
is held until it has finished, then raised. Probes evaluate functionally
(``torch.func.functional_call``), so weights are normally never written at all; the snapshot is the
guarantee, not the mechanism.

Cost. Buffers are small: they are always copied (above ``WORKBENCH_SNAPSHOT_MB``, checksummed exactly).
Parameters are copied when the model's parameters and buffers total at most ``WORKBENCH_SNAPSHOT_MB``
(default 32 MB): then any change is undone. Above that (a pre-trained transformer, say) no copy is made,
to keep memory and time near a plain forward pass: each parameter's autograd version counter
(``_version``, bumped by in-place writes) and a :func:`checksum` of its bits (exact for small tensors,
an evenly strided sample of large ones, about 2**17 elements over the whole model, so writes through
``tensor.data``, which bypass version counters, are caught when they touch much of a tensor) prove it
untouched, and a change raises :class:`ModelModifiedError` naming it (it can only come from code
outside the probe, e.g. a loss or hook writing into the weights).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class ModelModifiedError(RuntimeError):
    pass


def _limit_bytes() -> int:
    return int(float(os.environ.get("WORKBENCH_SNAPSHOT_MB", "32")) * 2**20)


def _tag(t: torch.Tensor):
    return (t._version, t.data_ptr(), tuple(t.shape), t.dtype)


_WORDS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def checksum(t: torch.Tensor, budget: int = 2**16) -> tuple[int, int]:
    """(exact integer sum of the tensor's words, i.e. its elements' bit patterns, stride): over all of them when
    it has at most ``budget`` elements, else over an evenly strided sample of about ``budget`` (odd stride).
    Deterministic whatever the thread count; any change to a small tensor changes it, and so does a change
    to much of a large one (scaling, clamping, re-initialising).

    >>> t = torch.zeros(5)
    >>> a = checksum(t)
    >>> t.data[3] = -0.0  # equal as a number, other bits; .data bypasses the version counter
    >>> checksum(t) != a
    True
    """
    flat = t.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    size = flat.element_size()
    words = flat.view(_WORDS[size]) if size in _WORDS else flat.view(torch.uint8)
    step = max(1, words.numel() // max(1, budget))
    step += step > 1 and step % 2 == 0
    return int(words[::step].sum(dtype=torch.int64)), step


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal (raw bytes: NaN payloads and -0.0 count too)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    raw = [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in (a, b)]
    return torch.equal(*raw)


@dataclass
class Saved:
    """One tensor's record: the object, its tag, and a copy (small models) or a checksum (large ones)."""

    name: str
    obj: torch.Tensor
    tag: tuple
    value: torch.Tensor | None
    sum: tuple | None

    @classmethod
    def of(cls, name: str, t: torch.Tensor, copy: bool, budget: int | None = 2**16) -> Saved:
        value = t.detach().clone() if copy else None
        return cls(name, t, _tag(t), value, None if copy or budget is None else (checksum(t, budget), budget))

    def changed(self) -> bool:
        t = self.obj
        if self.value is not None:  # copied: compare (a .data write keeps the version counter)
            return not _same(t.detach(), self.value)
        if _tag(t) != self.tag:
            return True
        return self.sum is not None and checksum(t, self.sum[1]) != self.sum[0]

    def put_back(self) -> bool:
        """Undo a change (False when there is nothing to undo it with)."""
        if self.changed():
            if self.value is None:
                return False
            with torch.no_grad():
                self.obj.copy_(self.value)
        return True


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _settings(m: nn.Module) -> tuple:
    """A module's train flag, normalisation settings and hook keys."""
    norm = (m.momentum, m.track_running_stats) if isinstance(m, nn.modules.batchnorm._NormBase) else None
    return m.training, norm, tuple(tuple(getattr(m, h, ())) for h in _HOOKS)


@dataclass
class ModelState:
    params: list  # (Saved, requires_grad, grad Saved or None), one per Parameter object
    buffers: list  # (module, key, Saved), one per buffer slot
    modules: list  # (module, its parameter slots, its buffer slots, _settings(module))
    copied: bool
    grad_enabled: bool = True

    def matches(self, model: nn.Module) -> bool:
        """True when the model is bitwise in this state (used by the tests)."""
        return not diff_state(self, model)


def snapshot(model: nn.Module, copy: bool | None = None) -> ModelState:
    """Record ``model``'s slots, values, flags and grad mode (copies when ``copy``, default: small models)."""
    modules = list(model.named_modules())
    buffers = [(mn, m, k, b) for mn, m in modules for k, b in m._buffers.items() if b is not None]
    buf_bytes = sum(b.numel() * b.element_size() for *_, b in buffers)
    named = list(model.named_parameters())
    if copy is None:
        copy = sum(p.numel() * p.element_size() for _, p in named) + buf_bytes <= _limit_bytes()
    budget = max(256, 2**17 // max(1, len(named)))  # about 2**17 elements sampled over the whole model
    params = [
        (Saved.of(n, p, copy, budget), p.requires_grad, None if p.grad is None else Saved.of(n, p.grad, copy, None))
        for n, p in named
    ]
    copy_buffers = copy or buf_bytes <= _limit_bytes()
    bufs = [(m, k, Saved.of(f"{mn}.{k}" if mn else k, b, copy_buffers, 2**40)) for mn, m, k, b in buffers]
    mods = [(m, tuple(m._parameters.items()), tuple(m._buffers.items()), _settings(m)) for _, m in modules]
    return ModelState(params, bufs, mods, copy, torch.is_grad_enabled())


def _slots_differ(store: dict, was: tuple) -> bool:
    return len(store) != len(was) or any(store.get(k, store) is not v for k, v in was)


def diff_state(state: ModelState, model: nn.Module) -> list[str]:
    """List the ways ``model`` differs from ``state`` (empty when bitwise equal)."""
    out = []
    current = list(model.parameters())
    if len(current) != len(state.params) or any(p is not s.obj for p, (s, *_) in zip(current, state.params)):
        out.append("the set of parameter objects changed")
    for s, rg, g in state.params:
        p = s.obj
        if s.changed():
            out.append(f"parameter {s.name} values changed")
        if p.requires_grad != rg:
            out.append(f"parameter {s.name} requires_grad changed")
        if (p.grad is None) != (g is None):
            out.append(f"parameter {s.name} .grad presence changed")
        elif g is not None and p.grad is not g.obj:
            out.append(f"parameter {s.name} .grad object replaced")
        elif g is not None and g.changed():
            out.append(f"parameter {s.name} .grad values changed")
    for mod, key, s in state.buffers:
        if mod._buffers.get(key) is not s.obj or s.changed():
            out.append(f"buffer {type(mod).__name__}.{key} changed")
    for m, params, bufs, (flag, norm, hooks) in state.modules:
        name = type(m).__name__
        out += [
            f"{name} {kind} slots hold other objects"
            for kind, store, was in (("parameter", m._parameters, params), ("buffer", m._buffers, bufs))
            if _slots_differ(store, was)
        ]
        now = _settings(m)
        if now[0] != flag:
            out.append(f"{name}.training changed")
        if now[1] != norm:
            out.append(f"{name} momentum or track_running_stats changed")
        if now[2] != hooks:
            out.append(f"a hook was left on {name}")
    return out


def restore(state: ModelState) -> None:
    """Put the model back as :func:`snapshot` found it; idempotent (an interrupted restore can run again).
    Raises :class:`ModelModifiedError` (after restoring everything else) for writes it cannot undo."""
    lost = []
    torch.set_grad_enabled(False)
    try:
        for m, params, bufs, _ in state.modules:
            for store, was in ((m._parameters, params), (m._buffers, bufs)):
                if _slots_differ(store, was):
                    store.clear()  # the same objects in the same slots, in the same order
                    store.update(was)
        for s, rg, g in state.params:
            if not s.put_back():
                lost.append(s.name)
            if s.obj.requires_grad != rg:
                s.obj.requires_grad_(rg)
            if g is not None and not g.put_back():
                lost.append(f"{s.name}.grad")
            if s.obj.grad is not (None if g is None else g.obj):
                s.obj.grad = None if g is None else g.obj
        lost += [s.name for _, _, s in state.buffers if not s.put_back()]
        for m, _, _, (flag, norm, hooks) in state.modules:
            if m.training != flag:
                m.training = flag
            if norm is not None:
                m.momentum, m.track_running_stats = norm
            for h, keys in zip(_HOOKS, hooks):
                d = getattr(m, h, None)
                for k in [k for k in d if k not in keys] if d is not None and len(d) != len(keys) else ():
                    del d[k]
    finally:
        torch.set_grad_enabled(state.grad_enabled)
    if lost:
        raise ModelModifiedError(
            f"the model's tensors {lost[:5]} were modified in place during the probe (by code outside workbench, e.g. "
            "a loss_fn or hook) and could not be restored: models over WORKBENCH_SNAPSHOT_MB are not copied. Raise "
            "WORKBENCH_SNAPSHOT_MB above the model's size to have them restored"
        )


# -- interrupts ------------------------------------------------------------------------------------------


def run_shielded(fn: Callable, *args):
    """``fn(*args)``, run to completion even if Ctrl-C arrives meanwhile; the interrupt is raised after it.

    In the main thread a SIGINT is held (the previous handler runs once ``fn`` returned); a
    ``KeyboardInterrupt`` that arrives before the handler is swapped in runs ``fn`` again from the start,
    so ``fn`` must be idempotent.

    >>> run_shielded(sum, [1, 2])
    3
    """
    interrupt, done, result = None, False, None
    while not done:
        try:
            held, old = [], None
            if threading.current_thread() is threading.main_thread() and callable(signal.getsignal(signal.SIGINT)):
                old = signal.signal(signal.SIGINT, lambda signum, frame, held=held: held.append(frame))
            try:
                result = fn(*args)
                done = True
            finally:
                if old is not None:
                    signal.signal(signal.SIGINT, old)
                    if held:
                        old(signal.SIGINT, held[0])  # the user's handler: KeyboardInterrupt by default
        except KeyboardInterrupt as e:
            interrupt = e
    if interrupt is not None:
        raise interrupt
    return result


def _forward_ad_back(level: int) -> None:
    """Forward-mode AD as it was (no dual level, usually): an interrupt inside ``torch.func.jvp``'s
    ``dual_level`` enter or exit can leave torch's level entered, or its Python record of it off by one,
    which breaks every later ``jvp``. Only after an abnormal exit (forward-AD levels are process-wide)."""
    fwad = torch.autograd.forward_ad
    if level != -1:
        return
    try:
        torch._C._exit_dual_level(level=torch._C._enter_dual_level())
    except RuntimeError:  # "Nested forward mode AD is not supported": level 0 was left entered
        torch._C._exit_dual_level(level=0)
    fwad._current_level = -1


def _restore_all(states: list[ModelState], level: int | None = None) -> list[ModelModifiedError]:
    errors = []
    for s in states:
        try:
            restore(s)  # looked up here at every call: workbench.testing.interrupts aims a Ctrl-C at it
        except ModelModifiedError as e:
            errors.append(e)
    if level is not None:
        _forward_ad_back(level)
    return errors


@contextlib.contextmanager
def preserve(*models: nn.Module):
    """Context manager: every model given is put back on exit (return, raise, interrupt), see the module
    docstring; the restore runs to completion under a second Ctrl-C (:func:`run_shielded`)."""
    states = [snapshot(m) for m in models]
    level, ok = torch.autograd.forward_ad._current_level, False
    try:
        yield
        ok = True
    finally:
        errors = run_shielded(_restore_all, states, None if ok else level)
        if errors:
            raise errors[0]


# -- train / eval mode ---------------------------------------------------------------------------------------


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
    ``modules``: ``list(model.modules())`` when the caller has it (saves the traversal per call).

    In ``"train"`` mode every buffer slot holds a copy for the duration (the same copy where a buffer is
    shared), so what a train-mode forward writes into its buffers (BatchNorm's running statistics,
    a spectral norm's power-iteration vector) never reaches the model: batch statistics and dropout,
    running statistics untouched.

    >>> bn = nn.BatchNorm1d(2)
    >>> with modes(bn, "train"):
    ...     _ = bn(torch.randn(4, 2))
    >>> bn.running_mean.tolist(), int(bn.num_batches_tracked), bn.training
    ([0.0, 0.0], 0, True)
    """
    _check_mode(mode)
    want = mode == "train"
    mods = list(model.modules()) if modules is None else modules
    if not want and all(m.training is want for m in mods):
        yield
        return
    flags = [(m, m.training) for m in mods]
    swapped = []
    try:
        for m, _ in flags:
            m.training = want
        if want:
            copies: dict[int, torch.Tensor] = {}
            for m in mods:
                for k, b in m._buffers.items():
                    if b is not None and not isinstance(b, nn.parameter.UninitializedBuffer):
                        swapped.append((m, k, b))
                        m._buffers[k] = copies.setdefault(id(b), b.detach().clone())
        yield
    finally:
        for m, k, b in swapped:
            m._buffers[k] = b
        for m, f in flags:
            m.training = f
