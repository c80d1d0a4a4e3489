"""Plotly figures over probe results: a thin layer that reads xarray and returns ``go.Figure``.

Functions take what a probe returned (a Dataset or a DataArray where a probe result could be
either) and never compute probes themselves; the explorers in :mod:`workbench.widgets` draw with
these same functions. The newer families are submodules, one per probe package: :mod:`.weightspace`
(paths and barriers per alignment, singular directions, spectra), :mod:`.merging` (merge landscapes, sign
conflicts, weight spectra next to lambda_max), :mod:`.compare` (similarity heatmaps, reliability diagrams,
divergences, neural collapse), :mod:`.monitor` and :mod:`.instability` (a monitor's store, the reproductions),
:mod:`.study` (the measures study).
"""

from . import compare, instability, merging, monitor, study, weightspace  # submodules, one per family
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
    "weightspace",
    "merging",
    "compare",
    "monitor",
    "instability",
    "study",
]
