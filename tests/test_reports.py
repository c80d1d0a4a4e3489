import re
import subprocess
import sys

import pytest
import torch

import workbench as wb
from workbench import reports

SMALL = {
    "landscape": dict(steps=5, seeds=2, n_samples=300),
    "sharpness": dict(k=2, n_hvp=12, n_samples=300),
    "attention": dict(n_examples=16),
    "transferability": dict(metrics=["logme", "leep", "hscore"], n_boot=20),
    "model_report": dict(steps=5, seeds=2, n_hvp=12, n_samples=300),
}


def test_every_report_has_a_small_case():
    assert set(reports.available()) == set(SMALL)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_report_executes_and_writes_offline_html_and_netcdf(name, tmp_path, zoo_built):
    r = reports.run_report(name, SMALL[name], tmp_path)
    html = open(r["html"], encoding="utf-8").read()
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)=["']https?://""", html), "external resource"
    assert html.count('class="plotly-graph-div"') >= 1 and "Plotly.newPlot" in html
    assert "Traceback" not in html and "results: " in html  # ran to the end: the last cell printed the .nc path
    ds = wb.load(r["nc"])
    assert ds.attrs["report"] == name and len(ds.data_vars) >= 3
    import numpy as np

    for v in ds.data_vars:  # every stored result holds numbers, not an empty or all-NaN placeholder
        assert ds[v].size and np.isfinite(ds[v].values.astype(float)).any(), v
    if name == "model_report":  # the stored numbers are the probes' numbers
        x, y = zoo_built.data("train")
        ev = wb.evaluate(zoo_built.load("mlp-sgd-large-s0"), torch.nn.CrossEntropyLoss(), (x[:300], y[:300]))
        assert float(ds.loss) == float(ev.loss)


def test_failing_report_names_the_cell_and_keeps_the_partial_notebook(tmp_path):
    with pytest.raises(reports.ReportError) as ei:
        reports.run_report("landscape", dict(model="resnet-9000", steps=3, seeds=1), tmp_path)
    msg = str(ei.value)
    assert "failed in cell" in msg and "no zoo model 'resnet-9000'" in msg
    import nbformat

    nb = nbformat.read(str(tmp_path / "landscape.ipynb"), as_version=4)
    assert nb.metadata.papermill.exception
    assert any(c.metadata.get("papermill", {}).get("status") == "failed" for c in nb.cells)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True)


def test_cli_errors_are_clear():
    r = _cli("report", "nope")
    assert r.returncode == 2 and "no report named 'nope'" in r.stderr and "model_report" in r.stderr
    r = _cli("report", "landscape", "-p", "stepz", "3")
    assert r.returncode == 2 and "no parameter ['stepz']" in r.stderr and "steps (default 21)" in r.stderr
    r = _cli("list")
    assert r.returncode == 0 and "model_report" in r.stdout and "steps = 21" in r.stdout


def test_sweep_isolates_failures_resumes_and_concatenates(tmp_path, zoo_built):
    grid = {"model": ["mlp-sam-s0", "no-such-model", "mlp-sgd-large-s0"]}
    base = dict(steps=3, seeds=2, n_samples=200)
    res = reports.sweep("landscape", grid, tmp_path, base=base, workers=2, progress=False)
    status = {r["params"]["model"]: r["status"] for r in res["results"]}
    assert status == {"mlp-sam-s0": "ok", "no-such-model": "failed", "mlp-sgd-large-s0": "ok"}
    err = [r for r in res["results"] if r["status"] == "failed"][0]["error"]
    assert "no zoo model" in err
    assert (tmp_path / "landscape__model-no-such-model.ipynb").exists()  # the partial notebook is kept
    ds = wb.load(res["dataset"])
    assert list(ds.model.values) == ["mlp-sam-s0", "mlp-sgd-large-s0"]
    assert ds.loss_rise.dims == ("model",) and float(ds.loss_rise.sel(model="mlp-sgd-large-s0")) > float(
        ds.loss_rise.sel(model="mlp-sam-s0"))
    assert open(res["summary"]).read().count("plotly-graph-div") >= 1
    again = reports.sweep("landscape", grid, tmp_path, base=base, workers=1, progress=False)
    status = {r["params"]["model"]: r["status"] for r in again["results"]}
    assert status["mlp-sam-s0"].startswith("skipped") and status["no-such-model"] == "failed"
