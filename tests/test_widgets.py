"""Widgets driven from Python (the browser tests drive them in JupyterLab)."""
import time

import numpy as np
import torch
from torch import nn

from workbench.testing import tiny_classifier

from workbench.widgets import LandscapeExplorer, SharpnessExplorer


def _setup():
    return tiny_classifier(60)


def test_landscape_explorer_updates_in_place_when_a_control_moves():
    m, lf, data = _setup()
    ex = LandscapeExplorer(m, lf, data, steps=11, coarse=5, background=False)
    contour = ex.fig.data[0]
    assert np.asarray(contour.z).shape == (11, 11) and ex.result.shape == (11, 11)
    z0 = np.asarray(contour.z).copy()
    ex.span.value = 0.3
    assert ex.fig.data[0] is contour  # the same trace object, updated in place
    assert max(contour.x) == 0.3 and not np.allclose(np.asarray(contour.z), z0)
    ex.steps.value = 7
    assert np.asarray(contour.z).shape == (7, 7)
    ex.kind.value = "hessian"
    assert "hessian" in ex.fig.layout.title.text and ex.job.last_error is None


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
    ex.job.cancel()
    ex.job.wait(30)
    assert "cancelled" in ex.job.status.value
    assert ex.job.last_error is None


def test_sharpness_explorer_resmooths_without_new_hvps():
    m, lf, data = _setup()
    ex = SharpnessExplorer({"a": m}, lf, data, k=2, n_runs=2, n_steps=8, background=False)
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
    from workbench.widgets import AttentionExplorer

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
    from workbench.widgets import TransferExplorer
    from workbench.zoo import transfer as zt

    zoo = zoo_built
    models = {n: zoo.load(n) for n in zoo.names("transfer")[:4]}
    gt = zoo.transfer_ground_truth().finetune_acc.rename(source="model")
    ranked = {t: T.rank(models, zt.target_data(t, "train"), metrics=["logme", "hscore"], progress=False)
              for t in ["digits-5to9", "noisy-all"]}
    ex = TransferExplorer(ranked, gt.sel(model=list(models)), n_boot=20)
    x0 = list(ex.fig.data[0].x)
    ex.metric.value = "hscore"
    assert "hscore" in ex.fig.layout.title.text and list(ex.fig.data[0].x) != x0
    ex.target.value = "noisy-all"
    assert "noisy-all" in ex.fig.layout.title.text and "<td>logme</td>" in ex.table.value
