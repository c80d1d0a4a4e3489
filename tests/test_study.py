"""workbench.study at the tiny preset: the zoo, the measures, the correlation table and the report, against
planted measures, hand computations and closed forms."""

import json
import os

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from workbench import study
from workbench.stats import granulated_tau, kendall_tau
from workbench.study.zoo import configs


@pytest.fixture(scope="module")
def tiny():
    runs = study.build_zoo("tiny", measure=study.measure_run)
    return study.measure_zoo(runs)


def test_tiny_zoo_trains_to_the_criterion_and_resumes_from_the_cache(tiny):
    specs = configs("tiny")
    assert tiny.sizes == {"run": len(specs), "measure": len(study.MEASURES)} and len(specs) == 8
    assert bool(tiny.converged.all()) and (tiny.train_loss <= 0.1).all()
    # train minus test accuracy, recorded per run; the runs differ (not one cached run repeated)
    assert np.allclose(tiny.gap, tiny.train_acc - tiny.test_acc) and len(np.unique(tiny.gap)) > 4
    assert list(np.unique(tiny.lr)) == [0.03, 0.1] and list(np.unique(tiny.seed)) == [0, 1]
    mtimes = [os.path.getmtime(p) for p in tiny.path.values]
    again = study.build_zoo("tiny")  # every run is cached: nothing is retrained
    assert [os.path.getmtime(p) for p in again.path.values] == mtimes
    assert np.array_equal(again.gap, tiny.gap)
    model, init, rec = study.load_run(tiny.path.values[0])
    x, y = study.run_data(json.loads(rec["spec"]), "test")
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc == pytest.approx(float(tiny.test_acc[0]))


def test_measures_are_finite_and_norms_match_closed_forms(tiny):
    v = tiny.value.to_pandas()
    core = [m for m in study.MEASURES if m != "esd_alpha"]
    assert np.isfinite(v[core].values).all()
    assert (v["lambda_max"] > 0).all() and (v["sam"] >= 0).all() and (v["dist_init"] > 0).all()
    # a 2-layer bias-free net: path norm = sum over paths of squared weights = 1^T (W2^2)(W1^2) 1
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False))
    w1, w2 = m[0].weight.detach() ** 2, m[2].weight.detach() ** 2
    assert study.path_norm(m, (3,)) == pytest.approx(float((w2 @ w1).sum()), rel=1e-6)
    # log products of norms against numpy
    n = study.norm_products(m)
    ws = [m[0].weight.detach().numpy(), m[2].weight.detach().numpy()]
    assert n["log_spec_prod"] == pytest.approx(sum(2 * np.log(np.linalg.norm(w, 2)) for w in ws))
    assert n["log_fro_prod"] == pytest.approx(sum(2 * np.log(np.linalg.norm(w)) for w in ws))
    # Fisher-Rao: (d+1)^2 mean <theta, grad l_i>^2; for a bias-free ReLU net <theta, grad l> = (d+1) <f, p - e_y>
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1])
    f = m(x).detach()
    inner = 2 * ((torch.softmax(f, 1) - torch.eye(2)[y]) * f).sum(1)
    assert study.fisher_rao_norm(m, (x, y)) == pytest.approx(4 * float((inner**2).mean()), rel=1e-5)


def test_table_shape_and_planted_and_random_measures(tiny):
    planted = tiny.copy(deep=True)
    planted["value"].loc[dict(measure="lambda_max")] = planted.gap.values  # a measure equal to the gap
    res = study.correlate(planted, n_resamples=50)
    axes = ["lr", "width", "weight_decay", "seed"]
    assert res.sizes == {"measure": len(study.MEASURES), "axis": 4} and list(res.axis.values) == axes
    assert study.table(res).shape == (len(study.MEASURES), 3 + 4 + 2)
    p = res.sel(measure="lambda_max")
    assert [float(p.tau), float(p.tau_low), float(p.tau_high)] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    assert [float(p.Psi), float(p.worst), float(p.cmi)] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)
    # 100 random measures: tau ~ 0 on average and their intervals hold 0 near the nominal rate (8 runs: ~90 %)
    rng = np.random.default_rng(0)
    rand = tiny.isel(measure=[0] * 100).assign_coords(measure=[f"r{i}" for i in range(100)])
    rand["value"] = (("run", "measure"), rng.normal(size=(tiny.sizes["run"], 100)))
    r = study.correlate(rand, n_resamples=50)
    assert abs(float(r.tau.mean())) < 0.1
    holds = ((r.tau_low <= 0) & (r.tau_high >= 0)).mean()
    assert float(holds) >= 0.85, float(holds)
    assert ((r.tau_low <= r.tau) & (r.tau <= r.tau_high)).all()


def test_granulated_tau_in_the_analysis_equals_a_hand_computation():
    # a 2 x 3 grid (lr x wd), one seed: psi_lr over the 3 wd-groups, psi_wd over the 2 lr-groups
    lr = [1, 2, 1, 2, 1, 2]
    wd = [0, 0, 1, 1, 2, 2]
    gap = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    mu = np.array([1.0, 2.0, 8.0, 7.0, 5.0, 6.0])
    runs = xr.Dataset(
        {"value": (("run", "measure"), mu[:, None]), "gap": ("run", gap), "converged": ("run", [True] * 6)},
        coords={"lr": ("run", lr), "weight_decay": ("run", wd), "seed": ("run", [0] * 6), "measure": ["m"],
                "expected_sign": ("measure", [1])},
    )  # fmt: skip
    res = study.correlate(runs, n_resamples=20).sel(measure="m")
    # lr: wd=0 (+1), wd=1 (-1), wd=2 (+1) -> 1/3; wd: lr=1 (1,8,5) vs (1,3,5) -> 1/3, lr=2 (2,7,6) vs (2,4,6) -> 1/3
    assert res.psi.sel(axis="lr") == pytest.approx(1 / 3) and res.psi.sel(axis="weight_decay") == pytest.approx(1 / 3)
    assert float(res.Psi) == pytest.approx(1 / 3) and float(res.tau) == pytest.approx(kendall_tau(mu, gap))
    ref = granulated_tau(mu, gap, {"lr": lr, "weight_decay": wd})
    assert np.allclose(res.psi.values, ref.psi.values)


def test_conditional_mi_is_zero_when_a_hyper_parameter_explains_the_ranking():
    lr = np.repeat([1, 2, 3], 4)
    seed = np.tile([0, 1, 2, 3], 3)
    gap = 0.1 * lr + 0.1 * np.random.default_rng(0).normal(size=12)  # lr explains part of the gap
    k_gap, _ = study.conditional_mi(gap, gap, {"lr": lr, "seed": seed})
    k_lr, s = study.conditional_mi(lr.astype(float), gap, {"lr": lr, "seed": seed})
    assert k_gap == pytest.approx(1.0) and k_lr == pytest.approx(0.0) and "lr" in s


def test_cli_and_report_at_the_tiny_preset(tiny, tmp_path):
    from workbench import reports
    from workbench.study.__main__ import main

    assert (
        main(["--preset", "tiny", "--out", str(tmp_path), "--workers", "1", "--n-resamples", "20", "--no-report"]) == 0
    )
    table = xr.open_dataset(tmp_path / "study_table.nc")
    assert table.sizes["run"] == 8 and np.allclose(table.value.values, tiny.value.values, equal_nan=True)
    assert "lambda_max" in (tmp_path / "study_table.txt").read_text()
    r = reports.run_report("study", {"table": str(tmp_path / "study_table.nc"), "n_resamples": 20}, tmp_path / "rep")
    html = open(r["html"], encoding="utf-8").read()
    assert html.count('class="plotly-graph-div"') >= 4 and "Traceback" not in html and "FAILS" in html
    ds = xr.open_dataset(r["nc"])
    assert ds.attrs["report"] == "study" and ds.tau.sizes["measure"] == len(study.MEASURES)
