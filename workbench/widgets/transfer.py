"""Transferability explorer: choose a target and a metric; the score-vs-accuracy figure
(:func:`workbench.plots.score_vs_accuracy`) and the weighted-tau table update in place. It reads
results of :func:`workbench.transfer.rank` (no features are recomputed)."""

from __future__ import annotations

import html

import ipywidgets as W
import numpy as np
import xarray as xr

from .. import plots
from ..transfer import correlate
from .explorer import Explorer


class TransferExplorer(Explorer):
    """``ranked``: dict target -> Dataset from :func:`workbench.transfer.rank`; ``accuracy``: the
    ground truth, a DataArray over (model, target).

    >>> import numpy as np, xarray as xr
    >>> coords = {"model": list("abcd"), "metric": ["logme", "hscore"], "layer": ["penultimate"]}
    >>> scores = np.arange(8.0).reshape(4, 2, 1)
    >>> ranked = {"t": xr.Dataset({"score": (("model", "metric", "layer"), scores)}, coords=coords)}
    >>> acc = xr.DataArray([[0.1], [0.2], [0.3], [0.4]], dims=("model", "target"),
    ...                    coords={"model": list("abcd"), "target": ["t"]})
    >>> ex = TransferExplorer(ranked, acc, n_boot=10, background=False)
    >>> ex.fig.layout.title.text
    't, logme: weighted tau 1.00 [1.00, 1.00]'
    """

    def __init__(
        self,
        ranked: dict,
        accuracy: xr.DataArray,
        *,
        layer: str = "penultimate",
        n_boot: int = 200,
        background: bool = True,
    ):
        if not ranked:
            raise ValueError("ranked: pass a non-empty dict target -> rank(...) result")
        super().__init__(background=background)
        self.ranked, self.accuracy, self.layer, self.n_boot = ranked, accuracy, layer, n_boot
        metrics = [str(m) for m in next(iter(ranked.values())).metric.values]
        self.target = W.Dropdown(options=list(ranked), description="target")
        self.metric = W.Dropdown(
            options=metrics, value="logme" if "logme" in metrics else metrics[0], description="metric"
        )
        self.table = W.HTML()
        self.fig = self.figure(height=460, title="score vs fine-tuned accuracy")
        self._tau: dict = {}
        self.assemble([[self.target, self.metric], [self.table]], [self.fig], watch=[self.target, self.metric])

    def refresh(self) -> None:
        target, met = self.target.value, self.metric.value

        def work(cancel):
            ds = self.ranked[target]
            scores = ds.score.sel(layer=self.layer)
            acc = self.accuracy.sel(target=target)
            if target not in self._tau:  # bootstrap intervals: once per target
                self._tau[target] = correlate(scores, acc, n_boot=self.n_boot)
            c = self._tau[target]
            self.result = c
            w = float(c.weighted_tau.sel(metric=met))
            lo, hi = float(c.weighted_tau_low.sel(metric=met)), float(c.weighted_tau_high.sel(metric=met))
            title = f"{target}, {met}: weighted tau {w:.2f} [{lo:.2f}, {hi:.2f}]"
            self.draw(self.fig, plots.score_vs_accuracy(scores.sel(metric=met), acc, tau=w, title=title), height=460)
            self.table.value = _tau_table(c)
            self.status.value = f"{target}, {met}"

        self.run(work, "weighted tau")


def _tau_table(c: xr.Dataset) -> str:
    order = np.argsort(-np.nan_to_num(c.weighted_tau.values, nan=-9))
    rows = "".join(
        f"<tr><td>{html.escape(str(c.metric.values[i]))}</td><td>{c.weighted_tau.values[i]:.2f}</td>"
        f"<td>[{c.weighted_tau_low.values[i]:.2f}, {c.weighted_tau_high.values[i]:.2f}]</td></tr>"
        for i in order
    )
    return (
        "<table><tr><th>metric</th><th>weighted tau (1: perfect ranking, 0: random)</th><th>95% CI</th></tr>"
        f"{rows}</table>"
    )
