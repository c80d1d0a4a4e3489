"""The one base of every explorer: controls, a background job, progress, status, errors, figures.

An explorer is a panel of ipywidgets controls over one or more plotly ``FigureWidget``\\ s. Moving a
control starts a *job*: a function ``work(cancel)`` that calls probes with
``progress=<callable(done, total)>`` and ``cancel=<threading.Event>`` and redraws the figures in
place. One job runs at a time; a new one cancels the one in flight (the probe stops at its next
batch with :class:`workbench.registry.Cancelled`). ``background=False`` runs jobs synchronously
(tests, scripts). A subclass says only what differs: its controls, what a job computes and which
:mod:`workbench.plots` function draws it.
"""

from __future__ import annotations

import html
import threading
import time
import traceback
from collections.abc import Callable, Iterable

import ipywidgets as W
import plotly.graph_objects as go

from ..registry import Cancelled

_FIXED = ("type", "uid")


def _assign(obj, spec: dict) -> None:
    """Make the plotly object ``obj`` (a trace or a layout) equal to ``spec``, in place."""
    spec = {k: v for k, v in spec.items() if k not in _FIXED}
    for k in obj.to_plotly_json():
        if k not in spec and k not in _FIXED:
            obj[k] = None
    obj.update(spec, overwrite=True)


def update_figure(widget: go.FigureWidget, fig: go.Figure) -> go.FigureWidget:
    """Redraw ``widget`` as ``fig`` in place, in one batch: traces of the same position and type are
    updated (the same objects, so click handlers stay attached), the rest removed or added.

    >>> import plotly.graph_objects as go
    >>> w = go.FigureWidget(go.Scatter(x=[0, 1], y=[1, 2]))
    >>> first = w.data[0]
    >>> _ = update_figure(w, go.Figure(go.Scatter(x=[0, 1, 2], y=[3, 4, 5]), layout=dict(title="new")))
    >>> w.data[0] is first, list(w.data[0].y), w.layout.title.text
    (True, [3, 4, 5], 'new')
    """
    new = list(fig.data)
    with widget.batch_update():
        keep = 0
        for old, tr in zip(widget.data, new):
            if old.type != tr.type:
                break
            keep += 1
        if keep < len(widget.data):
            widget.data = widget.data[:keep]
        for old, tr in zip(widget.data, new):
            _assign(old, tr.to_plotly_json())
        if len(new) > keep:
            widget.add_traces(new[keep:])
        _assign(widget.layout, fig.layout.to_plotly_json())
    return widget


class Explorer:
    """Base class of the explorers: a panel of controls, Run and Stop buttons, a progress bar, a status
    line, an error display and figures, with one cancellable background job at a time.

    Subclasses build their controls and figures, call :meth:`assemble` once, and implement
    :meth:`refresh` (usually ``self.run(work)``, where ``work(cancel)`` calls probes with
    ``**self.probe_kw(cancel)`` and draws with :meth:`draw`).

    >>> class Counter(Explorer):
    ...     def __init__(self):
    ...         super().__init__(background=False)
    ...         self.n = W.IntSlider(value=1, description="n")
    ...         self.fig = self.figure()
    ...         self.assemble([[self.n]], [self.fig], watch=[self.n])
    ...     def refresh(self):
    ...         self.run(lambda cancel: self.draw(self.fig, go.Figure(go.Bar(y=[1] * self.n.value))), "bars")
    >>> c = Counter()
    >>> c.n.value = 3
    >>> len(c.fig.data[0].y), c.last_error is None, c.status.value.startswith("bars")
    (3, True, True)
    """

    def __init__(self, *, background: bool = True):
        self.background = background
        self.status = W.HTML(value="")
        self.error = W.HTML(value="")
        self.bar = W.FloatProgress(value=0, min=0, max=1, layout=W.Layout(width="200px"))
        self.stop = W.Button(description="Stop", icon="stop", button_style="warning", layout=W.Layout(width="80px"))
        self.stop.on_click(lambda _: self.cancel())
        self.start = W.Button(
            description="Run",
            icon="play",
            layout=W.Layout(width="80px"),
            tooltip="recompute from the controls (after Stop)",
        )
        self.start.on_click(lambda _: self.refresh())
        self.last_error: str | None = None
        self.result = None
        self.widget: W.VBox | None = None
        self._event: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # -- what a subclass provides ---------------------------------------------------------------
    def refresh(self) -> None:
        """Recompute and redraw from the controls' values (a subclass's job)."""
        raise NotImplementedError

    # -- building blocks ------------------------------------------------------------------------
    @staticmethod
    def figure(fig: go.Figure | None = None, **layout) -> go.FigureWidget:
        """A FigureWidget to be drawn by :meth:`draw` (empty until the first job)."""
        w = go.FigureWidget(fig)
        w.update_layout(template="plotly_white", **layout)
        return w

    @staticmethod
    def draw(widget: go.FigureWidget, fig: go.Figure, **layout) -> None:
        """Redraw ``widget`` in place as ``fig`` (a :mod:`workbench.plots` figure), with layout overrides."""
        if layout:
            fig.update_layout(**layout)
        update_figure(widget, fig)

    def assemble(
        self,
        rows: Iterable[Iterable[W.Widget]],
        figures: Iterable[W.Widget],
        *,
        watch: Iterable[W.Widget] = (),
        on_change: Callable | None = None,
        start: bool = True,
    ) -> W.VBox:
        """Lay out control ``rows``, the job bar, the error display and ``figures``; a change of any
        widget in ``watch`` calls ``on_change`` (default :meth:`refresh`); ``start`` runs it once."""
        callback = on_change or self.refresh
        for w in watch:
            w.observe(lambda _: callback(), names="value")
        self.widget = W.VBox([*(W.HBox(list(r)) for r in rows), self.controls(), self.error, *figures])
        if start:
            callback()
        return self.widget

    def controls(self) -> W.HBox:
        """The Run and Stop buttons, progress bar and status line."""
        return W.HBox([self.start, self.stop, self.bar, self.status])

    # -- the job --------------------------------------------------------------------------------
    def progress(self, done: int, total: int) -> None:
        """The ``progress=`` callable handed to probes."""
        self.bar.value = min(done / max(total, 1), 1.0)

    def progress_part(self, i: int, n: int) -> Callable[[int, int], None]:
        """A ``progress=`` callable for the ``i``-th of ``n`` equal parts of one job."""
        return lambda done, total: self.progress(i * max(total, 1) + done, n * max(total, 1))

    def probe_kw(self, cancel: threading.Event) -> dict:
        """The keywords every probe call of a job passes: ``progress`` and ``cancel``."""
        return dict(progress=self.progress, cancel=cancel)

    def cancel(self) -> None:
        """Stop the job in flight at its next cancellation point."""
        if self._event is not None:
            self._event.set()

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the job in flight (if any) to end."""
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, work: Callable[[threading.Event], object], label: str = "computing") -> None:
        """Run ``work(cancel)``; the job in flight is cancelled first. Errors are shown, not raised."""
        self.cancel()
        previous = self._thread
        ev = threading.Event()
        self._event = ev

        def body():
            if previous is not None:
                previous.join()  # a cancelled job ends at its next batch
            if ev.is_set():
                return
            self.status.value = f"{html.escape(label)} ..."
            self.error.value = ""
            self.bar.value = 0
            t0 = time.perf_counter()
            try:
                work(ev)
            except Cancelled:
                self.status.value = "<i>cancelled</i>"
                return
            except Exception as e:  # shown in the panel, not a traceback in the notebook
                self.last_error = traceback.format_exc()
                self.status.value = "<span style='color:#b00'>failed</span>"
                self.error.value = (
                    f"<details><summary style='color:#b00'>error: {html.escape(type(e).__name__)}: "
                    f"{html.escape(str(e))}</summary><pre>{html.escape(self.last_error)}</pre>"
                    "</details>"
                )
                return
            if ev.is_set():
                self.status.value = "<i>cancelled</i>"
                return
            self.last_error = None
            self.bar.value = 1
            done = self.status.value if not self.status.value.endswith(" ...") else html.escape(label)
            self.status.value = f"{done} <span style='color:#666'>({time.perf_counter() - t0:.2f} s)</span>"

        if self.background:
            self._thread = threading.Thread(target=body, daemon=True)
            self._thread.start()
        else:
            self._thread = None
            body()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
