import json
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
    "model_report": dict(steps=4, seeds=2, n_hvp=12, n_samples=300),  # even: no grid point at alpha = 0
    "study": dict(preset="tiny", n_resamples=30),
    "compare": dict(runs=["sgd-small", "sam"], seeds=[0, 1], n_resamples=20),
    "weightspace": dict(steps=3, n_samples=150, n_repair=200, methods=["none", "weight"]),
    "monitor": dict(steps=40),
    "instability": dict(preset="tiny"),
}


#: the reports about one zoo model, which put each headline number beside its range over the model's zoo family
FAMILY_REPORTS = ("landscape", "sharpness", "attention", "model_report")


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
    assert json.loads(ds.attrs["report_params"]) == reports.effective_params(name, SMALL[name])  # all of them
    if name == "model_report":  # the stored numbers are the probes' numbers
        x, y = zoo_built.data("train")
        ev = wb.evaluate(zoo_built.load("mlp-sgd-large-s0"), torch.nn.CrossEntropyLoss(), (x[:300], y[:300]))
        assert float(ds.loss) == float(ev.loss)
        # the loss rise at alpha = 1 over L(theta) itself, also for an even number of steps
        assert float(ds.loss_rise) == pytest.approx(float(ds.slice_1d.sel(alpha=1.0).mean("seed")) - float(ev.loss))
    if name == "sharpness":  # blockwise spectra (blocks="layer" by default): the whole model first, then layers
        blocks = [str(b) for b in ds.eigenvalues["block"].values]
        assert blocks[0] == "(all)" and len(blocks) >= 3 and "by block" not in html
        assert "diagonal block" in html and float(ds.eigenvalues.sel(block="(all)")[0]) == float(ds.lambda_max)
    if name in FAMILY_REPORTS:  # every headline number beside its range over the model's zoo family
        family = reports.family(reports.parameters(name)["model"].strip("\"'"))
        assert "range over the " + f"{len(family)} " in html and "rank among them" in html
        refs = [v for v in ds.data_vars if v.startswith("zoo_")]
        assert refs and all(ds[v].sizes["zoo_model"] == len(family) for v in refs)
        own = refs[0].removeprefix("zoo_")
        if own in ds:
            assert float(ds[refs[0]].sel(zoo_model=reports.parameters(name)["model"].strip("\"'"))) == float(ds[own])
    elif name == "transferability":
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


def test_sweep_resume_is_keyed_by_all_parameters(tmp_path, zoo_built):
    """A resumed sweep recomputes the points whose non-grid parameters changed (it reused them before: the
    results recorded no parameters); an even number of steps works (the loss rise is over L(theta))."""
    grid = {"steps": [3, 4]}
    base = dict(model="mlp-sam-s0", seeds=1, n_samples=100, reference=False)

    def run(**kw):
        res = reports.sweep("landscape", grid, tmp_path, base=dict(base, **kw), workers=1, progress=False)
        return res, {r["params"]["steps"]: r for r in res["results"]}

    res, by = run()
    assert {k: r["status"] for k, r in by.items()} == {3: "ok", 4: "ok"}
    for steps in (3, 4):
        ds = wb.load(tmp_path / f"landscape__steps-{steps}.nc")
        assert json.loads(ds.attrs["report_params"]) == dict(reports.effective_params("landscape", base), steps=steps)
        assert ds.alpha_1d.size == steps and (0.0 in ds.alpha_1d.values) == (steps % 2 == 1)
        rise = float(ds.slice_1d.sel(alpha_1d=1.0).mean("seed")) - float(ds.loss)
        assert float(ds.loss_rise) == pytest.approx(rise, rel=1e-12, abs=1e-12)
    one_seed = wb.load(res["dataset"])
    assert json.loads(one_seed.attrs["sweep_params"])["seeds"] == 1
    res, by = run()
    assert all(r["status"].startswith("skipped") for r in by.values())
    res, by = run(seeds=2)  # a parameter outside the grid changed: every point is recomputed
    assert {k: r["status"] for k, r in by.items()} == {3: "ok", 4: "ok"}
    assert all("seeds 1 -> 2" in r["note"] for r in by.values())
    two_seeds = wb.load(res["dataset"])
    assert two_seeds.slice_1d.sizes["seed"] == 2 and json.loads(two_seeds.attrs["sweep_params"])["seeds"] == 2
    assert float(two_seeds.loss_rise.sel(steps=4)) != float(one_seed.loss_rise.sel(steps=4))
    (tmp_path / "landscape__steps-3.nc").write_bytes(b"damaged")  # a damaged point is recomputed, not reused
    res, by = run(seeds=2)
    assert by[3]["status"] == "ok" and "no parameters" in by[3]["note"] and by[4]["status"].startswith("skipped")


@pytest.mark.parametrize("workers", [0, -1, 1.5, "2", True])
def test_sweep_workers_are_validated(tmp_path, workers):
    """0 or -1 workers left the sweep waiting forever; now a clear error before any cluster starts."""
    err = TypeError if not isinstance(workers, int) or isinstance(workers, bool) else ValueError
    with pytest.raises(err, match=r"^workers: "):
        reports.sweep("landscape", {"steps": [3]}, tmp_path, workers=workers, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_workers_are_validated():
    for bad, says in [("0", "at least 1 worker"), ("-1", "at least 1 worker"), ("1.5", "whole number")]:
        r = subprocess.run(
            [sys.executable, "-m", "workbench.cli", "sweep", "landscape", "--grid", "steps=3", f"--workers={bad}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and "argument --workers: " in r.stderr and says in r.stderr, r.stderr


def test_attention_report_on_a_hugging_face_directory(tmp_path, zoo_built):
    """A model directory saved by save_pretrained (safetensors, its tokenizer beside it) named as the report's
    model: loaded by spec, tokenized with its own tokenizer, its heads measured."""
    pytest.importorskip("transformers")
    from test_tasks import build

    build("bert-mlm", tmp_path / "bert")
    r = reports.run_report("attention", {"model": str(tmp_path / "bert"), "reference": False}, tmp_path / "out")
    ds = wb.load(r["nc"])
    assert ds.entropy.sizes["head"] == 2 and ds.entropy.sizes["layer"] == 1
    assert float(ds.entropy.min()) > 0 and float(ds.normalized_entropy.max()) <= 1 + 1e-6
