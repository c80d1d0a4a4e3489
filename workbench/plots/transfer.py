"""Figures for the transferability probes: leaderboards, score against accuracy, scores by layer."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr


def leaderboard(ranked: xr.Dataset, metric: str, layer: str = "penultimate", title: str | None = None) -> go.Figure:
    """Models sorted by one metric's score (a :func:`workbench.transfer.rank` Dataset).

    >>> import xarray as xr
    >>> ds = xr.Dataset({"score": (("model", "metric", "layer"), [[[1.0]], [[2.0]]])},
    ...                 coords={"model": ["a", "b"], "metric": ["logme"], "layer": ["penultimate"]})
    >>> leaderboard(ds, "logme").data[0].y
    ('a', 'b')
    """
    s = ranked.score.sel(metric=metric, layer=layer).to_series().sort_values()
    fig = go.Figure(
        go.Bar(x=s.values, y=[str(i) for i in s.index], orientation="h", hovertemplate="%{y}: %{x:.4g}<extra></extra>")
    )
    fig.update_layout(
        title=title or f"{metric}: models ranked (higher: predicted to transfer better)",
        xaxis_title=f"{metric} score",
        template="plotly_white",
        height=120 + 28 * len(s),
    )
    return fig


def score_vs_accuracy(scores: xr.DataArray, accuracy, tau: float | None = None, title: str | None = None) -> go.Figure:
    """One metric's scores (over ``model``) against ground-truth accuracies, the weighted tau in the title.

    >>> import xarray as xr
    >>> s = xr.DataArray([1.0, 2.0], dims="model", coords={"model": ["a", "b"]})
    >>> score_vs_accuracy(s, [0.5, 0.9], tau=1.0).data[0].y.tolist()
    [0.5, 0.9]
    """
    models = [str(m) for m in scores.model.values]
    if isinstance(accuracy, xr.DataArray):
        acc = np.array([float(accuracy.sel(model=m)) for m in models])
    else:
        acc = np.asarray(accuracy, float)
    fig = go.Figure(
        go.Scatter(
            x=scores.values,
            y=acc,
            mode="markers+text",
            text=models,
            textposition="top center",
            marker=dict(size=10),
            hovertemplate="%{text}: score %{x:.4g}, accuracy %{y:.3f}<extra></extra>",
        )
    )
    t = "" if tau is None else f" (weighted tau {tau:.2f})"
    metric = scores.coords["metric"].item() if "metric" in scores.coords and scores.metric.ndim == 0 else None
    fig.update_layout(
        title=title or f"score vs fine-tuned accuracy{t}",
        xaxis_title=f"{metric} score" if metric else "score",
        yaxis_title="fine-tuned accuracy",
        template="plotly_white",
    )
    return fig


def per_layer(ranked: xr.Dataset, metric: str, title: str | None = None, accuracy: dict | None = None) -> go.Figure:
    """A metric over the layers (in network order), one line per model; the ground-truth accuracy
    per layer (a dict layer -> accuracy) on the right axis if given.

    >>> import xarray as xr
    >>> ds = xr.Dataset({"score": (("model", "metric", "layer"), [[[1.0, 2.0]]])},
    ...                 coords={"model": ["a"], "metric": ["logme"], "layer": ["l1", "l2"]})
    >>> per_layer(ds, "logme").layout.xaxis.type
    'category'
    """
    fig = go.Figure()
    for m in ranked.model.values:
        s = ranked.score.sel(model=m, metric=metric)
        fig.add_scatter(x=[str(v) for v in s.layer.values], y=s.values, mode="lines+markers", name=f"{m}: {metric}")
    if accuracy is not None:
        fig.add_scatter(
            x=list(accuracy),
            y=list(accuracy.values()),
            mode="lines+markers",
            name="probe accuracy",
            yaxis="y2",
            line=dict(dash="dash", color="black"),
        )
        fig.update_layout(yaxis2=dict(title="accuracy", overlaying="y", side="right"))
    fig.update_layout(
        title=title or f"{metric} by layer (input to output)",
        xaxis_title="layer",
        xaxis_type="category",
        yaxis_title=f"{metric} score",
        template="plotly_white",
    )
    return fig
