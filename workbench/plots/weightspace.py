"""Figures for weight-space alignment: the loss along the path between two models per alignment method, the
barrier per method (with the spread over seed pairs), singular-direction cosines before and after weight
matching, and per-layer weight spectra of the two models."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

__all__ = ["lmc_paths", "lmc_barriers", "singular_cosines", "layer_spectra"]

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _need(result, names, fn: str) -> None:
    if not isinstance(result, xr.Dataset) or any(n not in result.variables for n in names):
        have = sorted(map(str, result.variables)) if isinstance(result, xr.Dataset) else type(result).__name__
        raise ValueError(f"result: expected what workbench.weightspace.{fn} returns (with {names}); got {have}")


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def lmc_paths(result: xr.Dataset, metric: str = "loss", title: str | None = None, log: bool = False) -> go.Figure:
    """``metric`` (``loss`` or ``accuracy``) along t, one line per path (alignment method) of
    :func:`workbench.weightspace.connectivity`; with a ``pair`` dim (several seed pairs concatenated), the mean
    and a min-max band per path.

    >>> import xarray as xr
    >>> dims = ("path", "t")
    >>> ds = xr.Dataset({"loss": (dims, [[1, 2, 1], [1, 1.1, 1]]), "accuracy": (dims, [[1, .5, 1]] * 2)},
    ...                 coords={"path": ["none", "weight"], "t": [0, .5, 1]})
    >>> [tr.name for tr in lmc_paths(ds).data]
    ['none', 'weight']
    """
    _need(result, ["loss", "accuracy", "t", "path"], "connectivity")
    if metric not in ("loss", "accuracy"):
        raise ValueError(f"metric: expected 'loss' or 'accuracy', got {metric!r}")
    da = result[metric]
    fig = go.Figure()
    t = result.t.values
    for i, p in enumerate(result.path.values.tolist()):
        c = _COLORS[i % len(_COLORS)]
        d = da.sel(path=p)
        if "pair" in d.dims:
            lo, hi = d.min("pair").values, d.max("pair").values
            band = dict(line=dict(width=0), fillcolor=_rgba(c, 0.18), hoverinfo="skip", showlegend=False)
            fig.add_scatter(x=np.r_[t, t[::-1]], y=np.r_[hi, lo[::-1]], fill="toself", mode="lines", **band)
            d = d.mean("pair")
        fig.add_scatter(x=t, y=d.values, mode="lines+markers", name=str(p), line=dict(color=c, width=2))
    n = f" (mean and range over {result.sizes['pair']} seed pairs)" if "pair" in result.dims else ""
    fig.update_layout(
        title=title or f"{metric} along the linear path A -> B, per alignment method{n}",
        xaxis_title="t  (theta = (1 - t) theta_A + t pi(theta_B))",
        yaxis_title=metric,
        yaxis_type="log" if log and metric == "loss" else "linear",
        template="plotly_white",
    )
    return fig


def lmc_barriers(result: xr.Dataset, kind: str = "barrier", title: str | None = None) -> go.Figure:
    """The barrier per path (``barrier``: max over the path of the excess over the endpoints' line;
    ``barrier_frankle``; ``error_barrier_frankle``); with a ``pair`` dim, the mean, a +-1 std error bar and one
    dot per seed pair.

    >>> import xarray as xr
    >>> ds = xr.Dataset({"barrier": (("pair", "path"), [[1.0, 0.1], [2.0, 0.2]])},
    ...                 coords={"path": ["none", "weight"], "pair": ["0-1", "0-2"]})
    >>> lmc_barriers(ds).data[0].y.tolist()
    [1.5, 0.15000000000000002]
    """
    _need(result, [kind, "path"], "connectivity")
    da = result[kind]
    paths = [str(p) for p in result.path.values.tolist()]
    fig = go.Figure()
    if "pair" in da.dims:
        mean, std = da.mean("pair").values, da.std("pair").values
        fig.add_bar(x=paths, y=mean, name=f"mean over {da.sizes['pair']} seed pairs",
                    error_y=dict(type="data", array=std, visible=True), marker_color=_COLORS[0])  # fmt: skip
        for j, pair in enumerate(result.pair.values.tolist()):
            fig.add_scatter(x=paths, y=da.isel(pair=j).values, mode="markers", name=f"pair {pair}",
                            marker=dict(size=8, color="#333", symbol=j % 10), opacity=0.7)  # fmt: skip
    else:
        fig.add_bar(x=paths, y=da.values, name=kind, marker_color=_COLORS[0])
    fig.update_layout(
        title=title or f"{kind.replace('_', ' ')} per alignment method",
        xaxis_title="path (alignment method)",
        yaxis_title=f"{kind.replace('_', ' ')} (nats)" if "error" not in kind else kind.replace("_", " "),
        template="plotly_white",
    )
    return fig


def singular_cosines(result: xr.Dataset, k: int = 0, title: str | None = None) -> go.Figure:
    """``|cos|`` of A's and B's top singular vectors per layer, before and after weight matching
    (:func:`workbench.weightspace.singular_cosines`), left (output side) and right (input side).

    >>> import xarray as xr
    >>> ds = xr.Dataset({"cos_before": (("layer", "side", "k"), [[[.1], [.9]]]),
    ...                  "cos_after": (("layer", "side", "k"), [[[.8], [.9]]])},
    ...                 coords={"layer": ["0.weight"], "side": ["left", "right"], "k": [0]})
    >>> len(singular_cosines(ds).data)
    4
    """
    _need(result, ["cos_before", "cos_after", "layer", "side"], "singular_cosines")
    layers = [str(x) for x in result.layer.values.tolist()]
    fig = go.Figure()
    for i, (var, label) in enumerate((("cos_before", "before"), ("cos_after", "after weight matching"))):
        for side, pattern in (("left", ""), ("right", "/")):
            fig.add_bar(x=layers, y=result[var].sel(side=side).isel(k=k).values, name=f"{label}, {side}",
                        marker=dict(color=_COLORS[i], pattern_shape=pattern))  # fmt: skip
    fig.update_layout(
        barmode="group",
        title=title or f"|cos| of the top-{k + 1} singular directions of A and B, per layer",
        yaxis=dict(title="|cos|", range=[0, 1.05]),
        xaxis_title="layer",
        template="plotly_white",
    )
    return fig


def layer_spectra(spectra: dict, variable: str = "alpha", title: str | None = None) -> go.Figure:
    """One per-layer weight-spectrum variable (``alpha``, ``stable_rank``, ``spectral_norm``, ... of
    :func:`workbench.weightspace.weight_spectra`) for several models side by side: ``spectra`` maps a model's
    name to its Dataset (over dim ``layer``).

    >>> import xarray as xr
    >>> a = xr.Dataset({"alpha": ("layer", [2.0, 3.0])}, coords={"layer": ["0.weight", "2.weight"]})
    >>> [tr.name for tr in layer_spectra({"A": a, "B": a}).data]
    ['A', 'B']
    """
    if not isinstance(spectra, dict) or not spectra:
        raise TypeError("spectra: expected a dict {model name: weight_spectra(...) Dataset}")
    fig = go.Figure()
    for i, (name, ds) in enumerate(spectra.items()):
        _need(ds, [variable, "layer"], "weight_spectra")
        fig.add_scatter(x=[str(x) for x in ds.layer.values.tolist()], y=ds[variable].values, mode="lines+markers",
                        name=str(name), line=dict(color=_COLORS[i % len(_COLORS)]))  # fmt: skip
    fig.update_layout(
        title=title or f"{variable.replace('_', ' ')} per layer",
        xaxis_title="layer",
        yaxis_title=variable.replace("_", " "),
        template="plotly_white",
    )
    return fig
