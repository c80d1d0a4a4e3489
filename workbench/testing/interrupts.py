"""Real Ctrl-C at chosen moments: the interrupt harness of the probe contract.

:func:`interrupt_call` runs a call in the main thread while another thread sends it a real ``SIGINT``
(``signal.pthread_kill``) at a moment given by an *aim*: :class:`After` (a delay), :class:`AtCall` (the
``k``-th call of a function, e.g. ``"torch.nn.utils._named_member_accessor:swap_tensor"`` inside
``functional_call``'s parameter swap, optionally only under ``vmap``/``jvp``: :func:`under_functorch`) or
:class:`AtLine` (the ``k``-th line run inside a function, e.g. ``"workbench.state:restore"``);
``second=`` sends another once the first arrived (Ctrl-C pressed twice). The trial's handler raises
:class:`DeliveredInterrupt`, a ``KeyboardInterrupt``. The :class:`Outcome` says whether a signal arrived
during the call, whether its ``KeyboardInterrupt`` reached the caller (otherwise it was *swallowed*), and
what the call left changed (:class:`Watch`): models bitwise, the same ``Parameter`` and buffer objects in
their slots, flags, ``requires_grad``, ``.grad``, hooks (per module and global), grad and inference mode,
torch function modes, functorch transforms and forward-AD levels, the global RNG states, torch's thread
count, the ``SIGINT`` handler and the models' locks.

>>> import workbench as wb
>>> from workbench.testing import AtCall, interrupt_call, tiny_classifier
>>> m, lf, d = tiny_classifier()
>>> second_module_call = AtCall("torch.nn.modules.module:Module._call_impl", 2)
>>> o = interrupt_call(wb.evaluate, (m, lf, d), dict(progress=False), second_module_call)
>>> o.delivered, o.reached, o.swallowed, o.harm
(1, True, False, [])
"""

from __future__ import annotations

import contextlib
import importlib
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..registry import lock_holder
from ..state import diff_state, snapshot


class DeliveredInterrupt(KeyboardInterrupt):
    """The ``KeyboardInterrupt`` raised by the harness's ``SIGINT`` handler."""


def under_functorch() -> bool:
    """True inside a ``torch.func`` transform (``vmap``, ``grad``, ``jvp``): swapped-in tensors are
    batched or wrapped tensors there."""
    return torch._C._functorch.peek_interpreter_stack() is not None


def _resolve(target: str):
    """``"pkg.module:Attr.name"`` -> (owner object, attribute name)."""
    mod, _, path = target.partition(":")
    if not path:
        raise ValueError(f"target: expected 'package.module:function', got {target!r}")
    owner = importlib.import_module(mod)
    *outer, attr = path.split(".")
    for a in outer:
        owner = getattr(owner, a)
    if not hasattr(owner, attr):
        raise ValueError(f"target: {mod} has no attribute {path!r}")
    return owner, attr


def _send() -> None:
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)


def send_sigint() -> None:
    """Send a real ``SIGINT`` to the main thread from another thread, and wait until it is sent (the handler
    then runs in the main thread at its next check, normally before this returns)."""
    t = threading.Thread(target=_send, name="workbench-sigint")
    t.start()
    t.join()


class Aim:
    """When to send a ``SIGINT``; subclasses arm themselves around the call (``arm`` / ``disarm``)."""

    fired = False
    count = 0
    after_first = False  # set on a ``second=`` aim: it fires only once the first signal arrived

    def arm(self, trial: _Trial) -> None:
        self.trial = trial

    def disarm(self) -> None:
        pass

    def ready(self) -> bool:
        return not self.fired and self.trial.active and (not self.after_first or self.trial.delivered > 0)

    def fire(self) -> None:
        if self.ready():
            self.fired = True
            send_sigint()


@dataclass
class After(Aim):
    """A timer thread sends ``SIGINT`` ``seconds`` after the call starts."""

    seconds: float

    def arm(self, trial):
        super().arm(trial)
        self.timer = threading.Thread(target=self._run, name="workbench-sigint-timer", daemon=True)
        self.timer.start()

    def _run(self):
        self.trial.go.wait()
        deadline = time.perf_counter() + self.seconds
        while time.perf_counter() < deadline and self.trial.active:
            time.sleep(min(1e-4, max(0.0, deadline - time.perf_counter())))
        if self.ready():
            self.fired = True
            _send()

    def disarm(self):
        self.trial.go.set()
        self.timer.join()

    def __str__(self):
        return f"after {self.seconds * 1000:.1f} ms"


class _Patched(Aim):
    """An aim that replaces ``target`` by ``self.wrap(original)`` while armed."""

    def arm(self, trial):
        super().arm(trial)
        self.count = 0
        self._owner, self._attr = _resolve(self.target)
        owner, attr = self._owner, self._attr
        self._orig = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        setattr(owner, attr, self.wrap(self._orig))

    def disarm(self):
        setattr(self._owner, self._attr, self._orig)

    def hit(self, counts: bool = True) -> None:
        """Count one event (main thread only); fire at the k-th."""
        if counts and threading.current_thread() is threading.main_thread():
            self.count += 1
            if self.k is not None and self.count == self.k:
                self.fire()


@dataclass
class AtCall(_Patched):
    """``SIGINT`` at the ``k``-th call (1-based) of ``target`` in the main thread (``k=None``: only count
    the calls); ``phase``: ``"enter"`` (before it runs) or ``"inside"`` (a context manager, once entered:
    for ``_reparametrize_module`` the parameters are swapped then)."""

    target: str
    k: int | None = 1
    phase: str = "enter"
    when: Callable[[], bool] | None = None

    def wrap(self, orig):
        aim = self

        @contextlib.contextmanager
        def inside(*a, **kw):
            counts = aim.when is None or aim.when()
            with orig(*a, **kw) as v:
                aim.hit(counts)
                yield v

        def enter(*a, **kw):
            aim.hit(aim.when is None or aim.when())
            return orig(*a, **kw)

        return inside if self.phase == "inside" else enter

    def __str__(self):
        return f"{self.target} call {self.k}{' (inside)' if self.phase == 'inside' else ''}"


@dataclass
class AtLine(_Patched):
    """``SIGINT`` at the ``k``-th line run while ``target`` runs (its own lines and those of everything it
    calls, torch's ``no_grad`` exit included) in the main thread; ``k=None`` only counts the lines."""

    target: str
    k: int | None = 1

    def wrap(self, orig):
        def tracer(frame, event, arg):
            if event == "line":
                self.hit()
            return tracer

        def traced(*a, **kw):
            old = sys.gettrace()
            sys.settrace(tracer)
            try:
                return orig(*a, **kw)
            finally:
                sys.settrace(old)

        return traced

    def __str__(self):
        return f"{self.target} line {self.k}"


# -- what a call may leave changed --------------------------------------------------------------------

_GLOBAL_HOOKS = [k for k in vars(torch.nn.modules.module) if k.startswith("_global_") and k.endswith("hooks")]


def _hooks(m: nn.Module) -> dict:
    return {k: tuple(v) for k, v in vars(m).items() if k.endswith("hooks") and isinstance(v, dict)}


def _forward_ad_free() -> bool:
    """True when torch has no forward-AD level entered (only one may be)."""
    try:
        torch._C._exit_dual_level(level=torch._C._enter_dual_level())
        return True
    except RuntimeError:
        return False


def _globals() -> dict:
    mod = torch.nn.modules.module
    return {
        "grad mode": torch.is_grad_enabled(),
        "inference mode": torch.is_inference_mode_enabled(),
        # a user's modes must stay; workbench's own (a stale attention capture) are dropped when a probe starts,
        # so none may be left after the call, whatever was there before
        "torch function modes": _function_modes(),
        "functorch transforms": torch._C._functorch.peek_interpreter_stack() is not None,
        "forward-AD level": (torch.autograd.forward_ad._current_level, _forward_ad_free()),
        "torch threads": torch.get_num_threads(),
        "global module hooks": {k: tuple(getattr(mod, k)) for k in _GLOBAL_HOOKS},
    }


def _rng() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _function_modes() -> tuple[int, bool]:
    """(the number of torch function modes that are not workbench's own, whether one of workbench's own is
    active)."""
    stack = [torch._C._get_function_stack_at(i) for i in range(torch._C._len_torch_function_stack())]
    own = [getattr(m, "workbench_owned", False) for m in stack]
    return own.count(False), any(own)


class Watch:
    """Everything a call must leave as it was, recorded now; :meth:`harm` lists what differs."""

    def __init__(self, models: Sequence[nn.Module]):
        self.models = list(models)
        self.states = [snapshot(m, copy=True) for m in self.models]
        self.slots = [
            [(mod, dict(mod._parameters), dict(mod._buffers), _hooks(mod)) for mod in m.modules()] for m in self.models
        ]
        self.globals = _globals()
        self.rng = _rng()

    def harm(self) -> list[str]:
        out = []
        for i, (m, s, slots) in enumerate(zip(self.models, self.states, self.slots)):
            out += [f"model {i}: {d}" for d in diff_state(s, m)]
            for mod, params, bufs, hooks in slots:
                for kind, was, now in (("parameter", params, mod._parameters), ("buffer", bufs, mod._buffers)):
                    if list(was) != list(now) or any(now[k] is not v for k, v in was.items()):
                        bad = [k for k in set(was) | set(now) if was.get(k) is not now.get(k)]
                        out.append(
                            f"model {i}: {type(mod).__name__} {kind} slots {bad} hold other objects "
                            f"({sorted({type(now.get(k)).__name__ for k in bad})})"
                        )
                if _hooks(mod) != hooks:
                    out.append(f"model {i}: a hook was left on {type(mod).__name__}")
            if lock_holder(m) is not None:
                out.append(f"model {i}: still locked by {lock_holder(m)}")
        now = _globals()
        modes, was = now.pop("torch function modes"), self.globals["torch function modes"]
        if modes[0] != was[0]:
            out.append(f"torch function modes changed: {was[0]} -> {modes[0]}")
        if modes[1]:
            out.append("an attention capture (a workbench torch function mode) was left active")
        out += [f"{k} changed: {self.globals[k]!r} -> {now[k]!r}" for k in now if now[k] != self.globals[k]]
        same = (torch.equal, np.array_equal, lambda a, b: a == b)
        rng = zip(("torch", "numpy", "Python"), same, _rng(), self.rng)
        return out + [f"the global {name} RNG state changed" for name, eq, a, b in rng if not eq(a, b)]


# -- one trial ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one interrupted call did. ``delivered``: signals that arrived during the call; ``reached``:
    the ``KeyboardInterrupt`` came out of the call; ``error``: another exception that came out instead;
    ``harm``: what the call left changed (:class:`Watch`)."""

    aim: str
    delivered: int = 0
    reached: bool = False
    error: str | None = None
    harm: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def swallowed(self) -> bool:
        """A signal arrived during the call, and no KeyboardInterrupt came out of it."""
        return self.delivered > 0 and not self.reached

    harmed = property(lambda self: bool(self.harm), doc="The call left something changed.")


class _Trial:
    def __init__(self):
        self.active = False
        self.delivered = 0
        self.go = threading.Event()

    def handler(self, signum, frame):
        if self.active:
            self.delivered += 1
            raise DeliveredInterrupt(f"SIGINT {self.delivered} from workbench.testing.interrupts")


def _models_in(objs) -> list[nn.Module]:
    out = []
    for v in objs:
        if isinstance(v, nn.Module):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out += _models_in(v)
        elif isinstance(v, dict):
            out += _models_in(list(v.values()))
    return list({id(m): m for m in out}.values())


def interrupt_call(
    func: Callable, args: Sequence = (), kwargs: dict | None = None, aim: Aim | None = None, second: Aim | None = None
) -> Outcome:
    """Call ``func(*args, **kwargs)`` in the main thread with a real ``SIGINT`` sent at ``aim`` (and
    another at ``second``, armed once the first arrived); returns the :class:`Outcome`. Exceptions other
    than the delivered interrupt are recorded in ``error``, not raised. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("interrupt_call: run it in the main thread (signals are delivered there)")
    kwargs = dict(kwargs or {})
    watch = Watch(_models_in(list(args) + list(kwargs.values())))
    trial = _Trial()
    aims = [a for a in (aim, second) if a is not None]
    out = Outcome(" + ".join(str(a) for a in aims) or "none")
    old_handler = signal.signal(signal.SIGINT, trial.handler)
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # a timer thread gets the GIL within 0.1 ms
    if second is not None:
        second.after_first = True
    armed = []
    t0 = time.perf_counter()
    try:
        for a in aims:
            a.arm(trial)
            armed.append(a)
        try:
            trial.active = True
            trial.go.set()
            func(*args, **kwargs)
        except DeliveredInterrupt:
            out.reached = True
        except Exception as e:  # recorded: the interrupt turned into an error, or the call failed
            out.error = f"{type(e).__name__}: {e}"
        finally:
            trial.active = False  # a signal arriving from now on is not raised
            out.seconds = time.perf_counter() - t0
            if signal.getsignal(signal.SIGINT) != trial.handler:
                out.harm.append(f"the SIGINT handler was left as {signal.getsignal(signal.SIGINT)!r}")
            for a in reversed(armed):
                a.disarm()
    finally:
        sys.setswitchinterval(old_switch)
        time.sleep(0.001)  # a signal sent just now is handled before the old handler is back
        signal.signal(signal.SIGINT, old_handler)
    out.delivered = trial.delivered
    out.harm += watch.harm()
    return out
