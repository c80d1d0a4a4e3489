"""Figures for the measures study (:mod:`workbench.study`): tau with intervals per measure, the heatmap of
psi over measure x hyper-parameter axis, and one measure against the generalization gap over the runs."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

__all__ = ["tau_intervals", "psi_heatmap", "measure_vs_gap", "varied_axis"]


def tau_intervals(res: xr.Dataset, what: str = "tau", title: str | None = None) -> go.Figure:
    """``what`` (``"tau"`` or ``"Psi"``) per measure with its interval, times the measure's expected sign (so
    right of 0 = the measure ranks the runs the way its theory says), sorted.

    >>> ds = xr.Dataset({"tau": ("measure", [0.5, -0.2]), "tau_low": ("measure", [0.2, -0.5]),
    ...                  "tau_high": ("measure", [0.7, 0.1])},
    ...                 coords={"measure": ["a", "b"], "expected_sign": ("measure", [1, -1])})
    >>> tau_intervals(ds).data[0].x.tolist()
    [0.2, 0.5]
    """
    s = res.expected_sign.values
    v, lo, hi = s * res[what].values, res[f"{what}_low"].values, res[f"{what}_high"].values
    lo, hi = np.where(s > 0, lo, -hi), np.where(s > 0, hi, -lo)
    order = np.argsort(np.nan_to_num(v, nan=-2))
    names = [f"{m}{' (-)' if k < 0 else ''}" for m, k in zip(res.measure.values, s)]
    fig = go.Figure(
        go.Scatter(
            x=v[order],
            y=[names[i] for i in order],
            mode="markers",
            error_x=dict(type="data", symmetric=False, array=(hi - v)[order], arrayminus=(v - lo)[order]),
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.add_vline(x=0, line_dash="dot", line_color="grey")
    level = res.attrs.get("level", 0.95)
    fig.update_layout(
        title=title or f"{what} with the gap, signed by theory ({level:.0%} intervals by subsampling runs)",
        xaxis_title=f"sign x {what}",
        xaxis_range=[-1.05, 1.05],
        template="plotly_white",
        height=140 + 24 * len(order),
    )
    return fig


def psi_heatmap(res: xr.Dataset, title: str | None = None) -> go.Figure:
    """Granulated tau psi (signed by each measure's expected sign) over measure x hyper-parameter axis.

    >>> ds = xr.Dataset({"psi": (("measure", "axis"), [[0.5, -1.0]])},
    ...                 coords={"measure": ["a"], "axis": ["lr", "seed"], "expected_sign": ("measure", [-1])})
    >>> psi_heatmap(ds).data[0].z.tolist()
    [[-0.5, 1.0]]
    """
    z = res.psi.values * res.expected_sign.values[:, None]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(a) for a in res.axis.values],
            y=[str(m) for m in res.measure.values],
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            colorbar=dict(title="sign x psi"),
            hovertemplate="%{y} along %{x}: %{z:.2f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or "granulated tau per hyper-parameter axis (blue: ranks the gap as expected; red: inverted)",
        template="plotly_white",
        height=160 + 22 * res.sizes["measure"],
    )
    return fig


def varied_axis(runs: xr.Dataset, axes: list[str]) -> list[str]:
    """Per run, the axis (not ``seed``) on which it differs from the base (the most common value of each
    axis): the star design varies one at a time; ``"base"`` for the base runs.

    >>> ds = xr.Dataset(coords={"lr": ("run", [1, 1, 2, 1]), "wd": ("run", [0, 3, 0, 0])})
    >>> varied_axis(ds, ["lr", "wd"])
    ['base', 'wd', 'lr', 'base']
    """
    base = {}
    for a in axes:
        vals, counts = np.unique(runs[a].values, return_counts=True)
        base[a] = vals[np.argmax(counts)]
    out = []
    for i in range(runs.sizes["run"]):
        diff = [a for a in axes if a != "seed" and runs[a].values[i] != base[a]]
        out.append(",".join(diff) or "base")
    return out


def measure_vs_gap(
    table: xr.Dataset, measure: str, target: str = "gap", axes: list[str] | None = None, title: str | None = None
) -> go.Figure:
    """One measure against the generalization gap over the runs, coloured by the axis each run varies.

    >>> ds = xr.Dataset({"value": (("run", "measure"), [[1.0], [2.0]]), "gap": ("run", [0.1, 0.2])},
    ...                 coords={"measure": ["m"], "lr": ("run", [1, 2])})
    >>> [t.name for t in measure_vs_gap(ds, "m", axes=["lr"]).data]
    ['base', 'lr']
    """
    axes = axes or [a for a in ("arch", "lr", "batch_size", "width", "depth", "weight_decay", "dropout", "rho")
                    if a in table.coords]  # fmt: skip
    lab = np.array(varied_axis(table, axes))
    x, y = table.value.sel(measure=measure).values, table[target].values
    fig = go.Figure()
    for a in sorted(set(lab), key=lambda s: (s != "base", s)):
        k = lab == a
        fig.add_trace(go.Scatter(x=x[k], y=y[k], mode="markers", name=str(a), marker=dict(size=8)))
    fig.update_layout(
        title=title or f"{measure} vs the generalization gap ({target}), by the hyper-parameter varied",
        xaxis_title=measure,
        yaxis_title=target,
        template="plotly_white",
    )
    return fig
