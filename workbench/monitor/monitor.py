"""The training monitor: a schedule of cheap probes called from a training loop, written to a crash-safe store."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from torch import nn

from .. import tasks
from ..attention import attention_stats
from ..data import as_data, to_device
from ..results import provenance
from ..results.store import StepStore, combine_rows, make_row, read_store, rows_to_dataset
from ..state import preserve
from ..tail import isolated_rng
from .alarms import Alarm, Alarms
from .schedules import DEFAULT_SCHEDULE, Schedule
from .streaming import SharpnessTracker, flat_params, layer_names, output_stats, parameter_stats

__all__ = ["Monitor", "PROBES"]

#: the monitor's probes (keys of ``schedule``); ``loss`` records the training loss and learning rate given
PROBES = tuple(DEFAULT_SCHEDULE)
_NEEDS_DATA = ("attention", "logits", "trajectory", "sharpness")
#: how attention_stats says a model has no attention it can capture (the default attention probe is then dropped)
NO_ATTENTION = "model: no attention was captured"


class Monitor:
    """Watch a model while it trains: ``monitor.step(model, step, loss=..., optimizer=...)`` after each
    optimizer step runs the probes whose schedule contains ``step`` on the fixed ``probe_data`` and appends
    one row to the store (a folder, :mod:`workbench.results.store`; ``workbench.load(path)`` reads it,
    also while training runs or after a crash; ``store=None`` keeps rows in memory only).

    Probes (``probes``, ``schedule``: a :class:`~workbench.monitor.schedules.Schedule` for all, or a dict
    per probe; defaults :data:`~workbench.monitor.schedules.DEFAULT_SCHEDULE`): ``loss`` (``loss``, ``lr``),
    ``norms`` (``weight_norm``, ``grad_norm``, ``update_ratio`` per ``layer``), ``distance``
    (``dist_init``), ``attention`` (``attn_entropy``, ``attn_normalized_entropy``, ``attn_max_logit``,
    ``attn_sink_mass`` per ``attn_layer`` and ``head``), ``logits`` (``log_z``, ``logit_norm``),
    ``trajectory`` (``traj_kl``), ``sharpness`` (``lambda_max``, ``edge``, ``n_products``, ``preconditioned``: 1
    where ``lambda_max`` is Adam's preconditioned sharpness): see
    :mod:`workbench.monitor.streaming` for the formulas. ``alarms``: thresholds
    (:mod:`workbench.monitor.alarms`); each alarm is warned (:class:`AlarmWarning`), stored (``event_*``
    variables) and passed to ``on_alarm(alarm)``, which may stop training (e.g. set a flag).

    The contract of every probe holds: the model's parameters, buffers, flags and ``.grad``, the global RNGs
    and grad mode are as they were after each call; the optimizer is only read.

    >>> import tempfile, torch, workbench as wb
    >>> from workbench.monitor import Monitor, every
    >>> torch.manual_seed(0) and None
    >>> model, x, y = torch.nn.Linear(4, 3), torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> path = tempfile.mkdtemp() + "/run"
    >>> with Monitor(path, torch.nn.functional.cross_entropy, (x, y), schedule=every(5)) as mon:
    ...     for t in range(11):
    ...         opt.zero_grad(); loss = torch.nn.functional.cross_entropy(model(x), y); loss.backward(); opt.step()
    ...         _ = mon.step(model, t, loss=loss, optimizer=opt)
    >>> ds = wb.load(path)
    >>> ds.step.values.tolist(), round(float(ds.edge[0]), 6), sorted(ds.grad_norm.dims)
    ([0, 5, 10], 20.0, ['layer', 'step'])
    """

    def __init__(
        self,
        store: str | Path | None,
        loss_fn=None,
        probe_data=None,
        *,
        schedule: Schedule | dict | None = None,
        probes=None,
        alarms: dict | None = None,
        on_alarm=None,
        mode: str = "eval",
        seed: int = 0,
        n_iter: int = 5,
        flush_every: int = 1000,
        forward_kwargs: dict | None = None,
    ):
        self.probes = self._check_probes(probes, probe_data)
        self.schedule = self._check_schedule(schedule)
        if loss_fn is not None and probe_data is not None:
            loss_fn, batches = tasks.resolve(loss_fn, probe_data, None)
            probe_data = batches
        if "sharpness" in self.probes and loss_fn is None:
            raise ValueError("loss_fn: the sharpness probe needs the loss; give loss_fn or leave 'sharpness' out")
        self.loss_fn, self.mode, self.seed = loss_fn, mode, int(seed)
        self.data = None if probe_data is None else as_data(probe_data)
        if not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every: expected an integer >= 1 (rows per segment), got {flush_every!r}")
        self.flush_every, self.forward_kwargs = flush_every, dict(forward_kwargs or {})
        self.alarms = Alarms(alarms, on_alarm)
        self.tracker = SharpnessTracker(n_iter=n_iter, seed=seed)
        attrs = provenance(
            "monitor.Monitor", {"probes": list(self.probes), "schedule": {k: repr(v) for k, v in self.schedule.items()}}
        )
        self.store = None if store is None else StepStore(store, attrs=attrs)
        self.rows: list[dict] = []  # the rows of this run (see workbench.results.store.make_row)
        self.raised: list[Alarm] = []
        self.init = self.previous = self.logp = None
        self.previous_step = None
        self.attention_ok = "attention" in (probes or ())  # asked for by name: its errors surface
        self.seconds = 0.0

    @staticmethod
    def _check_probes(probes, data) -> tuple:
        if probes is None:
            return tuple(p for p in PROBES if data is not None or p not in _NEEDS_DATA)
        probes = (probes,) if isinstance(probes, str) else tuple(probes)
        bad = [p for p in probes if p not in PROBES]
        if bad:
            raise ValueError(f"probes: unknown {bad}; the monitor's probes are {list(PROBES)}")
        need = [p for p in probes if p in _NEEDS_DATA]
        if need and data is None:
            raise ValueError(f"probe_data: the probes {need} run on a fixed probe batch; give probe_data=(x, y)")
        return probes

    def _check_schedule(self, schedule) -> dict:
        if schedule is None:
            return dict(DEFAULT_SCHEDULE)
        if isinstance(schedule, Schedule):
            return dict.fromkeys(PROBES, schedule)
        if isinstance(schedule, dict):
            bad = [k for k, v in schedule.items() if k not in PROBES or not isinstance(v, Schedule)]
            if bad:
                raise ValueError(
                    f"schedule: entries {bad} are not probe: Schedule pairs; probes are {list(PROBES)}, schedules "
                    "come from workbench.monitor.every / log_spaced / at"
                )
            return {**DEFAULT_SCHEDULE, **schedule}
        raise TypeError(f"schedule: expected a Schedule or a dict of them, got {type(schedule).__name__}")

    def due(self, step: int) -> list[str]:
        """The probes that run at ``step``."""
        return [p for p in self.probes if step in self.schedule[p]]

    def start(self, model: nn.Module) -> None:
        """Keep the initial parameters ``theta_0`` (for ``dist_init``): called by the trainer callbacks when
        training starts; otherwise the first :meth:`before_step` or :meth:`step` keeps them."""
        if self.init is None:
            self.init = flat_params(model)

    def before_step(self, model: nn.Module, step: int) -> None:
        """Optional, before ``optimizer.step()``: when ``step`` is due for ``norms``, keep ``theta_{t-1}`` so that
        ``update_ratio`` is the update of this one step (otherwise it is the mean over the interval)."""
        self.start(model)
        if "norms" in self.due(step):
            self.previous, self.previous_step = flat_params(model), step - 1

    def step(self, model: nn.Module, step: int, loss=None, optimizer: torch.optim.Optimizer | None = None) -> list:
        """Run the probes due at ``step`` (after ``optimizer.step()``); returns the alarms raised."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step: expected the training step, an integer >= 0, got {step!r}")
        t0, step = time.perf_counter(), int(step)
        self.start(model)
        due = self.due(step)
        if not due:
            return []
        stats: dict = {}
        if "loss" in due:
            if loss is not None:
                stats["loss"] = float(loss.detach() if torch.is_tensor(loss) else loss)
            if optimizer is not None:
                stats["lr"] = float(optimizer.param_groups[0]["lr"])
        if "norms" in due or "distance" in due:
            gap = 0 if self.previous_step is None else step - self.previous_step
            ps = parameter_stats(model, self.previous, gap, self.init)
            if "norms" in due:
                stats.update({k: ps[k] for k in ("weight_norm", "grad_norm", "update_ratio", "grad_finite")})
                self.previous, self.previous_step = flat_params(model), step
            if "distance" in due:
                stats["dist_init"] = ps["dist_init"]
        heavy = [p for p in due if p in _NEEDS_DATA]
        if heavy:
            with isolated_rng(self.seed), preserve(model):
                self._heavy(model, heavy, stats, optimizer)
        row = self._row(model, step, stats)
        raised = self.alarms.check(step, stats)
        self.raised += raised
        self.rows.append(row)
        if self.store is not None:
            self.store.log(row)
            for a in raised:
                self.store.log(event=a.as_dict())
            if len(self.store.rows) >= self.flush_every:
                self.store.flush()
        self.seconds += time.perf_counter() - t0
        return raised

    def _heavy(self, model, heavy, stats, optimizer):
        x, y = self.data.materialize()
        dev = next(model.parameters()).device
        inputs = to_device(x, dev)
        was = model.training
        if "logits" in heavy or "trajectory" in heavy:
            model.train(self.mode == "train")
            mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
            o = output_stats(model, inputs, self.logp, mask, self.loss_fn, to_device(y, dev), self.forward_kwargs)
            self.logp = o.pop("logp")
            stats.update({k: o[k] for k in ("log_z", "logit_norm", "probe_loss")} if "logits" in heavy else {})
            if "trajectory" in heavy:
                stats["traj_kl"] = o["traj_kl"]
            model.train(was)
        if "attention" in heavy:
            self._attention(model, inputs, stats)
        if "sharpness" in heavy:
            r = self.tracker.update(model, self.loss_fn, (x, y), optimizer, mode=self.mode)
            if r["n_products"]:  # Adam before its first step has no preconditioner yet: nothing to record
                stats.update({k: r[k] for k in ("lambda_max", "edge", "n_products")})
                stats["preconditioned"] = float(r["kind"] == "adam-preconditioned")  # 1: lambda_max(P^-1 H) (Adam)

    def _attention(self, model, inputs, stats):
        try:
            ds = attention_stats(model, inputs, mode=self.mode, progress=False, **self.forward_kwargs)
        except ValueError as e:  # a model without attention drops the default probe; any other error surfaces
            if self.attention_ok or not str(e).startswith(NO_ATTENTION):
                raise
            self.probes = tuple(p for p in self.probes if p != "attention")
            return
        self.attention_ok = True
        stats["attention"] = ds
        for k in ("entropy", "normalized_entropy", "max_logit", "sink_mass"):
            if k in ds:
                stats[f"attn_{k}"] = ds[k].values
        stats["heads"] = [f"{layer} head {h}" for layer in ds["layer"].values for h in ds["head"].values]

    def _row(self, model, step, stats) -> dict:
        data, coords = {}, {}
        for k, v in stats.items():
            if k in ("weight_norm", "grad_norm", "update_ratio"):
                data[k] = (("layer",), v)
                coords["layer"] = self._layers(model)
            elif k == "attention":
                coords["attn_layer"], coords["head"] = v["layer"].values, v["head"].values
                for name in ("entropy", "normalized_entropy", "max_logit", "sink_mass"):
                    if name in v:
                        data[f"attn_{name}"] = (("attn_layer", "head"), v[name].values)
            elif not k.startswith("attn_") and k not in ("heads", "grad_finite"):
                data[k] = ((), v)
        return make_row(step, data, coords)

    def _layers(self, model) -> list[str]:
        if getattr(self, "_layer_names", None) is None:
            self._layer_names = layer_names(model)
        return self._layer_names

    def record(self, step: int, **values: float) -> None:
        """Add scalar ``values`` to the row of ``step`` (e.g. a trainer's logged loss, known only after the step's
        callbacks ran); rows of one step are combined when read, the latest non-NaN value of each variable kept."""
        row = make_row(step, {k: ((), float(v)) for k, v in values.items() if v is not None})
        self.rows.append(row)
        if self.store is not None:
            self.store.log(row)

    def dataset(self) -> xr.Dataset:
        """Everything recorded: the store read back (with what earlier runs into it wrote), else the rows kept."""
        if self.store is not None:
            return read_store(self.store.path)
        return combine_rows([rows_to_dataset(self.rows)]) if self.rows else xr.Dataset()

    def close(self) -> None:
        """Write what is buffered as a segment (the journal already holds it against a crash)."""
        if self.store is not None:
            self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
