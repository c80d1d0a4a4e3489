"""The training loops under the reproductions: a preset lookup, and a run with a :class:`~workbench.monitor.Monitor`
attached whose statistics at every ``every``-th step (step 0 is the initialisation) are read back from it."""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from ..config import threads
from ..validate import choice, count
from .alarms import AlarmWarning
from .monitor import Monitor
from .schedules import every as every_n
from .schedules import never

#: settings every reproduction accepts besides its preset's
COMMON = ("n_train", "n_probe", "n_attention", "length", "heads", "depth", "batch", "n")


def preset_config(presets: Mapping[str, dict], preset: str, overrides: dict) -> dict:
    """The preset's settings updated with ``overrides`` (only names the preset knows, or :data:`COMMON`)."""
    choice("preset", preset, tuple(presets))
    cfg = dict(presets[preset])
    unknown = sorted(set(overrides) - set(cfg) - set(COMMON))
    if unknown:
        raise ValueError(f"{unknown[0]}: not a setting of this reproduction; expected one of {sorted(cfg)}")
    cfg.update(overrides)
    for key in ("steps", "every"):
        if key in cfg:
            cfg[key] = count(key, cfg[key])
    if not cfg.get("seeds"):
        raise ValueError("seeds: expected a non-empty sequence of ints, e.g. (0, 1, 2)")
    return cfg


def monitored_run(model, optimizer, step_fn: Callable, steps: int, every: int, loss_fn, probe_data, probes,
                  extra: Callable | None = None, store=None) -> dict:  # fmt: skip
    """Train by ``step_fn(step) -> loss`` for ``steps`` steps with a :class:`Monitor` running ``probes`` every
    ``every`` steps on ``probe_data`` (and at step 0, before training); ``extra(model)`` adds a dict of floats
    at those steps (e.g. the probe loss). Returns ``{"step": ..., "monitor": Dataset, "alarms": [...], **extra}``
    (alarms are kept, not warned)."""
    sched = dict.fromkeys(("loss", "norms", "distance", "attention", "logits", "trajectory", "sharpness"), never())
    sched.update(dict.fromkeys(probes, every_n(every)))
    out: dict = {"step": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlarmWarning)
        with Monitor(store, loss_fn, probe_data, schedule=sched, probes=probes, flush_every=1000) as mon:
            loss = None
            for s in range(steps + 1):
                if s:
                    loss = step_fn(s)
                if s % every == 0:
                    mon.step(model, s, loss=loss, optimizer=optimizer)
                    out["step"].append(s)
                    for k, v in (extra(model) if extra else {}).items():
                        out.setdefault(k, []).append(v)
            ds = mon.dataset()
    res = {k: np.asarray(v, float) for k, v in out.items()}
    res["monitor"], res["alarms"] = ds, list(mon.raised)
    return res


@contextlib.contextmanager
def seeded(seed: int):
    """Draw from torch's global generator seeded with ``seed`` inside, the caller's generator state restored after
    (model initialisation; training draws from explicit generators, so the user's RNG is never touched).

    >>> import torch
    >>> before = torch.get_rng_state()
    >>> with seeded(3):
    ...     a = torch.rand(2)
    >>> with seeded(3):
    ...     b = torch.rand(2)
    >>> bool((a == b).all()), bool((torch.get_rng_state() == before).all())
    (True, True)
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def first_alarm(alarms: list, kind: str) -> float:
    """The step of the first alarm of ``kind`` in ``alarms`` (NaN if none)."""
    steps = [a.step for a in alarms if a.kind == kind]
    return float(min(steps)) if steps else float("nan")


def train_demo(
    store: str | Path,
    *,
    steps: int = 200,
    lr: float = 0.3,
    every: int = 10,
    qk_norm: bool = False,
    seed: int = 0,
    delay: float = 0.0,
    stop: threading.Event | None = None,
) -> Path:
    """Train the reproductions' tiny causal transformer (:class:`~workbench.monitor.reproduce_models.TinyLM`,
    width 32, on the topic task) with Adam at ``lr`` (linear warm-up over 50 steps) for ``steps`` steps with a
    :class:`Monitor` writing every probe to ``store``: ``loss`` every step, the others every ``every`` steps
    (``sharpness`` every ``5 * every``, from step ``5 * every``). At ``lr=0.3``
    the attention entropy collapses after about 30 steps (alarms ``logit_growth``, ``entropy_collapse``).
    ``delay`` seconds of sleep per step make a live demo visible; ``stop`` (a ``threading.Event``) ends the
    run early. For a dashboard demo, run it in a thread: ``threading.Thread(target=train_demo, args=(path,))``.
    Returns the store's path.

    >>> import tempfile, workbench as wb
    >>> path = train_demo(tempfile.mkdtemp() + "/demo", steps=20, every=4)
    >>> ds = wb.load(path)
    >>> ds.sizes["step"], sorted(v for v in ("loss", "lambda_max", "attn_normalized_entropy") if v in ds)
    (21, ['attn_normalized_entropy', 'lambda_max', 'loss'])
    """
    import torch

    from .reproduce_models import TinyLM, lm_loss, topic_sequences

    steps, every = count("steps", steps), count("every", every)
    x, y = topic_sequences(2048, seed=1000 + int(seed))
    probe = topic_sequences(32, seed=99)
    with seeded(int(seed)):
        model = TinyLM(d=32, heads=4, depth=2, qk_norm=qk_norm)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    g = torch.Generator().manual_seed(int(seed))
    schedule = dict.fromkeys(("norms", "distance", "attention", "logits", "trajectory"), every_n(every))
    # lambda_max from the first scheduled step after 0: Adam has no preconditioner before its first step
    schedule.update(loss=every_n(1), sharpness=every_n(5 * every, start=5 * every))
    with warnings.catch_warnings(), threads():
        warnings.simplefilter("ignore", AlarmWarning)
        with Monitor(store, lm_loss, probe, schedule=schedule, flush_every=every) as mon:
            for s in range(steps + 1):
                loss = None
                if s:
                    idx = torch.randint(len(x), (64,), generator=g)
                    mon.before_step(model, s)
                    loss = lm_loss(model(x[idx]), y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                mon.step(model, s, loss=loss, optimizer=opt)
                if stop is not None and stop.is_set():
                    break
                if delay:
                    time.sleep(delay)
    return Path(store)
