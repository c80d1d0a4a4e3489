"""Which measure predicts generalization here? The measures study (Jiang et al. 2020, "Fantastic
generalization measures and where to find them"; Dziugaite et al. 2020, "In search of robust measures of
generalization").

:func:`build_zoo` trains (or loads) the study zoo of a preset (:data:`PRESETS`: ``"tiny"`` for tests,
``"default"`` for 2 CPU cores, ``"large"`` for a GPU) on a dask sweep, one hyper-parameter of :data:`AXES`
varied at a time, each run to a fixed training loss; :func:`measure_zoo` adds every measure of
:data:`MEASURES` (sharpness, curvature, norms, PAC-Bayes flatness, landscape width, ESD alpha);
:func:`correlate` ranks them against the generalization gap (Kendall's tau, granulated Psi per axis, the
worst axis, conditional mutual information) with intervals by subsampling runs (:mod:`workbench.stats`);
:func:`table` prints the result. ``python -m workbench.study --preset default --out DIR`` does all of it
and runs the report.
"""

from .analysis import conditional_mi, correlate, factors_of, table
from .measures import MEASURES, fisher_rao_norm, measure_model, measure_run, measure_zoo, norm_products, path_norm
from .zoo import AXES, PRESETS, build_model, build_zoo, configs, load_run, run_data, run_path, train_run

__all__ = [
    "AXES",
    "PRESETS",
    "MEASURES",
    "configs",
    "build_model",
    "train_run",
    "run_data",
    "run_path",
    "build_zoo",
    "load_run",
    "measure_model",
    "measure_run",
    "measure_zoo",
    "fisher_rao_norm",
    "path_norm",
    "norm_products",
    "factors_of",
    "conditional_mi",
    "correlate",
    "table",
]
