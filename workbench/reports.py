"""Parameterised reports: the notebooks in ``notebooks/reports/`` executed by papermill.

:func:`run_report` executes one report on the project's kernel and writes, side by side in ``out``:
the executed ``NAME.ipynb``, a self-contained ``NAME.html`` (input cells hidden, plotly.js embedded,
no external scripts: it renders offline) and the results ``NAME.nc``. A failing report raises
:class:`ReportError` naming the cell and the error; the partial executed notebook is kept with the
failing cell marked. :func:`sweep` runs every combination of a parameter grid on dask.distributed,
each report isolated (one failure does not stop the others), resumable, and concatenates the results
along the swept dimensions into one netCDF Dataset with a summary page.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import time
from pathlib import Path

REPORTS_DIR = Path(__file__).resolve().parents[1] / "notebooks" / "reports"


class ReportError(RuntimeError):
    pass


def available() -> dict[str, Path]:
    """Report names -> notebook paths."""
    return {p.stem: p for p in sorted(REPORTS_DIR.glob("*.ipynb"))}


def parameters(name: str) -> dict:
    """The report's parameters and their defaults (from its cell tagged ``parameters``)."""
    import papermill as pm

    path = _path(name)
    return {k: v["default"] for k, v in pm.inspect_notebook(str(path)).items()}


def _path(name: str) -> Path:
    reps = available()
    if name not in reps:
        raise ReportError(f"report: no report named {name!r}; available: {', '.join(reps)} (see `workbench list`)")
    return reps[name]


def _check_params(name: str, params: dict) -> dict:
    import ast

    known = parameters(name)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise ReportError(f"parameter: report {name!r} has no parameter {unknown}; its parameters are "
                          + ", ".join(f"{k} (default {v})" for k, v in known.items()))
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and not isinstance(_literal(known[k]), str):
            try:
                v = ast.literal_eval(v)  # -p steps 9 -> 9; -p seeds [0,1] -> [0, 1]
            except (ValueError, SyntaxError):
                pass
        out[k] = v
    return out


def _literal(src):
    import ast

    try:
        return ast.literal_eval(src)
    except (ValueError, SyntaxError):
        return src


def kernel_name() -> str:
    """The project's kernel ``workbench`` if registered (``make`` does), else this interpreter's."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    return "workbench" if "workbench" in specs else "python3"


def run_report(name: str, params: dict | None = None, out: str | Path = "reports", *, stem: str | None = None,
               timeout: int = 1200) -> dict:
    """Execute report ``name`` with ``params``; returns {"ipynb", "html", "nc", "seconds"} paths."""
    import papermill as pm

    params = _check_params(name, dict(params or {}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = stem or name
    nb_out, html_out, nc_out = out / f"{stem}.ipynb", out / f"{stem}.html", out / f"{stem}.nc"
    params = dict(params, results_path=str(nc_out.resolve()))
    env_before = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "WORKBENCH_THREADS", "HF_HUB_OFFLINE")}
    os.environ["TQDM_DISABLE"] = "1"  # progress widgets do not render in static HTML
    os.environ.setdefault("WORKBENCH_THREADS", "1")
    os.environ["HF_HUB_OFFLINE"] = "1"
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(_path(name)), str(nb_out), parameters=params, kernel_name=kernel_name(),
                            cwd=str(out), progress_bar=False, execution_timeout=timeout)
    except pm.PapermillExecutionError as e:
        raise ReportError(f"report {name!r} failed in cell {e.exec_count} (cell index {e.cell_index}): "
                          f"{e.ename}: {e.evalue}\n  the partial notebook, failing cell marked: {nb_out}") from None
    finally:
        for k, v in env_before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    to_html(nb_out, html_out)
    return {"ipynb": str(nb_out), "html": str(html_out), "nc": str(nc_out) if nc_out.exists() else None,
            "seconds": time.perf_counter() - t0}


_EXTERNAL = re.compile(r"<script[^>]*\ssrc=[\"']https?://[^>]*>\s*</script>|<link[^>]*\shref=[\"']https?://[^>]*>",
                       re.IGNORECASE)


def to_html(nb_path, html_path) -> Path:
    """Self-contained HTML of an executed notebook: inputs hidden, nothing fetched from the network
    (nbconvert's template references require.js and MathJax on CDNs; those tags are dropped, plotly.js
    is embedded by the notebook's ``notebook`` renderer). Written atomically."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(nb_path), as_version=4)
    exp = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exp.from_notebook_node(nb)
    body = _EXTERNAL.sub("", body)
    html_path = Path(html_path)
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(html_path)
    return html_path


# -- sweeps ---------------------------------------------------------------------------------------

def _grid(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def _stem(name, combo):
    def clean(v):
        return re.sub(r"[^A-Za-z0-9._-]+", "-", str(v)).strip("-")

    return name + "".join(f"__{k}-{clean(v)}" for k, v in combo.items())


def _one(name, params, out, stem):
    """Run one sweep point in isolation; never raises (the error is returned)."""
    done = Path(out) / f"{stem}.done"
    if done.exists():
        return {"stem": stem, "status": "skipped (already complete)"}
    try:
        r = run_report(name, params, out, stem=stem)
        done.write_text(json.dumps(r))
        return {"stem": stem, "status": "ok", **r}
    except Exception as e:  # isolated: report it, keep going
        return {"stem": stem, "status": "failed", "error": str(e).splitlines()[0]}


def sweep(name: str, grid: dict, out: str | Path = "reports/sweep", *, base: dict | None = None, workers: int = 2,
          scheduler: str | None = None, progress: bool = True) -> dict:
    """Run report ``name`` for every combination of ``grid`` (dict key -> list of values) on dask.distributed.

    A LocalCluster of ``workers`` single-threaded processes by default, or an existing cluster at
    ``scheduler``. Completed points are skipped on a re-run (resume). Returns
    {"results": [...], "dataset": path of the concatenated .nc or None, "summary": path of the HTML}.
    """
    from dask.distributed import Client, LocalCluster, as_completed

    for k in grid:
        _check_params(name, {k: grid[k][0]})
    if base:
        _check_params(name, base)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    combos = _grid(grid)
    jobs = [(dict(base or {}, **c), _stem(name, c), c) for c in combos]
    results = []
    env = {"TQDM_DISABLE": "1", "WORKBENCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if scheduler:
        client = Client(scheduler)
        cluster = None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               env=env)
        client = Client(cluster)
    try:
        futs = {client.submit(_one, name, p, str(out.resolve()), s, pure=False): c for p, s, c in jobs}
        for f in as_completed(futs):
            r = f.result()
            r["params"] = futs[f]
            results.append(r)
            if progress:
                print(f"[{len(results)}/{len(jobs)}] {r['stem']}: {r['status']}" + (f" - {r['error']}" if r.get("error") else ""),
                      flush=True)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    ds_path, summary = _concat(name, grid, jobs, out)
    return {"results": results, "dataset": ds_path, "summary": summary}


def _concat(name, grid, jobs, out):
    import xarray as xr

    from .results import load, save

    parts = []
    for _, stem, combo in jobs:
        p = out / f"{stem}.nc"
        if not (out / f"{stem}.done").exists() or not p.exists():
            continue
        ds = load(p)
        ds = ds.to_dataset(name=ds.name or "result") if isinstance(ds, xr.DataArray) else ds
        ds = ds.expand_dims({k: [v] for k, v in combo.items()})
        parts.append(ds)
    if not parts:
        return None, None
    merged = xr.combine_by_coords(parts, join="outer", combine_attrs="drop_conflicts", data_vars="all")
    merged.attrs = {k: v for k, v in merged.attrs.items() if isinstance(v, (str, int, float))}
    merged.attrs.update(report=name, swept=",".join(grid))
    path = save(merged, out / f"{name}__sweep.nc")
    return str(path), str(_summary_page(merged, list(grid), out / f"{name}__sweep.html"))


def _summary_page(ds, dims, path):
    """One figure per scalar quantity (a variable whose only dims are the swept ones), over the first swept dim."""
    import plotly.graph_objects as go

    figs = []
    x = dims[0]
    for v in ds.data_vars:
        da = ds[v]
        if set(da.dims) <= set(dims) and da.dtype.kind in "fiub":
            fig = go.Figure()
            other = [d for d in da.dims if d != x]
            if other:
                stacked = da.stack(_run=other)
                for i in range(stacked.sizes["_run"]):
                    s = stacked.isel(_run=i)
                    fig.add_scatter(x=[str(t) for t in s[x].values], y=s.values, mode="lines+markers",
                                    name=", ".join(f"{o}={s[o].item()}" for o in other))
            else:
                fig.add_scatter(x=[str(t) for t in da[x].values], y=da.values, mode="lines+markers", name=v)
            fig.update_layout(title=f"{v} over {x}", xaxis_title=x, template="plotly_white", height=320)
            figs.append(fig)
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    html = ("<html><head><meta charset='utf-8'><title>sweep summary</title></head><body style='font-family:sans-serif'>"
            f"<h1>Sweep summary: {ds.attrs.get('report', '')}</h1><p>swept: {', '.join(dims)}</p>"
            + ("".join(parts) or "<p>no scalar results to plot</p>") + "</body></html>")
    path = Path(path)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


# -- helpers used inside the report notebooks -------------------------------------------------------

def load_model(model: str = "mlp-sgd-small-s0", checkpoint: str = "", builder: str = "", checkpoint_index: int = -1):
    """A zoo model by name (``checkpoint_index`` picks one of its saved checkpoints; -1 the final model),
    "minilm", or ``checkpoint`` (a state_dict file, read with ``torch.load(weights_only=True)``) loaded
    into the module that ``builder`` ("package.module:function") returns."""
    import importlib

    import torch

    from . import zoo

    if checkpoint:
        if not builder:
            raise ReportError("builder: a checkpoint file needs builder='package.module:function' returning the model")
        mod, _, fn = builder.partition(":")
        m = getattr(importlib.import_module(mod), fn)()
        m.load_state_dict(torch.load(checkpoint, weights_only=True, map_location="cpu"))
        return m.eval()
    if model == "minilm":
        return zoo.minilm()[0]
    if checkpoint_index is None or checkpoint_index == -1:
        return zoo.load(model)
    return zoo.load(model, checkpoint=int(checkpoint_index))


def load_data(data: str = "digits-train", n_samples: int = 0, image: bool = False):
    """Named data: ``digits-train``, ``digits-test``, ``digits-all``, or a transfer target
    ``target:<name>:<split>``; the first ``n_samples`` (0 = all)."""
    from . import zoo
    from .zoo import transfer as zt

    if data.startswith("target:"):
        _, t, split = data.split(":")
        x, y = zt.target_data(t, split)
    else:
        split = data.removeprefix("digits-")
        if split not in ("train", "test", "all"):
            raise ReportError(f"data: expected digits-train, digits-test, digits-all or target:<name>:<split>, got {data!r}")
        x, y = zoo.data(split, image=image)
    if n_samples:
        x, y = x[:n_samples], y[:n_samples]
    return x, y
