"""Figures of the monitor's reproductions (:mod:`workbench.monitor.reproduce`): each curve is the mean over seeds
with the seeds' range as a band (the seed spread), events as markers."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.colors import qualitative
from plotly.subplots import make_subplots

COLORS = qualitative.Plotly


def _band(fig, x, y, name, color, row=None, col=None, dash=None, showlegend=True):
    """Mean over the last axis... of ``y`` (seeds first) as a line, min-max over seeds as a band."""
    y = np.asarray(y, float)
    lo, hi, mean = np.nanmin(y, 0), np.nanmax(y, 0), np.nanmean(y, 0)
    kw = {} if row is None else dict(row=row, col=col)
    if y.shape[0] > 1:
        fig.add_scatter(
            x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]), mode="lines", fill="toself",
            fillcolor=color, opacity=0.2, line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=name,
            **kw,
        )  # fmt: skip
    fig.add_scatter(x=x, y=mean, mode="lines", name=name, legendgroup=name, showlegend=showlegend,
                    line=dict(color=color, dash=dash), **kw)  # fmt: skip


def instability(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """Three stacked panels over steps (probe loss, normalised attention entropy, largest attention logit on a
    log axis), one colour per run (mean over seeds, band = seed range), with each seed's collapse (circle) and
    spike (cross) steps marked on the loss panel. ``ds``: :func:`workbench.monitor.reproduce.attention_instability`.

    >>> from workbench.monitor.reproduce import attention_instability
    >>> fig = instability(attention_instability("tiny", steps=10, every=5, seeds=(0,), n_train=64))
    >>> fig.layout.title.text
    'attention entropy collapse before the loss spike'
    """
    panels = ("probe loss", "normalised attention entropy", "max attention logit")
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.05, subplot_titles=panels)
    x = ds["step"].values
    for i, run in enumerate(ds["run"].values):
        c, r = COLORS[i % len(COLORS)], ds.sel(run=run)
        label = f"{run} (lr {float(r.lr):g})"
        for row, var in enumerate(("loss", "entropy", "max_logit"), start=1):
            _band(fig, x, r[var].values, label, c, row=row, col=1, showlegend=row == 1)
        for var, symbol in (("collapse_step", "circle-open"), ("spike_step", "x")):
            steps = [s for s in r[var].values if np.isfinite(s)]
            y = [float(r.loss.sel(step=s).mean()) for s in steps]
            marker = dict(symbol=symbol, size=11, color=c)
            name = f"{run}: {var.split('_')[0]}"
            fig.add_scatter(x=steps, y=y, mode="markers", marker=marker, name=name, legendgroup=label,
                            showlegend=False, row=1, col=1)  # fmt: skip
    fig.update_yaxes(type="log", row=3, col=1)
    fig.update_xaxes(title_text="step", row=3, col=1)
    fig.update_layout(
        template="plotly_white", height=720, title=title or "attention entropy collapse before the loss spike"
    )
    return fig


def event_steps(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """The steps of logit growth, entropy collapse and the loss spike per run, one marker per seed (runs where an
    event never happens have no marker for it): the ordering claim at a glance.

    >>> ds = xr.Dataset({"growth_step": (("run", "seed"), [[20.0]]), "collapse_step": (("run", "seed"), [[30.0]]),
    ...                  "spike_step": (("run", "seed"), [[np.nan]])}, coords={"run": ["unstable"], "seed": [0]})
    >>> [list(t.x) for t in event_steps(ds).data[1:]]
    [[20.0], [30.0], []]
    """
    fig = go.Figure(layout=dict(template="plotly_white", title=title or "event steps per run (one marker per seed)"))
    runs = [str(r) for r in ds["run"].values]
    first = np.nanmin(ds[["growth_step", "collapse_step", "spike_step"]].to_array().values, initial=np.inf)
    fig.add_scatter(x=[0.0 if not np.isfinite(first) else float(first)] * len(runs), y=runs, mode="markers",
                    marker=dict(opacity=0), hoverinfo="skip", showlegend=False)  # every run gets its row  # fmt: skip
    for i, (var, name) in enumerate((("growth_step", "logit growth"), ("collapse_step", "entropy collapse"),
                                     ("spike_step", "loss spike"))):  # fmt: skip
        da = ds[var].transpose("run", "seed")
        xs, ys = [], []
        for run, row in zip(ds["run"].values, da.values, strict=True):
            for v in row:
                if np.isfinite(v):
                    xs.append(float(v))
                    ys.append(str(run))
        fig.add_scatter(x=xs, y=ys, mode="markers", name=name, marker=dict(size=12, color=COLORS[i], opacity=0.7))
    fig.update_layout(xaxis_title="step", yaxis=dict(categoryorder="array", categoryarray=list(ds["run"].values)))
    return fig


def edge_of_stability(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """``lambda_max`` over steps per learning rate (mean and seed range) with ``2/lr`` dashed in the same colour.
    ``ds``: :func:`workbench.monitor.reproduce.edge_of_stability`.

    >>> ds = xr.Dataset({"lambda_max": (("lr", "seed", "step"), [[[1.0, 3.9]]])},
    ...                 coords={"lr": [0.5], "seed": [0], "step": [0, 10], "edge": ("lr", [4.0])})
    >>> [t.name for t in edge_of_stability(ds).data]
    ['lr 0.5', '2/lr = 4']
    """
    fig = go.Figure(layout=dict(template="plotly_white", title=title or "edge of stability: lambda_max rises to 2/lr"))
    x = ds["step"].values
    for i, lr in enumerate(ds["lr"].values):
        c, r = COLORS[i % len(COLORS)], ds.sel(lr=lr)
        _band(fig, x, r.lambda_max.values, f"lr {lr:g}", c)
        e = float(r.edge)
        fig.add_scatter(
            x=[x[0], x[-1]], y=[e, e], mode="lines", name=f"2/lr = {e:.3g}", line=dict(color=c, dash="dash")
        )
    fig.update_layout(xaxis_title="step", yaxis_title="top Hessian eigenvalue")
    return fig


def lr_sensitivity(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """Final loss against learning rate (log axis), one panel per variant, one line per width (mean over seeds,
    band = seed range); each panel's title carries the LR sensitivity of each width.
    ``ds``: :func:`workbench.monitor.reproduce.lr_sensitivity`.

    >>> ds = xr.Dataset({"final_loss": (("variant", "width", "lr", "seed"), [[[[2.0], [1.5]]]]),
    ...                  "sensitivity": (("variant", "width", "seed"), [[[0.25]]])},
    ...                 coords={"variant": ["standard"], "width": [8], "lr": [0.01, 0.1], "seed": [0]})
    >>> lr_sensitivity(ds).layout.annotations[0].text
    'standard (sensitivity 0.25)'
    """
    variants = list(ds["variant"].values)
    sens = ds.sensitivity.mean("seed")
    titles = [f"{v} (sensitivity {', '.join(f'{s:.2g}' for s in sens.sel(variant=v).values)})" for v in variants]
    fig = make_subplots(rows=1, cols=len(variants), shared_yaxes=True, subplot_titles=titles)
    x = ds["lr"].values
    top = float(np.nanmax(np.where(np.isfinite(ds.final_loss), ds.final_loss, np.nan)))
    for j, v in enumerate(variants, start=1):
        for i, w in enumerate(ds["width"].values):
            r = ds.sel(variant=v, width=w)
            y = np.minimum(r.final_loss.transpose("seed", "lr").values, top)
            _band(fig, x, y, f"width {w}", COLORS[i % len(COLORS)], row=1, col=j, showlegend=j == 1)
        fig.update_xaxes(type="log", title_text="learning rate", row=1, col=j)
    fig.update_yaxes(title_text="final loss", row=1, col=1)
    fig.update_layout(template="plotly_white", height=380, title=title or "LR sensitivity: final loss vs learning rate")
    return fig


def width_sharpness(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """``lambda_max`` over steps per width, standard parametrisation (left) vs muP (right), log y axis.
    ``ds``: :func:`workbench.monitor.reproduce.width_sharpness`.

    >>> ds = xr.Dataset({"lambda_max": (("parametrisation", "width", "seed", "step"), np.ones((2, 1, 1, 2)))},
    ...                 coords={"parametrisation": ["sp", "mup"], "width": [8], "seed": [0], "step": [0, 1]})
    >>> len(width_sharpness(ds).data)
    2
    """
    pars = list(ds["parametrisation"].values)
    names = {"sp": "standard (SP)", "mup": "maximal update (muP)"}
    fig = make_subplots(rows=1, cols=len(pars), shared_yaxes=True, subplot_titles=[names.get(p, p) for p in pars])
    x = ds["step"].values
    for j, p in enumerate(pars, start=1):
        for i, w in enumerate(ds["width"].values):
            y = ds.lambda_max.sel(parametrisation=p, width=w).transpose("seed", "step").values
            _band(fig, x, y, f"width {w}", COLORS[i % len(COLORS)], row=1, col=j, showlegend=j == 1)
        fig.update_xaxes(title_text="step", row=1, col=j)
    fig.update_yaxes(type="log", title_text="lambda_max", row=1, col=1)
    fig.update_layout(template="plotly_white", height=380, title=title or "sharpness across widths: SP vs muP")
    return fig
