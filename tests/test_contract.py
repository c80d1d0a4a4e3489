"""The probe contract suite, in the spirit of scikit-learn's estimator checks.

Every registered probe is run on a hostile model (train mode with one module in eval,
BatchNorm with moved running statistics, dropout, a frozen layer, stale .grad) and must leave
it bitwise unchanged after success, after a planted exception, and after KeyboardInterrupt; be
deterministic; and return xarray with provenance.
"""
import pytest
import torch
import xarray as xr
from torch import nn

from workbench.registry import probes
from workbench.state import diff_state, snapshot
from workbench.testing import Trap

PROBES = probes()


def _modules(args, kwargs):
    out = []
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, nn.Module):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += [m for m in v if isinstance(m, nn.Module)]
    return out


def _leaf_with_forward(model):
    return [m for m in model.modules() if len(list(m.children())) == 0 and any(True for _ in m.parameters())][-1]


def test_registry_is_not_empty():
    assert {"evaluate", "landscape.slice_1d", "landscape.slice_2d", "landscape.interpolate", "attention.entropy",
            "sharpness.hessian_eigenvalues", "sharpness.sam_sharpness", "attention.attention_map"} <= set(PROBES)


@pytest.fixture(params=sorted(PROBES))
def info(request):
    info = PROBES[request.param]
    if info.case is None:
        pytest.fail(f"probe {info.name} registered without a contract case")
    return info


def test_success_leaves_model_bitwise_unchanged_and_returns_xarray(info):
    args, kwargs = info.case()
    mods = _modules(args, kwargs)
    assert mods, "a contract case must pass at least one model"
    states = [snapshot(m) for m in mods]
    out = info.func(*args, **kwargs)
    for s, m in zip(states, mods):
        assert diff_state(s, m) == []
    assert isinstance(out, (xr.DataArray, xr.Dataset))
    for key in ["probe", "probe_params", "model_fingerprint", "versions", "wall_time_s"]:
        assert key in out.attrs, f"{info.name} result lacks provenance attr {key!r}"


@pytest.mark.parametrize("exc", [RuntimeError("planted failure"), KeyboardInterrupt()], ids=["raise", "interrupt"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_failure_midway_leaves_model_bitwise_unchanged(info, exc, where):
    args, kwargs = info.case()
    mods = _modules(args, kwargs)
    leaf = _leaf_with_forward(mods[0])
    counter = Trap(leaf, RuntimeError("never"), at=10**9)
    try:
        info.func(*args, **kwargs)
    finally:
        counter.remove()
    n = counter.calls
    assert n >= 1
    at = {"first": 1, "middle": max(1, n // 2), "last": n}[where]
    args, kwargs = info.case()
    mods = _modules(args, kwargs)
    states = [snapshot(m) for m in mods]
    trap = Trap(_leaf_with_forward(mods[0]), exc, at=at)
    try:
        with pytest.raises(type(exc)):
            info.func(*args, **kwargs)
    finally:
        trap.remove()
    assert trap.calls >= 1
    for s, m in zip(states, mods):
        assert diff_state(s, m) == []
        assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules()), "a hook was left"


def test_deterministic(info):
    a = info.func(*info.case()[0], **info.case()[1])
    b = info.func(*info.case()[0], **info.case()[1])
    if info.deterministic:
        xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
        for k in ("probe_params", "model_fingerprint", "data_fingerprint", "seed"):
            assert a.attrs.get(k) == b.attrs.get(k)


def test_no_grad_leak_and_train_mode_kept(info):
    args, kwargs = info.case()
    m = _modules(args, kwargs)[0]
    assert m.training
    info.func(*args, **kwargs)
    assert m.training and not m.drop.training  # per-module flags, not a blanket train()/eval()
    assert torch.is_grad_enabled()


def test_contract_holds_without_copies_for_large_models(info, monkeypatch):
    """Above WORKBENCH_SNAPSHOT_MB nothing is copied: the probe itself must never write the weights."""
    monkeypatch.setenv("WORKBENCH_SNAPSHOT_MB", "0")
    args, kwargs = info.case()
    mods = _modules(args, kwargs)
    states = [snapshot(m, copy=True) for m in mods]
    info.func(*args, **kwargs)  # would raise ModelModifiedError if the probe wrote in place
    for s, m in zip(states, mods):
        assert diff_state(s, m) == []
