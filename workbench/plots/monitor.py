"""Figures of a training monitor's store (:class:`workbench.monitor.Monitor`, read with ``workbench.load``): the
loss with alarm markers, ``lambda_max`` against the edge of stability, attention entropy per head over steps,
norms per layer. Each takes the store's Dataset (along ``step``) and draws what it holds; a variable the run
did not record gives an empty figure with a note rather than an error (a store being written may not have it
yet)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

ALARM_COLORS = {
    "nonfinite": "#000000",
    "entropy_collapse": "#d62728",
    "logit_growth": "#ff7f0e",
    "sharpness_edge": "#9467bd",
    "log_z_drift": "#8c564b",
}
NORMS = ("weight_norm", "grad_norm", "update_ratio")


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5, font=dict(color="#888"))
    return fig


def _series(ds: xr.Dataset, var: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a per-step variable where it was recorded (NaN rows dropped)."""
    da = ds[var]
    keep = np.isfinite(da.values.astype(float))
    return ds["step"].values[keep], da.values[keep]


def alarms_table(ds: xr.Dataset):
    """The store's alarms as a pandas DataFrame (kind, step, value, threshold, where, message), sorted by step.

    >>> ds = xr.Dataset({"event_kind": ("event", ["logit_growth"]), "event_step": ("event", [40]),
    ...                  "event_value": ("event", [3.0]), "event_threshold": ("event", [2.0]),
    ...                  "event_where": ("event", ["attention"]), "event_message": ("event", ["step 40: ..."])})
    >>> alarms_table(ds)[["kind", "step"]].values.tolist()
    [['logit_growth', 40]]
    """
    import pandas as pd

    cols = ("kind", "step", "value", "threshold", "where", "message")
    if "event_kind" not in ds:
        return pd.DataFrame(columns=list(cols))
    df = pd.DataFrame({c: ds[f"event_{c}"].values for c in cols if f"event_{c}" in ds})
    return df.sort_values("step", kind="stable").reset_index(drop=True)


def loss_curve(ds: xr.Dataset, title: str | None = None, log: bool = False) -> go.Figure:
    """The recorded loss over steps, with one marker per alarm at its step (colour by kind, the message on hover).

    >>> ds = xr.Dataset({"loss": ("step", [2.0, 1.0, 3.0]), "event_kind": ("event", ["nonfinite"]),
    ...                  "event_step": ("event", [2]), "event_message": ("event", ["step 2: non-finite loss"])},
    ...                 coords={"step": [0, 1, 2]})
    >>> fig = loss_curve(ds)
    >>> [t.name for t in fig.data], list(fig.data[1].x)
    (['loss', 'nonfinite'], [2])
    """
    fig = go.Figure(layout=dict(template="plotly_white", title=title or "loss and alarms"))
    fig.update_layout(xaxis_title="step", yaxis_title="loss", yaxis_type="log" if log else None)
    if "loss" not in ds:
        return _empty(fig, "no loss recorded yet")
    steps, loss = _series(ds, "loss")
    fig.add_scatter(x=steps, y=loss, mode="lines", name="loss", line=dict(color="#1f77b4"))
    table = alarms_table(ds)
    full = dict(zip(ds["step"].values.tolist(), ds["loss"].values.tolist(), strict=True))
    for kind, rows in table.groupby("kind", sort=False) if len(table) else ():
        y = [full.get(int(s), np.nan) for s in rows["step"]]
        y = [v if np.isfinite(v) else (np.nanmax(loss) if len(loss) else 0.0) for v in y]
        fig.add_scatter(
            x=rows["step"].tolist(), y=y, mode="markers", name=str(kind),
            marker=dict(symbol="triangle-down", size=11, color=ALARM_COLORS.get(str(kind), "#444")),
            hovertext=rows["message"].tolist() if "message" in rows else None, hoverinfo="text+x",
        )  # fmt: skip
    return fig


def sharpness_edge(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """``lambda_max`` over steps against the optimizer's edge of stability (``2/lr`` for gradient descent;
    the preconditioned edge for Adam, see :func:`workbench.monitor.edge`): progressive sharpening up to the
    dashed line and hovering there is the edge of stability (Cohen et al. 2021).

    >>> ds = xr.Dataset({"lambda_max": ("step", [1.0, 3.0, 4.1]), "edge": ("step", [4.0, 4.0, 4.0])},
    ...                 coords={"step": [0, 10, 20]})
    >>> [t.name for t in sharpness_edge(ds).data]
    ['lambda_max', 'edge (2/lr)']
    """
    fig = go.Figure(layout=dict(template="plotly_white", title=title or "sharpness and the edge of stability"))
    fig.update_layout(xaxis_title="step", yaxis_title="top Hessian eigenvalue")
    if "lambda_max" not in ds:
        return _empty(fig, "no lambda_max recorded (the sharpness probe)")
    steps, lam = _series(ds, "lambda_max")
    fig.add_scatter(x=steps, y=lam, mode="lines+markers", name="lambda_max", line=dict(color="#9467bd"))
    if "edge" in ds:
        s, e = _series(ds, "edge")
        fig.add_scatter(x=s, y=e, mode="lines", name="edge (2/lr)", line=dict(color="#444", dash="dash"))
    return fig


def head_labels(ds: xr.Dataset) -> list[str]:
    """The attention layers of a store (``attn_layer`` values as strings)."""
    return [str(v) for v in ds["attn_layer"].values] if "attn_layer" in ds.coords else []


def entropy_heatmap(
    ds: xr.Dataset, layer=None, variable: str = "attn_normalized_entropy", title: str | None = None
) -> go.Figure:
    """A heatmap of an attention statistic per head (rows) over monitored steps (columns): the normalised
    entropy by default (``0`` = one key takes all the attention: the collapse of Zhai et al. 2023), or
    ``attn_max_logit`` / ``attn_entropy`` / ``attn_sink_mass``. ``layer``: one attention layer (its label or
    position); ``None``: every (layer, head).

    >>> ds = xr.Dataset({"attn_normalized_entropy": (("step", "attn_layer", "head"), np.full((2, 1, 2), 0.5))},
    ...                 coords={"step": [0, 50], "attn_layer": ["blocks.0.attn"], "head": [0, 1]})
    >>> fig = entropy_heatmap(ds, layer=0)
    >>> fig.data[0].z.shape, fig.layout.title.text
    ((2, 2), 'attn_normalized_entropy per head: blocks.0.attn')
    """
    where = "" if layer is None else f": {layer if isinstance(layer, str) else head_labels(ds)[layer]}"
    fig = go.Figure(layout=dict(template="plotly_white", title=title or f"{variable} per head{where}"))
    if variable not in ds:
        return _empty(fig, f"no {variable} recorded (the attention probe)")
    da = ds[variable]
    if layer is not None:
        labels = head_labels(ds)
        if isinstance(layer, str) and layer not in labels:
            raise ValueError(f"layer: {layer!r} is not an attention layer of this store; expected one of {labels}")
        da = da.isel(attn_layer=labels.index(layer) if isinstance(layer, str) else int(layer))
        da = da.expand_dims(attn_layer=[where[2:]])
    da = da.dropna("step", how="all")
    z = da.transpose("attn_layer", "head", "step").values.reshape(-1, da.sizes["step"])
    rows = [f"{lay} h{h}" for lay in da["attn_layer"].values for h in da["head"].values]
    fig.add_heatmap(
        z=z, x=da["step"].values, y=rows, colorscale="Viridis", colorbar=dict(title=variable.removeprefix("attn_")),
        zmin=0 if variable.endswith("entropy") or variable.endswith("mass") else None,
        zmax=1 if variable in ("attn_normalized_entropy", "attn_sink_mass") else None,
    )  # fmt: skip
    fig.update_layout(xaxis_title="step", yaxis_title="head")
    return fig


def norms(ds: xr.Dataset, variable: str = "weight_norm", title: str | None = None, log: bool = True) -> go.Figure:
    """One line per layer of ``weight_norm``, ``grad_norm`` or ``update_ratio`` (``||Delta W|| / ||W||`` per
    step) over monitored steps, on a log axis by default.

    >>> ds = xr.Dataset({"grad_norm": (("step", "layer"), [[1.0, 2.0], [0.5, 1.0]])},
    ...                 coords={"step": [0, 10], "layer": ["a", "b"]})
    >>> [t.name for t in norms(ds, "grad_norm").data]
    ['a', 'b']
    """
    if variable not in NORMS:
        raise ValueError(f"variable: expected one of {list(NORMS)}, got {variable!r}")
    fig = go.Figure(layout=dict(template="plotly_white", title=title or f"{variable} per layer"))
    fig.update_layout(xaxis_title="step", yaxis_title=variable, yaxis_type="log" if log else None)
    if variable not in ds:
        return _empty(fig, f"no {variable} recorded (the norms probe)")
    da = ds[variable].dropna("step", how="all")
    for layer in da["layer"].values:
        fig.add_scatter(x=da["step"].values, y=da.sel(layer=layer).values, mode="lines", name=str(layer))
    return fig
