"""A live dashboard over a training monitor's store: it tails the store while a run writes it (in another
process or thread) and redraws its figures in place."""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path

import ipywidgets as W

from ..plots import monitor as mplots
from ..results.store import is_store, read_store
from ..validate import positive
from .explorer import Explorer

__all__ = ["Dashboard"]

METRICS = ("attn_normalized_entropy", "attn_max_logit", "attn_sink_mass", "attn_entropy")
ALL = "(all layers)"


def _signature(path: Path) -> tuple:
    """What changes when a writer appends: the names, sizes and mtimes of the store's files."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir()))
    except FileNotFoundError:
        return ()


class Dashboard(Explorer):
    """Tail the monitor store at ``path`` (:class:`workbench.monitor.Monitor`; it may not exist yet) and draw,
    redrawn in place whenever the store changes: the loss with alarm markers
    (:func:`workbench.plots.monitor.loss_curve`), ``lambda_max`` against the edge of stability
    (:func:`~workbench.plots.monitor.sharpness_edge`), an attention statistic per head over steps
    (:func:`~workbench.plots.monitor.entropy_heatmap`; the ``statistic`` and ``layer`` dropdowns) and norms per
    layer (:func:`~workbench.plots.monitor.norms`; the ``norm`` dropdown), with the alarms listed below.

    ``follow=True`` polls every ``interval`` seconds in a background thread until **Stop** (Run follows again);
    ``follow=False`` or ``background=False`` (or :meth:`update`) reads the store once. A control change redraws at
    once.

    >>> import tempfile, torch, xarray as xr
    >>> from workbench.results.store import StepStore
    >>> path = tempfile.mkdtemp() + "/run"
    >>> dash = Dashboard(path, follow=False)                   # nothing written yet
    >>> dash.steps
    0
    >>> _ = StepStore(path).append([xr.Dataset({"loss": ((), v)}, coords={"step": s}) for s, v in [(0, 2.0), (5, 1.0)]])
    >>> dash.update(), [float(v) for v in dash.loss_fig.data[0].y]
    (2, [2.0, 1.0])
    """

    def __init__(self, path: str | Path, *, interval: float = 1.0, follow: bool = True, background: bool = True):
        super().__init__(background=background and follow)
        self.path = Path(path)
        self.interval = positive("interval", interval)
        self.follow = bool(follow) and background  # following needs a thread: background=False reads once
        self.ds = None
        self.steps = 0
        self._seen: tuple | None = None
        self._lock = threading.Lock()
        self._drawing = threading.Lock()  # the polling thread and a control change never draw at once
        self.metric = W.Dropdown(options=list(METRICS), value=METRICS[0], description="statistic")
        self.layer = W.Dropdown(options=[ALL], value=ALL, description="layer")
        self.norm = W.Dropdown(options=list(mplots.NORMS), value="update_ratio", description="norm")
        self.loss_fig = self.figure(height=320, title="loss and alarms")
        self.edge_fig = self.figure(height=320, title="sharpness and the edge of stability")
        self.head_fig = self.figure(height=360, title=f"{METRICS[0]} per head")
        self.norm_fig = self.figure(height=320, title="update_ratio per layer")
        self.alarms = W.HTML(value="")
        for w in (self.metric, self.layer, self.norm):
            w.observe(lambda _: self.redraw(), names="value")
        self.assemble(
            [[self.metric, self.layer, self.norm]],
            [self.loss_fig, self.edge_fig, self.head_fig, self.norm_fig, self.alarms],
        )

    # -- reading ----------------------------------------------------------------------------------
    def read(self, force: bool = False) -> bool:
        """Re-read the store if it changed since the last read; whether it did."""
        if not is_store(self.path):
            return False
        sig = _signature(self.path)
        if sig == self._seen and not force:
            return False
        ds = read_store(self.path)
        for _ in range(5):  # a read racing the writer's flush can miss its last rows for a moment: read again
            if ds.sizes.get("step", 0) >= self.steps:
                break
            time.sleep(0.02)
            ds = read_store(self.path)
        with self._lock:
            self.ds, self._seen = ds, sig
            self.steps = int(ds.sizes.get("step", 0))
        return True

    def update(self) -> int:
        """Read the store once and redraw; the number of steps read."""
        if self.read():
            self.redraw()
        elif self.ds is None:
            self.status.value = html.escape(f"waiting for {self.path}")
        return self.steps

    # -- drawing ----------------------------------------------------------------------------------
    def redraw(self) -> None:
        """Draw the figures from the last read (the controls' choices applied)."""
        with self._lock:
            ds = self.ds
        if ds is None:
            return
        with self._drawing:
            self._draw(ds)

    def _draw(self, ds) -> None:
        layers = mplots.head_labels(ds)
        if list(self.layer.options) != [ALL, *layers]:
            keep = self.layer.value if self.layer.value in layers else ALL
            self.layer.options = [ALL, *layers]
            self.layer.value = keep
        layer = None if self.layer.value == ALL else self.layer.value
        self.draw(self.loss_fig, mplots.loss_curve(ds))
        self.draw(self.edge_fig, mplots.sharpness_edge(ds))
        self.draw(self.head_fig, mplots.entropy_heatmap(ds, layer=layer, variable=self.metric.value))
        self.draw(self.norm_fig, mplots.norms(ds, self.norm.value))
        table = mplots.alarms_table(ds)
        last = int(ds["step"].values[-1]) if self.steps else None
        self.status.value = html.escape(f"{self.steps} monitored steps, last {last}, {len(table)} alarms")
        self.alarms.value = table.tail(20).to_html(index=False, max_cols=5) if len(table) else ""

    # -- the job ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read and draw now; with ``follow``, keep polling in the background until Stop."""
        if not self.follow:
            self.read(force=True)
            self.redraw()
            return

        def poll(cancel):
            self.read(force=True)
            self.redraw()
            while not cancel.wait(self.interval):
                self.update()

        self.run(poll, f"following {self.path.name}")
