"""Weight-space explorer: two models, the linear path between them before and after permutation alignment,
the barrier per method, the singular directions weight matching aligns, and per-layer weight spectra."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as W
from torch import nn

from .. import weightspace
from ..plots import weightspace as wplots
from .explorer import Explorer

_BARRIERS = ("barrier", "barrier_frankle", "error_barrier_frankle")
_SPECTRA = ("alpha", "alpha_weighted", "stable_rank", "spectral_norm", "mp_soft_rank")


class WeightspaceExplorer(Explorer):
    """Interactive :func:`workbench.weightspace.connectivity` of ``model_a`` and ``model_b`` (loss or accuracy
    along t per alignment method, :func:`workbench.plots.weightspace.lmc_paths`), the barrier per method
    (:func:`~workbench.plots.weightspace.lmc_barriers`), :func:`workbench.weightspace.singular_cosines` and the
    two models' per-layer :func:`workbench.weightspace.weight_spectra`. Moving ``steps`` or ``methods``
    recomputes; ``metric``, ``barrier`` and ``spectrum`` only redraw.

    >>> import torch
    >>> from workbench.testing import tiny_classifier
    >>> a, lf, data = tiny_classifier(20)
    >>> b = tiny_classifier(20, seed=1)[0]
    >>> ex = WeightspaceExplorer(a, b, lf, data, steps=3, methods=("none", "weight"), background=False)
    >>> ex.result.loss.shape, ex.last_error is None
    ((2, 3), True)
    >>> ex.metric.value = "accuracy"
    >>> ex.paths.layout.title.text.startswith("accuracy")
    True
    """

    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        loss_fn: Any,
        data: Any,
        *,
        methods: Sequence[str] = weightspace.LMC_METHODS,
        steps: int = 11,
        repair_data: Any = None,
        seed: int = 0,
        background: bool = True,
    ):
        super().__init__(background=background)
        self.model_a, self.model_b, self.loss_fn, self.data = model_a, model_b, loss_fn, data
        self.repair_data, self.seed = repair_data, seed
        options = list(dict.fromkeys(list(weightspace.LMC_METHODS) + list(methods)))
        self.methods = W.SelectMultiple(options=options, value=tuple(methods), description="methods", rows=5)
        self.steps = W.IntSlider(value=steps, min=3, max=41, step=2, description="steps", continuous_update=False)
        self.metric = W.Dropdown(options=["loss", "accuracy"], value="loss", description="metric")
        self.kind = W.Dropdown(options=list(_BARRIERS), value="barrier", description="barrier")
        self.spectrum = W.Dropdown(options=list(_SPECTRA), value="alpha", description="spectrum")
        self.paths = self.figure(height=420, title="path")
        self.barriers = self.figure(height=360, title="barrier")
        self.cosines = self.figure(height=360, title="singular directions")
        self.spectra_fig = self.figure(height=360, title="weight spectra")
        self.cos_result = None
        self.spectra: dict | None = None
        self.spectra_note = "workbench.weightspace.weight_spectra not available"
        for w in (self.metric, self.kind, self.spectrum):
            w.observe(lambda _: self.redraw(), names="value")
        self.assemble(
            [[self.methods, W.VBox([self.steps, self.metric, self.kind, self.spectrum])]],
            [self.paths, self.barriers, self.cosines, self.spectra_fig],
            watch=[self.methods, self.steps],
        )

    def _weight_spectra(self, cancel) -> dict | None:
        """Both models' per-layer spectra (``workbench.weightspace.weight_spectra``), once; None if absent."""
        fn = getattr(weightspace, "weight_spectra", None)
        if fn is None:
            return None
        if self.spectra is None:
            try:
                self.spectra = {
                    name: fn(m, keep_eigenvalues=False, seed=self.seed, cancel=cancel, progress=False)
                    for name, m in (("model A", self.model_a), ("model B", self.model_b))
                }
            except ValueError as e:  # e.g. matrices too small for a spectrum: the other figures still stand
                self.spectra, self.spectra_note = {}, str(e)
        return self.spectra

    def refresh(self) -> None:
        methods, steps = tuple(self.methods.value), self.steps.value
        if not methods:
            self.error.value = "<span style='color:#b00'>choose at least one method</span>"
            return

        def work(cancel):
            kw = dict(cancel=cancel, seed=self.seed)
            self.status.value = "alignment and the paths ..."
            self.result = weightspace.connectivity(
                self.model_a, self.model_b, self.loss_fn, self.data, methods=methods, steps=steps,
                repair_data=self.repair_data, progress=self.progress_part(0, 2), **kw,
            )  # fmt: skip
            if self.cos_result is None:
                self.status.value = "singular directions ..."
                self.cos_result = weightspace.singular_cosines(
                    self.model_a, self.model_b, None, self.repair_data if self.repair_data is not None else self.data,
                    progress=self.progress_part(1, 2), **kw,
                )  # fmt: skip
            self._weight_spectra(cancel)
            self.redraw()
            best = self.result.barrier.to_series().idxmin()
            self.status.value = f"{len(methods)} paths x {self.result.sizes['t']} points; lowest barrier: {best}"

        self.run(work, "computing")

    def redraw(self) -> None:
        """Draw the last results with the current display controls (no recomputation)."""
        if self.result is None:
            return
        metric, kind = self.metric.value, self.kind.value
        self.draw(self.paths, wplots.lmc_paths(self.result, metric, title=f"{metric} along the path A -> B"))
        self.draw(self.barriers, wplots.lmc_barriers(self.result, kind, title=f"{kind.replace('_', ' ')} per method"))
        if self.cos_result is not None:
            self.draw(self.cosines, wplots.singular_cosines(self.cos_result))
        if self.spectra:
            var = self.spectrum.value
            self.draw(self.spectra_fig, wplots.layer_spectra(self.spectra, var, title=f"{var} per layer (A and B)"))
        else:
            self.spectra_fig.update_layout(title=f"weight spectra: {self.spectra_note}"[:160])
