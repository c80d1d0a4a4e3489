"""Detectors of attention pathologies from the statistics of :func:`~workbench.attention.attention_stats`:
entropy collapse (Zhai et al. 2023) and entropic overload (Jha & Reagen 2025)."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr


def _normalized_entropy(stats: xr.Dataset | xr.DataArray) -> xr.DataArray:
    return stats["normalized_entropy"] if isinstance(stats, xr.Dataset) else stats


def detect_collapse(stats: xr.Dataset | xr.DataArray, threshold: float = 0.1) -> xr.DataArray:
    """Entropy collapse: heads whose mean normalised entropy ``H / ln n_keys`` is below ``threshold``
    (default 0.1: the head puts nearly all its mass on one key; Zhai et al. 2023). ``stats``: the Dataset
    of :func:`~workbench.attention.attention_stats` or the normalised entropy DataArray.

    >>> ne = xr.DataArray([[0.05, 0.8]], dims=("layer", "head"))
    >>> detect_collapse(ne).values.tolist()
    [[True, False]]
    """
    ne = _normalized_entropy(stats)
    out = (ne < threshold).rename("collapsed")
    out.attrs = {
        "long_name": "entropy collapse",
        "threshold": float(threshold),
        "reason": f"mean normalised entropy H / ln(n_keys) < {threshold}: attention concentrates on one key",
    }
    return out


def detect_overload(
    stats: xr.Dataset | xr.DataArray, threshold: float = 0.9, early_fraction: float = 1 / 3
) -> xr.DataArray:
    """Entropic overload: heads in the first ``ceil(n_layers * early_fraction)`` layers (at least one)
    whose mean normalised entropy exceeds ``threshold`` (default 0.9: nearly uniform attention; Jha &
    Reagen 2025). ``stats`` as for :func:`detect_collapse`.

    >>> ne = xr.DataArray([[0.95, 0.5], [0.97, 0.2], [0.99, 0.3]], dims=("layer", "head"),
    ...                   coords={"layer": [0, 1, 2]})
    >>> detect_overload(ne).values.tolist(), detect_overload(ne).attrs["early_layers"]
    ([[True, False], [False, False], [False, False]], 1)
    """
    ne = _normalized_entropy(stats)
    n_early = max(1, int(math.ceil(ne.sizes["layer"] * early_fraction)))
    early = xr.DataArray(np.arange(ne.sizes["layer"]) < n_early, dims="layer", coords={"layer": ne.layer})
    out = ((ne > threshold) & early).rename("overloaded")
    out.attrs = {
        "long_name": "entropic overload",
        "threshold": float(threshold),
        "early_layers": int(n_early),
        "reason": f"mean normalised entropy > {threshold} in the first {n_early} layer(s): near-uniform attention",
    }
    return out
