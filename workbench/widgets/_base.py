"""Shared machinery: one background job at a time, cancellable, with a status line and progress bar."""
from __future__ import annotations

import threading
import time
import traceback

import ipywidgets as W


class Job:
    def __init__(self, background: bool = True):
        self.background = background
        self.status = W.HTML(value="")
        self.bar = W.FloatProgress(value=0, min=0, max=1, layout=W.Layout(width="200px"))
        self.stop = W.Button(description="Stop", icon="stop", button_style="warning", layout=W.Layout(width="80px"))
        self.stop.on_click(lambda _: self.cancel())
        self._event: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def progress(self, done, total):
        self.bar.value = done / max(total, 1)

    def cancel(self):
        if self._event is not None:
            self._event.set()

    def wait(self, timeout: float | None = None):
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, fn):
        """Run ``fn(cancel_event)``; a new run cancels the one in flight."""
        self.cancel()
        self.wait()
        ev = threading.Event()
        self._event = ev

        def body():
            t0 = time.perf_counter()
            try:
                fn(ev)
                if ev.is_set():
                    self.status.value = "<i>cancelled</i>"
            except KeyboardInterrupt:
                self.status.value = "<i>cancelled</i>"
            except Exception as e:  # shown in the widget, not a traceback in the notebook
                self.last_error = traceback.format_exc()
                self.status.value = f"<span style='color:#b00'>error: {type(e).__name__}: {e}</span>"
            else:
                if not ev.is_set():
                    self.status.value += f" <span style='color:#666'>({time.perf_counter() - t0:.2f} s)</span>"

        if self.background:
            self._thread = threading.Thread(target=body, daemon=True)
            self._thread.start()
        else:
            self._thread = None
            body()

    def controls(self):
        return W.HBox([self.stop, self.bar, self.status])
