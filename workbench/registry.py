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

and applies, in this order: the configured thread count (:mod:`workbench.config`), RNG isolation
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

Registration records :class:`Tags` (what a probe needs) and an optional *contract case*, a small
call on a hostile model that :mod:`workbench.testing` runs; without one, a case is built from the tags.
"""

from __future__ import annotations

import functools
import inspect
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr
from torch import nn

from .config import threads
from .results import model_fingerprint, provenance
from .state import preserve
from .tail import OPTIONAL, TAIL, TAIL_DEFAULTS, Cancelled, Context, check_tail  # noqa: F401  (the tail, re-exported)

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


def _rng_states():
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def _seed_global(seed: int) -> None:
    # torch.manual_seed also queues lazy seeding of every accelerator backend (0.3 ms a call): seed the
    # CPU generator, and CUDA's only when it is in use
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def _set_rng_states(states) -> None:
    cpu, cuda, npy, py = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
    np.random.set_state(npy)
    random.setstate(py)


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
            try:
                bound = body_sig.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{name}: {e}") from None
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            ctx = Context(name, tail, arguments)
            mods = list(
                {id(m): m for m in _modules_in([arguments[k] for k in SUBJECTS if k in arguments], [])}.values()
            )
            if tail["device"] is not None:
                _check_device(mods, tail["device"])
            t0 = time.perf_counter()
            with threads(), preserve(*mods):
                rng = _rng_states()
                try:
                    _seed_global(ctx.seed)  # train-mode dropout: reproducible, and the user's stream untouched
                    ctx.check_cancel()
                    out = func(*bound.args, ctx=ctx, **bound.kwargs)
                finally:
                    _set_rng_states(rng)
            if not isinstance(out, (xr.DataArray, xr.Dataset)):
                raise TypeError(
                    f"@probe({name!r}) must return an xarray DataArray or Dataset, got {type(out).__name__}"
                )
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

        wrapper.__signature__ = public
        wrapper.probe_name = name
        wrapper.tags = tags
        PROBES[name] = ProbeInfo(name, wrapper, case, tags)
        return wrapper

    return deco


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


def probes() -> dict[str, ProbeInfo]:
    """All registered probes (importing the probe packages registers them)."""
    import importlib

    for mod in ("evaluate", "landscape", "curvature", "sharpness", "attention", "transfer"):
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise
    return dict(PROBES)
