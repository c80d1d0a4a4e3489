"""Widgets driven from Python (the browser tests drive them in JupyterLab)."""

import time

import numpy as np
import torch
from torch import nn

from workbench.testing import tiny_classifier
from workbench.widgets import (
    AttentionExplorer,
    Explorer,
    LandscapeExplorer,
    SharpnessExplorer,
    TransferExplorer,
    update_figure,
)


def _setup():
    return tiny_classifier(60)


def test_landscape_explorer_updates_in_place_when_a_control_moves():
    m, lf, data = _setup()
    ex = LandscapeExplorer(m, lf, data, steps=11, coarse=5, background=False)
    contour = ex.fig.data[0]
    assert np.asarray(contour.z).shape == (11, 11) and ex.result.loss.shape == (11, 11)
    z0 = np.asarray(contour.z).copy()
    ex.span.value = 0.3
    assert ex.fig.data[0] is contour  # the same trace object, updated in place
    assert max(contour.x) == 0.3 and not np.allclose(np.asarray(contour.z), z0)
    ex.steps.value = 7
    assert np.asarray(contour.z).shape == (7, 7)
    ex.kind.value = "hessian"
    assert "hessian" in ex.fig.layout.title.text and ex.last_error is None


def test_landscape_explorer_pca_overlays_the_trajectory():
    m, lf, data = _setup()
    traj = []
    for i in range(4):
        c = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        c.load_state_dict({k: v + 0.1 * (3 - i) * torch.randn_like(v) for k, v in m.state_dict().items()})
        traj.append(c)
    traj.append(m)
    ex = LandscapeExplorer(m, lf, data, checkpoints=traj, steps=5, background=False)
    ex.kind.value = "pca"
    assert len(ex.fig.data[2].x) == 5 and ex.fig.data[2].x[-1] == 0


def test_a_running_computation_can_be_cancelled():
    m, lf, data = _setup()
    ex = LandscapeExplorer(m, lf, data, steps=61, coarse=61, background=True)
    time.sleep(0.05)
    ex.cancel()
    ex.wait(30)
    assert "cancelled" in ex.status.value
    assert ex.last_error is None


def test_sharpness_explorer_resmooths_without_new_hvps():
    m, lf, data = _setup()
    ex = SharpnessExplorer({"a": m}, lf, data, k=2, n_runs=2, n_lanczos=8, background=False)
    d = ex.density_fig.data[0]
    y0 = np.asarray(d.y).copy()
    n_hvp = ex.densities["a"].attrs["n_hvp"]
    ex.sigma.value = 0.1
    assert not np.allclose(np.asarray(d.y), y0)
    assert ex.densities["a"].attrs["n_hvp"] == n_hvp
    ex.adaptive.value = True
    assert "adaptive" in ex.rho_fig.layout.title.text and len(ex.rho_fig.data[0].x) == 6


def test_attention_explorer_click_shows_the_head():
    from workbench.testing import hostile_transformer

    m, x, mask = hostile_transformer()
    ex = AttentionExplorer(m, x, background=False, src_key_padding_mask=mask)
    assert np.asarray(ex.head_fig.data[0].z).shape == (2, 4)
    ex.show_head(1, 3)
    assert "layer 1, head 3" in ex.map_fig.layout.title.text
    z = np.asarray(ex.map_fig.data[0].z)
    np.testing.assert_allclose(z.sum(-1), 1, atol=1e-5)
    ex.example.value = 2
    assert "example 2" in ex.map_fig.layout.title.text
    assert np.asarray(ex.map_fig.data[0].z)[:, 3:].max() == 0  # example 2 is padded from position 3
    ex.variable.value = "max_logit"
    assert "logit" in ex.head_fig.layout.title.text
    assert m.training  # the model was restored


def test_transfer_explorer_updates_tau_and_points(zoo_built):
    import workbench.transfer as T
    from workbench.zoo import transfer as zt

    zoo = zoo_built
    models = {n: zoo.load(n) for n in zoo.names("transfer")[:4]}
    gt = zoo.transfer_ground_truth().finetune_acc.rename(source="model")
    ranked = {
        t: T.rank(models, zt.target_data(t, "train"), metrics=["logme", "hscore"], progress=False)
        for t in ["digits-5to9", "noisy-all"]
    }
    ex = TransferExplorer(ranked, gt.sel(model=list(models)), n_boot=20, background=False)
    x0 = list(ex.fig.data[0].x)
    ex.metric.value = "hscore"
    assert "hscore" in ex.fig.layout.title.text and list(ex.fig.data[0].x) != x0
    ex.target.value = "noisy-all"
    assert "noisy-all" in ex.fig.layout.title.text and "<td>logme</td>" in ex.table.value


def test_every_explorer_is_an_explorer_and_draws_with_plots():
    import inspect

    import workbench.widgets as W

    explorers = [LandscapeExplorer, SharpnessExplorer, AttentionExplorer, TransferExplorer]
    assert all(issubclass(E, Explorer) for E in explorers)
    for E in explorers:  # no explorer builds its own traces: every figure comes from workbench.plots
        src = inspect.getsource(inspect.getmodule(E))
        assert "plots." in src and not any(f"go.{t}(" in src for t in ("Scatter", "Heatmap", "Contour", "Bar")), E
        assert "_ipython_display_" not in E.__dict__ and "run" not in E.__dict__  # the base's, not a copy
    assert {e.__name__ for e in explorers} <= set(W.__all__)


def test_an_error_is_shown_in_the_panel_and_the_next_run_clears_it():
    class Failing(Explorer):
        def __init__(self):
            super().__init__(background=False)
            self.fail = True
            self.fig = self.figure()
            self.assemble([], [self.fig])

        def refresh(self):
            def work(cancel):
                if self.fail:
                    raise ValueError("span: expected > 0")

            self.run(work, "computing")

    ex = Failing()
    assert "ValueError" in ex.error.value and "span: expected" in ex.error.value and ex.last_error
    ex.fail = False
    ex.refresh()
    assert ex.error.value == "" and ex.last_error is None and "computing" in ex.status.value


def test_a_new_run_cancels_the_one_in_flight_and_progress_moves():
    m, lf, data = _setup()
    ex = LandscapeExplorer(m, lf, data, steps=61, coarse=61, background=True)
    first = ex._thread
    time.sleep(0.05)
    ex.steps.value = 5  # cancels the 61 x 61 grid
    ex.wait(60)
    assert not first.is_alive() and ex.result.loss.shape == (5, 5) and ex.bar.value == 1
    assert ex.last_error is None
    ex.result = None
    ex.start.click()  # Run: recompute from the controls
    ex.wait(60)
    assert ex.result.loss.shape == (5, 5) and "5 x 5 grid" in ex.status.value


def test_update_figure_keeps_traces_of_the_same_type_and_replaces_the_rest():
    import plotly.graph_objects as go

    w = go.FigureWidget(go.Contour(z=[[0, 1], [1, 0]]))
    w.add_scatter(x=[0], y=[0], error_y=dict(array=[1]))
    c = w.data[0]
    update_figure(w, go.Figure([go.Contour(z=[[2, 3], [3, 2]]), go.Scatter(x=[1], y=[1])]))
    assert w.data[0] is c and w.data[1].error_y.array is None
    update_figure(w, go.Figure(go.Heatmap(z=[[1]])))
    assert len(w.data) == 1 and w.data[0].type == "heatmap"
