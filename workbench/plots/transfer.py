"""Figures for the transferability probe."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr


def leaderboard(ranked: xr.Dataset, metric: str, layer: str = "penultimate", title: str | None = None) -> go.Figure:
    """Models sorted by one metric's score."""
    s = ranked.score.sel(metric=metric, layer=layer).to_series().sort_values()
    fig = go.Figure(go.Bar(x=s.values, y=[str(i) for i in s.index], orientation="h"))
    fig.update_layout(title=title or f"{metric}: models ranked", xaxis_title="score", template="plotly_white",
                      height=120 + 28 * len(s))
    return fig


def score_vs_accuracy(scores: xr.DataArray, accuracy, tau: float | None = None, title: str | None = None) -> go.Figure:
    """One metric's scores (over ``model``) against ground-truth accuracies, tau in the title."""
    models = [str(m) for m in scores.model.values]
    acc = np.array([float(accuracy.sel(model=m)) for m in models]) if isinstance(accuracy, xr.DataArray) else np.asarray(accuracy)
    fig = go.Figure(go.Scatter(x=scores.values, y=acc, mode="markers+text", text=models, textposition="top center",
                               marker=dict(size=10)))
    t = "" if tau is None else f" (weighted tau {tau:.2f})"
    fig.update_layout(title=title or f"score vs fine-tuned accuracy{t}", xaxis_title="score",
                      yaxis_title="fine-tuned accuracy", template="plotly_white")
    return fig


def per_layer(ranked: xr.Dataset, metric: str, title: str | None = None, accuracy: dict | None = None) -> go.Figure:
    """A metric over layers, one line per model (and ground-truth accuracy per layer if given)."""
    fig = go.Figure()
    for m in ranked.model.values:
        s = ranked.score.sel(model=m, metric=metric)
        fig.add_scatter(x=[str(l) for l in s.layer.values], y=s.values, mode="lines+markers", name=f"{m}: {metric}")
    if accuracy is not None:
        fig.add_scatter(x=list(accuracy), y=list(accuracy.values()), mode="lines+markers", name="probe accuracy",
                        yaxis="y2", line=dict(dash="dash", color="black"))
        fig.update_layout(yaxis2=dict(title="accuracy", overlaying="y", side="right"))
    fig.update_layout(title=title or f"{metric} by layer", xaxis_title="layer", yaxis_title=metric,
                      template="plotly_white")
    return fig
