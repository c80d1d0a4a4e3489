"""Sharpness explorer: the Hessian (or GGN, Fisher ...) spectral density with its kernel width as a slider
(re-smoothed from the stored Lanczos nodes, no new products), the top eigenvalues (per block too, with
``blocks=``), and SAM sharpness against rho, for one or several models side by side."""

from __future__ import annotations

import ipywidgets as W
import numpy as np

from .. import plots
from ..curvature import CURVATURES, hessian_eigenvalues, spectral_density
from ..sharpness import sam_sharpness
from .explorer import Explorer


class SharpnessExplorer(Explorer):
    """``models``: a dict label -> model. Figures by :func:`workbench.plots.spectral_density`,
    :func:`workbench.plots.eigenvalues` and :func:`workbench.plots.sharpness_vs_rho`; with ``blocks``
    (``"layer"``, ``"module"`` or a mapping, see :func:`workbench.curvature.parameter_blocks`) also the top
    eigenvalues of every block (:func:`workbench.plots.block_spectrum`). ``curvature``: ``"hessian"``,
    ``"ggn"``, ``"fisher"``, ... (:func:`workbench.curvature.curvature_operator`).

    >>> from workbench.testing import tiny_classifier
    >>> m, lf, data = tiny_classifier(20)
    >>> ex = SharpnessExplorer({"a": m}, lf, data, k=2, n_runs=1, n_lanczos=4, background=False)
    >>> len(ex.rho_fig.data[0].x), ex.eig_fig.layout.xaxis.dtick
    (6, 1)
    >>> ex = SharpnessExplorer({"a": m}, lf, data, k=2, n_runs=1, n_lanczos=4, blocks="layer", curvature="ggn",
    ...                        background=False)
    >>> list(ex.block_fig.data[0].x)[:2], ex.block_fig.layout.title.text.split(" by")[0]
    (['(all)', '0'], 'top GGN eigenvalues')
    """

    def __init__(
        self,
        models: dict,
        loss_fn,
        data,
        *,
        k: int = 5,
        n_runs: int = 3,
        n_lanczos: int = 40,
        rho_max: float = 0.1,
        adaptive: bool = False,
        curvature: str = "hessian",
        blocks=None,
        background: bool = True,
    ):
        if not isinstance(models, dict) or not models:
            raise ValueError("models: pass a non-empty dict label -> model")
        super().__init__(background=background)
        self.models, self.loss_fn, self.data = models, loss_fn, data
        self.k, self.n_runs, self.n_lanczos = k, n_runs, n_lanczos
        self.curvature, self.blocks = curvature, blocks
        self.what = CURVATURES.get(curvature, curvature)
        self.sigma = W.FloatLogSlider(
            value=0.01,
            base=10,
            min=-4,
            max=0,
            step=0.1,
            description="kernel width",
            continuous_update=True,
            readout_format=".2g",
        )
        self.log = W.Checkbox(value=True, description="log density")
        self.rho_max = W.FloatLogSlider(
            value=rho_max,
            base=10,
            min=-3,
            max=0.5,
            step=0.1,
            description="max rho",
            continuous_update=False,
            readout_format=".2g",
        )
        self.adaptive = W.Checkbox(value=adaptive, description="adaptive (ASAM)")
        self.density_fig = self.figure(height=380, title=f"{self.what} eigenvalue density")
        self.eig_fig = self.figure(height=340, title=f"top {self.what} eigenvalues")
        self.block_fig = self.figure(height=340, title=f"top {self.what} eigenvalues by block")
        self.rho_fig = self.figure(height=340, title="sharpness vs rho")
        self.densities: dict = {}
        self.eigenvalues: dict = {}
        self.sharpness: dict = {}
        for w in (self.sigma, self.log):
            w.observe(lambda _: self.redraw_density(), names="value")
        self.assemble(
            [[self.sigma, self.log], [self.rho_max, self.adaptive]],
            [self.density_fig, W.HBox([self.eig_fig, self.rho_fig])] + ([self.block_fig] if blocks is not None else []),
            watch=[self.rho_max, self.adaptive],
            on_change=lambda: self.refresh(curvature=False),
            start=False,
        )
        self.refresh()

    def refresh(self, curvature: bool = True) -> None:
        """Recompute the sharpness curves, and with ``curvature`` the eigenvalues and densities."""
        rhos = np.linspace(0, self.rho_max.value, 6)
        adaptive = self.adaptive.value
        # a curvature job cancelled by a rho change before it finished is redone
        curvature = curvature or len(self.densities) < len(self.models)

        def work(cancel):
            labels = list(self.models)
            parts = len(labels) * (3 if curvature else 1)
            part = 0
            for label in labels:
                m = self.models[label]
                if curvature:
                    self.status.value = f"{label}: eigenvalues and spectral density ..."
                    self.eigenvalues[label] = hessian_eigenvalues(
                        m,
                        self.loss_fn,
                        self.data,
                        k=self.k,
                        curvature=self.curvature,
                        blocks=self.blocks,
                        cancel=cancel,
                        progress=self.progress_part(part, parts),
                    )
                    self.densities[label] = spectral_density(
                        m,
                        self.loss_fn,
                        self.data,
                        n_runs=self.n_runs,
                        n_lanczos=self.n_lanczos,
                        curvature=self.curvature,
                        cancel=cancel,
                        progress=self.progress_part(part + 1, parts),
                    )
                    part += 2
                self.status.value = f"{label}: sharpness ..."
                self.sharpness[label] = sam_sharpness(
                    m,
                    self.loss_fn,
                    self.data,
                    rho=rhos,
                    adaptive=adaptive,
                    cancel=cancel,
                    progress=self.progress_part(part, parts),
                )
                part += 1
                self.redraw()
            self.status.value = f"{len(labels)} model{'s' if len(labels) > 1 else ''}"

        self.run(work, "computing")

    def redraw(self) -> None:
        """Draw what has been computed so far."""
        if self.eigenvalues:
            self.draw(
                self.eig_fig,
                plots.eigenvalues(
                    dict(self.eigenvalues), title=f"top {self.what} eigenvalues (error bars: Ritz residuals)"
                ),
                height=340,
            )
            if self.blocks is not None:
                fig = plots.block_spectrum(
                    dict(self.eigenvalues) if len(self.eigenvalues) > 1 else next(iter(self.eigenvalues.values())),
                    title=f"top {self.what} eigenvalues by block ((all): the whole model)",
                )
                self.draw(self.block_fig, fig, height=340)
        if self.sharpness:
            kind = "adaptive SAM (ASAM)" if self.adaptive.value else "SAM"
            self.draw(
                self.rho_fig, plots.sharpness_vs_rho(dict(self.sharpness), title=f"{kind} sharpness vs rho"), height=340
            )
        self.redraw_density()

    def redraw_density(self) -> None:
        """Re-smooth the densities at the slider's kernel width (a fraction of each spectrum's range)."""
        if self.densities:
            fig = plots.spectral_density(
                dict(self.densities),
                sigma=self.sigma.value,
                relative=True,
                log=self.log.value,
                title=f"{self.what} eigenvalue density (kernel width {self.sigma.value:.2g} x range)",
            )
            self.draw(self.density_fig, fig, height=380)
