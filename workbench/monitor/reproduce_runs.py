"""The training loops under the reproductions: a preset lookup, and a run with a :class:`~workbench.monitor.Monitor`
attached whose statistics at every ``every``-th step (step 0 is the initialisation) are read back from it."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping

import numpy as np

from ..validate import choice, count
from .alarms import AlarmWarning
from .monitor import Monitor
from .schedules import every as every_n
from .schedules import never

#: settings every reproduction accepts besides its preset's
COMMON = ("n_train", "n_probe", "length", "heads", "depth", "batch", "n")


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


def first_alarm(alarms: list, kind: str) -> float:
    """The step of the first alarm of ``kind`` in ``alarms`` (NaN if none)."""
    steps = [a.step for a in alarms if a.kind == kind]
    return float(min(steps)) if steps else float("nan")
