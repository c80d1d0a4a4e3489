"""Loss-landscape explorer: a 2-D slice whose figure updates in place as the controls move.

A coarse grid is drawn first (9 x 9: well under a second on the demo MLP), then refined to the
chosen resolution; moving a control cancels the computation in flight. The log-scale switch
redraws without recomputing.
"""

from __future__ import annotations

import threading

import ipywidgets as W
from torch import nn

from .. import landscape, plots
from ..curvature import hessian_eigenvalues
from .explorer import Explorer


class LandscapeExplorer(Explorer):
    """Interactive :func:`workbench.landscape.slice_2d` of ``model``, drawn by :func:`workbench.plots.slice_2d`.

    Direction kinds: ``random`` (Gaussian, normalised), ``pca`` (top-2 PCA of ``checkpoints``, a list of
    models ending at the model of interest; the trajectory is overlaid), ``hessian`` (top-2 Hessian
    eigenvectors, computed once).

    >>> from workbench.testing import tiny_classifier
    >>> m, lf, data = tiny_classifier(20)
    >>> ex = LandscapeExplorer(m, lf, data, steps=5, coarse=3, background=False)
    >>> ex.result.loss.shape, ex.fig.data[0].type
    ((5, 5), 'contour')
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn,
        data,
        *,
        checkpoints: list | None = None,
        span: float = 1.0,
        steps: int = 25,
        coarse: int = 9,
        seed: int = 0,
        normalization: str = "filter",
        log: bool = False,
        background: bool = True,
    ):
        super().__init__(background=background)
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self.checkpoints = checkpoints
        self.coarse = coarse
        kinds = ["random"] + (["pca"] if checkpoints else []) + ["hessian"]
        self.kind = W.Dropdown(options=kinds, value="random", description="directions")
        self.norm = W.Dropdown(options=list(landscape.NORMALIZATIONS), value=normalization, description="normalise")
        self.span = W.FloatSlider(value=span, min=0.05, max=3.0, step=0.05, description="span", continuous_update=False)
        self.steps = W.IntSlider(value=steps, min=5, max=61, step=2, description="resolution", continuous_update=False)
        self.seed = W.BoundedIntText(value=seed, min=0, max=2**31 - 1, description="seed")
        self.log = W.Checkbox(value=log, description="log scale")
        self.fig = self.figure(height=520, title="loss landscape")
        self._directions_cache: dict = {}
        self._title = ""
        self.log.observe(lambda _: self.redraw(), names="value")
        self.assemble(
            [[self.kind, self.norm, self.seed], [self.span, self.steps, self.log]],
            [self.fig],
            watch=[self.kind, self.norm, self.span, self.steps, self.seed],
        )

    def directions(self, cancel: threading.Event | None = None):
        """The directions of the chosen kind: None (random, drawn by the probe), the PCA Dataset, or
        the top-2 Hessian eigenvectors (each computed once, within the job of ``cancel``)."""
        kind = self.kind.value
        if kind == "random":
            return None
        if kind not in self._directions_cache:
            if kind == "pca":
                self._directions_cache[kind] = landscape.pca_directions(self.checkpoints, **self.probe_kw(cancel))
            else:
                r = hessian_eigenvalues(
                    self.model, self.loss_fn, self.data, k=2, return_eigenvectors=True, **self.probe_kw(cancel)
                )
                self._directions_cache[kind] = list(r.eigenvector.values)
        return self._directions_cache[kind]

    def refresh(self) -> None:
        kind, norm, span, steps, seed = (
            self.kind.value,
            self.norm.value,
            self.span.value,
            self.steps.value,
            self.seed.value,
        )

        def work(cancel):
            dirs = self.directions(cancel)
            for n in dict.fromkeys(n for n in (self.coarse, steps) if n <= steps):
                self.status.value = f"computing {n} x {n} grid ..."
                s = landscape.slice_2d(
                    self.model,
                    self.loss_fn,
                    self.data,
                    directions=dirs,
                    steps=n,
                    span=span,
                    seed=seed,
                    normalization=norm,
                    **self.probe_kw(cancel),
                )
                self.result = s
                self._title = f"loss landscape: {kind} directions, {norm} normalisation, span {span:g}, seed {seed}"
                self.redraw()
                self.status.value = f"{n} x {n} grid, {kind} directions"

        self.run(work, "computing")

    def redraw(self) -> None:
        """Draw the last result with the current log setting (no recomputation)."""
        if self.result is not None:
            self.draw(self.fig, plots.slice_2d(self.result, log=self.log.value, title=self._title), height=520)
