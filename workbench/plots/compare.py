"""Figures for :mod:`workbench.compare`: similarity heatmaps, reliability diagrams, metric spreads,
divergence per position and neural collapse over checkpoints."""

from __future__ import annotations

import warnings

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from .common import as_dict, categorical


def similarity_heatmap(h: xr.DataArray, title: str | None = None) -> go.Figure:
    """A ``layer_a x layer_b`` result of :func:`workbench.compare.cka_heatmap` as a heatmap, the
    interval in the hover text.

    >>> h = xr.DataArray([[1.0, 0.5]], dims=("layer_a", "layer_b"),
    ...                  coords={"layer_a": ["x"], "layer_b": ["x", "y"]}, attrs={"long_name": "linear CKA"})
    >>> similarity_heatmap(h).layout.title.text
    'linear CKA between layers'
    """
    z = np.asarray(h.values, float)
    lo = h.coords["low"].values if "low" in h.coords else np.full_like(z, np.nan)
    hi = h.coords["high"].values if "high" in h.coords else np.full_like(z, np.nan)
    text = [[f"{z[i, j]:.3f} [{lo[i, j]:.3f}, {hi[i, j]:.3f}]" for j in range(z.shape[1])] for i in range(z.shape[0])]
    distance = h.attrs.get("measure") == "procrustes"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(v) for v in h.layer_b.values],
            y=[str(v) for v in h.layer_a.values],
            text=text,
            texttemplate="%{text}" if z.size <= 36 else None,
            colorscale="Viridis_r" if distance else "Viridis",
            zmin=0,
            zmax=2 if distance else 1,
            hovertemplate="%{y} vs %{x}: %{text}<extra></extra>",
        )
    )
    name = h.attrs.get("long_name", h.name or "similarity")
    fig.update_layout(
        title=title or f"{name} between layers",
        xaxis_title="layer of model b",
        yaxis_title="layer of model a",
        yaxis_autorange="reversed",  # the first layers top left: the diagonal runs down
        template="plotly_white",
    )
    return fig


def reliability_diagrams(results, scaling: str = "none", title: str | None = None) -> go.Figure:
    """Reliability diagrams side by side, one per result of :func:`workbench.compare.calibration` (a
    dict label -> Dataset, or one Dataset): accuracy per confidence bin against the diagonal, the ECE
    with its interval in each subplot's title.

    >>> from workbench.testing import tiny_classifier
    >>> import workbench.compare as cmp
    >>> m, _, (x, y) = tiny_classifier(40)
    >>> ds = cmp.calibration(m, (x, y), n_bins=5, n_resamples=10, progress=False)
    >>> len(reliability_diagrams({"a": ds, "b": ds}).data)
    4
    """
    res = as_dict(results)
    names = list(res)
    sub = []
    for k in names:
        ds = res[k].sel(scaling=scaling) if "scaling" in res[k].dims else res[k]
        e = ds.estimate.sel(metric="ece")
        sub.append(
            f"{k} ECE {float(e):.3f} [{float(ds.low.sel(metric='ece')):.3f}, {float(ds.high.sel(metric='ece')):.3f}]"
        )
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=sub, shared_yaxes=True)
    for i, k in enumerate(names, 1):
        ds = res[k].sel(scaling=scaling) if "scaling" in res[k].dims else res[k]
        n_bins = ds.sizes["bin"]
        centres = (np.arange(n_bins) + 0.5) / n_bins
        x = ds.reliability_confidence.values
        x = np.where(np.isfinite(x), x, centres)
        fig.add_bar(
            x=x,
            y=ds.reliability_accuracy.values,
            width=0.9 / n_bins,
            name=f"{k}: accuracy",
            customdata=ds.reliability_count.values,
            hovertemplate="confidence %{x:.2f}: accuracy %{y:.2f} (%{customdata} examples)<extra></extra>",
            row=1,
            col=i,
        )
        fig.add_scatter(
            x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="gray"), showlegend=False, row=1, col=i
        )
        fig.update_xaxes(title_text="confidence", range=[0, 1], row=1, col=i)
    fig.update_yaxes(title_text="accuracy", range=[0, 1], row=1, col=1)
    binning = next(iter(res.values())).attrs.get("binning", "width")
    fig.update_layout(
        title=title or f"reliability ({scaling} scaling, {n_bins} equal-{binning} bins)",
        template="plotly_white",
        showlegend=False,
    )
    return fig


def metric_spread(values: xr.Dataset, title: str | None = None) -> go.Figure:
    """Per-run metric values with their intervals, grouped: ``values`` has ``estimate``, ``low``,
    ``high`` over ``run`` and a ``group`` coordinate on ``run`` (e.g. optimiser); each group's mean and
    its spread over runs (min to max) drawn beside the runs.

    >>> ds = xr.Dataset({"estimate": ("run", [0.1, 0.2, 0.3]), "low": ("run", [0.0, 0.1, 0.2]),
    ...                  "high": ("run", [0.2, 0.3, 0.4])},
    ...                 coords={"run": ["a", "b", "c"], "group": ("run", ["x", "x", "y"])})
    >>> [t.name for t in metric_spread(ds).data]
    ['x', 'y']
    """
    fig = go.Figure()
    groups = list(dict.fromkeys(str(g) for g in values.group.values))
    for g in groups:
        sel = values.where(values.group == g, drop=True)
        est = sel.estimate.values
        fig.add_scatter(
            x=[g] * len(est),
            y=est,
            mode="markers",
            name=g,
            text=[str(r) for r in sel.run.values],
            error_y=dict(type="data", symmetric=False, array=sel.high.values - est, arrayminus=est - sel.low.values),
            hovertemplate="%{text}: %{y:.4f}<extra></extra>",
        )
    fig.update_layout(
        title=title or "per-run values (bars: intervals over examples)",
        yaxis_title=values.attrs.get("long_name", "value"),
        template="plotly_white",
    )
    return fig


def divergence_per_position(ds: xr.Dataset, kind: str = "kl", title: str | None = None) -> go.Figure:
    """A :func:`workbench.compare.output_divergence` result: for sequence outputs the mean over examples
    of ``kind`` at every position (padding excluded) with the 10-90 % band; for classifiers the value per
    example, sorted.

    >>> import torch
    >>> from workbench.testing import tiny_classifier
    >>> import workbench.compare as cmp
    >>> a, _, (x, _) = tiny_classifier(20, seed=0)
    >>> b, _, _ = tiny_classifier(20, seed=1)
    >>> divergence_per_position(cmp.output_divergence(a, b, x, n_resamples=10, progress=False)).layout.xaxis.title.text
    'example (sorted)'
    """
    long = ds[kind].attrs.get("long_name", kind)
    mean = float(ds["mean"].sel(kind=kind))
    fig = go.Figure()
    if f"{kind}_token" in ds:
        v = ds[f"{kind}_token"]
        x = np.arange(v.sizes["position"])
        with warnings.catch_warnings():  # a position that is padding in every example is all-NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            m = np.nanmean(v.values, 0)
            q10, q90 = np.nanpercentile(v.values, 10, 0), np.nanpercentile(v.values, 90, 0)
        fig.add_scatter(x=x, y=q90, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip")
        fig.add_scatter(x=x, y=q10, mode="lines", line=dict(width=0), fill="tonexty", name="10-90 %")
        fig.add_scatter(x=x, y=m, mode="lines+markers", name=f"mean {kind}")
        fig.update_layout(xaxis_title="position (padding excluded)")
    else:
        v = np.sort(ds[kind].values)[::-1]
        fig.add_scatter(x=np.arange(len(v)), y=v, mode="lines", name=kind)
        fig.update_layout(xaxis_title="example (sorted)")
    fig.update_layout(
        title=title or f"{long}: mean {mean:.4g}{'' if kind in ('tv', 'agreement') else ' nats'}",
        yaxis_title=kind,
        template="plotly_white",
    )
    return fig


def collapse_over_checkpoints(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """NC1 (log scale), NC2, NC3 and NC4 of :func:`workbench.compare.neural_collapse` over checkpoints,
    one panel each.

    >>> ds = xr.Dataset({k: ("checkpoint", [1.0, 0.5]) for k in ("nc1", "nc2", "nc3", "nc4")},
    ...                 coords={"checkpoint": ["0", "10"]})
    >>> len(collapse_over_checkpoints(ds).data)
    4
    """
    x, cat = categorical(ds.checkpoint.values)
    names = {"nc1": "NC1 (to 0)", "nc2": "NC2 (to 0)", "nc3": "NC3 (to 0)", "nc4": "NC4 agreement (to 1)"}
    fig = make_subplots(rows=1, cols=4, subplot_titles=list(names.values()))
    for i, k in enumerate(names, 1):
        fig.add_scatter(x=x, y=ds[k].values, mode="markers" if cat else "lines+markers", name=k, row=1, col=i)
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_layout(title=title or "neural collapse over checkpoints", template="plotly_white", showlegend=False)
    return fig
