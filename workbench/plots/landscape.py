"""Figures for the loss-landscape probes: 1-D and 2-D slices, linear interpolation between models."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr


def _loss(result) -> xr.DataArray:
    """The loss of a slice: a Dataset's ``loss`` variable, or the DataArray itself."""
    if isinstance(result, xr.Dataset):
        if "loss" not in result:
            raise ValueError(
                f"result: a Dataset without a 'loss' variable (it has {', '.join(map(str, result))}); "
                "pass what workbench.landscape.slice_1d / slice_2d returned"
            )
        return result["loss"]
    return result


def _trajectory(result, trajectory) -> np.ndarray | None:
    """(n, 2) trajectory coordinates from ``trajectory`` (an array, or a pca_directions Dataset) or the
    slice's own ``trajectory_alpha`` / ``trajectory_beta``."""
    if isinstance(trajectory, xr.Dataset):
        trajectory = trajectory["coords"].values[:, :2]
    if trajectory is None and isinstance(result, xr.Dataset) and "trajectory_alpha" in result:
        trajectory = np.c_[result.trajectory_alpha.values, result.trajectory_beta.values]
    return None if trajectory is None else np.asarray(trajectory)


def slice_1d(
    result, log: bool = False, title: str | None = None, fig: go.Figure | None = None, name: str = "loss"
) -> go.Figure:
    """Loss along ``alpha`` (a :func:`workbench.landscape.slice_1d` Dataset or its ``loss``); with a
    ``seed`` dim: the mean, the min-max band and one thin line per seed. ``fig``: add to a figure.

    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"loss": ("alpha", [1.0, 0.5, 1.2])}, coords={"alpha": [-1.0, 0.0, 1.0]})
    >>> slice_1d(ds).data[0].y.tolist()
    [1.0, 0.5, 1.2]
    """
    da = _loss(result)
    fig = fig if fig is not None else go.Figure()
    x = da.alpha.values
    if "seed" in da.dims:
        for s in da.seed.values:
            fig.add_scatter(
                x=x,
                y=da.sel(seed=s).values,
                mode="lines",
                showlegend=False,
                hoverinfo="skip",
                line=dict(width=0.7, color="rgba(31,119,180,0.35)"),
                name=f"seed {s}",
            )
        lo, hi, mean = da.min("seed").values, da.max("seed").values, da.mean("seed").values
        fig.add_scatter(
            x=np.r_[x, x[::-1]],
            y=np.r_[hi, lo[::-1]],
            fill="toself",
            mode="lines",
            line=dict(width=0),
            fillcolor="rgba(31,119,180,0.2)",
            name=f"{name}: min-max over {da.sizes['seed']} seeds",
        )
        fig.add_scatter(x=x, y=mean, mode="lines+markers", name=f"{name}: mean over seeds", line=dict(width=2.5))
    else:
        fig.add_scatter(x=x, y=da.values, mode="lines+markers", name=name)
    fig.update_layout(
        title=title or "1-D loss slice",
        xaxis_title="alpha (step along the direction)",
        yaxis_title="loss",
        yaxis_type="log" if log else "linear",
        template="plotly_white",
    )
    return fig


def slice_2d(result, kind: str = "contour", log: bool = False, title: str | None = None, trajectory=None) -> go.Figure:
    """Contour (or 3-D ``kind="surface"``) of a :func:`workbench.landscape.slice_2d` result. The
    model sits at (0, 0); a training trajectory (the slice's own, or ``trajectory``: an (n, 2) array or
    a :func:`workbench.landscape.pca_directions` Dataset) is overlaid on the contour.

    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"loss": (("alpha", "beta"), np.arange(9.0).reshape(3, 3) + 1)},
    ...                 coords={"alpha": [-1.0, 0.0, 1.0], "beta": [-1.0, 0.0, 1.0]})
    >>> fig = slice_2d(ds)
    >>> fig.data[0].type, np.asarray(fig.data[0].z).shape
    ('contour', (3, 3))
    """
    da = _loss(result).transpose("alpha", "beta")
    z = da.values.T  # plotly: z[row = beta, column = alpha]
    if log:
        z = np.log10(np.maximum(z, 1e-12))
    label = "log10 loss" if log else "loss"
    a, b = da.alpha.values, da.beta.values
    if kind == "surface":
        fig = go.Figure(go.Surface(x=a, y=b, z=z, colorscale="Viridis", colorbar=dict(title=label)))
        fig.update_layout(scene=dict(xaxis_title="alpha", yaxis_title="beta", zaxis_title=label))
    elif kind == "contour":
        fig = go.Figure(
            go.Contour(
                x=a,
                y=b,
                z=z,
                colorscale="Viridis",
                ncontours=30,
                colorbar=dict(title=label),
                contours=dict(showlabels=False),
                hovertemplate="alpha %{x:.3g}, beta %{y:.3g}: " + label + " %{z:.4g}<extra></extra>",
            )
        )
        fig.update_layout(xaxis_title="alpha (first direction)", yaxis_title="beta (second direction)")
        fig.add_scatter(
            x=[0], y=[0], mode="markers", marker=dict(symbol="x", size=11, color="white"), name="theta (the model)"
        )
        tr = _trajectory(result, trajectory)
        if tr is not None:
            fig.add_scatter(
                x=tr[:, 0],
                y=tr[:, 1],
                mode="lines+markers",
                name="training trajectory",
                line=dict(color="red"),
                marker=dict(size=6),
            )
    else:
        raise ValueError(f"kind: expected 'contour' or 'surface', got {kind!r}")
    fig.update_layout(title=title or "2-D loss slice", template="plotly_white")
    return fig


def interpolation(result: xr.Dataset, title: str | None = None, log: bool = False) -> go.Figure:
    """Loss (and accuracy, right axis) along the straight path between two models
    (:func:`workbench.landscape.interpolate`), with the barrier marked.

    >>> import numpy as np, xarray as xr
    >>> t = np.linspace(0, 1, 5)
    >>> ds = xr.Dataset({"loss": ("t", [0.1, 0.5, 0.9, 0.5, 0.1])}, coords={"t": t})
    >>> fig = interpolation(ds)
    >>> fig.layout.annotations[0].text
    'barrier 0.8'
    """
    t = result.t.values
    loss = result.loss.values
    fig = go.Figure()
    fig.add_scatter(x=t, y=loss, mode="lines+markers", name="loss along the path")
    la, lb = result.attrs.get("loss_a", loss[0]), result.attrs.get("loss_b", loss[-1])
    fig.add_scatter(
        x=t,
        y=(1 - t) * la + t * lb,
        mode="lines",
        line=dict(dash="dash", color="grey"),
        name="linear interpolation of the end losses",
    )
    inside = (t >= 0) & (t <= 1)
    if inside.any() and np.isfinite(loss[inside]).any():
        gap = np.where(inside, loss - ((1 - t) * la + t * lb), -np.inf)
        i = int(np.nanargmax(gap))
        fig.add_shape(
            type="line", x0=t[i], x1=t[i], y0=(1 - t[i]) * la + t[i] * lb, y1=loss[i], line=dict(color="red", width=3)
        )
        fig.add_annotation(
            x=t[i], y=loss[i], text=f"barrier {result.attrs.get('barrier', gap[i]):.3g}", showarrow=True, arrowhead=2
        )
    if "accuracy" in result and np.isfinite(result.accuracy.values).any():
        fig.add_scatter(
            x=t, y=result.accuracy.values, mode="lines", name="accuracy", yaxis="y2", line=dict(color="green")
        )
        fig.update_layout(yaxis2=dict(title="accuracy", overlaying="y", side="right", range=[0, 1.02]))
    fig.update_layout(
        title=title or "Linear mode connectivity",
        xaxis_title="t  (0: model A, 1: model B)",
        yaxis_title="loss",
        yaxis_type="log" if log else "linear",
        template="plotly_white",
        legend=dict(x=0.01, y=0.99),
    )
    return fig
