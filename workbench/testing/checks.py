"""The probe contract as public checks (scikit-learn's ``check_estimator`` is the model).

:func:`check_probe` runs every check on one probe; :func:`parametrize_with_probe_checks` makes one
pytest case per (probe, check). A probe's call comes from its registered contract case, or is built
from its :class:`~workbench.registry.Tags` on the hostile models of :mod:`workbench.testing.models`.

The checks: the keyword tail is in the signature with the shared defaults; the result is xarray
with provenance; the model is bitwise unchanged (parameters, buffers, the same Parameter objects,
train/eval flags, requires_grad, ``.grad``) after success, after an exception and after
``KeyboardInterrupt`` planted at the first, middle and last forward pass, with no hook left behind;
grad mode, the global torch / numpy / Python RNG states and a bystander model are untouched; two
calls give identical results; the probe never writes the weights even when nothing is copied
(``WORKBENCH_SNAPSHOT_MB=0``); a set ``cancel`` event stops it with
:class:`~workbench.registry.Cancelled`; ``progress=False`` prints nothing.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import random
import threading
from collections.abc import Callable

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..registry import PROBES, TAIL_DEFAULTS, Cancelled, ProbeInfo, Tags
from ..results import model_fingerprint
from ..state import diff_state, snapshot
from .models import Trap, hostile_case, hostile_data, hostile_model, hostile_transformer


def _info(func) -> ProbeInfo:
    if isinstance(func, ProbeInfo):
        return func
    name = getattr(func, "probe_name", None)
    if name is None or name not in PROBES:
        raise TypeError(
            f"check_probe: {getattr(func, '__name__', func)!r} is not a probe; decorate it with "
            "@workbench.probe(name, tags=...)"
        )
    return PROBES[name]


def default_case(tags: Tags) -> tuple[tuple, dict]:
    """A small call of a probe with these tags on hostile models (fresh objects on every call)."""
    if tags.inputs == "model":
        return (hostile_transformer()[0] if tags.attention else hostile_model(),), {}
    if tags.attention or tags.inputs == "inputs":
        m, x, mask = hostile_transformer()
        return (m, x), dict(src_key_padding_mask=mask)
    if tags.inputs == "two_models":
        return (hostile_model(0), hostile_model(1), nn.CrossEntropyLoss(), hostile_data()), {}
    if tags.inputs == "models":
        return ([hostile_model(0), hostile_model(1)], nn.CrossEntropyLoss(), hostile_data()), {}
    m, lf, d = hostile_case()
    return (m, lf, d), {}


def case_of(info: ProbeInfo) -> tuple[tuple, dict]:
    args, kwargs = info.case() if info.case is not None else default_case(info.tags)
    kwargs = dict(kwargs)
    kwargs.setdefault("progress", False)
    return args, kwargs


def _modules(args, kwargs) -> list[nn.Module]:
    out = []
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, nn.Module):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += [m for m in v if isinstance(m, nn.Module)]
        elif isinstance(v, dict):
            out += [m for m in v.values() if isinstance(m, nn.Module)]
    return out


def _leaf_with_forward(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if len(list(m.children())) == 0 and any(True for _ in m.parameters())][-1]


def _assert_unchanged(states, mods, what):
    for s, m in zip(states, mods):
        d = diff_state(s, m)
        assert d == [], f"{what}: the model changed: {d[:5]}"
        assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules()), (
            f"{what}: a hook was left on the model"
        )


def _rng_state():
    return torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()


# -- the checks -------------------------------------------------------------------------------------


def check_signature_tail(info: ProbeInfo) -> None:
    """The keyword tail is in the signature, keyword-only, with the shared defaults."""
    sig = inspect.signature(info.func)
    for k, v in TAIL_DEFAULTS.items():
        p = sig.parameters.get(k)
        assert p is not None, f"{info.name}: the keyword tail lacks {k!r}"
        assert p.kind is p.KEYWORD_ONLY and p.default == v, f"{info.name}: {k!r} must be keyword-only, default {v!r}"


def check_returns_xarray_with_provenance(info: ProbeInfo) -> None:
    """Success: xarray with provenance, models bitwise unchanged, grad mode and global RNGs untouched,
    a bystander model untouched."""
    args, kwargs = case_of(info)
    mods = _modules(args, kwargs)
    assert mods, f"{info.name}: a contract case must pass at least one model"
    bystander = hostile_model(7)
    fp = model_fingerprint(bystander)
    states = [snapshot(m) for m in mods]
    rng = _rng_state()
    out = info.func(*args, **kwargs)
    _assert_unchanged(states, mods, info.name)
    assert torch.is_grad_enabled(), f"{info.name}: grad mode was left off"
    after = _rng_state()
    assert torch.equal(rng[0], after[0]), f"{info.name}: the global torch RNG state changed"
    assert np.array_equal(rng[1], after[1]), f"{info.name}: the global numpy RNG state changed"
    assert rng[2] == after[2], f"{info.name}: the global Python RNG state changed"
    assert model_fingerprint(bystander) == fp, f"{info.name}: a model that was not passed changed"
    assert isinstance(out, (xr.DataArray, xr.Dataset)), f"{info.name}: returned {type(out).__name__}, not xarray"
    for key in ("probe", "probe_params", "versions", "wall_time_s", "created"):
        assert key in out.attrs, f"{info.name}: result lacks provenance attr {key!r}"
    assert out.attrs["probe"] == info.name
    recorded = json.loads(out.attrs["probe_params"])
    for k in ("mode", "params", "seed"):
        if k in info.tags.uses:
            assert k in recorded, f"{info.name}: probe_params lacks the tail keyword {k!r}"


def check_failure_leaves_model_unchanged(info: ProbeInfo) -> None:
    """An exception and a KeyboardInterrupt at the first, middle and last forward pass reach the caller
    and leave every model bitwise unchanged with no hook behind."""
    args, kwargs = case_of(info)
    mods = _modules(args, kwargs)
    counter = Trap(_leaf_with_forward(mods[0]), RuntimeError("never"), at=10**9)
    try:
        info.func(*args, **kwargs)
    finally:
        counter.remove()
    n = counter.calls
    if n == 0:
        assert info.tags.inputs in ("model", "models"), f"{info.name}: the case never runs the first model's forward"
        return  # weights only: no forward pass to plant a failure in
    for exc in (RuntimeError("planted failure"), KeyboardInterrupt()):
        for at in sorted({1, max(1, n // 2), n}):
            args, kwargs = case_of(info)
            mods = _modules(args, kwargs)
            states = [snapshot(m) for m in mods]
            trap = Trap(_leaf_with_forward(mods[0]), exc, at=at)
            try:
                info.func(*args, **kwargs)
            except type(exc):
                pass
            else:
                raise AssertionError(f"{info.name}: {type(exc).__name__} at forward {at} did not reach the caller")
            finally:
                trap.remove()
            _assert_unchanged(states, mods, f"{info.name} after {type(exc).__name__} at forward {at}")
            assert torch.is_grad_enabled(), f"{info.name}: grad mode was left off after {type(exc).__name__}"


def _without_timings(r):
    """A result without its wall-time variables (``units == "s"``), which no two runs share."""
    if isinstance(r, xr.Dataset):
        r = r.drop_vars([k for k, v in r.data_vars.items() if v.attrs.get("units") == "s"])
    return r.drop_attrs()


def check_deterministic(info: ProbeInfo) -> None:
    """Two calls with the same arguments give identical values (wall times aside) and provenance."""
    if not info.tags.deterministic:
        return
    a = info.func(*case_of(info)[0], **case_of(info)[1])
    b = info.func(*case_of(info)[0], **case_of(info)[1])
    xr.testing.assert_identical(_without_timings(a), _without_timings(b))
    for k in ("probe_params", "model_fingerprint", "data_fingerprint", "seed"):
        assert a.attrs.get(k) == b.attrs.get(k), f"{info.name}: attr {k!r} differs between identical calls"


def check_train_flags_kept(info: ProbeInfo) -> None:
    """Per-module train/eval flags are kept (not a blanket train() or eval()), in both modes."""
    for mode in ("eval", "train") if "mode" in info.tags.uses else ("eval",):
        args, kwargs = case_of(info)
        if "mode" in info.tags.uses:
            kwargs["mode"] = mode
        mods = _modules(args, kwargs)
        flags = [[x.training for x in m.modules()] for m in mods]
        info.func(*args, **kwargs)
        assert flags == [[x.training for x in m.modules()] for m in mods], f"{info.name}: train flags changed"


def check_no_copy_for_large_models(info: ProbeInfo) -> None:
    """With ``WORKBENCH_SNAPSHOT_MB=0`` nothing is copied: the probe itself must never write the weights."""
    old = os.environ.get("WORKBENCH_SNAPSHOT_MB")
    os.environ["WORKBENCH_SNAPSHOT_MB"] = "0"
    try:
        args, kwargs = case_of(info)
        mods = _modules(args, kwargs)
        states = [snapshot(m, copy=True) for m in mods]
        info.func(*args, **kwargs)  # raises ModelModifiedError if the probe wrote in place
        _assert_unchanged(states, mods, info.name)
    finally:
        if old is None:
            os.environ.pop("WORKBENCH_SNAPSHOT_MB", None)
        else:
            os.environ["WORKBENCH_SNAPSHOT_MB"] = old


def check_cancel(info: ProbeInfo) -> None:
    """A ``cancel`` event that is set stops the probe with Cancelled, the model unchanged."""
    args, kwargs = case_of(info)
    mods = _modules(args, kwargs)
    states = [snapshot(m) for m in mods]
    ev = threading.Event()
    ev.set()
    try:
        info.func(*args, **kwargs, cancel=ev)
    except Cancelled:
        pass
    else:
        raise AssertionError(f"{info.name}: a set cancel event did not stop it")
    _assert_unchanged(states, mods, f"{info.name} after cancel")


def check_progress_silent(info: ProbeInfo) -> None:
    """``progress=False`` writes nothing to stderr or stdout."""
    args, kwargs = case_of(info)
    kwargs["progress"] = False
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        info.func(*args, **kwargs)
    assert "it/s" not in err.getvalue() and "%|" not in err.getvalue(), (
        f"{info.name}: a progress bar with progress=False"
    )


def check_bad_tail_is_named(info: ProbeInfo) -> None:
    """Nonsense in the keyword tail is a clear error naming the keyword."""
    args, kwargs = case_of(info)
    for k, bad in (("mode", "evaluation"), ("seed", -1), ("cancel", 3)):
        try:
            info.func(*args, **{**kwargs, k: bad})
        except (ValueError, TypeError) as e:
            assert str(e).startswith(f"{k}:"), f"{info.name}: the error for a bad {k!r} does not name it: {e}"
        else:
            raise AssertionError(f"{info.name}: {k}={bad!r} was accepted")


CHECKS: tuple[Callable[[ProbeInfo], None], ...] = (
    check_signature_tail,
    check_returns_xarray_with_provenance,
    check_failure_leaves_model_unchanged,
    check_deterministic,
    check_train_flags_kept,
    check_no_copy_for_large_models,
    check_cancel,
    check_progress_silent,
    check_bad_tail_is_named,
)


def probe_checks(func) -> list[Callable[[], None]]:
    """The checks of one probe, each a zero-argument callable named after its check."""
    info = _info(func)
    out = []
    for chk in CHECKS:

        def run(chk=chk):
            chk(info)

        run.__name__ = chk.__name__
        out.append(run)
    return out


def check_probe(func) -> None:
    """Run every contract check on ``func`` (a probe, or its :class:`~workbench.registry.ProbeInfo`);
    raises AssertionError naming the probe and what broke.

    >>> import workbench as wb
    >>> from workbench.testing import check_probe
    >>> check_probe(wb.evaluate)
    """
    for run in probe_checks(func):
        run()


def parametrize_with_probe_checks(funcs):
    """A pytest decorator: one test case per (probe, check), with ids ``probe-check``::

    @parametrize_with_probe_checks([my_probe])
    def test_my_probe(probe, check):
        check(probe)
    """
    import pytest

    cases, ids = [], []
    for f in funcs:
        info = _info(f)
        for chk in CHECKS:
            cases.append((info, chk))
            ids.append(f"{info.name}-{chk.__name__.removeprefix('check_')}")
    return pytest.mark.parametrize(("probe", "check"), cases, ids=ids)
