"""The curvature probes' shared options: curvature=, blocks=, mc_samples= (ground truth: dense float64
matrices of a small model)."""

import numpy as np
import pytest
import torch
import xarray as xr

import workbench as wb
from workbench.curvature import (
    curvature_operator,
    exact_hessian,
    hessian_eigenvalues,
    hessian_trace,
    parameter_blocks,
    spectral_density,
)
from workbench.objective import Objective


@pytest.fixture(scope="module")
def small():
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    return m, torch.nn.CrossEntropyLoss(), (x, y)


def dense(small, curvature):
    m, lf, data = small
    return curvature_operator(Objective(m, lf, data), curvature).dense()


@pytest.mark.parametrize("curvature", ["hessian", "ggn", "fisher", "empirical_fisher"])
def test_eigenvalues_and_trace_of_every_curvature_equal_the_dense_matrix(small, curvature):
    m, lf, data = small
    C = dense(small, curvature)
    top = np.linalg.eigvalsh(C)[::-1][:3]
    ev = hessian_eigenvalues(m, lf, data, k=3, tol=1e-9, curvature=curvature, progress=False)
    np.testing.assert_allclose(ev["eigenvalue"].values, top, rtol=1e-8)
    assert ev.attrs["curvature"] == curvature
    assert curvature.split("_")[-1] in ev["eigenvalue"].attrs["long_name"].lower()
    tr = hessian_trace(m, lf, data, method="exact", curvature=curvature, progress=False)
    assert float(tr) == pytest.approx(np.trace(C), rel=1e-10)
    ex = exact_hessian(m, lf, data, curvature=curvature, progress=False)
    np.testing.assert_allclose(ex.values, C, atol=1e-12)
    d = spectral_density(m, lf, data, n_runs=2, n_lanczos=51, curvature=curvature, progress=False)
    # 51 steps on 51 parameters: the Gauss quadrature nodes are the exact eigenvalues
    assert np.max(d.attrs["slq_nodes"]) == pytest.approx(top[0], rel=1e-6)


def test_ggn_and_fisher_are_psd_and_differ_from_the_indefinite_hessian(small):
    H, G = dense(small, "hessian"), dense(small, "ggn")
    assert np.linalg.eigvalsh(G).min() > -1e-12 and np.linalg.eigvalsh(H).min() < -1e-3
    np.testing.assert_allclose(dense(small, "fisher"), G, atol=1e-12)


def test_blocks_are_the_diagonal_blocks_of_the_exact_matrix(small):
    m, lf, data = small
    for curvature in ("hessian", "ggn"):
        C = dense(small, curvature)
        ev = hessian_eigenvalues(m, lf, data, k=2, tol=1e-9, curvature=curvature, blocks="layer", progress=False)
        assert [str(b) for b in ev["block"].values] == ["(all)", "0", "2"]
        assert ev["n_params"].values.tolist() == [51, 30, 21]
        cuts = {"(all)": slice(0, 51), "0": slice(0, 30), "2": slice(30, 51)}
        for b, s in cuts.items():
            want = np.linalg.eigvalsh(C[s, s])[::-1][:2]
            np.testing.assert_allclose(ev["eigenvalue"].sel(block=b).values, want, rtol=1e-8)
        tr = hessian_trace(m, lf, data, method="exact", curvature=curvature, blocks="module", progress=False)
        assert float(tr.sel(block="(all)")) == pytest.approx(np.trace(C), rel=1e-10)
        # the blocks partition the parameters: their traces sum to the whole model's
        assert float(tr.sel(block=["0", "2"]).sum()) == pytest.approx(float(tr.sel(block="(all)")), rel=1e-10)


def test_blockwise_stochastic_trace_keeps_each_blocks_interval_and_saves(small, tmp_path):
    m, lf, data = small
    tr = hessian_trace(m, lf, data, n_hvp=12, blocks={"first": ["0"], "biases": "bias"}, progress=False)
    assert tr.dims == ("block",) and list(tr["block"].values) == ["(all)", "first", "biases"]
    assert (tr["ci_low"] <= tr).all() and (tr <= tr["ci_high"]).all()
    assert tr.attrs["n_hvp"] == 12  # equal in every block: stays an attribute
    assert tr["n_params"].values.tolist() == [51, 30, 9]
    wb.save(tr.to_dataset(name="trace"), tmp_path / "t.nc")
    back = wb.load(tmp_path / "t.nc")
    xr.testing.assert_allclose(back["trace"], tr.drop_attrs() if hasattr(tr, "drop_attrs") else tr)


def test_mc_fisher_probe_is_seeded_and_near_the_fisher(small):
    m, lf, data = small
    top = np.linalg.eigvalsh(dense(small, "fisher"))[::-1][0]
    a = hessian_eigenvalues(m, lf, data, k=1, curvature="mc_fisher", mc_samples=400, seed=1, progress=False)
    b = hessian_eigenvalues(m, lf, data, k=1, curvature="mc_fisher", mc_samples=400, seed=1, progress=False)
    c = hessian_eigenvalues(m, lf, data, k=1, curvature="mc_fisher", mc_samples=400, seed=2, progress=False)
    assert float(a.eigenvalue[0]) == float(b.eigenvalue[0]) != float(c.eigenvalue[0])
    assert float(a.eigenvalue[0]) == pytest.approx(top, rel=0.1)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(curvature="hessain"), "curvature: expected one of 'hessian', 'ggn'"),
        (dict(mc_samples=5), "mc_samples: only used with curvature='mc_fisher'"),
        (dict(curvature="mc_fisher", mc_samples=0), "mc_samples"),
        (dict(blocks="layers"), "blocks: expected 'layer', 'module' or a mapping"),
        (dict(blocks={"x": ["nope"]}), r"blocks\['x'\]: no parameter or module named"),
        (dict(blocks="layer", return_eigenvectors=True), "return_eigenvectors: not available with blocks="),
        (dict(blocks=3), "blocks: expected 'layer', 'module' or a non-empty mapping"),
    ],
)
def test_bad_curvature_options_are_clear_errors(small, kw, match):
    m, lf, data = small
    with pytest.raises((ValueError, TypeError), match=match):
        hessian_eigenvalues(m, lf, data, k=1, progress=False, **kw)


def test_fisher_of_a_loss_that_is_not_a_likelihood_is_refused_by_name(small):
    m, _, data = small

    def lf(out, y):
        return torch.nn.functional.cross_entropy(out, y)

    with pytest.raises(ValueError, match="curvature: 'fisher' needs the loss to be a negative log-likelihood"):
        hessian_trace(m, lf, data, n_hvp=6, curvature="fisher", progress=False)
    assert np.isfinite(float(hessian_trace(m, lf, data, n_hvp=6, curvature="ggn", progress=False)))


def test_layer_blocks_of_a_transformer_style_name_list():
    m = torch.nn.Module()
    m.encoder = torch.nn.Module()
    m.encoder.layer = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
    m.pooler = torch.nn.Linear(2, 1)
    assert parameter_blocks(m, "layer") == {
        "encoder.layer.0": ["encoder.layer.0.weight", "encoder.layer.0.bias"],
        "encoder.layer.1": ["encoder.layer.1.weight", "encoder.layer.1.bias"],
        "pooler": ["pooler.weight", "pooler.bias"],
    }
    assert list(parameter_blocks(m, "layer", params="weight")) == ["encoder.layer.0", "encoder.layer.1", "pooler"]


def test_train_mode_dropout_gives_one_fixed_matrix_over_several_batches():
    """Every product replays the same random stream: dropout draws the same masks in each, so products repeat
    exactly, the dense matrix is symmetric, and the caller's RNG is left where it was."""
    g = torch.Generator().manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 3))
    m = m.double()
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    obj = Objective(m, torch.nn.CrossEntropyLoss(), [(x[:5], y[:5]), (x[5:], y[5:])], mode="train")
    for curvature in ("hessian", "ggn"):
        op = curvature_operator(obj, curvature)
        v = torch.randn(op.shape[0], generator=g, dtype=torch.float64)
        state = torch.get_rng_state()
        assert torch.equal(op.matvec(v), op.matvec(v))
        assert torch.equal(torch.get_rng_state(), state)
        D = op.dense()
        np.testing.assert_allclose(D, D.T, atol=1e-12)
        eval_op = curvature_operator(Objective(m, torch.nn.CrossEntropyLoss(), (x, y)), curvature)
        assert np.abs(D - eval_op.dense()).max() > 1e-3  # dropout is really on
    ev = hessian_eigenvalues(m, torch.nn.CrossEntropyLoss(), [(x[:5], y[:5]), (x[5:], y[5:])], k=2, tol=1e-8,
                             mode="train", progress=False)  # fmt: skip
    assert bool(ev["converged"].all())


def test_mha_fastpath_flag_survives_probes_in_two_threads():
    """The fused-MHA switch and the sdpa backend flags are process-wide: two threads running curvature products
    at once must leave them as the caller had them (restoring each other's saved values out of order would
    leave them switched for good)."""
    import threading

    m = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    data = (torch.randn(16, 4), torch.randint(0, 3, (16,)))

    def flags():
        b = torch.backends.cuda
        sdpa = (b.flash_sdp_enabled(), b.math_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.cudnn_sdp_enabled())
        return torch.backends.mha.get_fastpath_enabled(), sdpa

    before = flags()
    errors = []

    def work(seed):
        try:
            for _ in range(5):
                hessian_trace(torch.nn.Sequential(*[torch.nn.Linear(4, 3)]), torch.nn.CrossEntropyLoss(), data,
                              n_hvp=4, seed=seed, progress=False)  # fmt: skip
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    hessian_eigenvalues(m, torch.nn.CrossEntropyLoss(), data, k=1, progress=False)
    for t in threads:
        t.join()
    assert not errors and flags() == before
