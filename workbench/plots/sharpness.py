"""Figures for the curvature and sharpness probes."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from ..curvature import density_from_nodes
from ..curvature.blocks import WHOLE
from .common import as_dict, categorical, integer_axis

RITZ = "error bars: Ritz residual ||Hv - lambda v||, a bound on each eigenvalue's error"


def _eigen(result) -> tuple[xr.DataArray, np.ndarray | None]:
    """(eigenvalues over rank, residuals or None) of a hessian_eigenvalues Dataset or a DataArray."""
    if "block" in result.dims:  # a blockwise result: the whole model
        result = result.sel(block=WHOLE)
    if isinstance(result, xr.Dataset):
        name = "eigenvalue" if "eigenvalue" in result else "eigenvalues"
        da = result[name]
        res = result["residual"] if "residual" in result else None
    else:
        da, res = result, result.coords.get("residual")
    return da, None if res is None else np.asarray(res.values, float)


def eigenvalues(results, title: str | None = None, reference: dict | None = None, log: bool | None = None) -> go.Figure:
    """Top Hessian eigenvalues by rank: one marker per eigenvalue on an integer rank axis, the Ritz
    residuals as error bars. ``results``: a :func:`workbench.curvature.hessian_eigenvalues` Dataset
    (or an ``eigenvalue`` DataArray over ``rank``), or a dict label -> one. ``reference``: a dict
    label -> eigenvalues of models to judge them by (small grey markers). ``log``: a log y axis;
    default when more than 10 ranks and every value is positive.

    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"eigenvalue": ("rank", [3.0, 1.5, 0.2]), "residual": ("rank", [1e-3, 2e-3, 1e-2])},
    ...                 coords={"rank": np.arange(3)})
    >>> fig = eigenvalues(ds)
    >>> fig.data[0].x.tolist(), fig.layout.xaxis.dtick, fig.data[0].mode
    ([0, 1, 2], 1, 'markers')
    """
    results = as_dict(results)
    fig = go.Figure()
    values, which = [], "largest"
    for label, name in (reference or {}).items():
        da, _ = _eigen(name)
        values.append(da.values)
        fig.add_scatter(
            x=da["rank"].values.astype(int),
            y=da.values,
            mode="markers",
            name="reference models",
            legendgroup="reference",
            showlegend=label == next(iter(reference)),
            marker=dict(color="rgba(120,120,120,0.45)", size=7, symbol="circle-open"),
            hovertemplate=f"{label}<br>rank %{{x}}: %{{y:.4g}}<extra></extra>",
        )
    for label, r in results.items():
        da, err = _eigen(r)
        values.append(da.values)
        which = "smallest" if "smallest" in da.attrs.get("long_name", "") else which
        fig.add_scatter(
            x=da["rank"].values.astype(int),
            y=da.values,
            mode="markers",
            name=str(label) or "eigenvalue",
            marker=dict(size=10),
            error_y=dict(type="data", array=err, visible=err is not None, thickness=2, width=6),
            hovertemplate="rank %{x}: %{y:.5g}<extra>" + (str(label) or "") + "</extra>",
        )
    allv = np.concatenate([np.ravel(v) for v in values]) if values else np.zeros(0)
    k = max((len(_eigen(r)[0]) for r in results.values()), default=1)
    if log is None:
        log = k > 10 and allv.size > 0 and bool(np.all(allv > 0))
    integer_axis(fig.layout.xaxis, k)
    units = _eigen(next(iter(results.values())))[0].attrs.get("units", "") if results else ""
    fig.update_layout(
        title=title or f"Top Hessian eigenvalues ({RITZ})",
        xaxis_title=f"rank (0 = {which})",
        yaxis_title="eigenvalue" + (f" ({units})" if units else ""),
        yaxis_type="log" if log else "linear",
        template="plotly_white",
    )
    return fig


def block_spectrum(results, title: str | None = None, ranks: int = 3) -> go.Figure:
    """Blockwise curvature over the ``block`` dimension of a :func:`workbench.curvature.hessian_eigenvalues`
    Dataset (the top ``ranks`` eigenvalues of every block, Ritz residuals as error bars) or a
    :func:`workbench.curvature.hessian_trace` DataArray (bars with their confidence interval), the whole model
    (``"(all)"``) first; a dict label -> result puts models side by side (then only each block's top eigenvalue).

    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"eigenvalue": (("block", "rank"), [[3.0, 1.0], [2.0, 0.5]]),
    ...                  "residual": (("block", "rank"), np.zeros((2, 2)))},
    ...                 coords={"block": ["(all)", "0"], "rank": [0, 1]})
    >>> fig = block_spectrum(ds)
    >>> [t.name for t in fig.data], list(fig.data[0].x), fig.data[0].y.tolist()
    (['rank 0', 'rank 1'], ['(all)', '0'], [3.0, 2.0])
    """
    results = as_dict(results)
    fig = go.Figure()
    what = "curvature"
    for label, r in results.items():
        if "block" not in r.dims:
            raise ValueError(f"results: {label or 'the result'} has no 'block' dimension; compute it with blocks=")
        blocks = [str(b) for b in r["block"].values]
        if isinstance(r, xr.Dataset):
            what = r["eigenvalue"].attrs.get("long_name", "eigenvalues")
            n = 1 if len(results) > 1 else min(ranks, r.sizes["rank"])
            for k in range(n):
                err = r["residual"].isel(rank=k).values if "residual" in r else None
                fig.add_scatter(
                    x=blocks,
                    y=r["eigenvalue"].isel(rank=k).values,
                    mode="markers",
                    name=f"{label + ' ' if label else ''}rank {k}",
                    marker=dict(size=11 - 2 * k),
                    error_y=dict(type="data", array=err, visible=err is not None),
                )
        else:
            what = r.attrs.get("long_name", "trace")
            err = r["ci_high"].values - r.values if "ci_high" in r.coords else None
            fig.add_bar(x=blocks, y=r.values, name=str(label) or what, error_y=dict(type="data", array=err))
    fig.update_layout(
        title=title or f"{what} by block ({WHOLE}: the whole model)",
        xaxis_title="block (diagonal block of the curvature matrix)",
        yaxis_title=what,
        xaxis_type="category",
        template="plotly_white",
    )
    return fig


def resmooth(density: xr.DataArray, sigma: float, relative: bool = False) -> xr.DataArray:
    """The density of a :func:`workbench.curvature.spectral_density` result re-smoothed with a
    Gaussian kernel of width ``sigma`` from its stored Lanczos nodes (no new Hessian-vector
    products); ``relative=True``: ``sigma`` is a fraction of the nodes' range.

    >>> import numpy as np
    >>> from workbench.curvature import density_from_nodes
    >>> d = density_from_nodes(np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]]), sigma=0.1)
    >>> d.attrs.update(slq_nodes=np.array([0.0, 1.0]), slq_weights=np.array([0.5, 0.5]), n_runs=1)
    >>> bool(resmooth(d, 0.3).max() < d.max())
    True
    """
    n = int(density.attrs.get("n_runs", 1))
    nodes = np.asarray(density.attrs["slq_nodes"]).reshape(n, -1)
    weights = np.asarray(density.attrs["slq_weights"]).reshape(n, -1)
    if relative:
        sigma = sigma * max(float(np.ptp(nodes)), 1e-12)
    return density_from_nodes(nodes, weights, sigma=sigma)


def spectral_density(
    results, sigma: float | None = None, log: bool = True, title: str | None = None, relative: bool = False
) -> go.Figure:
    """Hessian eigenvalue density (stochastic Lanczos quadrature); ``sigma`` re-smooths it from the
    stored nodes (:func:`resmooth`), ``relative=True`` as a fraction of the spectrum's range.
    ``results``: one density or a dict label -> density.

    >>> import numpy as np
    >>> from workbench.curvature import density_from_nodes
    >>> d = density_from_nodes(np.array([[0.0, 1.0]]), np.array([[0.5, 0.5]]), sigma=0.1)
    >>> spectral_density(d).layout.yaxis.type
    'log'
    """
    results = as_dict(results)
    fig = go.Figure()
    for label, da in results.items():
        if sigma is not None:
            da = resmooth(da, sigma, relative)
        y = np.maximum(da.values, 1e-12) if log else da.values
        fig.add_scatter(x=da.eigenvalue.values, y=y, mode="lines", name=str(label) or "density")
    width = "" if sigma is None else f", kernel width {sigma:.2g}{' x range' if relative else ''}"
    fig.update_layout(
        title=title or f"Hessian eigenvalue density (stochastic Lanczos quadrature{width})",
        xaxis_title="eigenvalue",
        yaxis_title="density (per unit eigenvalue)",
        yaxis_type="log" if log else "linear",
        template="plotly_white",
    )
    return fig


def sharpness_vs_rho(results, title: str | None = None) -> go.Figure:
    """Sharpness over the radius ``rho`` with standard-error bars; ``results``: a rho-ball probe's
    DataArray (over ``rho``, coordinate ``stderr``) or a dict label -> one.

    >>> import xarray as xr
    >>> da = xr.DataArray([0.0, 0.1], dims="rho", coords={"rho": [0.0, 0.05], "stderr": ("rho", [0, 0.01])},
    ...                   name="sam_sharpness")
    >>> sharpness_vs_rho(da).data[0].x.tolist()
    [0.0, 0.05]
    """
    results = as_dict(results)
    fig = go.Figure()
    for label, da in results.items():
        rho = np.atleast_1d(da["rho"].values) if "rho" in da.coords else np.array([np.nan])
        err = np.nan_to_num(np.atleast_1d(da["stderr"].values)) if "stderr" in da.coords else None
        fig.add_scatter(
            x=rho,
            y=np.atleast_1d(da.values),
            mode="lines+markers",
            name=str(label) or da.name,
            error_y=dict(type="data", array=err, visible=err is not None),
        )
    fig.update_layout(
        title=title or "Sharpness vs perturbation radius (error bars: standard error)",
        xaxis_title="rho (radius of the perturbation ball)",
        yaxis_title="loss increase",
        template="plotly_white",
    )
    return fig


def over_checkpoints(
    ds: xr.Dataset,
    variables=("loss", "lambda_max", "trace", "sam_sharpness", "asam_sharpness"),
    dim: str = "checkpoint",
    title: str | None = None,
) -> go.Figure:
    """One panel per quantity of a :func:`workbench.sharpness.summary` over checkpoints (or models):
    a line over a numeric ``dim`` (training steps), markers over a categorical one (model names).

    >>> import xarray as xr
    >>> ds = xr.Dataset({"loss": ("checkpoint", [2.0, 0.5, 0.1])}, coords={"checkpoint": [0, 10, 100]})
    >>> fig = over_checkpoints(ds)
    >>> list(fig.data[0].x), fig.data[0].mode
    ([0, 10, 100], 'lines+markers')
    """
    variables = [v for v in variables if v in ds]
    if not variables:
        raise ValueError(f"variables: none of them is in the Dataset; it has {', '.join(map(str, ds.data_vars))}")
    if dim not in ds.dims:
        raise ValueError(
            f"dim: the Dataset has no dimension {dim!r}; its dimensions are {', '.join(map(str, ds.dims))}"
        )
    x, cat = categorical(ds[dim].values)
    titles = [ds[v].attrs.get("long_name", v) for v in variables]
    fig = make_subplots(
        rows=len(variables),
        cols=1,
        shared_xaxes=True,
        subplot_titles=titles,
        vertical_spacing=min(0.08, 0.5 / len(variables)),
    )
    for i, v in enumerate(variables, start=1):
        err = ds.get(v.replace("_sharpness", "_stderr")) if v.endswith("_sharpness") else ds.get(f"{v}_stderr")
        if err is None and v == "average_sharpness":
            err = ds.get("average_stderr")
        fig.add_scatter(
            x=x,
            y=ds[v].values,
            mode="markers" if cat else "lines+markers",
            name=v,
            row=i,
            col=1,
            error_y=dict(type="data", array=np.nan_to_num(err.values), visible=True) if err is not None else None,
        )
    fig.update_xaxes(title_text=dim, row=len(variables), col=1)
    fig.update_layout(
        title=title or f"Sharpness over {dim}s (error bars: standard error)",
        showlegend=False,
        template="plotly_white",
        height=max(300, 220 * len(variables)),
    )
    return fig
