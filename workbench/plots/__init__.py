"""Plotly figures over probe results: a thin layer that reads xarray and returns ``go.Figure``.

Functions take the xarray a probe returned and never compute probes themselves.
"""
from .landscape import interpolation, slice_1d, slice_2d
from .attention import attention_map, collapse_overview, heatmap, over_training
from .transfer import leaderboard, per_layer, score_vs_accuracy
from .sharpness import eigenvalues, over_checkpoints, sharpness_vs_rho, spectral_density

__all__ = ["slice_1d", "slice_2d", "interpolation", "eigenvalues", "spectral_density", "sharpness_vs_rho",
           "over_checkpoints", "heatmap", "attention_map", "over_training", "collapse_overview", "leaderboard",
           "score_vs_accuracy", "per_layer"]
