"""Interactive explorers (ipywidgets + plotly FigureWidget) over the probes.

Each explorer is a thin layer: controls call a probe (in a background thread, cancellable with
the Stop button), and the figure updates in place. ``background=False`` runs synchronously
(tests, scripts).
"""
from .attention import AttentionExplorer
from .landscape import LandscapeExplorer
from .sharpness import SharpnessExplorer
from .transfer import TransferExplorer

__all__ = ["LandscapeExplorer", "SharpnessExplorer", "AttentionExplorer", "TransferExplorer"]
