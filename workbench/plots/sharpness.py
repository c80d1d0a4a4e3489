"""Figures for the sharpness probe."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots


def eigenvalues(results, title: str | None = None) -> go.Figure:
    """Top Hessian eigenvalues by rank; ``results`` is one DataArray or a dict label -> DataArray."""
    results = results if isinstance(results, dict) else {"": results}
    fig = go.Figure()
    for label, da in results.items():
        da = da["eigenvalue"] if isinstance(da, xr.Dataset) else da
        err = da.residual.values if "residual" in da.coords else None
        fig.add_scatter(x=da["rank"].values, y=da.values, mode="lines+markers", name=str(label) or "eigenvalue",
                        error_y=dict(type="data", array=err, visible=err is not None))
    fig.update_layout(title=title or "Hessian eigenvalues (error bars: Ritz residuals)", xaxis_title="rank",
                      yaxis_title="eigenvalue", template="plotly_white")
    return fig


def spectral_density(results, sigma: float | None = None, log: bool = True, title: str | None = None) -> go.Figure:
    """SLQ density; ``sigma`` re-smooths from the stored nodes without new HVPs."""
    from ..sharpness import density_from_nodes

    results = results if isinstance(results, dict) else {"": results}
    fig = go.Figure()
    for label, da in results.items():
        if sigma is not None:
            n = da.attrs["n_runs"]
            da = density_from_nodes(da.attrs["slq_nodes"].reshape(n, -1), da.attrs["slq_weights"].reshape(n, -1),
                                    sigma=sigma)
        y = np.maximum(da.values, 1e-12) if log else da.values
        fig.add_scatter(x=da.eigenvalue.values, y=y, mode="lines", name=str(label) or "density")
    fig.update_layout(title=title or "Hessian eigenvalue density (stochastic Lanczos quadrature)",
                      xaxis_title="eigenvalue", yaxis_title="density", yaxis_type="log" if log else "linear",
                      template="plotly_white")
    return fig


def sharpness_vs_rho(results, title: str | None = None) -> go.Figure:
    """Sharpness over ``rho`` with stderr bars; ``results`` one DataArray or dict label -> DataArray."""
    results = results if isinstance(results, dict) else {"": results}
    fig = go.Figure()
    for label, da in results.items():
        err = np.nan_to_num(da.stderr.values) if "stderr" in da.coords else None
        fig.add_scatter(x=da.rho.values, y=da.values, mode="lines+markers", name=str(label) or da.name,
                        error_y=dict(type="data", array=err, visible=err is not None))
    fig.update_layout(title=title or "Sharpness vs perturbation radius", xaxis_title="rho",
                      yaxis_title="loss increase", template="plotly_white")
    return fig


def over_checkpoints(ds: xr.Dataset, variables=("loss", "lambda_max", "trace", "sam_sharpness", "asam_sharpness"),
                     dim: str = "checkpoint", title: str | None = None) -> go.Figure:
    """One panel per quantity, over checkpoints (or models) of a :func:`workbench.sharpness.summary`."""
    variables = [v for v in variables if v in ds]
    fig = make_subplots(rows=len(variables), cols=1, shared_xaxes=True, subplot_titles=variables)
    x = [str(v) for v in ds[dim].values]
    for i, v in enumerate(variables, start=1):
        err = ds.get(v.replace("_sharpness", "_stderr")) if v.endswith("_sharpness") else ds.get(f"{v}_stderr")
        fig.add_scatter(x=x, y=ds[v].values, mode="lines+markers", name=v, row=i, col=1,
                        error_y=dict(type="data", array=np.nan_to_num(err.values), visible=True) if err is not None else None)
    fig.update_layout(title=title or f"Sharpness over {dim}s", showlegend=False, template="plotly_white",
                      height=220 * len(variables))
    return fig
