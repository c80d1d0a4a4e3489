"""Transferability explorer: choose a target and a metric; the score-vs-accuracy figure and the tau
update in place. It reads results of :func:`workbench.transfer.rank` (no recomputation)."""
from __future__ import annotations

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from ..transfer import correlate


class TransferExplorer:
    """``ranked``: dict target -> Dataset from ``rank``; ``accuracy``: DataArray over (model, target)."""

    def __init__(self, ranked: dict, accuracy, *, layer: str = "penultimate", n_boot: int = 200):
        if not ranked:
            raise ValueError("ranked: pass a non-empty dict target -> rank(...) result")
        self.ranked, self.accuracy, self.layer, self.n_boot = ranked, accuracy, layer, n_boot
        first = next(iter(ranked.values()))
        self.target = W.Dropdown(options=list(ranked), description="target")
        self.metric = W.Dropdown(options=[str(m) for m in first.metric.values], value="logme"
                                 if "logme" in first.metric.values else str(first.metric.values[0]), description="metric")
        self.fig = go.FigureWidget(go.Scatter(x=[], y=[], mode="markers+text", textposition="top center",
                                              marker=dict(size=10)))
        self.fig.update_layout(template="plotly_white", xaxis_title="score", yaxis_title="fine-tuned accuracy",
                               height=460)
        self.table = W.HTML()
        for w in (self.target, self.metric):
            w.observe(lambda _: self.refresh(), names="value")
        self.widget = W.VBox([W.HBox([self.target, self.metric]), self.table, self.fig])
        self.refresh()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def refresh(self):
        ds = self.ranked[self.target.value]
        scores = ds.score.sel(layer=self.layer)
        acc = self.accuracy.sel(target=self.target.value)
        c = correlate(scores, acc, n_boot=self.n_boot)
        met = self.metric.value
        s = scores.sel(metric=met)
        models = [str(m) for m in s.model.values]
        with self.fig.batch_update():
            tr = self.fig.data[0]
            tr.x, tr.y, tr.text = s.values, [float(acc.sel(model=m)) for m in models], models
            w = float(c.weighted_tau.sel(metric=met))
            lo, hi = float(c.weighted_tau_low.sel(metric=met)), float(c.weighted_tau_high.sel(metric=met))
            self.fig.layout.title.text = f"{self.target.value}, {met}: weighted tau {w:.2f} [{lo:.2f}, {hi:.2f}]"
        order = np.argsort(-np.nan_to_num(c.weighted_tau.values, nan=-9))
        rows = "".join(f"<tr><td>{c.metric.values[i]}</td><td>{c.weighted_tau.values[i]:.2f}</td>"
                       f"<td>[{c.weighted_tau_low.values[i]:.2f}, {c.weighted_tau_high.values[i]:.2f}]</td></tr>" for i in order)
        self.table.value = f"<table><tr><th>metric</th><th>weighted tau</th><th>95% CI</th></tr>{rows}</table>"
