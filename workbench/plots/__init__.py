"""Plotly figures over probe results: a thin layer that reads xarray and returns ``go.Figure``.

Functions take the xarray a probe returned and never compute probes themselves.
"""
from .landscape import interpolation, slice_1d, slice_2d

__all__ = ["slice_1d", "slice_2d", "interpolation"]
