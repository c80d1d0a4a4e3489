"""Parameterised reports: the notebooks in ``workbench/reports/notebooks/`` (package data) executed by papermill.

:func:`run_report` runs one report and writes the executed notebook, a self-contained offline HTML
page and the results as netCDF (:mod:`.runner`); :func:`sweep` runs a report over a parameter grid
on dask.distributed (:mod:`.sweep`). Inside the notebooks: :func:`load_model`, :func:`load_data`,
:func:`family` (:mod:`.inputs`) and :func:`compare` (:mod:`.reference`), which sets every headline
number beside its range over the model's family in the demo zoo.
"""

from .inputs import family, family_label, family_models, load_data, load_model
from .reference import compare, reference_results
from .runner import (
    PARAMS_ATTR,
    REPORT_ENV,
    REPORTS_DIR,
    ReportError,
    available,
    check_params,
    effective_params,
    kernel_name,
    literal,
    parameters,
    params_json,
    recorded_params,
    report_path,
    run_report,
    to_html,
)
from .sweep import check_workers, concatenate, grid_points, point_stem, run_point, summary_page, sweep

__all__ = [
    "run_report",
    "sweep",
    "available",
    "parameters",
    "check_params",
    "effective_params",
    "params_json",
    "recorded_params",
    "PARAMS_ATTR",
    "check_workers",
    "literal",
    "kernel_name",
    "to_html",
    "report_path",
    "ReportError",
    "REPORTS_DIR",
    "REPORT_ENV",
    "load_model",
    "load_data",
    "family",
    "family_label",
    "family_models",
    "compare",
    "reference_results",
    "grid_points",
    "point_stem",
    "run_point",
    "concatenate",
    "summary_page",
]
