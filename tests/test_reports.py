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


@pytest.fixture(scope="module")
def executed(tmp_path_factory, zoo_built):
    """Each report run once with its small parameters (several tests read the same run)."""
    done = {}

    def run(name):
        if name not in done:
            done[name] = reports.run_report(name, SMALL[name], tmp_path_factory.mktemp(name))
        return done[name]

    return run


@pytest.mark.parametrize("name", sorted(SMALL))
def test_report_executes_and_writes_offline_html_and_netcdf(name, executed, zoo_built):
    r = executed(name)
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
    if name != "transferability":  # every headline number beside its range over the model's zoo family
        family = reports.family(reports.parameters(name)["model"].strip("\"'"))
        assert "range over the " + f"{len(family)} " in html and "rank among them" in html
        refs = [v for v in ds.data_vars if v.startswith("zoo_")]
        assert refs and all(ds[v].sizes["zoo_model"] == len(family) for v in refs)
        own = refs[0].removeprefix("zoo_")
        if own in ds:
            assert float(ds[refs[0]].sel(zoo_model=reports.parameters(name)["model"].strip("\"'"))) == float(ds[own])
    else:
        assert "chance: 95% range" in html and "chance_tau_high" in ds


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
        ds.loss_rise.sel(model="mlp-sam-s0")
    )
    assert open(res["summary"]).read().count("plotly-graph-div") >= 1
    again = reports.sweep("landscape", grid, tmp_path, base=base, workers=1, progress=False)
    status = {r["params"]["model"]: r["status"] for r in again["results"]}
    assert status["mlp-sam-s0"].startswith("skipped") and status["no-such-model"] == "failed"


def _plotly_figures(ipynb):
    import nbformat

    nb = nbformat.read(ipynb, as_version=4)
    return [
        o["data"]["application/vnd.plotly.v1+json"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "application/vnd.plotly.v1+json" in o.get("data", {})
    ]


def _array(v):
    """A plotly JSON array: a list or a base64 typed array {"dtype", "bdata"}."""
    import base64

    import numpy as np

    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v)


def test_overview_report_draws_eigenvalues_on_integer_ranks(executed):
    r = executed("model_report")
    eig = [f for f in _plotly_figures(r["ipynb"]) if "eigenvalue" in f["layout"]["title"]["text"].lower()]
    assert len(eig) == 1
    f = eig[0]
    ax = f["layout"]["xaxis"]
    assert ax["dtick"] == 1 and ax["tickmode"] == "linear" and ax.get("tickformat") == "d"  # no tick at 0.5
    for t in f["data"]:
        x = _array(t["x"])
        assert x.dtype.kind in "iu" and t["mode"] == "markers", t  # ranks are integers, not a line over them
    mine = f["data"][-1]
    assert mine["error_y"]["visible"] and "Ritz" in f["layout"]["title"]["text"]
    assert len(f["data"]) == 1 + len(reports.family("mlp-sgd-large-s0")) - 1  # the model and its zoo family
