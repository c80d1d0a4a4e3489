"""Figures for the attention probes: per-head statistics, attention maps, entropy over training."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from .common import categorical


def heatmap(stats, variable: str = "entropy", title: str | None = None) -> go.Figure:
    """Layer x head heatmap of a per-head statistic of :func:`workbench.attention.attention_stats`
    (``entropy``, ``normalized_entropy``, ``max_logit``, ``sink_mass``), or of a (layer, head) DataArray.

    >>> import numpy as np, xarray as xr
    >>> da = xr.DataArray(np.ones((2, 3)), dims=("layer", "head"), coords={"layer": [0, 1], "head": [0, 1, 2]})
    >>> heatmap(da).data[0].x
    ('h0', 'h1', 'h2')
    """
    da = stats[variable] if isinstance(stats, xr.Dataset) else stats
    units = da.attrs.get("units", "")
    units = "" if units == "1" else units  # dimensionless: no unit label
    fig = go.Figure(
        go.Heatmap(
            z=da.values,
            x=[f"h{h}" for h in da["head"].values],
            y=[f"L{i}" for i in da["layer"].values],
            colorscale="Viridis",
            colorbar=dict(title=units),
            hovertemplate="layer %{y}, head %{x}: %{z:.3g}<extra></extra>",
        )
    )
    name = da.attrs.get("long_name", variable)
    fig.update_layout(
        title=title or (f"{name} ({units})" if units else name),
        xaxis_title="head",
        yaxis_title="layer",
        yaxis_autorange="reversed",
        template="plotly_white",
    )
    return fig


def attention_map(att: xr.DataArray, head: int, tokens=None, title: str | None = None) -> go.Figure:
    """One head's attention probabilities (query x key) from :func:`workbench.attention.attention_map`.
    Positions are the axes (so a repeated token stays two rows); ``tokens`` label the ticks.

    >>> import numpy as np, xarray as xr
    >>> att = xr.DataArray(np.full((1, 2, 2), 0.5), dims=("head", "query", "key"), coords={"head": [0]})
    >>> attention_map(att, 0, tokens=["a", "a"]).layout.xaxis.ticktext
    ('a', 'a')
    """
    p = att.sel(head=head).values
    fig = go.Figure(
        go.Heatmap(
            z=p,
            x=np.arange(p.shape[1]),
            y=np.arange(p.shape[0]),
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar=dict(title="probability"),
            hovertemplate="query %{y} -> key %{x}: %{z:.3f}<extra></extra>",
        )
    )
    for axis, n in ((fig.layout.xaxis, p.shape[1]), (fig.layout.yaxis, p.shape[0])):
        if tokens is not None:
            toks = [str(t) for t in list(tokens)[:n]]
            axis.update(tickmode="array", tickvals=list(range(len(toks))), ticktext=toks)
        else:
            axis.update(tickformat="d")
    fig.update_layout(
        title=title or f"{att.attrs.get('module', '')} head {head}".strip(),
        xaxis_title="key",
        yaxis_title="query",
        yaxis_autorange="reversed",
        template="plotly_white",
    )
    return fig


def over_training(ds: xr.Dataset, dim: str = "step", layer: int = 0, title: str | None = None) -> go.Figure:
    """Per-head normalised entropy and max logit of one layer over checkpoints
    (:func:`workbench.attention.over_checkpoints`), with the training loss if present.

    >>> import numpy as np, xarray as xr
    >>> dims = ("step", "layer", "head")
    >>> ds = xr.Dataset({v: (dims, np.ones((2, 1, 2))) for v in ("normalized_entropy", "max_logit")},
    ...                 coords={"step": [0, 10], "layer": [0], "head": [0, 1]})
    >>> len(over_training(ds).data)
    4
    """
    rows = 3 if "loss" in ds else 2
    fig = make_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        subplot_titles=["normalised entropy (H / ln n keys)", "max attention logit", "training loss"][:rows],
    )
    x, cat = categorical(ds[dim].values)
    mode = "markers" if cat else "lines"
    for h in ds["head"].values:
        fig.add_scatter(
            x=x,
            y=ds.normalized_entropy.sel(layer=layer, head=h).values,
            mode=mode,
            name=f"head {h}",
            legendgroup=str(h),
            row=1,
            col=1,
        )
        fig.add_scatter(
            x=x,
            y=ds.max_logit.sel(layer=layer, head=h).values,
            mode=mode,
            name=f"head {h}",
            legendgroup=str(h),
            showlegend=False,
            row=2,
            col=1,
        )
    if "loss" in ds:
        fig.add_scatter(
            x=x,
            y=ds.loss.values,
            mode="markers" if cat else "lines+markers",
            name="loss",
            row=3,
            col=1,
            line=dict(color="black"),
        )
    fig.update_layout(title=title or f"layer {layer} over training", template="plotly_white", height=260 * rows)
    fig.update_xaxes(title_text=dim, row=rows, col=1)
    return fig


def collapse_overview(stats_by_model: dict, title: str | None = None) -> go.Figure:
    """Normalised entropy of every head, one column of dots per model; the collapse (< 0.1) and
    overload (> 0.9) bands shaded.

    >>> import numpy as np, xarray as xr
    >>> st = xr.Dataset({"normalized_entropy": (("layer", "head"), [[0.05, 0.5]])},
    ...                 coords={"layer": [0], "head": [0, 1]})
    >>> collapse_overview({"a": st}).data[0].y.tolist()
    [0.05, 0.5]
    """
    fig = go.Figure()
    for name, ds in stats_by_model.items():
        ne = ds["normalized_entropy"]
        vals = ne.values.ravel()
        txt = [f"L{i} h{h}" for i in ne.layer.values for h in ne["head"].values]
        fig.add_scatter(
            x=[str(name)] * len(vals),
            y=vals,
            mode="markers",
            text=txt,
            name=str(name),
            marker=dict(size=9, opacity=0.7),
            hovertemplate="%{text}: %{y:.3f}<extra></extra>",
        )
    fig.add_hrect(y0=0, y1=0.1, fillcolor="red", opacity=0.12, line_width=0, annotation_text="collapse")
    fig.add_hrect(y0=0.9, y1=1.0, fillcolor="orange", opacity=0.12, line_width=0, annotation_text="overload")
    fig.update_layout(
        title=title or "Normalised attention entropy of every head (one dot per head)",
        yaxis_range=[0, 1.02],
        yaxis_title="H / ln(n keys)",
        xaxis_type="category",
        template="plotly_white",
        showlegend=False,
    )
    return fig
