"""Figures for the loss-landscape probe."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr


def _loss(obj) -> xr.DataArray:
    return obj["loss"] if isinstance(obj, xr.Dataset) else obj


def _tr(obj, log):
    return (lambda v: np.log10(np.maximum(v, 1e-12))) if log else (lambda v: v)


def slice_1d(result, log: bool = False, title: str | None = None, fig: go.Figure | None = None,
             name: str = "loss") -> go.Figure:
    """Loss along alpha; with a ``seed`` dim: mean line, min-max band and one thin line per seed."""
    da = _loss(result)
    fig = fig if fig is not None else go.Figure()
    x = da.alpha.values
    if "seed" in da.dims:
        for s in da.seed.values:
            fig.add_scatter(x=x, y=da.sel(seed=s).values, mode="lines", line=dict(width=0.7, color="rgba(31,119,180,0.35)"),
                            name=f"seed {s}", showlegend=False, hoverinfo="skip")
        lo, hi, mean = da.min("seed").values, da.max("seed").values, da.mean("seed").values
        fig.add_scatter(x=np.r_[x, x[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", mode="lines",
                        line=dict(width=0), fillcolor="rgba(31,119,180,0.2)", name=f"{name}: min-max over {da.sizes['seed']} seeds")
        fig.add_scatter(x=x, y=mean, mode="lines+markers", name=f"{name}: mean over seeds", line=dict(width=2.5))
    else:
        fig.add_scatter(x=x, y=da.values, mode="lines+markers", name=name)
    fig.update_layout(title=title or "1-D loss slice", xaxis_title="alpha", yaxis_title="loss",
                      yaxis_type="log" if log else "linear", template="plotly_white")
    return fig


def slice_2d(result, kind: str = "contour", log: bool = False, title: str | None = None,
             trajectory=None) -> go.Figure:
    """Contour (or 3-D surface) of a 2-D slice; the trajectory (if present) is overlaid."""
    da = _loss(result)
    z = _tr(da, log)(da.values.T)  # plotly: z[row=beta, col=alpha]
    label = "log10 loss" if log else "loss"
    a, b = da.alpha.values, da.beta.values
    if kind == "surface":
        fig = go.Figure(go.Surface(x=a, y=b, z=z, colorscale="Viridis", colorbar=dict(title=label)))
        fig.update_layout(scene=dict(xaxis_title="alpha", yaxis_title="beta", zaxis_title=label))
    elif kind == "contour":
        fig = go.Figure(go.Contour(x=a, y=b, z=z, colorscale="Viridis", ncontours=30, colorbar=dict(title=label),
                                   contours=dict(showlabels=False)))
        fig.update_layout(xaxis_title="alpha", yaxis_title="beta")
        fig.add_scatter(x=[0], y=[0], mode="markers", marker=dict(symbol="x", size=11, color="white"),
                        name="theta (the model)")
        tr = trajectory
        if tr is None and isinstance(result, xr.Dataset) and "trajectory_alpha" in result:
            tr = np.c_[result.trajectory_alpha.values, result.trajectory_beta.values]
        if tr is not None:
            tr = np.asarray(tr)
            fig.add_scatter(x=tr[:, 0], y=tr[:, 1], mode="lines+markers", name="training trajectory",
                            line=dict(color="red"), marker=dict(size=6))
    else:
        raise ValueError(f"kind: expected 'contour' or 'surface', got {kind!r}")
    fig.update_layout(title=title or "2-D loss slice", template="plotly_white")
    return fig


def interpolation(result: xr.Dataset, title: str | None = None, log: bool = False) -> go.Figure:
    """Loss (and accuracy, right axis) along the path between two models, with the barrier marked."""
    t = result.t.values
    loss = result.loss.values
    fig = go.Figure()
    fig.add_scatter(x=t, y=loss, mode="lines+markers", name="loss along the path")
    la, lb = result.attrs.get("loss_a", loss[0]), result.attrs.get("loss_b", loss[-1])
    fig.add_scatter(x=t, y=(1 - t) * la + t * lb, mode="lines", line=dict(dash="dash", color="grey"),
                    name="linear interpolation of the end losses")
    inside = (t >= 0) & (t <= 1)
    if inside.any() and np.isfinite(loss[inside]).any():
        gap = np.where(inside, loss - ((1 - t) * la + t * lb), -np.inf)
        i = int(np.nanargmax(gap))
        fig.add_shape(type="line", x0=t[i], x1=t[i], y0=(1 - t[i]) * la + t[i] * lb, y1=loss[i],
                      line=dict(color="red", width=3))
        fig.add_annotation(x=t[i], y=loss[i], text=f"barrier {result.attrs.get('barrier', gap[i]):.3g}",
                           showarrow=True, arrowhead=2)
    if "accuracy" in result and np.isfinite(result.accuracy.values).any():
        fig.add_scatter(x=t, y=result.accuracy.values, mode="lines", name="accuracy", yaxis="y2",
                        line=dict(color="green"))
        fig.update_layout(yaxis2=dict(title="accuracy", overlaying="y", side="right", range=[0, 1.02]))
    fig.update_layout(title=title or "Linear mode connectivity", xaxis_title="t  (0: model A, 1: model B)",
                      yaxis_title="loss", yaxis_type="log" if log else "linear", template="plotly_white",
                      legend=dict(x=0.01, y=0.99))
    return fig
