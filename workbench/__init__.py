"""workbench: an interactive analysis workbench for PyTorch models.

Probes (loss landscape, sharpness, attention entropy, transferability) are plain functions
``probe(model, loss_fn, data, ...)`` returning xarray objects with provenance attrs.
"""
__version__ = "0.1.0"

from .config import get_threads, set_threads, threads  # noqa: E402
from .results import concat, load, save  # noqa: E402
from .state import preserve  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from . import widgets  # noqa: E402,F401

__all__ = ["__version__", "set_threads", "get_threads", "threads", "save", "load", "concat", "preserve", "evaluate"]
