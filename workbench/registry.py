"""The ``@probe`` decorator: the one place where the probe contract is applied.

Every probe is a plain function ``probe(model, loss_fn, data, ..., *, ctx)`` whose body only
computes. The decorator gives it the **keyword tail** every probe shares, validated once:

========== ======================================================================================
keyword    meaning (default)
========== ======================================================================================
mode       ``"eval"`` (running statistics, no dropout) or ``"train"`` (batch statistics and dropout;
           running statistics are never updated)
params     the parameter subset a loss-based probe acts on: ``None`` (all trainable parameters),
           a regex, or a list of parameter / module names
seed       the seed of every random draw of the probe (``0``); the user's global RNGs are untouched
progress   ``True`` (a ``tqdm.auto`` bar; ``TQDM_DISABLE=1`` turns it off), ``False``, or a callable
           ``progress(done, total)`` (widgets)
cancel     ``None`` or an object with ``is_set()`` (a ``threading.Event``): when set, the probe stops
           at its next batch or step with :class:`Cancelled`
device     ``None`` (the model's device) or the device the model lives on; data move there batch by batch
========== ======================================================================================

and applies, in this order: the per-model lock (below), the configured thread count
(:mod:`workbench.config`), RNG isolation
(the global torch, numpy and Python RNG states are saved and restored; inside, torch's global RNG
is seeded with ``seed`` so train-mode dropout is reproducible), the state guard
(:func:`workbench.state.preserve` over every ``nn.Module`` argument), and provenance: ``probe``,
``probe_params`` (every argument but the model, loss and data, the tail included),
``model_fingerprint``, ``data_fingerprint``, ``seed``, ``versions``, ``wall_time_s``, ``created``
are written to the result's attrs by the decorator, never by hand.

The body receives a :class:`Context` as the keyword ``ctx``: the validated tail, a seeded
``torch.Generator`` and numpy ``Generator``, :meth:`Context.bar` (a progress bar that is also a
cancellation point), :meth:`Context.objective` (the :class:`~workbench.objective.Objective` of the
call's model, loss and data) and :meth:`Context.record` (extra entries for ``probe_params``).

**One model, one probe at a time.** A probe holds a lock on every ``nn.Module`` argument while it runs
(re-entrant: a probe may call probes on the same models in the same thread; taken in a fixed order, so
two probes taking the same two models cannot deadlock). Functional calls swap tensors into the model's
slots and train mode flips its flags, so two probes on one model at once (a widget's background job and
the next notebook cell) would corrupt each other. A probe that finds its model busy *waits*, and after
0.5 s says so on stderr in one line naming the probe that holds it: the next cell just runs once the
widget job ends, rather than failing and having to be run again. Ctrl-C (``KeyboardInterrupt``) or the
probe's own ``cancel`` event (:class:`Cancelled`) ends the wait; :func:`lock_holder` says who holds a model.

Interrupts are never swallowed: an interrupt that torch's C++ code turned into a ``RuntimeError``
(:func:`workbench.validate.interrupt_in`) leaves the probe as the interrupt, and the clean-up (RNG states,
the state guard, the locks) runs to completion under a second Ctrl-C (:func:`workbench.state.run_shielded`).

Registration records :class:`Tags` (what a probe needs) and an optional *contract case*, a small
call on a hostile model that :mod:`workbench.testing` runs; without one, a case is built from the tags.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch import nn

from . import tasks
from .config import threads
from .function_modes import drop_function_modes, drop_stale_modes, function_mode_depth
from .results import model_fingerprint, provenance
from .state import preserve, run_shielded
from .tail import (  # noqa: F401  (the tail, re-exported)
    OPTIONAL,
    TAIL,
    TAIL_DEFAULTS,
    Cancelled,
    Context,
    check_tail,
    isolated_rng,
    surfacing_interrupts,
)
from .validate import interrupt_in

#: argument names that hold what the probe is *about* (not recorded in probe_params)
SUBJECTS = ("model", "model_a", "model_b", "models", "loss_fn", "data", "inputs", "target_data")


@dataclass(frozen=True)
class Tags:
    """What a probe needs, for the contract checks (scikit-learn's estimator tags are the model).

    ``inputs``: ``"pair"`` (``(model, loss_fn, data)`` with labelled data), ``"inputs"`` (``(model,
    inputs)``, no labels), ``"model"`` (the model alone: weights only), ``"two_models"``
    (``(model_a, model_b, loss_fn, data)``), ``"models"``
    (``(models, loss_fn, data)``: a list or dict of models). ``attention``: needs a model with
    attention. ``stochastic``: draws random numbers (seeded by ``seed``). ``uses``: which of ``mode``,
    ``params``, ``seed`` and ``device`` change what it computes; the others must stay at their defaults
    (``progress`` and ``cancel`` apply to every probe).
    """

    inputs: str = "pair"
    attention: bool = False
    stochastic: bool = False
    deterministic: bool = True
    uses: tuple[str, ...] = OPTIONAL


@dataclass
class ProbeInfo:
    name: str
    func: Callable
    case: Callable | None  # () -> (args, kwargs): a small call on a hostile model
    tags: Tags = field(default_factory=Tags)

    @property
    def deterministic(self) -> bool:
        return self.tags.deterministic


PROBES: dict[str, ProbeInfo] = {}


def _modules_in(obj, out: list) -> list:
    if isinstance(obj, nn.Module):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _modules_in(v, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _modules_in(v, out)
    return out


# -- one model, one probe at a time ------------------------------------------------------------------------

_LOCKS: dict[int, list] = {}  # id(module) -> [weakref to the module, RLock, holder, depth]
_LOCKS_GUARD = threading.Lock()
_PURGED = [0]  # the table's size after the last purge
_WAIT_MESSAGE_AFTER_S = 0.5


def _entry(m: nn.Module) -> list:
    """The lock entry of a module: by id, with a weak reference telling a recycled id apart (modules may be
    unhashable, so no WeakKeyDictionary; and no weakref callback, where CPython would swallow a Ctrl-C).
    Entries of dead modules are dropped as the table grows."""
    with _LOCKS_GUARD:
        e = _LOCKS.get(id(m))
        if e is None or e[0]() is not m:
            if len(_LOCKS) >= 2 * _PURGED[0] + 64:
                for k in [k for k, v in _LOCKS.items() if v[0]() is None and v[3] == 0]:
                    del _LOCKS[k]
                _PURGED[0] = len(_LOCKS)
            e = _LOCKS[id(m)] = [weakref.ref(m), threading.RLock(), None, 0]
        return e


def lock_holder(model: nn.Module) -> str | None:
    """``"probe (thread)"`` of the probe running on ``model`` now, or None.

    >>> lock_holder(torch.nn.Linear(2, 2)) is None
    True
    """
    e = _LOCKS.get(id(model))
    return e[2] if e is not None and e[0]() is model else None


def _attempt(e: list, held: list, probe: str) -> bool:
    """One wait of at most 0.05 s for the lock; on success it is recorded in ``held`` (run shielded, so that a
    Ctrl-C cannot fall between taking the lock and recording it)."""
    if not e[1].acquire(timeout=0.05):
        return False
    held.append(e)
    if e[3] == 0:
        e[2] = f"{probe} ({threading.current_thread().name})"
    e[3] += 1
    return True


def _acquire(e: list, held: list, ctx: Context) -> None:
    t0, told = time.monotonic(), False
    while not run_shielded(_attempt, e, held, ctx.probe):  # short waits: Ctrl-C and the cancel event get through
        ctx.check_cancel()
        if not told and time.monotonic() - t0 > _WAIT_MESSAGE_AFTER_S:
            told = True
            print(
                f"workbench: {ctx.probe} waits for {e[2] or 'another probe'} to finish with this model "
                "(Ctrl-C, or the probe's cancel event, stops waiting)",
                file=sys.stderr,
                flush=True,
            )


def _release(held: list) -> None:
    while held:
        e = held.pop()
        e[3] -= 1
        if e[3] == 0:
            e[2] = None
        e[1].release()


@contextlib.contextmanager
def _locked(mods: list, ctx: Context):
    """Hold the lock of every module in ``mods`` (in id order: a fixed order, no deadlock) for the body."""
    held: list = []
    try:
        for m in sorted(mods, key=id):
            _acquire(_entry(m), held, ctx)
        yield
    finally:
        run_shielded(_release, held)


def _tail_signature(sig: inspect.Signature) -> inspect.Signature:
    params = [p for p in sig.parameters.values() if p.name != "ctx"]
    var_kw = [p for p in params if p.kind is p.VAR_KEYWORD]
    params = [p for p in params if p.kind is not p.VAR_KEYWORD]
    have = {p.name for p in params}
    clash = have & set(TAIL)
    if clash:
        raise TypeError(
            f"@probe: the body declares {sorted(clash)}; the tail is supplied by the decorator (read it from ctx)"
        )
    tail = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in TAIL_DEFAULTS.items()]
    return sig.replace(parameters=params + tail + var_kw)


def probe(name: str, *, case: Callable | None = None, tags: Tags | None = None):
    """Register ``func`` as the probe ``name`` and give it the keyword tail and the contract.

    The body must take a keyword-only ``ctx`` and return an ``xarray.DataArray`` or ``Dataset``.

    >>> import torch, workbench as wb
    >>> from workbench.registry import probe
    >>> @probe("example.mean_output", tags=wb.Tags(inputs="pair", uses=("mode", "device")))
    ... def mean_output(model, loss_fn, data, *, ctx):
    ...     obj = ctx.objective()
    ...     x, _ = obj.data.materialize()
    ...     import xarray as xr
    ...     return xr.DataArray(float(obj.call(x).detach().mean()), name="mean_output")
    >>> m = torch.nn.Linear(3, 2)
    >>> r = mean_output(m, torch.nn.MSELoss(), (torch.ones(4, 3), torch.zeros(4, 2)))
    >>> r.attrs["probe"], "model_fingerprint" in r.attrs
    ('example.mean_output', True)
    """
    tags = tags or Tags()

    def deco(func):
        sig = inspect.signature(func)
        if "ctx" not in sig.parameters:
            raise TypeError(f"@probe({name!r}): the body must take a keyword-only argument ctx")
        body_sig = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "ctx"])
        public = _tail_signature(sig)

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            tail_kw = {k: kwargs.pop(k) for k in TAIL if k in kwargs}
            tail = check_tail(**{**TAIL_DEFAULTS, **tail_kw})
            for k, v in tail_kw.items():
                if k in OPTIONAL and k not in tags.uses and v is not TAIL_DEFAULTS[k] and v != TAIL_DEFAULTS[k]:
                    raise ValueError(
                        f"{k}: {name} does not use {k!r} (it uses {', '.join(tags.uses) or 'none'} of "
                        f"the keyword tail); leave it at its default {TAIL_DEFAULTS[k]!r}"
                    )
            if "task" in kwargs and "loss_fn" in body_sig.parameters:  # task="causal-lm": loss_fn, named for it
                if "loss_fn" in kwargs or len(args) > 1:
                    raise TypeError(f"task: {name} got both task= and loss_fn; give the task as one of them")
                kwargs["loss_fn"] = kwargs.pop("task")
            try:
                bound = body_sig.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{name}: {e}") from None
            bound.apply_defaults()
            a = bound.arguments
            if "loss_fn" in a and "data" in a:  # a task (name) as the loss: its loss_fn, and its batches of raw data
                a["loss_fn"], a["data"] = tasks.resolve(a["loss_fn"], a["data"], a.get("model"))
            arguments = dict(bound.arguments)
            ctx = Context(name, tail, arguments)
            mods = list(
                {id(m): m for m in _modules_in([arguments[k] for k in SUBJECTS if k in arguments], [])}.values()
            )
            ctx.modules = mods
            if tail["device"] is not None:
                _check_device(mods, tail["device"])
            with surfacing_interrupts(), _locked(mods, ctx):
                return _run(func, ctx, tail, bound, arguments, mods, body_sig, tags)

        wrapper.__signature__ = public
        wrapper.probe_name = name
        wrapper.tags = tags
        PROBES[name] = ProbeInfo(name, wrapper, case, tags)
        return wrapper

    return deco


def _run(func, ctx: Context, tail: dict, bound, arguments: dict, mods: list, body_sig, tags: Tags):
    """The body under the thread count, the state guard and RNG isolation; then provenance."""
    drop_stale_modes()  # an attention capture an earlier interrupt left active
    depth = function_mode_depth()
    try:
        return _run_body(func, ctx, tail, bound, arguments, body_sig, tags)
    finally:
        ctx.release()  # no reference cycle (Objective -> ctx.check_cancel -> ctx) outlives the call
        drop_function_modes(depth)  # no attention capture left active by an interrupt in its enter / exit


def _run_body(func, ctx: Context, tail: dict, bound, arguments: dict, body_sig, tags: Tags):
    name = ctx.probe
    t0 = time.perf_counter()
    try:
        with threads(), preserve(*ctx.modules), isolated_rng(ctx.seed):
            ctx.check_cancel()
            out = func(*bound.args, ctx=ctx, **bound.kwargs)
    except Exception as e:
        hidden = interrupt_in(e)  # a Ctrl-C that torch's C++ code turned into a RuntimeError
        if hidden is not None and hidden is not e:
            raise hidden from e
        raise
    if not isinstance(out, (xr.DataArray, xr.Dataset)):
        raise TypeError(f"@probe({name!r}) must return an xarray DataArray or Dataset, got {type(out).__name__}")
    recorded = {k: _describe(v) for k, v in arguments.items() if k not in SUBJECTS}
    var_kw = [p.name for p in body_sig.parameters.values() if p.kind is p.VAR_KEYWORD]
    for k in var_kw:  # forward kwargs of a model call: names only (they may hold tensors)
        recorded[k] = sorted(arguments.get(k, {}))
    recorded.update({k: tail[k] for k in ("mode", "params", "seed") if k in tags.uses})
    if "device" in tags.uses:
        recorded["device"] = None if tail["device"] is None else str(tail["device"])
    recorded.update(ctx.extra_params)
    attrs = provenance(
        name,
        recorded,
        _subject_model(arguments),
        ctx.data,
        ctx.seed if tags.stochastic else None,
        time.perf_counter() - t0,
    )
    if isinstance(arguments.get("model_b"), nn.Module):
        attrs["model_b_fingerprint"] = model_fingerprint(arguments["model_b"])
    out.attrs.update(attrs)
    return out


def _subject_model(arguments: dict) -> nn.Module | None:
    """The model a result is about (its fingerprint is recorded): ``model``, ``model_a``, or ``models`` when
    it is a single module; None for a list or dict of models."""
    for k in ("model", "model_a", "models"):
        if isinstance(arguments.get(k), nn.Module):
            return arguments[k]
    return None


def _describe(v):
    """probe_params entries: plain values as they are; models, tensors and arrays by a short description."""
    if isinstance(v, (nn.Module, torch.Tensor, np.ndarray)) or callable(v):
        return v  # results._jsonable describes them
    if isinstance(v, (list, tuple)) and len(v) > 64:
        return f"<{type(v).__name__} of {len(v)}>"
    return v


def _check_device(mods, device: torch.device) -> None:
    for m in mods:
        for p in m.parameters():
            if p.device.type != device.type or (
                device.index is not None and p.device.index not in (None, device.index)
            ):
                raise ValueError(
                    f"device: the model's parameters are on {p.device}, not {device}; move the model "
                    f"first (model.to({str(device)!r})) or leave device=None to use the model's device"
                )
            break


#: the probe packages, in the order a reader meets them (importing one registers its probes)
PROBE_PACKAGES = (
    "evaluate", "landscape", "curvature", "sharpness", "attention", "transfer",
    "weightspace", "compare", "monitor", "study",
)  # fmt: skip


def probes() -> dict[str, ProbeInfo]:
    """All registered probes (importing the probe packages registers them)."""
    import importlib

    for mod in PROBE_PACKAGES:
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise
    return dict(PROBES)
