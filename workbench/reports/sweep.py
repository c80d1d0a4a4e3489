"""Sweeps: one report over every combination of a parameter grid, on dask.distributed.

Each point is an isolated papermill run (one failure does not stop the others). A re-run resumes:
a completed point is skipped when its results record the same parameters, all of them and not only
the swept ones (``report_params``, written by :func:`~workbench.reports.runner.run_report`), and is
recomputed otherwise. The current points' results are concatenated along the swept dimensions into
one netCDF Dataset with an HTML summary page. Points can ask for worker resources (``resources={"GPU": 1}``)
through dask.distributed's own resource mechanism; CPU is the default.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import re
import warnings
from pathlib import Path

from ..results import DamagedFileError, atomic_write, load, save
from ..validate import interrupt_in
from .runner import (
    PARAMS_ATTR,
    REPORT_ENV,
    ReportError,
    check_params,
    effective_params,
    parameters,
    params_json,
    recorded_params,
    run_report,
)


def grid_points(grid: dict) -> list[dict]:
    """Every combination of ``grid`` (key -> list of values), in order.

    >>> grid_points({"a": [1, 2], "b": ["x"]})
    [{'a': 1, 'b': 'x'}, {'a': 2, 'b': 'x'}]
    """
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def point_stem(name: str, combo: dict) -> str:
    """The file stem of one sweep point.

    >>> point_stem("landscape", {"model": "mlp-sam-s0", "span": 0.5})
    'landscape__model-mlp-sam-s0__span-0.5'
    """

    def clean(v):
        return re.sub(r"[^A-Za-z0-9._-]+", "-", str(v)).strip("-")

    return name + "".join(f"__{k}-{clean(v)}" for k, v in combo.items())


def _changed(before: str | None, now: str) -> str:
    if before is None:
        return "recomputed: its results record no parameters (or are missing or damaged)"
    a, b = json.loads(before), json.loads(now)
    diff = [f"{k} {a.get(k, '-')!r} -> {b.get(k, '-')!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "recomputed: parameters changed (" + ", ".join(diff) + ")"


def run_point(name: str, params: dict, out: str, stem: str) -> dict:
    """Run one sweep point in isolation; never raises (the error is returned). A point completed with the
    same parameters (all of them, as recorded in its results) is skipped; one completed with others is
    recomputed (``note`` says which changed)."""
    done, nc = Path(out) / f"{stem}.done", Path(out) / f"{stem}.nc"
    note = None
    try:
        want = params_json(effective_params(name, params))
        if done.exists():
            have = recorded_params(nc)
            if have == want:
                return {"stem": stem, "status": "skipped (already complete)"}
            note = _changed(have, want)
            done.unlink()  # no longer complete: a failed recomputation must not leave it marked done
        r = run_report(name, params, out, stem=stem)
        atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(r)))
        return {"stem": stem, "status": "ok", **r, **({"note": note} if note else {})}
    except Exception as e:  # isolated: report it, keep going (an interrupt that torch wrapped goes on up)
        if interrupt_in(e) is not None:
            raise
        return {"stem": stem, "status": "failed", "error": str(e).splitlines()[0]}


def check_workers(workers) -> int:
    """``workers`` as a whole number of worker processes >= 1 (a clear error otherwise: 0 or less would hang).

    >>> check_workers(2)
    2
    >>> check_workers(0)
    Traceback (most recent call last):
    ...
    ValueError: workers: need at least 1 worker process, got 0; pass workers=1 or more (or scheduler=...)
    """
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral):
        raise TypeError(f"workers: expected a whole number of worker processes >= 1, got {workers!r}")
    if workers < 1:
        raise ValueError(
            f"workers: need at least 1 worker process, got {workers}; pass workers=1 or more (or scheduler=...)"
        )
    return int(workers)


def parse_resources(text: str) -> dict:
    """Worker resources per task from ``NAME=NUMBER[,NAME=NUMBER]`` (the CLI's ``--resources``), checked by
    :func:`check_resources`.

    >>> parse_resources("GPU=1"), parse_resources("GPU=0.5, SLOT=2")
    ({'GPU': 1}, {'GPU': 0.5, 'SLOT': 2})
    >>> parse_resources("GPU")
    Traceback (most recent call last):
    ...
    ValueError: resources: expected NAME=NUMBER[,NAME=NUMBER] (e.g. GPU=1), got 'GPU'
    """
    out = {}
    for part in text.split(","):
        name, eq, amount = (x.strip() for x in part.partition("="))
        if not (name and eq and amount) or name in out:
            raise ValueError(f"resources: expected NAME=NUMBER[,NAME=NUMBER] (e.g. GPU=1), got {text!r}")
        try:
            out[name] = int(amount) if re.fullmatch(r"[0-9]+", amount) else float(amount)
        except ValueError:
            raise ValueError(f"resources: {name}: expected a number, got {amount!r} in {text!r}") from None
    return check_resources(out)


def check_resources(resources) -> dict:
    """``resources`` (name -> amount each task holds while it runs, as in ``Client.submit(resources=...)``)
    checked: names non-empty strings, amounts finite numbers > 0. None -> {} (no request: the default).

    >>> check_resources({"GPU": 1}), check_resources(None)
    ({'GPU': 1}, {})
    """
    if resources is None:
        return {}
    if not isinstance(resources, dict):
        raise TypeError(f"resources: expected a dict name -> amount such as {{'GPU': 1}}, got {resources!r}")
    for k, v in resources.items():
        if not isinstance(k, str) or not k.strip() or any(c in k for c in "=, "):
            raise ValueError(f"resources: expected resource names like 'GPU', got {k!r}")
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"resources: {k}: expected an amount > 0 such as 1 or 0.5, got {v!r}")
    return dict(resources)


def cuda_devices() -> list[str]:
    """This machine's CUDA devices as ``CUDA_VISIBLE_DEVICES`` entries (the visible subset if that is set)."""
    import torch

    n = torch.cuda.device_count()
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (visible if len(visible) >= n else [str(i) for i in range(n)])[:n]


def start_cluster(workers: int, resources: dict | None = None):
    """A local dask cluster of ``workers`` single-threaded processes, each declaring the ``resources`` a task
    asks for. With ``"GPU"`` in ``resources``: one worker per CUDA device (at most ``workers``), each seeing
    only its own device (``CUDA_VISIBLE_DEVICES``) and declaring ``GPU=1``; a clear error if there is none."""
    from dask.distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    workers, resources = check_workers(workers), check_resources(resources)
    if "GPU" not in resources:
        opts = {"resources": resources} if resources else {}
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            env=dict(REPORT_ENV),
            **opts,
        )
    if resources["GPU"] > 1:
        raise ValueError(
            f"resources: GPU={resources['GPU']}: a local worker holds one GPU; ask for GPU=1 (or a fraction), "
            "or pass scheduler=... of a cluster whose workers declare more"
        )
    gpus = cuda_devices()
    if not gpus:
        raise ValueError(
            "resources: GPU requested but this machine has no CUDA device (torch.cuda.device_count() == 0); "
            "drop GPU (CPU is the default) or pass scheduler=... of a cluster whose workers declare GPU"
        )
    spec = {
        i: {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "host": "127.0.0.1",
                "env": dict(REPORT_ENV, CUDA_VISIBLE_DEVICES=g),
                "resources": dict(resources, GPU=1),
            },
        }
        for i, g in enumerate(gpus[:workers])
    }
    sched = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False, "dashboard_address": None}}
    return SpecCluster(workers=spec, scheduler=sched)


def gpu_params(name: str, base: dict, grid: dict, resources: dict) -> dict:
    """``base`` with ``device="cuda"`` when the tasks ask for a GPU and report ``name`` has a ``device``
    parameter that neither ``base`` nor ``grid`` sets (otherwise ``base`` unchanged).

    >>> gpu_params("landscape", {"steps": 3}, {}, {"GPU": 1})  # landscape has no device parameter
    {'steps': 3}
    """
    if "GPU" in resources and "device" in parameters(name) and "device" not in base and "device" not in grid:
        return dict(base, device="cuda")
    return base


def warn_if_undeclared(client, scheduler: str, resources: dict) -> None:
    """A warning when the cluster has workers and none declares ``resources``: the points would wait for one
    forever (no error: a worker may still join)."""
    declared = [w.get("resources", {}) for w in client.scheduler_info(n_workers=-1)["workers"].values()]
    if declared and not any(all(d.get(k, 0) >= v for k, v in resources.items()) for d in declared):
        spec = ",".join(f"{k}={v}" for k, v in resources.items())
        warnings.warn(
            f"resources: no worker of the scheduler at {scheduler} declares {spec} (they declare {declared}); "
            f"the points wait until one joins (e.g. `dask worker {scheduler} --resources {spec}`)",
            stacklevel=3,
        )


def sweep(
    name: str,
    grid: dict,
    out: str | Path = "reports/sweep",
    *,
    base: dict | None = None,
    workers: int = 2,
    scheduler: str | None = None,
    resources: dict | None = None,
    progress: bool = True,
) -> dict:
    """Run report ``name`` for every combination of ``grid`` (dict key -> list of values) on dask.distributed.

    A LocalCluster of ``workers`` single-threaded processes by default, or an existing cluster at
    ``scheduler``. A re-run resumes: points completed with the same parameters (grid and ``base``
    values and the report's defaults) are skipped, the others recomputed. ``progress``: a line per
    finished point. ``resources``: what each point holds on its worker, e.g. ``{"GPU": 1}``, through dask's
    worker resources (see :func:`start_cluster` for the local cluster; the workers of a ``scheduler``
    declare theirs, e.g. ``dask worker ADDRESS --resources GPU=1``); a GPU point runs its report with
    ``device="cuda"`` if the report has a ``device`` parameter. None: CPU, as before. Returns
    {"results": [...], "dataset": path of the concatenated .nc or None, "summary": path of the HTML page or None}.
    """
    from dask.distributed import Client, as_completed

    workers, resources = check_workers(workers), check_resources(resources)
    if not grid or any(not isinstance(v, (list, tuple)) or not v for v in grid.values()):
        raise ReportError("grid: expected a dict parameter -> non-empty list of values")
    for k in grid:
        check_params(name, {k: grid[k][0]})
    base = gpu_params(name, check_params(name, dict(base or {})), grid, resources)
    out = Path(out)
    jobs = [(dict(base, **c), point_stem(name, c), c) for c in grid_points(grid)]
    results = []
    cluster = None if scheduler else start_cluster(workers, resources)  # no GPU: stops here, nothing written
    client = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        client = Client(scheduler or cluster)
        if scheduler and resources:
            warn_if_undeclared(client, scheduler, resources)
        opts = {"resources": resources} if resources else {}
        futs = {client.submit(run_point, name, p, str(out.resolve()), s, pure=False, **opts): c for p, s, c in jobs}
        for f in as_completed(futs):
            r = f.result()
            r["params"] = futs[f]
            results.append(r)
            if progress:
                err = f" - {r['error']}" if r.get("error") else f" - {r['note']}" if r.get("note") else ""
                print(f"[{len(results)}/{len(jobs)}] {r['stem']}: {r['status']}{err}", flush=True)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    ds_path, summary = concatenate(name, grid, jobs, out)
    return {"results": results, "dataset": ds_path, "summary": summary}


def concatenate(name: str, grid: dict, jobs: list, out: Path) -> tuple[str | None, str | None]:
    """The current points' results (complete, readable, and recording the parameters of their job) along the
    swept dimensions: (path of the .nc, path of the summary page). The dataset's ``sweep_params`` records
    the parameters common to every point (JSON)."""
    import xarray as xr

    parts = []
    for params, stem, combo in jobs:
        p = out / f"{stem}.nc"
        if not (out / f"{stem}.done").exists() or not p.exists():
            continue
        try:
            ds = load(p)
        except DamagedFileError:
            continue
        if ds.attrs.get(PARAMS_ATTR) != params_json(effective_params(name, params)):
            continue  # stale: computed with other parameters
        ds = ds.to_dataset(name=ds.name or "result") if isinstance(ds, xr.DataArray) else ds
        parts.append(ds.expand_dims({k: [v] for k, v in combo.items()}))
    if not parts:
        return None, None
    # the other dims (e.g. a model's zoo family) aligned first: only the swept dims are concatenated
    parts = xr.align(*parts, join="outer", exclude=list(grid))
    merged = xr.combine_by_coords(parts, join="outer", combine_attrs="drop_conflicts", data_vars="all")
    merged.attrs = {k: v for k, v in merged.attrs.items() if isinstance(v, (str, int, float)) and k != PARAMS_ATTR}
    common = {k: v for k, v in effective_params(name, jobs[0][0]).items() if k not in grid}
    merged.attrs.update(report=name, swept=",".join(grid), sweep_params=params_json(common))
    path = save(merged, out / f"{name}__sweep.nc")
    return str(path), str(summary_page(merged, list(grid), out / f"{name}__sweep.html"))


def summary_page(ds, dims: list[str], path: str | Path) -> Path:
    """One figure per scalar quantity (a variable whose only dims are the swept ones) over the first
    swept dim: a line over a numeric dim, markers over a categorical one (model names)."""
    import plotly.graph_objects as go

    from ..plots.common import categorical

    figs = []
    x = dims[0]
    xs, cat = categorical(ds[x].values)
    for v in ds.data_vars:
        da = ds[v]
        if not (set(da.dims) <= set(dims) and da.dtype.kind in "fiub" and x in da.dims):
            continue
        fig = go.Figure()
        other = [d for d in da.dims if d != x]
        series = (
            [
                (", ".join(f"{o}={s[o].item()}" for o in other), s)
                for s in (da.stack(_run=other).isel(_run=i) for i in range(da.stack(_run=other).sizes["_run"]))
            ]
            if other
            else [(v, da)]
        )
        for label, s in series:
            fig.add_scatter(x=xs, y=s.transpose(x).values, mode="markers" if cat else "lines+markers", name=label)
        units = da.attrs.get("units", "")
        fig.update_layout(
            title=f"{da.attrs.get('long_name', v)} over {x}",
            xaxis_title=x,
            yaxis_title=f"{v} ({units})" if units else v,
            template="plotly_white",
            height=320,
            xaxis_type="category" if cat else None,
        )
        figs.append(fig)
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    html = (
        "<html><head><meta charset='utf-8'><title>sweep summary</title></head><body style='font-family:sans-serif'>"
        f"<h1>Sweep summary: {ds.attrs.get('report', '')}</h1><p>swept: {', '.join(dims)}</p>"
        + ("".join(parts) or "<p>no scalar results to plot</p>")
        + "</body></html>"
    )
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
