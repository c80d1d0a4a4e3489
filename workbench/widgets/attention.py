"""Attention explorer: a layer x head heatmap; click a head to see its attention map for a chosen
input (rendered by plotly, offline)."""
from __future__ import annotations

import ipywidgets as W
import plotly.graph_objects as go

from .. import attention as A
from ._base import Job


class AttentionExplorer:
    """``inputs``: a batch (mapping or tensor); ``tokens``: optional list (per example) of token strings."""

    def __init__(self, model, inputs, *, tokens=None, variable: str = "normalized_entropy", background: bool = True,
                 **forward_kwargs):
        self.model, self.inputs, self.tokens, self.kw = model, inputs, tokens, forward_kwargs
        self.job = Job(background)
        self.stats = A.attention_stats(model, inputs, **forward_kwargs)
        n_ex = _n_examples(inputs)
        self.variable = W.Dropdown(options=["normalized_entropy", "entropy", "max_logit", "sink_mass"], value=variable,
                                   description="statistic")
        self.example = W.BoundedIntText(value=0, min=0, max=max(n_ex - 1, 0), description="example")
        self.head_fig = go.FigureWidget(go.Heatmap(z=[[0.0]], colorscale="Viridis"))
        self.head_fig.update_layout(title="click a head", xaxis_title="head", yaxis_title="layer",
                                    yaxis_autorange="reversed", template="plotly_white", height=360)
        self.map_fig = go.FigureWidget(go.Heatmap(z=[[0.0]], colorscale="Blues", zmin=0, zmax=1))
        self.map_fig.update_layout(title="attention map", xaxis_title="key", yaxis_title="query",
                                   yaxis_autorange="reversed", template="plotly_white", height=420)
        self.selected = (0, 0)
        self.head_fig.data[0].on_click(self._clicked)
        self.variable.observe(lambda _: self._draw_heads(), names="value")
        self.example.observe(lambda _: self.show_head(*self.selected), names="value")
        flags = A.detect_collapse(self.stats)
        n_col = int(flags.sum())
        self.summary = W.HTML(f"{self.stats.sizes['layer']} layers x {self.stats.sizes['head']} heads, capture: "
                              f"{self.stats.attrs['capture']}; collapsed heads (normalised entropy < 0.1): {n_col}")
        self.widget = W.VBox([W.HBox([self.variable, self.example]), self.summary, self.job.controls(),
                              W.HBox([self.head_fig, self.map_fig])])
        self._draw_heads()
        self.show_head(0, 0)

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _draw_heads(self):
        da = self.stats[self.variable.value]
        with self.head_fig.batch_update():
            hm = self.head_fig.data[0]
            hm.z, hm.x, hm.y = da.values, list(da["head"].values), list(da.layer.values)
            self.head_fig.layout.title.text = f"{da.attrs.get('long_name', '')} (click a head)"

    def _clicked(self, trace, points, state):
        if points.point_inds:
            r, c = points.point_inds[0]
            self.show_head(int(r), int(c))

    def show_head(self, layer: int, head: int):
        self.selected = (layer, head)
        ex = self.example.value

        def work(cancel):
            self.job.status.value = f"attention map: layer {layer}, head {head}, example {ex} ..."
            att = A.attention_map(self.model, self.inputs, layer=layer, example=ex, **self.kw)
            toks = self.tokens[ex] if self.tokens is not None else None
            p = att.sel(head=head).values
            with self.map_fig.batch_update():
                hm = self.map_fig.data[0]
                hm.z = p
                if toks is not None:
                    hm.x, hm.y = list(range(p.shape[1])), list(range(p.shape[0]))
                    self.map_fig.layout.xaxis.update(tickmode="array", tickvals=list(range(len(toks))), ticktext=toks)
                    self.map_fig.layout.yaxis.update(tickmode="array", tickvals=list(range(len(toks))), ticktext=toks)
                self.map_fig.layout.title.text = f"layer {layer}, head {head}, example {ex}"
            self.job.status.value = f"layer {layer}, head {head}"

        self.job.run(work)


def _n_examples(inputs):
    import torch

    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    if isinstance(inputs, dict):
        return next(v for v in inputs.values() if isinstance(v, torch.Tensor)).shape[0]
    return 1
