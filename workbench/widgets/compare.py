"""Compare-two-models explorer: a layer x layer similarity heatmap (choose the measure), reliability
diagrams side by side (choose the number of bins and the binning) and the output divergence per
position or per example (choose the divergence); all drawn by :mod:`workbench.plots.compare`."""

from __future__ import annotations

from typing import Any

import ipywidgets as W
from torch import nn

from .. import compare as C
from ..plots import compare as P
from .explorer import Explorer


class CompareExplorer(Explorer):
    """``model_a``, ``model_b``: the two models (two seeds, two checkpoints, student and teacher);
    ``data``: labelled data ``(inputs, labels)`` for the calibration and the heatmap; ``div_data``: the
    inputs of the divergence (default the inputs of ``data``; a mapping with an ``attention_mask`` for
    sequence models); ``layers_a``, ``layers_b``: the heatmap's layers (default every Linear/Conv).

    >>> from workbench.testing import tiny_classifier
    >>> a, _, (x, y) = tiny_classifier(40, seed=0)
    >>> b, _, _ = tiny_classifier(40, seed=1)
    >>> ex = CompareExplorer(a, b, (x, y), n_resamples=10, background=False)
    >>> ex.cka_fig.layout.title.text
    'linear CKA between layers'
    >>> ex.measure.value = "rbf"; ex.cka_fig.layout.title.text
    'RBF CKA between layers'
    >>> ex.n_bins.value = 5; ex.rel_fig.layout.title.text
    'reliability (none scaling, 5 equal-width bins)'
    """

    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        data: Any,
        *,
        div_data: Any = None,
        layers_a: list[str] | None = None,
        layers_b: list[str] | None = None,
        names: tuple[str, str] = ("a", "b"),
        n_resamples: int = 50,
        same_architecture: bool = True,
        background: bool = True,
    ):
        super().__init__(background=background)
        self.models, self.data, self.names = (model_a, model_b), data, names
        self.div_data = data[0] if div_data is None and isinstance(data, (tuple, list)) else div_data
        self.div_data = data if self.div_data is None else self.div_data
        self.layers = (layers_a, layers_b)
        self.n_resamples, self.same = n_resamples, same_architecture
        self.measure = W.Dropdown(options=list(C.MEASURES), value="linear", description="similarity")
        self.n_bins = W.IntSlider(value=15, min=2, max=40, description="bins")
        self.binning = W.Dropdown(options=["width", "mass"], value="width", description="binning")
        self.kind = W.Dropdown(options=list(C.KINDS), value="kl", description="divergence")
        self.cka_fig = self.figure(height=420, title="similarity")
        self.rel_fig = self.figure(height=380, title="reliability")
        self.div_fig = self.figure(height=360, title="divergence")
        self.heatmap = self.calibration = self.divergence = None
        self.measure.observe(lambda _: self.run(self._draw_heatmap, "similarity"), names="value")
        for w in (self.n_bins, self.binning):
            w.observe(lambda _: self.run(self._draw_reliability, "calibration"), names="value")
        self.kind.observe(lambda _: self.run(self._draw_divergence, "divergence"), names="value")
        self.assemble(
            [[self.measure, self.kind], [self.n_bins, self.binning]],
            [self.cka_fig, self.rel_fig, self.div_fig],
        )

    def _kw(self, cancel, i, n):
        return dict(progress=self.progress_part(i, n), cancel=cancel)

    def _draw_heatmap(self, cancel, i=0, n=1) -> None:
        a, b = self.models
        self.heatmap = C.cka_heatmap(
            a,
            b,
            self.data,
            *self.layers,
            measure=self.measure.value,
            n_resamples=self.n_resamples,
            **self._kw(cancel, i, n),
        )
        self.draw(self.cka_fig, P.similarity_heatmap(self.heatmap), height=420)

    def _draw_reliability(self, cancel, i=0, n=1) -> None:
        kw = dict(n_bins=self.n_bins.value, binning=self.binning.value, n_resamples=self.n_resamples)
        self.calibration = {
            name: C.calibration(m, self.data, **kw, **self._kw(cancel, i, n))
            for name, m in zip(self.names, self.models)
        }
        self.draw(self.rel_fig, P.reliability_diagrams(self.calibration), height=380)

    def _draw_divergence(self, cancel, i=0, n=1) -> None:
        if self.divergence is None:
            a, b = self.models
            self.divergence = C.output_divergence(
                a, b, self.div_data, same_architecture=self.same, n_resamples=self.n_resamples, **self._kw(cancel, i, n)
            )
        title = f"{self.divergence[self.kind.value].attrs['long_name']} ({self.names[0]} vs {self.names[1]})"
        self.draw(self.div_fig, P.divergence_per_position(self.divergence, self.kind.value), height=360)
        self.div_fig.layout.title.text = (
            title + f": mean {float(self.divergence['mean'].sel(kind=self.kind.value)):.4g}"
        )

    def refresh(self) -> None:
        """Recompute all three figures."""
        self.divergence = None

        def work(cancel):
            self._draw_heatmap(cancel, 0, 3)
            self._draw_reliability(cancel, 1, 3)
            self._draw_divergence(cancel, 2, 3)
            self.result = dict(heatmap=self.heatmap, calibration=self.calibration, divergence=self.divergence)
            self.status.value = f"{self.names[0]} vs {self.names[1]}"

        self.run(work, "comparing")
