"""The monitor's reproductions at the tiny preset (the orderings issue #17 claims, with two seeds), the dashboard
tailing a store while a thread writes it, and the monitor and instability reports executed by papermill."""

import threading
import time

import numpy as np
import pytest
import torch

import workbench as wb
from workbench import reports
from workbench.monitor import reproduce as R
from workbench.monitor.reproduce import train_demo
from workbench.monitor.reproduce_models import WidthMLP

NAMES = ("attention_instability", "edge_of_stability", "lr_sensitivity", "width_sharpness")


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """Every reproduction once at the tiny preset, also saved for the report."""
    folder = tmp_path_factory.mktemp("repro")
    out = {n: getattr(R, n)("tiny") for n in NAMES if n != "attention_instability"}
    out["attention_instability"] = R.attention_instability("tiny", store_dir=folder / "stores")
    for n, ds in out.items():
        wb.save(ds, folder / f"{n}.nc")
    return out, folder


@pytest.fixture(scope="module")
def live_store(tmp_path_factory):
    """A store written by a training thread, with what a dashboard read while it was being written."""
    from workbench.widgets.monitor import Dashboard

    path = tmp_path_factory.mktemp("live") / "run.wbmon"
    th = threading.Thread(target=train_demo, args=(path,), kwargs=dict(steps=60, every=10, delay=0.02))
    dash = Dashboard(path, follow=False)
    seen = []
    th.start()
    while th.is_alive():
        seen.append(dash.update())
        time.sleep(0.05)
    th.join()
    seen.append(dash.update())
    return path, dash, seen


def test_entropy_collapse_and_logit_growth_come_before_the_spike_only_in_the_unstable_run(repro):
    ds = repro[0]["attention_instability"]
    u = ds.sel(run="unstable")
    # measured at the tiny preset: growth 20, collapse 30, spike 40-60 (steps) for both seeds
    assert np.isfinite(u.spike_step).all() and np.isfinite(u.collapse_step).all()
    assert (u.growth_step <= u.collapse_step).all() and (u.collapse_step < u.spike_step).all()
    # the monitor's own alarms fire before the spike too
    assert (u.collapse_alarm_step < u.spike_step).all() and (u.growth_alarm_step < u.spike_step).all()
    for run in ("stable", "qk-layernorm", "sigma-reparam"):
        r = ds.sel(run=run)
        assert np.isnan(r.collapse_step).all() and np.isnan(r.spike_step).all() and np.isnan(r.growth_step).all(), run
        assert np.isnan(r.collapse_alarm_step).all(), run
        assert float(r.entropy.isel(step=-1).min()) > 0.5, run  # diffuse attention kept
    assert float(u.entropy.isel(step=-1).max()) < 0.1  # collapsed to near one key
    assert float(u.max_logit.isel(step=-1).min()) > 10 * float(
        ds.max_logit.isel(step=-1).drop_sel(run="unstable").max()
    )
    assert ds.sizes["seed"] == 2 and ds.attrs["probe"] == "monitor.attention_instability"
    # the curves are the monitor's: its store of the unstable run, seed 1, holds the same entropies and alarms
    store = wb.load(repro[1] / "stores" / "unstable-s1.wbmon")
    mean = store.attn_normalized_entropy.mean(("attn_layer", "head")).sel(step=ds.step)
    np.testing.assert_allclose(mean.values, u.entropy.sel(seed=1).values, rtol=1e-6)
    first = store.event_step[store.event_kind == "entropy_collapse"].min()
    assert int(first) == int(u.collapse_alarm_step.sel(seed=1))


def test_full_batch_gd_sharpens_to_two_over_lr_and_hovers(repro):
    ds = repro[0]["edge_of_stability"]
    np.testing.assert_allclose(ds.edge.values, 2 / ds.lr.values)
    # measured: start 0.40-0.77, peak 1.15-1.52, hover (median of the 2nd half) 0.92-0.96 of 2/lr
    assert (ds.start_ratio < 0.8).all()
    assert (ds.peak_ratio >= 1.0).all()
    assert ((ds.hover_ratio > 0.85) & (ds.hover_ratio < 1.05)).all()
    lam = ds.lambda_max.isel(step=slice(ds.sizes["step"] // 2, None))
    assert float((lam / ds.edge).max()) < 1.6  # hovering, not diverging


def test_qk_layernorm_lowers_lr_sensitivity_at_every_width(repro):
    ds = repro[0]["lr_sensitivity"]
    sens = ds.sensitivity.mean("seed")
    # measured: standard 0.30 / 0.12 / 0.11, qk-layernorm 0.14 / 0.09 / 0.03 (widths 8 / 16 / 32)
    assert (sens.sel(variant="qk-layernorm") < sens.sel(variant="standard")).all()
    top = ds.final_loss.sel(lr=ds.lr.max()).mean("seed")
    assert (
        top.sel(variant="qk-layernorm").isel(width=slice(1, None))
        < top.sel(variant="standard").isel(width=slice(1, None))
    ).all()
    assert np.isfinite(ds.final_loss).all()


def test_sharpness_spreads_with_width_under_sp_not_under_mup(repro):
    ds = repro[0]["width_sharpness"]
    last = ds.lambda_max.isel(step=-1).mean("seed")
    sp = last.sel(parametrisation="sp").values
    assert np.all(np.diff(sp) > 0)  # SP: sharper with every width (measured 5.7, 15.5, 38.4)
    spread = ds.width_spread.isel(step=-1).mean("seed")
    assert float(spread.sel(parametrisation="sp")) > 2 * float(spread.sel(parametrisation="mup"))  # 6.7 vs 2.1
    # at the base width the two parametrisations are the same network: identical curves
    base = ds.width.values[0]
    np.testing.assert_allclose(ds.lambda_max.sel(parametrisation="sp", width=base),
                               ds.lambda_max.sel(parametrisation="mup", width=base), rtol=1e-5)  # fmt: skip


def test_mup_output_layer_scales_as_one_over_width():
    torch.manual_seed(0)
    stds = []
    for n in (64, 1024):
        m = WidthMLP(width=n, parametrisation="mup", base_width=64)
        out = m.layers[-1]
        stds.append(float((out.multiplier * out.weight).detach().std()))
        inp = m.layers[0]
        assert float((inp.multiplier * inp.weight).detach().std()) == pytest.approx(
            64**-0.5, rel=0.05
        )  # input: O(1) in n
    assert stds[0] / stds[1] == pytest.approx(1024 / 64, rel=0.05)


def test_event_helpers_and_bad_input():
    assert R.spike_step([0, 1, 2], [1.0, 0.8, float("nan")]) == 2.0  # a non-finite loss is a spike
    assert np.isnan(R.spike_step([0, 1, 2], [1.0, 0.95, 1.04]))
    assert R.growth_step([0, 5], [0.5, 20.0]) == 5.0
    with pytest.raises(ValueError, match="preset"):
        R.edge_of_stability("huge")
    with pytest.raises(ValueError, match="warmups"):
        R.attention_instability("tiny", warmups=3)
    with pytest.raises(ValueError, match="margin"):
        R.spike_step([0], [1.0], margin=-1)


def test_dashboard_reads_a_store_while_a_thread_writes_it(live_store):
    path, dash, seen = live_store
    assert seen[-1] == 61 == wb.load(path).sizes["step"]
    partial = sorted({s for s in seen if 0 < s < 61})
    assert partial, f"the dashboard never saw a partly written store: {seen}"
    assert all(b >= a for a, b in zip(seen, seen[1:], strict=False)), str(seen)  # steps only ever grow
    ds = wb.load(path)
    assert len(dash.loss_fig.data[0].y) == int(np.isfinite(ds.loss).sum()) == 60
    assert dash.head_fig.data[0].z.shape == (8, 7)  # 2 layers x 4 heads, steps 0, 10, ..., 60
    assert len(dash.loss_fig.data) > 1  # alarm markers (lr 0.3: logit growth, entropy collapse)
    before = dash.head_fig.layout.title.text
    dash.metric.value = "attn_max_logit"
    assert dash.head_fig.layout.title.text != before and "attn_max_logit" in dash.head_fig.layout.title.text
    dash.layer.value = dash.layer.options[1]
    assert dash.head_fig.data[0].z.shape == (4, 7)


def test_dashboard_follows_in_the_background_until_stopped(tmp_path):
    from workbench.widgets.monitor import Dashboard

    path = tmp_path / "bg.wbmon"
    dash = Dashboard(path, interval=0.05)  # the store does not exist yet
    train_demo(path, steps=10, every=5)
    for _ in range(200):
        if dash.steps == 11:
            break
        time.sleep(0.05)
    dash.cancel()
    dash.wait(5)
    assert dash.steps == 11 and "11 monitored steps" in dash.status.value or "cancelled" in dash.status.value
    assert dash.steps == 11


def test_reports_execute(repro, live_store, tmp_path):
    r = reports.run_report("instability", dict(results_dir=str(repro[1])), tmp_path / "instability")
    html = open(r["html"], encoding="utf-8").read()
    assert "growth &lt;= collapse &lt; spike: True" in html and "sigma-reparam: True" in html
    assert html.count('class="plotly-graph-div"') >= 5 and "Traceback" not in html
    ds = wb.load(r["nc"])
    assert ds.attrs["report"] == "instability"
    np.testing.assert_array_equal(ds.ai_spike_step.values, repro[0]["attention_instability"].spike_step.values)
    r = reports.run_report("monitor", dict(store=str(live_store[0])), tmp_path / "monitor")
    html = open(r["html"], encoding="utf-8").read()
    assert "Traceback" not in html and html.count('class="plotly-graph-div"') >= 5
    out, store = wb.load(r["nc"]), wb.load(live_store[0])
    np.testing.assert_array_equal(out.loss.values, store.loss.values)
    first = {str(k): int(v) for k, v in zip(out.alarm_kind.values, out.first_alarm_step.values, strict=True)}
    assert (
        first["logit_growth"]
        < first["entropy_collapse"]
        == int(store.event_step[store.event_kind == "entropy_collapse"].min())
    )


def test_dashboard_tails_a_store_written_by_another_process(tmp_path):
    import subprocess
    import sys

    from workbench.widgets.monitor import Dashboard

    path = tmp_path / "proc.wbmon"
    code = (
        f"from workbench.monitor.reproduce import train_demo; train_demo({str(path)!r}, steps=40, every=10, delay=0.03)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    dash, seen = Dashboard(path, follow=False), []
    while proc.poll() is None:
        seen.append(dash.update())
        time.sleep(0.05)
    assert proc.returncode == 0
    seen.append(dash.update())
    assert seen[-1] == 41 and any(0 < s < 41 for s in seen), seen


def test_reproductions_leave_the_global_rng_alone_and_repeat_exactly():
    state = torch.get_rng_state()
    a = R.edge_of_stability("tiny", steps=4, every=2, n=32, seeds=(0,))
    b = R.edge_of_stability("tiny", steps=4, every=2, n=32, seeds=(0,))
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(a.lambda_max.values, b.lambda_max.values)
