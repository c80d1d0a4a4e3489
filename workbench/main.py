"""The main job (``make report``): build the demo zoo and write a landscape report on it.

Until the parameterised reports land this is a plain script: the zoo summary table, 1-D slices
(5 random directions each) of the MLPs trained with small-batch SGD, large-batch SGD and SAM,
and the linear path between two of them; results as netCDF and a self-contained HTML page
(plotly.js embedded) under ``reports/``.
"""
from __future__ import annotations

import argparse
import html
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from . import landscape, plots, save, zoo


def run(out: str | Path = "reports", progress: bool = True) -> Path:
    out = Path(out)
    t0 = time.perf_counter()
    zoo.build(progress=progress)
    table = zoo.summary()
    x, y = zoo.data("train")
    lf = torch.nn.CrossEntropyLoss()
    runs = ["mlp-sgd-small-s0", "mlp-sgd-large-s0", "mlp-sam-s0"]
    coords = np.linspace(-1, 1, 21)
    slices = [landscape.slice_1d(zoo.load(n), lf, (x, y), seeds=range(5), coords=coords, progress=progress)
              for n in runs]
    slices = xr.concat(slices, dim="model", combine_attrs="drop_conflicts").assign_coords(model=runs)
    pair = ("mlp-sgd-small-s0", "mlp-sgd-small-s1")  # two seeds: different basins, a real barrier
    path = landscape.interpolate(zoo.load(pair[0]), zoo.load(pair[1]), lf, (x, y), steps=21, progress=progress)
    save(slices, out / "landscape_slices.nc")
    save(path, out / "interpolation.nc")
    figs = []
    for n in runs:
        figs.append(plots.slice_1d(slices.sel(model=n), title=f"{n}: loss along 5 filter-normalised directions"))
    figs.append(plots.interpolation(path, title=f"{pair[0]} -> {pair[1]}"))
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    rise = slices.sel(alpha=1.0).mean("seed") - slices.sel(alpha=0.0).mean("seed")
    page = "\n".join([
        "<html><head><meta charset='utf-8'><title>workbench: demo zoo</title></head><body style='font-family:sans-serif'>",
        "<h1>workbench: demo zoo</h1>",
        "<h2>Zoo</h2>", table.to_html(float_format=lambda v: f"{v:.4g}"),
        "<h2>Loss landscape</h2>",
        "<p>Mean loss rise at alpha = 1 along filter-normalised directions: "
        + ", ".join(f"{html.escape(n)}: {float(rise.sel(model=n)):.3g}" for n in runs) + "</p>",
        *parts, "</body></html>",
    ])
    out.mkdir(parents=True, exist_ok=True)
    page_path = out / "zoo_report.html"
    tmp = page_path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(page_path)
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    print("\nmean loss rise at alpha=1 (5 random filter-normalised directions):")
    for n in runs:
        print(f"  {n:20s} {float(rise.sel(model=n)):.4g}")
    print(f"loss barrier {pair[0]} -> {pair[1]}: {path.attrs['barrier']:.4g}")
    print(f"\nwrote {page_path.resolve()}  ({time.perf_counter() - t0:.1f} s)")
    return page_path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="reports")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    run(a.out, progress=not a.no_progress)


if __name__ == "__main__":
    main()
