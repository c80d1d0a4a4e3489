"""Interactive explorers (ipywidgets + plotly FigureWidget) over the probes.

Every explorer is an :class:`Explorer`: controls start a probe in a background job (one at a time,
cancellable with the Stop button, with a progress bar, a status line and an error display) and the
figure, drawn by the matching :mod:`workbench.plots` function, updates in place. ``background=False``
runs synchronously (tests, scripts).
"""

from .attention import AttentionExplorer
from .compare import CompareExplorer
from .explorer import Explorer, update_figure
from .landscape import LandscapeExplorer
from .monitor import Dashboard
from .sharpness import SharpnessExplorer
from .transfer import TransferExplorer
from .weightspace import WeightspaceExplorer

__all__ = [
    "Explorer",
    "update_figure",
    "LandscapeExplorer",
    "SharpnessExplorer",
    "AttentionExplorer",
    "TransferExplorer",
    "WeightspaceExplorer",
    "CompareExplorer",
    "Dashboard",
]
