"""``python -m workbench.study --preset default --out DIR``: build the study zoo (a dask sweep, cached and
resumable), measure every run, correlate the measures with the generalization gap, write
``DIR/study_table.nc`` (runs x measures), ``DIR/study_correlations.nc`` and ``DIR/study_table.txt``, print the
table, then run the ``study`` report on the saved table (``DIR/study.html``; ``--no-report`` skips it; the
report runs through ``python -m workbench.cli`` in a child process).
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import time
from pathlib import Path

from ..results import save
from .analysis import correlate, table
from .measures import measure_run, measure_zoo
from .zoo import PRESETS, build_zoo


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m workbench.study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--out", default="study")
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes (1: in this process)")
    ap.add_argument("--n-resamples", type=int, default=200, help="subsamples per interval")
    ap.add_argument("--target", default="gap", choices=["gap", "loss_gap"])
    ap.add_argument("--device", default="cpu", help="where runs train and are measured: cpu or cuda")
    ap.add_argument("--no-report", action="store_true")
    a = ap.parse_args(argv)
    if a.workers < 1:
        ap.error(f"--workers: need at least 1 worker process, got {a.workers}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    measure = measure_run if a.device == "cpu" else functools.partial(measure_run, device=a.device)
    runs = build_zoo(a.preset, workers=a.workers, measure=measure, device=a.device)
    t1 = time.perf_counter()
    tab = measure_zoo(runs)
    print(f"{runs.sizes['run']} runs ({int(runs.converged.sum())} converged) trained and measured in {t1 - t0:.0f} s")
    for n in json.loads(tab.attrs["notes"]):
        print("note:", n)
    res = correlate(tab, target=a.target, n_resamples=a.n_resamples)
    save(tab, out / "study_table.nc")
    save(res, out / "study_correlations.nc")
    text = table(res).to_string()
    (out / "study_table.txt").write_text(text + "\n")
    print(text)
    print(f"correlated in {time.perf_counter() - t1:.0f} s; results in {out}")
    if a.no_report:
        return 0
    cmd = [sys.executable, "-m", "workbench.cli", "report", "study", "--out", str(out)]
    cmd += ["-p", "table", str((out / "study_table.nc").resolve()), "-p", "n_resamples", str(a.n_resamples)]
    cmd += ["-p", "target", a.target]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
