"""Attention explorer: a layer x head heatmap of a per-head statistic; click a head to see its
attention map for a chosen example (both drawn by :mod:`workbench.plots`, offline)."""

from __future__ import annotations

import ipywidgets as W
import torch
from torch import nn

from .. import attention as A
from .. import plots
from .explorer import Explorer

STATISTICS = ["normalized_entropy", "entropy", "max_logit", "sink_mass"]


def _n_examples(inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    if isinstance(inputs, dict):
        return int(next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0])
    return 1


class AttentionExplorer(Explorer):
    """``inputs``: a batch (a mapping or a tensor); ``tokens``: optional list (per example) of token
    strings; ``forward_kwargs`` go to the model's forward (e.g. a padding mask).

    >>> from workbench.testing import hostile_transformer
    >>> m, x, mask = hostile_transformer()
    >>> ex = AttentionExplorer(m, x, background=False, src_key_padding_mask=mask)
    >>> ex.show_head(1, 3); ex.map_fig.layout.title.text
    'layer 1, head 3, example 0'
    """

    def __init__(
        self,
        model: nn.Module,
        inputs,
        *,
        tokens: list | None = None,
        variable: str = "normalized_entropy",
        background: bool = True,
        **forward_kwargs,
    ):
        super().__init__(background=background)
        self.model, self.inputs, self.tokens, self.kw = model, inputs, tokens, forward_kwargs
        self.variable = W.Dropdown(options=STATISTICS, value=variable, description="statistic")
        self.example = W.BoundedIntText(value=0, min=0, max=max(_n_examples(inputs) - 1, 0), description="example")
        self.summary = W.HTML("")
        self.head_fig = self.figure(height=360, title="click a head")
        self.map_fig = self.figure(height=420, title="attention map")
        self.selected = (0, 0)
        self.stats = None
        self.variable.observe(lambda _: self.draw_heads(), names="value")
        self.example.observe(lambda _: self.show_head(*self.selected), names="value")
        self.assemble([[self.variable, self.example], [self.summary]], [W.HBox([self.head_fig, self.map_fig])])

    def refresh(self) -> None:
        """Compute the statistics of every head, draw the heatmap and the selected head's map."""
        self.stats = None
        self.show_head(*self.selected)

    def _statistics(self, cancel) -> None:
        self.stats = A.attention_stats(self.model, self.inputs, **self.probe_kw(cancel), **self.kw)
        n_col = int(A.detect_collapse(self.stats).sum())
        self.summary.value = (
            f"{self.stats.sizes['layer']} layers x {self.stats.sizes['head']} heads, capture: "
            f"{self.stats.attrs.get('capture', '?')}; collapsed heads (normalised entropy &lt; 0.1): {n_col}"
        )
        self.draw_heads()
        self.head_fig.data[0].on_click(self._clicked)

    def draw_heads(self) -> None:
        """Draw the heatmap of the chosen statistic."""
        if self.stats is None:
            return
        da = self.stats[self.variable.value]
        title = f"{da.attrs.get('long_name', self.variable.value)} (click a head)"
        self.draw(self.head_fig, plots.heatmap(self.stats, self.variable.value, title=title), height=360)

    def _clicked(self, trace, points, state):
        if points.point_inds:
            r, c = points.point_inds[0]
            self.show_head(int(r), int(c))

    def show_head(self, layer: int, head: int) -> None:
        """Show the attention map of ``head`` in ``layer`` for the chosen example."""
        self.selected = (layer, head)
        ex = self.example.value

        def work(cancel):
            if self.stats is None:  # the first job, or one that a click cancelled before it finished
                self._statistics(cancel)
            self._draw_map(layer, head, ex, cancel)

        self.run(work, f"attention map: layer {layer}, head {head}")

    def _draw_map(self, layer, head, ex, cancel):
        att = A.attention_map(self.model, self.inputs, layer=layer, example=ex, **self.probe_kw(cancel), **self.kw)
        toks = self.tokens[ex] if self.tokens is not None else None
        self.draw(
            self.map_fig,
            plots.attention_map(att, head, toks, title=f"layer {layer}, head {head}, example {ex}"),
            height=420,
        )
        self.status.value = f"layer {layer}, head {head}, example {ex}"
