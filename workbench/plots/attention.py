"""Figures for the attention-entropy probe."""
from __future__ import annotations

import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots


def heatmap(stats, variable: str = "entropy", title: str | None = None) -> go.Figure:
    """Layer x head heatmap of a per-head statistic (entropy, normalized_entropy, max_logit, sink_mass)."""
    da = stats[variable] if isinstance(stats, xr.Dataset) else stats
    fig = go.Figure(go.Heatmap(z=da.values, x=[f"h{h}" for h in da["head"].values], y=[f"L{l}" for l in da.layer.values],
                               colorscale="Viridis", colorbar=dict(title=da.attrs.get("units", "")),
                               hovertemplate="layer %{y}, head %{x}: %{z:.3g}<extra></extra>"))
    fig.update_layout(title=title or da.attrs.get("long_name", variable), xaxis_title="head", yaxis_title="layer",
                      yaxis_autorange="reversed", template="plotly_white")
    return fig


def attention_map(att: xr.DataArray, head: int, tokens=None, title: str | None = None) -> go.Figure:
    """One head's attention probabilities (query x key), from :func:`workbench.attention.attention_map`."""
    p = att.sel(head=head).values
    labels = list(tokens) if tokens is not None else list(range(p.shape[-1]))
    fig = go.Figure(go.Heatmap(z=p, x=labels[: p.shape[1]], y=labels[: p.shape[0]], colorscale="Blues", zmin=0, zmax=1,
                               hovertemplate="query %{y} -> key %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title or f"{att.attrs.get('module', '')} head {head}", xaxis_title="key",
                      yaxis_title="query", yaxis_autorange="reversed", template="plotly_white")
    return fig


def over_training(ds: xr.Dataset, dim: str = "step", layer: int = 0, title: str | None = None) -> go.Figure:
    """Per-head entropy and max logit of one layer over checkpoints, with the training loss."""
    rows = 3 if "loss" in ds else 2
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True,
                        subplot_titles=["normalised entropy", "max attention logit", "training loss"][:rows])
    x = ds[dim].values
    for h in ds["head"].values:
        fig.add_scatter(x=x, y=ds.normalized_entropy.sel(layer=layer, head=h).values, mode="lines", name=f"head {h}",
                        legendgroup=str(h), row=1, col=1)
        fig.add_scatter(x=x, y=ds.max_logit.sel(layer=layer, head=h).values, mode="lines", name=f"head {h}",
                        legendgroup=str(h), showlegend=False, row=2, col=1)
    if "loss" in ds:
        fig.add_scatter(x=x, y=ds.loss.values, mode="lines+markers", name="loss", row=3, col=1, line=dict(color="black"))
    fig.update_layout(title=title or f"layer {layer} over training", template="plotly_white", height=260 * rows)
    fig.update_xaxes(title_text=dim, row=rows, col=1)
    return fig


def collapse_overview(stats_by_model: dict, title: str | None = None) -> go.Figure:
    """Normalised entropy of every head, one column of dots per model; collapse (< 0.1) and
    overload (> 0.9) bands shaded."""
    fig = go.Figure()
    for name, ds in stats_by_model.items():
        ne = ds["normalized_entropy"]
        vals = ne.values.ravel()
        txt = [f"L{l} h{h}" for l in ne.layer.values for h in ne["head"].values]
        fig.add_scatter(x=[name] * len(vals), y=vals, mode="markers", text=txt, name=name,
                        marker=dict(size=9, opacity=0.7), hovertemplate="%{text}: %{y:.3f}<extra></extra>")
    fig.add_hrect(y0=0, y1=0.1, fillcolor="red", opacity=0.12, line_width=0, annotation_text="collapse")
    fig.add_hrect(y0=0.9, y1=1.0, fillcolor="orange", opacity=0.12, line_width=0, annotation_text="overload")
    fig.update_layout(title=title or "Normalised attention entropy of every head", yaxis_range=[0, 1.02],
                      yaxis_title="H / ln(n keys)", template="plotly_white", showlegend=False)
    return fig

