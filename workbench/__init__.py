"""workbench: an interactive analysis workbench for PyTorch models.

Probes are plain functions ``probe(model, loss_fn, data, ..., *, mode, params, seed, progress,
cancel, device)`` that return xarray objects with provenance. Packages by concept:

- :mod:`workbench.landscape` (slices, mode connectivity), :mod:`workbench.curvature` (Hessian, GGN, Fisher
  operators and their spectra), :mod:`workbench.sharpness`, :mod:`workbench.attention`,
  :mod:`workbench.transfer` (transferability metrics, features, fine-tuning ground truth);
- :mod:`workbench.weightspace`: permutation alignment (weight / activation matching from the torch.fx graph),
  REPAIR / RESET, linear mode connectivity per alignment method, merging (soups, task arithmetic, TIES, Fisher
  averaging) and weight spectra;
- :mod:`workbench.compare`: representation similarity (CKA linear / RBF / debiased / minibatch, Procrustes,
  CCA / SVCCA / PWCCA), calibration (ECE, ACE, NLL, Brier with intervals; temperature scaling), output
  divergences (KL, JS, TV per example and per token), neural collapse NC1-NC4;
- :mod:`workbench.monitor`: probes inside a training run on a schedule, a crash-safe store, alarms, Lightning and
  Hugging Face callbacks;
- :mod:`workbench.study`: which measure predicts generalization (the Jiang et al. study with intervals); the
  engine module :mod:`workbench.stats` gives intervals that never duplicate samples, Kendall and weighted tau and
  the granulated Psi.

Front ends :mod:`workbench.plots`, :mod:`workbench.widgets` and :mod:`workbench.reports` are imported on first
use, so ``import workbench`` loads neither plotly nor ipywidgets.
"""

from __future__ import annotations

import importlib

__version__ = "0.4.0"

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
