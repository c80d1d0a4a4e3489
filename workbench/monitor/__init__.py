"""Watch training as it happens: cheap probes on a schedule, a crash-safe store, alarms.

* :class:`Monitor` (:mod:`.monitor`): ``monitor.step(model, step, loss=..., optimizer=...)`` from any
  training loop; :func:`lightning_callback` and :func:`hf_callback` (:mod:`.callbacks`) wrap it for
  PyTorch Lightning and the Hugging Face Trainer.
* Schedules (:mod:`.schedules`): :func:`every`, :func:`log_spaced`, :func:`at`, :func:`never`, unions with ``|``.
* Streaming statistics (:mod:`.streaming`): norms, update ratios, distance from initialisation, log Z,
  trajectory KL, warm-started ``lambda_max`` and the optimizer's edge of stability (:func:`edge`); attention
  statistics come from :func:`workbench.attention.attention_stats`.
* Alarms (:mod:`.alarms`): :class:`Alarm`, :class:`AlarmWarning`, :data:`DEFAULT_THRESHOLDS`.
* The store is a :class:`~workbench.results.store.StepStore`; ``workbench.load(path)`` reads it.
"""

from .alarms import DEFAULT_THRESHOLDS, Alarm, AlarmWarning
from .callbacks import hf_callback, lightning_callback
from .monitor import PROBES, Monitor
from .schedules import DEFAULT_SCHEDULE, Schedule, at, every, log_spaced, never
from .streaming import SharpnessTracker, edge

__all__ = [
    "Monitor",
    "PROBES",
    "lightning_callback",
    "hf_callback",
    "Schedule",
    "every",
    "log_spaced",
    "at",
    "never",
    "DEFAULT_SCHEDULE",
    "Alarm",
    "AlarmWarning",
    "DEFAULT_THRESHOLDS",
    "SharpnessTracker",
    "edge",
]
