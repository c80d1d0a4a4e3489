"""Benchmark: 8 small reports (the landscape report over 8 zoo models) run serially with papermill,
then as a sweep on a 2-worker dask LocalCluster (cluster start included), side by side in one run.
Prints both wall times and the speed-up.
Run: .venv/bin/python benchmarks/sweep.py
"""

import shutil
import tempfile
import time
from pathlib import Path

from workbench import reports, zoo

MODELS = [f"mlp-{r}-s{s}" for r in ("sgd-small", "sgd-large", "sam") for s in (0, 1, 2)][:8]
BASE = dict(steps=9, seeds=2, reference=False)  # the sweep itself, without the zoo-family reference


def main():
    zoo.build(progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="wb-sweep-"))
    try:
        t0 = time.perf_counter()
        for m in MODELS:
            reports.run_report("landscape", dict(BASE, model=m), tmp / "serial", stem=m)
        serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = reports.sweep("landscape", {"model": MODELS}, tmp / "dask", base=BASE, workers=2, progress=False)
        parallel = time.perf_counter() - t0
        ok = sum(r["status"] == "ok" for r in res["results"])
        print(f"8 landscape reports (steps={BASE['steps']}, seeds={BASE['seeds']}):")
        print(f"  serial (one process, papermill)         {serial:7.1f} s")
        print(
            f"  dask LocalCluster, 2 workers ({ok}/8 ok)  {parallel:7.1f} s (cluster start and concatenation included)"
        )
        print(f"  speed-up {serial / parallel:.2f}x on {__import__('os').cpu_count()} cores")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # dask spawns workers that re-import this file
    main()
