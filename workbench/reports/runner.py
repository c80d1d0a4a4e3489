"""Run one report notebook with papermill and write it as offline HTML.

:func:`run_report` executes one report notebook (package data: ``workbench/reports/notebooks/``, found through
:mod:`importlib.resources`, so it works from a wheel as from the checkout) on the project's kernel and
writes, side by side in ``out``: the executed ``NAME.ipynb``, a self-contained ``NAME.html`` (input
cells hidden, plotly.js embedded, no external scripts: it renders offline) and the results
``NAME.nc``, whose attr ``report_params`` records every parameter of the run (the report's defaults
with the given values over them) as JSON. A failing report raises :class:`ReportError` naming the
cell and the error; the partial executed notebook is kept with the failing cell marked.
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
from importlib.resources import files
from pathlib import Path

from ..results import DamagedFileError, atomic_write, load, save

#: the report notebooks, shipped inside the package (a real directory: papermill reads them by path)
REPORTS_DIR = Path(str(files(__package__) / "notebooks"))
#: the attr of a report's results that records all its parameters (JSON)
PARAMS_ATTR = "report_params"
#: environment of an executed report: no progress bars (they do not render in static HTML), one
#: thread per process unless configured, no network
REPORT_ENV = {"TQDM_DISABLE": "1", "WORKBENCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}


class ReportError(RuntimeError):
    """A report that does not exist, a wrong parameter, or a report that failed in a cell."""


def available() -> dict[str, Path]:
    """Report names -> notebook paths.

    >>> sorted(available())[:3]
    ['attention', 'compare', 'instability']
    """
    return {p.stem: p for p in sorted(REPORTS_DIR.glob("*.ipynb"))}


def report_path(name: str) -> Path:
    """The notebook of report ``name`` (a :class:`ReportError` naming the available ones if none).

    >>> report_path("model_report").relative_to(REPORTS_DIR.parent).as_posix()
    'notebooks/model_report.ipynb'
    """
    reps = available()
    if name not in reps:
        raise ReportError(f"report: no report named {name!r}; available: {', '.join(reps)} (see `workbench list`)")
    return reps[name]


def parameters(name: str) -> dict:
    """The report's parameters and their defaults (source text, from its cell tagged ``parameters``).

    >>> parameters("landscape")["steps"]
    '21'
    """
    import papermill as pm

    return {k: v["default"] for k, v in pm.inspect_notebook(str(report_path(name))).items()}


def literal(src: str):
    """``src`` as a Python literal if it is one (``"9"`` -> 9, ``"[0, 1]"`` -> [0, 1]), else unchanged.

    >>> literal("[0, 1]"), literal("mlp-sam-s0")
    ([0, 1], 'mlp-sam-s0')
    """
    try:
        return ast.literal_eval(src)
    except (ValueError, SyntaxError):
        return src


def check_params(name: str, params: dict) -> dict:
    """``params`` checked against the report's parameters; strings of non-string parameters parsed
    as literals (``-p steps 9`` -> 9)."""
    known = parameters(name)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ReportError(
            f"parameter: report {name!r} has no parameter {unknown}; its parameters are "
            + ", ".join(f"{k} (default {v})" for k, v in known.items())
        )
    return {
        k: literal(v) if isinstance(v, str) and not isinstance(literal(known[k]), str) else v for k, v in params.items()
    }


def effective_params(name: str, params: dict | None = None) -> dict:
    """Every parameter of a run of report ``name``: its defaults (parsed as literals) with ``params`` over
    them (checked by :func:`check_params`), ``results_path`` left out.

    >>> effective_params("landscape", {"steps": "4"})["steps"], effective_params("landscape")["model"]
    (4, 'mlp-sgd-large-s0')
    """
    out = {k: literal(v) for k, v in parameters(name).items()}
    out.update(check_params(name, dict(params or {})))
    out.pop("results_path", None)
    return out


def params_json(params: dict) -> str:
    """The canonical JSON of a run's parameters, as stored in ``report_params`` and compared on resume.

    >>> params_json({"steps": 4, "model": "m"})
    '{"model": "m", "steps": 4}'
    """
    return json.dumps(params, sort_keys=True, default=str)


def recorded_params(nc: str | Path) -> str | None:
    """The ``report_params`` a report's results file records, or None (no file, none recorded, or damaged)."""
    try:
        return load(nc).attrs.get(PARAMS_ATTR)
    except (FileNotFoundError, DamagedFileError):
        return None


def kernel_name() -> str:
    """The project's kernel ``workbench`` if registered (``make`` does), else this interpreter's."""
    from jupyter_client.kernelspec import KernelSpecManager

    return "workbench" if "workbench" in KernelSpecManager().find_kernel_specs() else "python3"


def run_report(
    name: str, params: dict | None = None, out: str | Path = "reports", *, stem: str | None = None, timeout: int = 1200
) -> dict:
    """Execute report ``name`` with ``params``; returns {"ipynb", "html", "nc", "seconds"} paths.

    The notebook runs without progress bars (``TQDM_DISABLE=1``), offline, on one thread unless
    ``WORKBENCH_THREADS`` says otherwise.
    """
    import papermill as pm

    params = check_params(name, dict(params or {}))
    recorded = params_json(effective_params(name, params))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or name
    nb_out, html_out, nc_out = out / f"{stem}.ipynb", out / f"{stem}.html", out / f"{stem}.nc"
    params = dict(params, results_path=str(nc_out.resolve()))
    env_before = {k: os.environ.get(k) for k in REPORT_ENV}
    os.environ.update({k: v for k, v in REPORT_ENV.items() if k != "WORKBENCH_THREADS"})
    os.environ.setdefault("WORKBENCH_THREADS", REPORT_ENV["WORKBENCH_THREADS"])
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(report_path(name)),
            str(nb_out),
            parameters=params,
            kernel_name=kernel_name(),
            cwd=str(out),
            progress_bar=False,
            execution_timeout=timeout,
        )
    except pm.PapermillExecutionError as e:
        raise ReportError(
            f"report {name!r} failed in cell {e.exec_count} (cell index {e.cell_index}): "
            f"{e.ename}: {e.evalue}\n  the partial notebook, failing cell marked: {nb_out}"
        ) from None
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    to_html(nb_out, html_out)
    if nc_out.exists():  # the results record every parameter of the run
        res = load(nc_out)
        res.attrs[PARAMS_ATTR] = recorded
        save(res, nc_out)
    return {
        "ipynb": str(nb_out),
        "html": str(html_out),
        "nc": str(nc_out) if nc_out.exists() else None,
        "seconds": time.perf_counter() - t0,
    }


_EXTERNAL = re.compile(
    r"<script[^>]*\ssrc=[\"']https?://[^>]*>\s*</script>|<link[^>]*\shref=[\"']https?://[^>]*>", re.IGNORECASE
)


def to_html(nb_path: str | Path, html_path: str | Path) -> Path:
    """Self-contained HTML of an executed notebook: inputs hidden, nothing fetched from the network
    (nbconvert's template references require.js and MathJax on CDNs; those tags are dropped, plotly.js
    is embedded by the notebook's ``notebook`` renderer). Written atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(nb_path), as_version=4)
    exp = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body = _EXTERNAL.sub("", exp.from_notebook_node(nb)[0])
    return atomic_write(Path(html_path), lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))
