"""Command line: ``workbench list | report | sweep | zoo``."""

from __future__ import annotations

import argparse
import sys


def _kv(pairs):
    return {k: v for k, v in pairs or []}


def _workers(text: str) -> int:
    """``--workers``: a whole number >= 1 (0 or less would leave the sweep waiting for workers forever)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of worker processes >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 worker process, got {n}; pass --workers 1 or more")
    return n


def _resources(text: str) -> dict:
    """``--resources``: ``NAME=NUMBER[,NAME=NUMBER]``, e.g. ``GPU=1`` (each point holds that much of a worker)."""
    from .reports.sweep import parse_resources

    try:
        return parse_resources(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("resources: ")) from None


def _device(text: str) -> str:
    """``--device``: ``cpu``, ``cuda`` or ``auto`` (CUDA when torch sees one, else the CPU)."""
    if text not in ("cpu", "cuda", "auto"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or auto, got {text!r}")
    return text


def _with_device(reports, name: str, params: dict, device: str | None, resolve: bool = True) -> dict:
    """``params`` with ``device`` set (``auto`` resolved here when ``resolve``); a report without a ``device``
    parameter is refused by name rather than silently run on the CPU."""
    if device is None:
        return params
    if "device" not in reports.parameters(name):
        having = [n for n in reports.available() if "device" in reports.parameters(n)]
        raise reports.ReportError(
            f"--device: report {name!r} has no device parameter (it runs on the CPU); "
            f"reports with one: {', '.join(having) or 'none'}"
        )
    if resolve:
        from .loading import resolve_device

        try:
            device = str(resolve_device(device))
        except ValueError as e:
            raise reports.ReportError(f"--{e}") from None
    return {**params, "device": device}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="workbench", description="workbench reports and sweeps")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the reports and their parameters with defaults")
    r = sub.add_parser("report", help="run one report: executed .ipynb, self-contained .html, results .nc")
    r.add_argument("name")
    r.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"))
    r.add_argument("-y", "--yaml", help="parameters as a YAML mapping (a string or a file path)")
    r.add_argument("--out", default="reports")
    dev_help = "where the model runs: cpu, cuda or auto (CUDA when available); for reports with a device parameter"
    r.add_argument("--device", type=_device, default=None, help=dev_help)
    s = sub.add_parser("sweep", help="run a report over a parameter grid on dask.distributed")
    s.add_argument("name")
    s.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2,...")
    s.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"))
    s.add_argument("--workers", type=_workers, default=2, help="local worker processes (>= 1)")
    s.add_argument("--scheduler", default=None, help="address of an existing dask scheduler")
    s.add_argument(
        "--resources",
        type=_resources,
        default=None,
        metavar="NAME=N[,NAME=N]",
        help="dask worker resources each point holds, e.g. GPU=1 (default: none, CPU)",
    )
    s.add_argument("--out", default="reports/sweep")
    s.add_argument("--device", type=_device, default=None, help=dev_help)
    sub.add_parser("zoo", help="build the demo zoo and print its summary")
    a = ap.parse_args(argv)

    from . import reports

    try:
        if a.cmd == "list":
            for name in reports.available():
                print(name)
                for k, v in reports.parameters(name).items():
                    if k != "results_path":
                        print(f"    {k} = {v}")
            return 0
        if a.cmd == "report":
            params = _kv(a.parameter)
            if a.yaml:
                import os

                import yaml

                text = open(a.yaml).read() if os.path.exists(a.yaml) else a.yaml
                loaded = yaml.safe_load(text) or {}
                if not isinstance(loaded, dict):
                    raise reports.ReportError("-y: expected a YAML mapping of parameter: value")
                params.update(loaded)
            params = _with_device(reports, a.name, params, a.device)
            res = reports.run_report(a.name, params, a.out)
            print(f"report {a.name}: {res['html']} ({res['seconds']:.1f} s)")
            print(f"  notebook {res['ipynb']}\n  results  {res['nc']}")
            return 0
        if a.cmd == "sweep":
            grid = {}
            for g in a.grid:
                if "=" not in g:
                    raise reports.ReportError(f"--grid: expected KEY=V1,V2,..., got {g!r}")
                k, vals = g.split("=", 1)
                grid[k] = [reports.literal(v) for v in vals.split(",")]
            try:
                res = reports.sweep(
                    a.name,
                    grid,
                    a.out,
                    base=_with_device(reports, a.name, _kv(a.parameter), a.device, resolve=a.scheduler is None),
                    workers=a.workers,
                    scheduler=a.scheduler,
                    resources=a.resources,
                )
            except ValueError as e:  # GPU requested on a machine without one: a message, not a traceback
                if not str(e).startswith("resources: "):
                    raise
                print(f"workbench: --{e}", file=sys.stderr)
                return 2
            failed = [r for r in res["results"] if r["status"] == "failed"]
            print(
                f"sweep: {len(res['results']) - len(failed)} of {len(res['results'])} points complete; "
                f"results {res['dataset']}; summary {res['summary']}"
            )
            return 1 if failed else 0
        if a.cmd == "zoo":
            from .zoo import build, summary

            build()
            print(summary().to_string())
            return 0
    except reports.ReportError as e:
        print(f"workbench: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
