"""Interrupts, threads and the state guard: real SIGINTs at many points of every registered probe, a widget
job and a probe on the same model, and train mode that never moves BatchNorm running statistics."""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time

import pytest
import torch
import xarray as xr
from torch import nn

import workbench as wb
from workbench import landscape, sharpness
from workbench.registry import Cancelled, lock_holder, probes
from workbench.state import diff_state, snapshot
from workbench.testing import After, AtCall, AtLine, case_of, hostile_case, interrupt_call, under_functorch

PROBES = probes()
CALL = "torch.nn.modules.module:Module._call_impl"  # every module call, functional or not
SWAP = "torch.nn.utils._named_member_accessor:swap_tensor"  # one slot of functional_call's parameter swap
REPARAM = "torch.nn.utils.stateless:_reparametrize_module"  # the whole swap (context manager)
RESTORE = "workbench.state:restore"  # the state guard putting the model back
#: model-only probes run no forward pass: aim at the linear algebra instead
MODEL_ONLY = {
    "landscape.pca_directions": "torch.linalg:eigh",
    "attention.qk_spectral_norms": "torch.linalg:matrix_norm",
    "weightspace.weight_spectra": "torch.linalg:svdvals",
}
#: the torch.func engines: the landscape's vmap over grid points (the HVP uses torch.func by default)
EXTRA = {"landscape.slice_1d": dict(engine="vmap"), "landscape.slice_2d": dict(engine="vmap")}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Cases built between probe calls at the probes' own thread count: no thread-pool rebuild per call
    (tens of ms a call on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(wb.config.get_threads())
    yield
    torch.set_num_threads(before)


def _call(name):
    info = PROBES[name]
    args, kwargs = case_of(info)
    return info.func, args, {**kwargs, **EXTRA.get(name, {})}


def _count(name, aim, first=None):
    interrupt_call(*_call(name), first or aim, aim if first else None)
    return aim.count


def _spread(n, k=8):
    """Up to k positions in 1..n, evenly spaced, first and last included."""
    return sorted({1 + round(i * (n - 1) / max(1, k - 1)) for i in range(k)}) if n else []


def trials(name):
    """(aim, second) pairs for one probe: timers from early to late, module calls from the first to the last,
    the parameter swap (single slots, and inside the swap; under torch.func where it runs), and a second
    SIGINT at lines of the state guard's restore."""
    func, args, kwargs = _call(name)
    func(*args, **kwargs)  # warm
    func, args, kwargs = _call(name)
    t0 = time.perf_counter()
    func(*args, **kwargs)
    t = time.perf_counter() - t0
    out = [(After((i + 0.5) / 12 * t), None) for i in range(12)]
    target = MODEL_ONLY.get(name, CALL)
    n = _count(name, AtCall(target, None))
    assert n > 0, f"{name}: the case never calls {target}"
    out += [(AtCall(target, k), None) for k in _spread(n)]
    n_swap = _count(name, AtCall(SWAP, None))
    out += [(AtCall(SWAP, k), None) for k in _spread(n_swap)[1:]]
    n_reparam = _count(name, AtCall(REPARAM, None))
    out += [(AtCall(REPARAM, k, phase="inside"), None) for k in _spread(n_reparam, 3)]
    n_func = _count(name, AtCall(SWAP, None, when=under_functorch))
    out += [(AtCall(SWAP, k, when=under_functorch), None) for k in _spread(n_func)]
    # the first SIGINT mid-swap (the guard then has slots to put back), or at the middle module call
    first = (SWAP, max(1, (n_swap + 1) // 2)) if n_swap else (target, max(1, (n + 1) // 2))
    lines = _count(name, AtLine(RESTORE, None), first=AtCall(*first))
    assert lines > 0, f"{name}: the state guard's restore never ran"
    out += [(AtCall(*first), AtLine(RESTORE, k)) for k in _spread(lines)]
    return out


@pytest.mark.parametrize("name", sorted(PROBES))
def test_interrupts_reach_the_caller_and_harm_nothing(name):
    outcomes = [interrupt_call(*_call(name), aim, second) for aim, second in trials(name)]
    aimed = [o for o in outcomes if not o.aim.startswith("after")]
    assert [o.aim for o in aimed if not o.delivered] == [], f"{name}: aimed SIGINTs never arrived"
    swallowed = [(o.aim, o.error) for o in outcomes if o.swallowed]
    harmed = [(o.aim, o.harm[:3]) for o in outcomes if o.harmed]
    errors = [(o.aim, o.error) for o in outcomes if o.error and not o.delivered]
    print(
        f"{name}: {len(outcomes)} trials, {sum(o.delivered > 0 for o in outcomes)} interrupted, "
        f"{len(swallowed)} swallowed, {len(harmed)} harmed"
    )
    assert not errors, f"{name}: calls failed without an interrupt: {errors}"
    assert not swallowed, f"{name}: interrupts swallowed: {swallowed}"
    assert not harmed, f"{name}: interrupted calls harmed the model or globals: {harmed}"


@pytest.mark.parametrize("name", ["curvature.hessian_eigenvalues", "curvature.hessian_trace"])
def test_the_hvp_engine_never_swallows_an_interrupt(name):
    """Every parameter swap under torch.func (the vjp of grad, vmapped: engine="func"; the default for the Hessian
    is double backward, covered by the sweep above) and timers across the whole call."""
    func, args, kwargs = _call(name)
    call = (func, args, {**kwargs, "engine": "func"})
    aim = AtCall(SWAP, None, when=under_functorch)
    interrupt_call(*call, aim)
    n = aim.count
    assert n > 0
    aims = [AtCall(SWAP, k, when=under_functorch) for k in range(1, n + 1, max(1, n // 40))]
    aims += [After(0.002 * i) for i in range(1, 21)]
    outcomes = [interrupt_call(*call, a) for a in aims]
    assert sum(o.delivered > 0 for o in outcomes) >= len(aims) - 20
    assert [o.aim for o in outcomes if o.swallowed] == []
    assert [(o.aim, o.harm) for o in outcomes if o.harmed] == []


def test_an_interrupt_wrapped_in_a_runtime_error_is_not_a_fallback():
    """torch may surface an interrupt as a RuntimeError whose __context__ / __cause__ is the
    KeyboardInterrupt: the HVP's fallback engine must not take it for a failure of the first."""
    from workbench.curvature import HessianOperator
    from workbench.objective import Objective

    m, lf, d = hostile_case()
    op = HessianOperator(Objective(m, lf, d))

    def broken(V):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("an error in the transform") from e

    setattr(op, f"_{op.auto_order[0]}", broken)  # the engine "auto" tries first
    with pytest.raises(KeyboardInterrupt):
        op.matvec(torch.ones(op.shape[0]))
    assert op.engine == "auto"


# -- one model, one probe at a time --------------------------------------------------------------------


def _job(model, lf, data, out, started):
    def progress(done, total):
        started.set()

    try:
        out["slice"] = landscape.slice_2d(model, lf, data, steps=9, progress=progress)
    except Exception as e:  # a failed job is a corrupted result
        out["error"] = e
    finally:
        started.set()


def test_a_widget_job_and_a_probe_on_the_same_model_are_serialised():
    m, lf, d = hostile_case()
    ref_slice = landscape.slice_2d(m, lf, d, steps=9, progress=False)
    ref_eig = sharpness.hessian_eigenvalues(m, lf, d, k=2, progress=False)
    state = snapshot(m)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # the two threads interleave finely, as on a busy machine
    corrupted_models = corrupted_results = 0
    try:
        for _ in range(10):
            out, started = {}, threading.Event()
            job = threading.Thread(target=_job, args=(m, lf, d, out, started), daemon=True)
            eig = None
            with contextlib.redirect_stderr(io.StringIO()):
                job.start()
                started.wait(5)
                try:
                    eig = sharpness.hessian_eigenvalues(m, lf, d, k=2, progress=False)
                except Exception:  # a corrupted model may make it fail: a corrupted result
                    pass
                job.join(30)
            corrupted_models += bool(diff_state(state, m))
            same = [
                a is not None and a.drop_attrs().identical(b.drop_attrs())
                for a, b in ((out.get("slice"), ref_slice), (eig, ref_eig))
            ]
            corrupted_results += not all(same)
            if diff_state(state, m):  # start the next run from the intact model
                m, lf, d = hostile_case()
                state = snapshot(m)
    finally:
        sys.setswitchinterval(old)
    print(f"concurrency: {corrupted_models} of 10 models corrupted, {corrupted_results} of 10 results")
    assert (corrupted_models, corrupted_results) == (0, 0)
    assert lock_holder(m) is None


class _Held:
    """A background probe that holds the model's lock until ``release`` is set."""

    def __init__(self, model, lf, data):
        self.release, self.started = threading.Event(), threading.Event()

        def progress(done, total):
            self.started.set()
            self.release.wait(10)

        self.thread = threading.Thread(
            target=lambda: landscape.slice_1d(model, lf, data, steps=3, progress=progress), daemon=True
        )
        self.thread.start()
        assert self.started.wait(10)

    def done(self):
        self.release.set()
        self.thread.join(10)


def test_a_waiting_probe_says_which_probe_holds_the_model_and_then_runs():
    m, lf, d = hostile_case()
    held = _Held(m, lf, d)
    assert lock_holder(m).startswith("landscape.slice_1d")
    threading.Timer(0.8, held.done).start()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        r = wb.evaluate(m, lf, d, progress=False)
    assert "landscape.slice_1d" in err.getvalue() and "waits" in err.getvalue()
    assert err.getvalue().count("\n") == 1
    assert isinstance(r, xr.Dataset) and lock_holder(m) is None


def test_ctrl_c_and_cancel_end_the_wait():
    m, lf, d = hostile_case()
    held = _Held(m, lf, d)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            o = interrupt_call(wb.evaluate, (m, lf, d), dict(progress=False), After(0.2))
            assert o.reached and o.seconds < 1.0
            ev = threading.Event()
            threading.Timer(0.2, ev.set).start()
            t0 = time.perf_counter()
            with pytest.raises(Cancelled):
                wb.evaluate(m, lf, d, progress=False, cancel=ev)
            assert time.perf_counter() - t0 < 1.0
    finally:
        held.done()
    assert lock_holder(m) is None
    wb.evaluate(m, lf, d, progress=False)


def test_probes_on_the_same_models_in_two_threads_do_not_deadlock():
    a, lf, d = hostile_case(0)
    b = hostile_case(1)[0]
    res = {}

    def job(models, key):
        for _ in range(3):
            res[key] = landscape.interpolate(*models, lf, d, coords=[0.0, 1.0], progress=False)

    t = threading.Thread(target=job, args=((a, b), "ab"), daemon=True)
    t.start()
    job((b, a), "ba")
    t.join(30)
    assert not t.is_alive() and set(res) == {"ab", "ba"}


# -- train mode never moves running statistics -------------------------------------------------------------


class _BNWatch:
    """Forward hooks that check, after every BatchNorm call, that the model's own running statistics (the
    buffer objects, not what functional_call swapped in) still hold their values."""

    def __init__(self, model):
        self.bufs = [(b, b.detach().clone(), b._version) for b in model.buffers()]
        self.writes = 0
        self.handles = [
            mod.register_forward_hook(self.check)
            for mod in model.modules()
            if isinstance(mod, nn.modules.batchnorm._NormBase)
        ]
        assert self.handles

    def check(self, *_):
        self.writes += sum(not torch.equal(b, v) for b, v, _ in self.bufs)

    def close(self):
        for h in self.handles:
            h.remove()
        return self.writes + sum(not torch.equal(b, v) or b._version != ver for b, v, ver in self.bufs)


class _BNAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.bn = nn.BatchNorm1d(16)
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        h = self.bn(self.embed(x).transpose(1, 2)).transpose(1, 2)
        return self.att(h, h, h)[0]


def test_attention_train_mode_leaves_batchnorm_statistics_alone(monkeypatch):
    from workbench.attention import attention_stats

    for mb in ("32", "0"):
        monkeypatch.setenv("WORKBENCH_SNAPSHOT_MB", mb)
        m = _BNAttention().train()
        w = _BNWatch(m)
        attention_stats(m, torch.randn(4, 5, 6), mode="train", progress=False)
        assert w.close() == 0


@pytest.mark.parametrize("name", sorted(n for n, i in PROBES.items() if "mode" in i.tags.uses))
def test_train_mode_never_updates_running_statistics(name, monkeypatch):
    monkeypatch.setenv("WORKBENCH_SNAPSHOT_MB", "0")
    info = PROBES[name]
    args, kwargs = case_of(info)
    mods = [a for a in args if isinstance(a, nn.Module)]
    if not mods:  # a list or dict of models
        mods = list(args[0].values()) if isinstance(args[0], dict) else list(args[0])
    bn_models = [m for m in mods if any(isinstance(x, nn.modules.batchnorm._NormBase) for x in m.modules())]
    watches = [_BNWatch(m) for m in bn_models]
    info.func(*args, **{**kwargs, "mode": "train"})
    assert [w.close() for w in watches] == [0] * len(watches)


def test_a_function_mode_left_on_the_stack_by_an_interrupt_is_dropped():
    """A Ctrl-C between a TorchFunctionMode's push and its ``with`` block (or in its exit before the pop) would
    leave e.g. the attention capture active for every later torch call; the decorator drops what the probe
    left above the stack depth it found."""
    from workbench.function_modes import function_mode_depth
    from workbench.registry import Tags, probe

    @probe("test.leaky_mode", tags=Tags(inputs="model", uses=()), case=None)
    def leaky(model, *, ctx):
        torch.overrides.TorchFunctionMode().__enter__()  # pushed, never exited: the interrupt window
        raise KeyboardInterrupt

    before = function_mode_depth()
    with pytest.raises(KeyboardInterrupt):
        leaky(torch.nn.Linear(2, 2))
    assert function_mode_depth() == before
    assert torch.ones(2).add(1).tolist() == [2.0, 2.0]


def test_a_stale_attention_capture_is_dropped_when_the_next_probe_starts():
    """A capture left on the stack outside any probe (its exit never ran) would intercept every torch call of
    the next probe; the next probe drops workbench's own stale modes first, and keeps a user's own mode."""
    from workbench.attention.capture import Capture
    from workbench.function_modes import function_mode_depth

    class UserMode(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    m, lf, d = hostile_case()
    before = function_mode_depth()
    with UserMode():  # the user's own mode stays
        Capture(m, None, 128, None).__enter__()  # a capture whose exit never ran
        assert function_mode_depth() == before + 2
        loss = float(wb.evaluate(m, lf, d, progress=False).loss)
        assert function_mode_depth() == before + 1
    assert function_mode_depth() == before and loss == float(wb.evaluate(m, lf, d, progress=False).loss)
