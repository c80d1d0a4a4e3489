"""The main job (``make report``): build the demo zoo, print its summary, and run the overview report
(``workbench/reports/notebooks/model_report.ipynb``) on the demo zoo's large-batch MLP and its SAM counterpart,
writing executed notebooks, self-contained HTML and netCDF results under ``reports/``. Each headline
number is printed beside its range over the model's family in the zoo."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import reports, zoo
from .results import load

HEADLINE = {
    "loss": "loss",
    "lambda_max": "lambda_max",
    "trace": "trace",
    "loss_rise": "loss rise along random directions",
}


def headline(ds) -> str:
    """One line per headline number of a model report's results, with its zoo range when stored."""
    lines = []
    for v, label in HEADLINE.items():
        if v not in ds:
            continue
        ref = ds.get(f"zoo_{v}")
        rng = (
            f"  (zoo family: {float(ref.min()):.4g} - {float(ref.max()):.4g} over {ref.sizes['zoo_model']} models)"
            if ref is not None
            else ""
        )
        lines.append(f"  {label:<34} {float(ds[v]):>10.4g}{rng}")
    return "\n".join(lines)


def run(out: str | Path = "reports", models=("mlp-sgd-large-s0", "mlp-sam-s0"), progress: bool = True) -> list[Path]:
    """Build the zoo and run the overview report on ``models``; returns the HTML pages."""
    t0 = time.perf_counter()
    zoo.build(progress=progress)
    print(zoo.summary().to_string(float_format=lambda v: f"{v:.4g}"), flush=True)
    pages = []
    for m in models:
        r = reports.run_report("model_report", {"model": m}, out, stem=f"model_report__{m}")
        pages.append(Path(r["html"]).resolve())
        print(f"\n{m}:\n{headline(load(r['nc']))}", flush=True)
    print(f"\nwrote {len(pages)} reports in {time.perf_counter() - t0:.1f} s:")
    for p in pages:
        print(f"  {p}")
    return pages


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="reports")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    run(a.out, progress=not a.no_progress)


if __name__ == "__main__":
    main()
