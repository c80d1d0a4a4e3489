"""Loss-landscape explorer: a 2-D slice whose figure updates in place as controls move.

A coarse grid is drawn first (9 x 9: well under a second on the demo MLP), then refined to the
chosen resolution; moving a control cancels the computation in flight.
"""
from __future__ import annotations

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from .. import directions as D
from .. import landscape
from ._base import Job


class LandscapeExplorer:
    """Interactive :func:`workbench.landscape.slice_2d` of ``model``.

    Direction kinds: ``random`` (Gaussian, normalised), ``pca`` (top-2 PCA of ``checkpoints``, a list of
    models ending at the model of interest; the trajectory is overlaid), ``hessian`` (top-2 Hessian
    eigenvectors, computed once).
    """

    def __init__(self, model, loss_fn, data, *, checkpoints=None, span: float = 1.0, steps: int = 25, coarse: int = 9,
                 seed: int = 0, normalization: str = "filter", log: bool = False, background: bool = True):
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.checkpoints = checkpoints
        self.coarse = coarse
        self.job = Job(background)
        kinds = ["random"] + (["pca"] if checkpoints else []) + ["hessian"]
        self.kind = W.Dropdown(options=kinds, value="random", description="directions")
        self.norm = W.Dropdown(options=list(D.NORMALIZATIONS), value=normalization, description="normalise")
        self.span = W.FloatSlider(value=span, min=0.05, max=3.0, step=0.05, description="span", continuous_update=False)
        self.steps = W.IntSlider(value=steps, min=5, max=61, step=2, description="resolution", continuous_update=False)
        self.seed = W.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed")
        self.log = W.Checkbox(value=log, description="log scale")
        self.fig = go.FigureWidget(go.Contour(z=[[0.0]], colorscale="Viridis", ncontours=30,
                                              colorbar=dict(title="loss")))
        self.fig.add_scatter(x=[0], y=[0], mode="markers", marker=dict(symbol="x", size=11, color="white"), name="theta")
        self.fig.add_scatter(x=[], y=[], mode="lines+markers", line=dict(color="red"), name="trajectory")
        self.fig.update_layout(template="plotly_white", xaxis_title="alpha", yaxis_title="beta", height=520,
                               title="loss landscape")
        for w in (self.kind, self.norm, self.span, self.steps, self.seed, self.log):
            w.observe(lambda _: self.refresh(), names="value")
        self._cache = {}
        self.result = None
        self.widget = W.VBox([W.HBox([self.kind, self.norm, self.seed]), W.HBox([self.span, self.steps, self.log]),
                              self.job.controls(), self.fig])
        self.refresh()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _directions(self):
        kind = self.kind.value
        if kind == "random":
            return None, None
        if kind not in self._cache:
            if kind == "pca":
                dirs, info = D.pca_directions(self.checkpoints)
                self._cache[kind] = (dirs, info["coords"])
            else:
                from ..sharpness import hessian_eigenvalues

                r = hessian_eigenvalues(self.model, self.loss_fn, self.data, k=2, return_eigenvectors=True,
                                        progress=False)
                self._cache[kind] = ([r.eigenvector.values[0], r.eigenvector.values[1]], None)
        return self._cache[kind]

    def refresh(self):
        params = dict(kind=self.kind.value, normalization=self.norm.value, span=self.span.value, steps=self.steps.value,
                      seed=self.seed.value, log=self.log.value)

        def work(cancel):
            dirs, traj = self._directions()
            sizes = [n for n in (self.coarse, params["steps"]) if n <= params["steps"]]
            for n in dict.fromkeys(sizes):
                if cancel.is_set():
                    return
                self.job.status.value = f"computing {n} x {n} grid ..."
                s = landscape.slice_2d(self.model, self.loss_fn, self.data, directions=dirs, steps=n,
                                       span=params["span"], seed=params["seed"], normalization=params["normalization"],
                                       progress=self.job.progress, cancel=cancel)
                self._draw(s, traj, params)
                self.result = s
                self.job.status.value = f"{n} x {n} grid, {params['kind']} directions"

        self.job.run(work)

    def _draw(self, s, traj, params):
        z = s.values.T
        if params["log"]:
            z = np.log10(np.maximum(z, 1e-12))
        with self.fig.batch_update():
            c = self.fig.data[0]
            c.x, c.y, c.z = s.alpha.values, s.beta.values, z
            c.colorbar.title.text = "log10 loss" if params["log"] else "loss"
            tr = self.fig.data[2]
            if traj is not None:
                tr.x, tr.y = traj[:, 0], traj[:, 1]
            else:
                tr.x, tr.y = [], []
            self.fig.layout.title.text = (f"loss landscape: {params['kind']} directions, {params['normalization']}"
                                          f" normalisation, span {params['span']:g}, seed {params['seed']}")
