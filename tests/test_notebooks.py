"""The exploratory notebooks, executed top to bottom by papermill with small parameters on the
project's kernel. A cell error fails the test; outputs are checked for figures and no tracebacks."""

import json
from pathlib import Path

import papermill as pm
import pytest

from workbench.reports import REPORTS_DIR

NB = Path(__file__).resolve().parents[1] / "notebooks"  # the exploratory notebooks; the reports' are package data

CASES = {
    "loss_landscape.ipynb": dict(steps=7, n_seeds=2),
    "sharpness.ipynb": dict(seeds=[0], n_hvp=12, archs=["mlp", "cnn"]),
    "attention.ipynb": dict(n_sentences=4, stride=10),
    "transferability.ipynb": dict(targets=["digits-5to9"], metrics=["logme", "leep", "hscore"], n_boot=50),
    "tour.ipynb": dict(steps=5),
    "compare.ipynb": dict(n_resamples=20),
    "weightspace.ipynb": dict(steps=5, n_repair=300),
    "monitor.ipynb": dict(steps=100),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_notebook_runs_and_draws(name, tmp_path, zoo_built):
    out = tmp_path / name
    nb = pm.execute_notebook(
        str(NB / name), str(out), parameters=CASES[name], kernel_name="workbench", cwd=str(tmp_path), progress_bar=False
    )
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figs = [o for o in outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figs) >= 3
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, "the explorer widget was not displayed"
    text = json.dumps([o.get("text", "") for o in outputs] + [o.get("data", {}).get("text/plain", "") for o in outputs])
    assert "Traceback" not in text and "Error" not in text


def test_every_notebook_has_a_parameters_cell_and_the_project_kernel():
    paths = [*NB.glob("*.ipynb"), *REPORTS_DIR.glob("*.ipynb")]
    assert len(paths) == 18  # 8 exploratory notebooks, 10 reports
    for path in paths:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "workbench", path
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"]), path
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), (
            f"{path} is committed with outputs"
        )
