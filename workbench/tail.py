"""The keyword tail every probe shares, and the :class:`Context` a probe body receives.

``mode``, ``params``, ``seed``, ``progress``, ``cancel`` and ``device`` are validated once
(:func:`check_tail`) by the ``@probe`` decorator of :mod:`workbench.registry`, which hands the body a
:class:`Context`: the validated values, a seeded ``torch.Generator`` and numpy ``Generator``, progress
bars that are also cancellation points, and the call's :class:`~workbench.objective.Objective`;
:func:`isolated_rng` seeds the global RNGs for the call and puts the user's states back.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import threading
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import as_data
from .objective import Objective
from .state import run_shielded

TAIL_DEFAULTS: dict[str, Any] = {
    "mode": "eval",
    "params": None,
    "seed": 0,
    "progress": True,
    "cancel": None,
    "device": None,
}
TAIL = tuple(TAIL_DEFAULTS)
#: tail keywords a probe may not use (an explicit non-default value is then an error); every probe
#: honours ``progress`` and ``cancel``
OPTIONAL = ("mode", "params", "seed", "device")


class Cancelled(KeyboardInterrupt):
    """Raised inside a probe when its ``cancel`` event is set (a widget's Stop button)."""


def check_tail(mode="eval", params=None, seed=0, progress=True, cancel=None, device=None) -> dict:
    """Validate the keyword tail; returns it as a dict (``device`` as a ``torch.device`` or None)."""
    if mode not in ("eval", "train"):
        raise ValueError(
            f"mode: expected 'eval' (running statistics, no dropout) or 'train' (batch statistics), got {mode!r}"
        )
    if params is not None and not isinstance(params, str):
        if not (isinstance(params, (list, tuple)) and all(isinstance(p, str) for p in params)):
            raise TypeError(
                f"params: expected None, a regex string or a list of parameter/module names, got "
                f"{type(params).__name__}"
            )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if not (isinstance(progress, bool) or callable(progress)):
        raise TypeError(f"progress: expected True, False or a callable progress(done, total), got {progress!r}")
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise TypeError(
            f"cancel: expected None or a threading.Event (anything with is_set()), got {type(cancel).__name__}"
        )
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device: expected None, 'cpu', 'cuda', 'cuda:0', ... or a torch.device, got {device!r}"
            ) from None
    return dict(mode=mode, params=params, seed=int(seed), progress=progress, cancel=cancel, device=device)


def _progress_disabled(progress) -> bool:
    if progress is False:
        return True
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


class ProgressBar:
    """A progress bar that is also a cancellation point: tqdm.auto, a callable, or nothing."""

    def __init__(self, ctx: Context, total: int | None, desc: str | None):
        self.ctx, self.total, self.n = ctx, total, 0
        self.cb = ctx.progress if callable(ctx.progress) else None
        self.tqdm = None
        if self.cb is None and not _progress_disabled(ctx.progress) and (total is None or total > 1):
            from tqdm.auto import tqdm

            self.tqdm = tqdm(total=total, desc=desc or ctx.probe, leave=False)

    def update(self, k: int = 1) -> None:
        self.ctx.check_cancel()
        self.n += k
        if self.tqdm is not None:
            self.tqdm.update(k)
        if self.cb is not None:
            self.cb(self.n, self.total or self.n)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()

    def __enter__(self):
        self.ctx.check_cancel()
        return self

    def __exit__(self, *exc):
        self.close()


class Context:
    """What the ``@probe`` decorator hands a probe body: the validated keyword tail and its tools."""

    def __init__(self, probe: str, tail: dict, bound: dict):
        self.probe = probe
        self.mode: str = tail["mode"]
        self.params = tail["params"]
        self.seed: int = tail["seed"]
        self.progress = tail["progress"]
        self.cancel = tail["cancel"]
        self.device: torch.device | None = tail["device"]
        self._bound = bound
        self._objective = None
        self.data = None  # the adapted Data of the call, once a body asked for it (its fingerprint is recorded)
        self.extra_params: dict = {}

    @functools.cached_property
    def generator(self) -> torch.Generator:
        """A CPU ``torch.Generator`` seeded with ``seed`` (the same draws on every device)."""
        return torch.Generator().manual_seed(self.seed)

    @functools.cached_property
    def rng(self) -> np.random.Generator:
        """A numpy ``Generator`` seeded with ``seed``."""
        return np.random.default_rng(self.seed)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"{self.probe} cancelled")

    def bar(self, total: int | None = None, desc: str | None = None) -> ProgressBar:
        """A progress bar (``with ctx.bar(n, "desc") as bar: ... bar.update()``); each update checks cancel."""
        return ProgressBar(self, total, desc)

    def iterate(self, iterable, total: int | None = None, desc: str | None = None):
        """Iterate with a progress bar and a cancellation point before every item."""
        items = list(iterable) if total is None and not hasattr(iterable, "__len__") else iterable
        with self.bar(len(items) if total is None else total, desc) as bar:
            for item in items:
                self.check_cancel()
                yield item
                bar.update()

    def adopt_data(self, data: Any):
        """``data`` through the one adapter (:func:`workbench.data.as_data`), recorded as the call's data: its
        fingerprint goes into the provenance (for probes whose data is not their Objective's)."""
        self.data = as_data(data)
        return self.data

    def record(self, **kw) -> None:
        """Extra entries for ``probe_params`` (e.g. the number of samples)."""
        self.extra_params.update(kw)

    def release(self) -> None:
        """Drop what the call built (its Objective refers back to this context): called when the probe returns."""
        self._objective = None

    def objective(self, model: nn.Module | None = None, loss_fn=None, data=None, params=None):
        """The :class:`~workbench.objective.Objective` of ``model`` (default the call's), with the tail's
        ``params`` (or ``params``, a subset for blockwise probes) and ``mode``; cancellation is checked at every
        batch. The call's own is built once."""
        own = (model is None or model is self._bound.get("model_a")) and loss_fn is None and data is None
        own = own and params is None
        if own and self._objective is not None:
            return self._objective
        obj = Objective(
            self._bound.get("model", self._bound.get("model_a")) if model is None else model,
            self._bound["loss_fn"] if loss_fn is None else loss_fn,
            self._bound["data"] if data is None else data,
            params=self.params if params is None else params,
            mode=self.mode,
            device=self.device,
            on_batch=self.check_cancel,
        )
        if own:
            self._objective = obj
            self.data = obj.data
            self.record(n_samples=obj.data.n, n_params=obj.space.numel)
        return obj


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


@contextlib.contextmanager
def isolated_rng(seed: int):
    """The global torch (CPU, and CUDA once initialised), numpy and Python RNGs seeded with ``seed`` inside
    (train-mode dropout: reproducible), the user's states put back after, under a second Ctrl-C too.

    >>> before = torch.get_rng_state()
    >>> with isolated_rng(3):
    ...     _ = torch.rand(2)
    >>> torch.equal(before, torch.get_rng_state())
    True
    """
    states = _rng_states()
    try:
        _seed_global(seed)
        yield
    finally:
        run_shielded(_set_rng_states, states)


@contextlib.contextmanager
def surfacing_interrupts():
    """A Ctrl-C that arrives during the body comes out of it as the ``KeyboardInterrupt`` its SIGINT handler
    raised, even when something inside swallowed it (a weakref callback or ``__del__``, where CPython only
    prints "Exception ignored", or torch's C++ code turning it into a ``RuntimeError`` that a fallback then
    handled): when the body returns, or raises anything but an interrupt, after a SIGINT raised, that
    interrupt is raised. Main thread only (signals arrive there); elsewhere it does nothing.

    >>> with surfacing_interrupts():
    ...     pass
    """
    raised: list = []
    old = signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    if callable(old):

        def handler(signum, frame):
            try:
                old(signum, frame)
            except BaseException as e:  # noted, and raised on: it may be swallowed on its way out
                raised.append(e)
                raise

        signal.signal(signal.SIGINT, handler)
    try:
        yield
    except Exception as e:
        if raised:
            raise raised[0] from e
        raise
    finally:
        if callable(old):
            signal.signal(signal.SIGINT, old)
    if raised:
        raise raised[0]
