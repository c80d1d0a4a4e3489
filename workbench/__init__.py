"""workbench: an interactive analysis workbench for PyTorch models.

Probes are plain functions ``probe(model, loss_fn, data, ..., *, mode, params, seed, progress,
cancel, device)`` that return xarray objects with provenance. Packages by concept:
:mod:`workbench.landscape`, :mod:`workbench.curvature`, :mod:`workbench.sharpness`,
:mod:`workbench.attention`, :mod:`workbench.transfer`; front ends :mod:`workbench.plots`,
:mod:`workbench.widgets` and :mod:`workbench.reports` are imported on first use, so
``import workbench`` loads neither plotly nor ipywidgets.
"""

from __future__ import annotations

import importlib

__version__ = "0.3.0"

from .config import get_threads, set_threads, threads  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .loading import describe_spec, load_model  # noqa: E402
from .objective import Objective  # noqa: E402
from .registry import Cancelled, Tags, probe, probes  # noqa: E402
from .results import concat, load, save  # noqa: E402
from .state import preserve  # noqa: E402

_LAZY = (
    "landscape",
    "curvature",
    "sharpness",
    "attention",
    "transfer",
    "weightspace",
    "compare",
    "monitor",
    "study",
    "stats",
    "plots",
    "widgets",
    "reports",
    "zoo",
    "testing",
    "tasks",
)

__all__ = [
    "__version__",
    "set_threads",
    "get_threads",
    "threads",
    "save",
    "load",
    "concat",
    "preserve",
    "evaluate",
    "load_model",
    "describe_spec",
    "Objective",
    "probe",
    "probes",
    "Tags",
    "Cancelled",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
