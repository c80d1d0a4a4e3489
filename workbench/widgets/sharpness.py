"""Sharpness explorer: spectral density with its kernel width as a slider (re-smoothed from the SLQ
nodes, no new Hessian-vector products), top eigenvalues, and sharpness against rho."""
from __future__ import annotations

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from .. import sharpness as S
from ._base import Job


class SharpnessExplorer:
    def __init__(self, models: dict, loss_fn, data, *, k: int = 5, n_runs: int = 3, n_steps: int = 40,
                 rho_max: float = 0.1, adaptive: bool = False, background: bool = True):
        if not isinstance(models, dict) or not models:
            raise ValueError("models: pass a non-empty dict label -> model")
        self.models, self.loss_fn, self.data = models, loss_fn, data
        self.k, self.n_runs, self.n_steps = k, n_runs, n_steps
        self.job = Job(background)
        self.sigma = W.FloatLogSlider(value=0.01, base=10, min=-4, max=0, step=0.1, description="kernel width",
                                      continuous_update=True, readout_format=".2g")
        self.log = W.Checkbox(value=True, description="log density")
        self.rho_max = W.FloatLogSlider(value=rho_max, base=10, min=-3, max=0.5, step=0.1, description="max rho",
                                        continuous_update=False, readout_format=".2g")
        self.adaptive = W.Checkbox(value=adaptive, description="adaptive (ASAM)")
        self.density_fig = go.FigureWidget(layout=dict(title="Hessian eigenvalue density", template="plotly_white",
                                                       xaxis_title="eigenvalue", yaxis_title="density",
                                                       yaxis_type="log", height=380))
        self.eig_fig = go.FigureWidget(layout=dict(title="top Hessian eigenvalues", template="plotly_white",
                                                   xaxis_title="rank", yaxis_title="eigenvalue", height=320))
        self.rho_fig = go.FigureWidget(layout=dict(title="sharpness vs rho", template="plotly_white",
                                                   xaxis_title="rho", yaxis_title="loss increase", height=320))
        for label in models:
            self.density_fig.add_scatter(x=[], y=[], mode="lines", name=str(label))
            self.eig_fig.add_scatter(x=[], y=[], mode="lines+markers", name=str(label))
            self.rho_fig.add_scatter(x=[], y=[], mode="lines+markers", name=str(label))
        self.densities, self.eigenvalues, self.sharpness = {}, {}, {}
        self.sigma.observe(lambda _: self._redraw_density(), names="value")
        self.log.observe(lambda _: self._redraw_density(), names="value")
        self.rho_max.observe(lambda _: self.refresh(curvature=False), names="value")
        self.adaptive.observe(lambda _: self.refresh(curvature=False), names="value")
        self.widget = W.VBox([W.HBox([self.sigma, self.log]), W.HBox([self.rho_max, self.adaptive]),
                              self.job.controls(), self.density_fig, W.HBox([self.eig_fig, self.rho_fig])])
        self.refresh()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def refresh(self, curvature: bool = True):
        rhos = np.linspace(0, self.rho_max.value, 6)
        adaptive = self.adaptive.value

        def work(cancel):
            labels = list(self.models)
            for i, label in enumerate(labels):
                if cancel.is_set():
                    return
                m = self.models[label]
                self.job.progress(i, len(labels))
                if curvature:
                    self.job.status.value = f"{label}: eigenvalues and spectral density ..."
                    self.eigenvalues[label] = S.hessian_eigenvalues(m, self.loss_fn, self.data, k=self.k, progress=False)
                    self.densities[label] = S.spectral_density(m, self.loss_fn, self.data, n_runs=self.n_runs,
                                                               n_steps=self.n_steps, progress=False)
                self.job.status.value = f"{label}: sharpness ..."
                self.sharpness[label] = S.sam_sharpness(m, self.loss_fn, self.data, rho=rhos, adaptive=adaptive,
                                                        progress=False)
                self._draw(i, label)
            self.job.progress(1, 1)
            self.job.status.value = f"{len(labels)} models"

        self.job.run(work)

    def _draw(self, i, label):
        e, s = self.eigenvalues.get(label), self.sharpness.get(label)
        with self.eig_fig.batch_update():
            if e is not None:
                self.eig_fig.data[i].x, self.eig_fig.data[i].y = e["rank"].values, e.values
        with self.rho_fig.batch_update():
            self.rho_fig.data[i].x, self.rho_fig.data[i].y = s.rho.values, s.values
            self.rho_fig.data[i].error_y = dict(type="data", array=np.nan_to_num(s.stderr.values), visible=True)
            self.rho_fig.layout.title.text = f"{'adaptive ' if self.adaptive.value else ''}SAM sharpness vs rho"
        self._redraw_density()

    def _redraw_density(self):
        with self.density_fig.batch_update():
            for i, label in enumerate(self.models):
                d = self.densities.get(label)
                if d is None:
                    continue
                n = d.attrs["n_runs"]
                nodes, w = d.attrs["slq_nodes"].reshape(n, -1), d.attrs["slq_weights"].reshape(n, -1)
                span = max(float(np.ptp(nodes)), 1e-12)
                sm = S.density_from_nodes(nodes, w, sigma=self.sigma.value * span)
                y = np.maximum(sm.values, 1e-12) if self.log.value else sm.values
                self.density_fig.data[i].x, self.density_fig.data[i].y = sm.eigenvalue.values, y
            self.density_fig.layout.yaxis.type = "log" if self.log.value else "linear"
            self.density_fig.layout.title.text = f"Hessian eigenvalue density (kernel width {self.sigma.value:.2g} x range)"
