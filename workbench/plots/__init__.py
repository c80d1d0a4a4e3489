"""Plotly figures over probe results: a thin layer that reads xarray and returns ``go.Figure``.

Functions take what a probe returned (a Dataset or a DataArray where a probe result could be
either) and never compute probes themselves; the explorers in :mod:`workbench.widgets` draw with
these same functions.
"""

from .attention import attention_map, collapse_overview, heatmap, over_training
from .landscape import interpolation, slice_1d, slice_2d
from .sharpness import block_spectrum, eigenvalues, over_checkpoints, resmooth, sharpness_vs_rho, spectral_density
from .transfer import leaderboard, per_layer, score_vs_accuracy

__all__ = [
    "slice_1d",
    "slice_2d",
    "interpolation",
    "eigenvalues",
    "block_spectrum",
    "spectral_density",
    "resmooth",
    "sharpness_vs_rho",
    "over_checkpoints",
    "heatmap",
    "attention_map",
    "over_training",
    "collapse_overview",
    "leaderboard",
    "score_vs_accuracy",
    "per_layer",
]
