"""Figures of merging and weight spectra: the landscape over merge coefficients
(:func:`workbench.weightspace.merge_landscape`), TIES' sign conflicts per layer
(:func:`workbench.weightspace.sign_conflicts`), and the per-layer weight spectra
(:func:`workbench.weightspace.weight_spectra`) next to the Hessian's largest eigenvalue per layer
(:func:`workbench.curvature.hessian_eigenvalues` with ``blocks="layer"``)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from ..curvature.blocks import WHOLE, layer_of

__all__ = ["merge_landscape", "sign_conflicts", "spectra_per_layer", "esd"]


def merge_landscape(ds: xr.Dataset, variable: str = "loss", title: str | None = None) -> go.Figure:
    """``variable`` (``"loss"`` or ``"accuracy"``) of every task over the merge coefficients: lines over ``c1``
    (1-D), or one contour panel per task over ``(c1, c2)`` (2-D) with the models marked (``c = 0``: the first
    model; ``c = e_i``: model ``i``).

    >>> import numpy as np, xarray as xr
    >>> c = np.linspace(0, 1, 3)
    >>> ds = xr.Dataset({"loss": (("task", "c1", "c2"), np.random.rand(2, 3, 3))},
    ...                 coords={"task": ["data", "other"], "c1": c, "c2": c}, attrs={"models": ["base", "a", "b"]})
    >>> fig = merge_landscape(ds)
    >>> len(fig.data), fig.layout.title.text
    (4, 'loss over merge coefficients (base + c1 (a - base) + c2 (b - base))')
    """
    if variable not in ds:
        raise ValueError(f"variable: expected one of {sorted(ds.data_vars)}, got {variable!r}")
    da = ds[variable]
    labels = [str(v) for v in ds.attrs.get("models", ["0", "1", "2"])]
    cdims = [d for d in da.dims if d != "task"]
    what = " + ".join(f"c{i + 1} ({labels[i + 1]} - {labels[0]})" for i in range(len(cdims)))
    title = title or f"{variable} over merge coefficients ({labels[0]} + {what})"
    tasks = [str(t) for t in ds.task.values]
    if len(cdims) == 1:
        fig = go.Figure()
        for t in tasks:
            fig.add_scatter(x=ds[cdims[0]].values, y=da.sel(task=t).values, mode="lines+markers", name=f"task {t}")
        fig.update_layout(title=title, xaxis_title=f"c1 (0: {labels[0]}, 1: {labels[1]})", yaxis_title=variable)
        return fig
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=[f"task {t}" for t in tasks], shared_yaxes=True)
    x, y = ds[cdims[0]].values, ds[cdims[1]].values
    for j, t in enumerate(tasks):
        z = da.sel(task=t).transpose(cdims[1], cdims[0]).values
        fig.add_contour(
            x=x,
            y=y,
            z=z,
            colorscale="Viridis",
            showscale=j == 0,
            colorbar=dict(title=variable),
            name=f"task {t}",
            row=1,
            col=j + 1,
        )
        fig.add_scatter(
            x=[0, 1, 0],
            y=[0, 0, 1],
            mode="markers+text",
            text=labels[:3],
            textposition="top right",
            marker=dict(color="white", size=9, line=dict(color="black", width=1)),
            showlegend=False,
            row=1,
            col=j + 1,
        )
        fig.update_xaxes(title_text=f"c1 ({labels[1]})", row=1, col=j + 1)
    fig.update_yaxes(title_text=f"c2 ({labels[2]})", row=1, col=1)
    fig.update_layout(title=title)
    return fig


def sign_conflicts(ds: xr.Dataset, title: str | None = None) -> go.Figure:
    """TIES' per-layer diagnostics: the fraction of entries kept by two or more tasks whose signs conflict, and
    the fraction of the trimmed mass the sign election discards.

    >>> import xarray as xr
    >>> ds = xr.Dataset({"conflict": ("layer", [0.5, 0.1]), "mass_discarded": ("layer", [0.3, 0.05])},
    ...                 coords={"layer": ["w", "b"]}, attrs={"density": 0.2})
    >>> [d.name for d in sign_conflicts(ds).data]
    ['sign conflicts', 'mass discarded by the election']
    """
    layers = [str(v) for v in ds.layer.values]
    fig = go.Figure()
    fig.add_bar(x=layers, y=ds.conflict.values, name="sign conflicts")
    fig.add_bar(x=layers, y=ds.mass_discarded.values, name="mass discarded by the election")
    fig.update_layout(
        title=title or f"TIES sign conflicts per layer (density {ds.attrs.get('density', '?')})",
        yaxis=dict(title="fraction", range=[0, 1.02]),
        barmode="group",
    )
    return fig


def _hessian_by_layer(hessian: xr.Dataset, layers: list[str]) -> np.ndarray:
    """The largest Hessian eigenvalue of the block of each spectra layer (NaN where the run has no such block)."""
    ev = hessian["eigenvalue"]
    top = ev.isel(rank=0) if "rank" in ev.dims else ev
    blocks = {str(b): float(v) for b, v in zip(top.block.values, top.values) if str(b) != WHOLE}
    return np.array([blocks.get(layer_of(name), blocks.get(name.rsplit(".", 1)[0], np.nan)) for name in layers])


def spectra_per_layer(spectra: xr.Dataset, hessian: xr.Dataset | None = None, title: str | None = None) -> go.Figure:
    """Per-layer weight spectra: ``alpha`` (with ``alpha_weighted``), ``log10 lambda_max`` of ``W^T W``, stable rank
    and MP soft rank, and, given ``hessian`` (a ``curvature.hessian_eigenvalues(..., blocks="layer")`` result),
    the largest Hessian eigenvalue of each layer's block next to them.

    >>> import xarray as xr
    >>> s = xr.Dataset({k: ("layer", [2.0, 3.0]) for k in ("alpha", "alpha_weighted", "lambda_max", "stable_rank",
    ...                 "mp_soft_rank", "n_traps")}, coords={"layer": ["0.weight", "2.weight"]})
    >>> h = xr.Dataset({"eigenvalue": (("block", "rank"), [[5.0], [4.0], [1.0]])},
    ...                coords={"block": ["(all)", "0", "2"], "rank": [0]})
    >>> fig = spectra_per_layer(s, h)
    >>> fig.data[-1].name, [float(v) for v in fig.data[-1].y]
    ('Hessian lambda_max (layer block)', [4.0, 1.0])
    """
    layers = [str(v) for v in spectra.layer.values]
    rows = 4 if hessian is not None else 3
    names = ["power-law alpha", "log10 lambda_max(W^T W)", "stable rank and MP soft rank"]
    if hessian is not None:
        names.append("Hessian lambda_max per layer")
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, subplot_titles=names, vertical_spacing=0.06)
    fig.add_scatter(x=layers, y=spectra.alpha.values, mode="lines+markers", name="alpha", row=1, col=1)
    fig.add_scatter(
        x=layers, y=spectra.alpha_weighted.values, mode="lines+markers", name="alpha_weighted", row=1, col=1
    )
    for a in (2.0, 6.0):  # Martin & Mahoney: 2 <= alpha <= 6 is the well-trained range
        fig.add_hline(y=a, line=dict(dash="dot", color="grey"), row=1, col=1)
    lmax = np.log10(np.maximum(spectra.lambda_max.values, 1e-300))
    fig.add_bar(x=layers, y=lmax, name="log10 lambda_max", row=2, col=1)
    fig.add_scatter(x=layers, y=spectra.stable_rank.values, mode="lines+markers", name="stable rank", row=3, col=1)
    fig.add_scatter(x=layers, y=spectra.mp_soft_rank.values, mode="lines+markers", name="MP soft rank", row=3, col=1)
    if hessian is not None:
        fig.add_bar(
            x=layers, y=_hessian_by_layer(hessian, layers), name="Hessian lambda_max (layer block)", row=4, col=1
        )
    fig.update_layout(title=title or "Weight spectra per layer", height=220 * rows + 80)
    return fig


def esd(spectra: xr.Dataset, layer: str, title: str | None = None) -> go.Figure:
    """The ESD of one layer on log-log axes (a histogram of ``log10 lambda``), the fitted power law over its range
    ``[xmin, xmax]`` and the Marchenko-Pastur edge of the randomised W. Needs ``keep_eigenvalues=True``.

    >>> import numpy as np, xarray as xr
    >>> ev = np.linspace(0.1, 10, 50)[::-1]
    >>> s = xr.Dataset({"eigenvalues": (("layer", "rank"), [ev]), "alpha": ("layer", [3.0]),
    ...                 "xmin": ("layer", [1.0]), "xmax": ("layer", [10.0]), "mp_edge": ("layer", [2.0])},
    ...                coords={"layer": ["0.weight"]})
    >>> esd(s, "0.weight").layout.title.text
    'ESD of 0.weight: alpha 3.00 on [1, 10]'
    """
    if "eigenvalues" not in spectra:
        raise ValueError("spectra: no eigenvalues; call weight_spectra(model, keep_eigenvalues=True)")
    if layer not in [str(v) for v in spectra.layer.values]:
        raise ValueError(f"layer: expected one of {[str(v) for v in spectra.layer.values]}, got {layer!r}")
    r = spectra.sel(layer=layer)
    ev = r.eigenvalues.values
    ev = ev[np.isfinite(ev) & (ev > 0)]
    logs = np.log10(ev)
    counts, edges = np.histogram(logs, bins=max(10, min(80, ev.size // 4)))
    width = np.diff(edges)
    dens = counts / (ev.size * width * np.log(10) * 10 ** edges[:-1])  # density per unit lambda (approx.)
    centres = 10 ** ((edges[:-1] + edges[1:]) / 2)
    fig = go.Figure()
    fig.add_scatter(x=centres, y=np.where(dens > 0, dens, np.nan), mode="markers", name="ESD")
    alpha, xmin, xmax = float(r.alpha), float(r.xmin), float(r.xmax)
    if np.isfinite(alpha):
        xs = np.geomspace(xmin, xmax, 50)
        tail = (ev >= xmin).mean()
        fig.add_scatter(
            x=xs,
            y=tail * (alpha - 1) / xmin * (xs / xmin) ** (-alpha),
            mode="lines",
            name=f"power law, alpha {alpha:.2f}",
        )
    if "mp_edge" in r:
        fig.add_vline(x=float(r.mp_edge), line=dict(dash="dash", color="grey"), annotation_text="MP edge")
    fig.update_layout(
        title=title or f"ESD of {layer}: alpha {alpha:.2f} on [{xmin:.3g}, {xmax:.3g}]",
        xaxis=dict(type="log", title="eigenvalue of W^T W"),
        yaxis=dict(type="log", title="density"),
    )
    return fig
