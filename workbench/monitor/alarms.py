"""Alarms: conditions on the monitor's statistics that often come before a loss spike or a divergence.

An alarm fires when its condition becomes true for a ``where`` (a head, a layer, the model) and re-arms when
it is false again, so a sharpness hovering at the edge of stability is one alarm, not one per step.

Kinds and default thresholds (:data:`DEFAULT_THRESHOLDS`; any can be changed or set to None to switch off):

* ``nonfinite``: a non-finite loss, norm or statistic (no threshold).
* ``entropy_collapse`` (0.1): a head's normalised attention entropy ``H / log(n_keys)`` below the threshold
  (Zhai et al. 2023: collapse precedes the loss spike).
* ``logit_growth`` (2.0): the largest attention logit at least this many times its value at the earliest
  monitored step in the last ``window`` steps (500), and above 10 (Wortsman et al. 2024: attention logits
  grow before divergence).
* ``sharpness_edge`` (1.0): ``lambda_max >= threshold * edge``, ``edge`` the optimizer's stability threshold
  (``2/lr`` for gradient descent; :func:`~workbench.monitor.streaming.edge`; Cohen et al. 2021, 2022).
* ``log_z_drift`` (5.0): the output log-normaliser ``log Z`` moved more than this many nats from its first
  monitored value (the drift z-loss is used against; Chowdhery et al. 2022, Wortsman et al. 2024).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Alarm", "AlarmWarning", "Alarms", "DEFAULT_THRESHOLDS"]

DEFAULT_THRESHOLDS = {
    "nonfinite": True,
    "entropy_collapse": 0.1,
    "logit_growth": 2.0,
    "sharpness_edge": 1.0,
    "log_z_drift": 5.0,
}
LOGIT_FLOOR, WINDOW = 10.0, 500
#: the statistics that must be finite (placeholders such as the first step's trajectory KL are NaN by design)
CHECKED = ("loss", "weight_norm", "log_z", "logit_norm", "lambda_max", "dist_init")


class AlarmWarning(UserWarning):
    """The warning an alarm is reported as (filter it with ``warnings.simplefilter``)."""


@dataclass(frozen=True)
class Alarm:
    """One alarm: its ``kind``, the ``step``, the ``value`` that crossed the ``threshold``, ``where``."""

    kind: str
    step: int
    value: float
    threshold: float
    where: str
    message: str

    def as_dict(self) -> dict:
        return asdict(self)


def check_thresholds(alarms: dict | None) -> dict:
    """The thresholds: the defaults updated with ``alarms`` (unknown kinds and bad values named)."""
    if alarms is None:
        return dict(DEFAULT_THRESHOLDS)
    if not isinstance(alarms, dict):
        raise TypeError(f"alarms: expected a dict of thresholds such as {DEFAULT_THRESHOLDS}, got {alarms!r}")
    out = dict(DEFAULT_THRESHOLDS)
    for k, v in alarms.items():
        if k not in DEFAULT_THRESHOLDS:
            raise ValueError(f"alarms: unknown alarm {k!r}; the alarms are {sorted(DEFAULT_THRESHOLDS)}")
        if v is not None and (isinstance(v, bool) != (k == "nonfinite") or not math.isfinite(float(v)) or v <= 0):
            want = "True or None" if k == "nonfinite" else "a positive number or None (off)"
            raise ValueError(f"alarms: {k!r} must be {want}, got {v!r}")
        out[k] = v
    return out


class Alarms:
    """Evaluates the conditions on each monitored step's statistics, with re-arming per (kind, where)."""

    def __init__(self, thresholds: dict | None = None, on_alarm=None):
        if on_alarm is not None and not callable(on_alarm):
            raise TypeError(f"on_alarm: expected a callable on_alarm(alarm) or None, got {on_alarm!r}")
        self.thresholds = check_thresholds(thresholds)
        self.on_alarm = on_alarm
        self.active: set[tuple[str, str]] = set()
        self.first_log_z: float | None = None
        self.logit_history: list[tuple[int, float]] = []

    def _cond(self, out, step, kind, where, value, threshold, fired, text):
        key = (kind, where)
        if not fired:
            self.active.discard(key)
            return
        if key in self.active:
            return
        self.active.add(key)
        out.append(Alarm(kind, int(step), float(value), float(threshold), where, f"step {step}: {text}"))

    def check(self, step: int, stats: dict) -> list[Alarm]:
        """Alarms raised at ``step`` from ``stats`` (the monitor's row: names to floats or arrays, with
        ``heads``, the head labels of the attention arrays). Each is warned, kept, and handed to ``on_alarm``."""
        th, out = self.thresholds, []
        if th["nonfinite"]:
            bad = sorted(k for k in CHECKED if k in stats and not np.all(np.isfinite(_num(stats[k]))))
            bad += [] if stats.get("grad_finite", True) else ["grad_norm"]
            self._cond(out, step, "nonfinite", "model", math.nan, math.nan, bool(bad), f"non-finite {', '.join(bad)}")
        ne = stats.get("attn_normalized_entropy")
        if th["entropy_collapse"] is not None and ne is not None:
            for label, v in zip(stats["heads"], np.asarray(ne).reshape(-1), strict=True):
                t = th["entropy_collapse"]
                self._cond(out, step, "entropy_collapse", label, v, t, v < t,
                           f"attention entropy collapse in {label}: normalised entropy {v:.3g} < {t:g}")  # fmt: skip
        ml = stats.get("attn_max_logit")
        if th["logit_growth"] is not None and ml is not None and np.isfinite(_num(ml)).any():
            now = float(np.nanmax(ml))
            self.logit_history = [(s, v) for s, v in self.logit_history if s >= step - WINDOW] + [(step, now)]
            s0, v0 = self.logit_history[0]
            ratio = now / v0 if v0 > 0 else math.nan
            t = th["logit_growth"]
            fired = s0 < step and now > LOGIT_FLOOR and ratio >= t
            self._cond(out, step, "logit_growth", "attention", ratio, t, fired,
                       f"max attention logit {now:.3g} is {ratio:.3g}x its value at step {s0}")  # fmt: skip
        lam, e = stats.get("lambda_max"), stats.get("edge")
        if th["sharpness_edge"] is not None and lam is not None and e is not None and math.isfinite(e):
            t = th["sharpness_edge"] * e
            self._cond(out, step, "sharpness_edge", "model", lam, t, lam >= t,
                       f"lambda_max {lam:.4g} >= {th['sharpness_edge']:g} x edge of stability {e:.4g}")  # fmt: skip
        lz = stats.get("log_z")
        if th["log_z_drift"] is not None and lz is not None and math.isfinite(lz):
            self.first_log_z = lz if self.first_log_z is None else self.first_log_z
            d, t = abs(lz - self.first_log_z), th["log_z_drift"]
            self._cond(out, step, "log_z_drift", "output", d, t, d > t,
                       f"log Z drifted {d:.3g} nats from {self.first_log_z:.4g}")  # fmt: skip
        for a in out:
            warnings.warn(a.message, AlarmWarning, stacklevel=3)
            if self.on_alarm is not None:
                self.on_alarm(a)
        return out


def _num(v):
    a = np.asarray(v)
    return a.astype(float) if a.dtype.kind in "biuf" else np.zeros(1)
