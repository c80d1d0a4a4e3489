"""The main job (``make report``): build the demo zoo, print its summary, and run the overview report
(``notebooks/reports/model_report.ipynb``) on the demo zoo's large-batch MLP and its SAM counterpart,
writing executed notebooks, self-contained HTML and netCDF results under ``reports/``."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import reports, zoo
from .results import load


def run(out: str | Path = "reports", models=("mlp-sgd-large-s0", "mlp-sam-s0"), progress: bool = True) -> list[Path]:
    t0 = time.perf_counter()
    zoo.build(progress=progress)
    print(zoo.summary().to_string(float_format=lambda v: f"{v:.4g}"), flush=True)
    pages = []
    for m in models:
        r = reports.run_report("model_report", {"model": m}, out, stem=f"model_report__{m}")
        pages.append(Path(r["html"]).resolve())
        ds = load(r["nc"])
        print(f"\n{m}: loss {float(ds.loss):.4g}, lambda_max {float(ds.lambda_max):.4g}, trace {float(ds.trace):.4g}, "
              f"loss rise along random directions {float(ds.loss_rise):.4g}", flush=True)
    print(f"\nwrote {len(pages)} reports in {time.perf_counter() - t0:.1f} s:")
    for p in pages:
        print(f"  {p}")
    return pages


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="reports")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    run(a.out, progress=not a.no_progress)


if __name__ == "__main__":
    main()
