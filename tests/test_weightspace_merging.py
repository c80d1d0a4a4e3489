"""Merging operators and weight-spectrum diagnostics (issue 18, parts 3 and 4): hand computations, planted spectra,
closed forms, and weightwatcher on the same models."""

import copy
import math

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from workbench.objective import Objective
from workbench.plots import merging as plots
from workbench.results import model_fingerprint
from workbench.testing import hostile_model
from workbench.weightspace import (
    diagonal_fisher,
    endpoint_losses,
    fisher_merge,
    fit_power_law,
    greedy_soup,
    layer_eigenvalues,
    merge_landscape,
    sign_conflicts,
    task_arithmetic,
    task_vectors,
    ties_merge,
    uniform_soup,
    weight_spectra,
)


def _linear(weight, bias=None):
    m = nn.Linear(len(weight[0]), len(weight), bias=bias is not None)
    with torch.no_grad():
        m.weight.copy_(torch.tensor(weight))
        if bias is not None:
            m.bias.copy_(torch.tensor(bias))
    return m


def _floats(m):
    return {k: v for k, v in m.state_dict().items() if v.is_floating_point()}


def _same(a, b):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


# -- TIES ------------------------------------------------------------------------------------------------------


BASE = ([[0.5, -0.5, 1.0, 0.0, 2.0]], [-1.0])
TAUS = [  # (weight entries 0-4, bias entry 5); density 0.5 keeps the top 3 of 6 magnitudes of each
    [4.0, -1.0, 0.5, 2.0, -3.0, 0.1],  # kept: 4, 2, -3
    [-2.0, 3.0, 0.2, 1.0, -0.9, 0.3],  # kept: -2, 3, 1
    [1.0, -2.0, 0.4, -5.0, 2.5, 0.05],  # kept: -2, -5, 2.5
]


def _ties_models():
    base = _linear(*BASE)
    b = np.r_[BASE[0][0], BASE[1]]
    fts = [_linear([list(b[:5] + np.array(t[:5]))], [b[5] + t[5]]) for t in TAUS]
    return base, fts


def test_ties_equals_the_hand_computation():
    base, fts = _ties_models()
    before = [model_fingerprint(m) for m in [base, *fts]]
    merged = ties_merge(base, fts, density=0.5)
    # trimmed sums [2, 1, 0, -2, -0.5, 0] -> signs [+, +, 0, -, -, 0]; agreeing kept entries: [4], [3], none,
    # [-5], [-3], none -> tau_m = [4, 3, 0, -5, -3, 0]
    assert merged.weight.tolist() == [[0.5 + 4, -0.5 + 3, 1.0, 0.0 - 5, 2.0 - 3]]
    assert merged.bias.tolist() == [-1.0]
    assert ties_merge(base, fts, density=0.5, scale=0.5).weight.tolist() == [[2.5, 1.0, 1.0, -2.5, 0.5]]
    assert [model_fingerprint(m) for m in [base, *fts]] == before  # inputs untouched
    sc = sign_conflicts(task_vectors(base, fts), density=0.5)
    w = sc.sel(layer="weight")
    assert float(w.conflict) == 1.0  # entries 0, 1, 3, 4 are kept by 2+ tasks, all with both signs
    assert float(w.kept) == pytest.approx(9 / 15)
    assert float(w.mass_discarded) == pytest.approx(9.5 / 24.5)  # |-2| + |-2| + 2 + 1 + 2.5 of 24.5
    assert float(w.elected_zero) == pytest.approx(1 / 5)
    assert math.isnan(float(sc.sel(layer="bias").conflict))  # nothing kept twice


def test_ties_density_one_and_errors():
    base, fts = _ties_models()
    full = ties_merge(base, fts, density=1.0)
    # no trimming: signs of [3, 0, 1.1, -2, -1.4, 0.45]; entry 1 has mass exactly 0 -> 0
    tv = np.array(TAUS)
    exp = []
    for j in range(6):
        g = np.sign(tv[:, j].sum())
        sel = tv[:, j][(np.sign(tv[:, j]) == g) & (tv[:, j] != 0)]
        exp.append(sel.mean() if sel.size else 0.0)
    b = np.r_[BASE[0][0], BASE[1]]
    got = np.r_[full.weight.detach().numpy().ravel(), full.bias.detach().numpy()]
    np.testing.assert_allclose(got, (b + np.array(exp)).astype(np.float32), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="density"):
        ties_merge(base, fts, density=1.5)
    with pytest.raises(ValueError, match=r"models\[1\]"):
        ties_merge(base, [fts[0], nn.Linear(3, 1)])


# -- task arithmetic and soups ---------------------------------------------------------------------------------


def test_task_arithmetic_endpoints_and_formula():
    base, ft, ft2 = hostile_model(0), hostile_model(1), hostile_model(2)
    before = [model_fingerprint(m) for m in (base, ft, ft2)]
    assert _same(task_arithmetic(base, [ft], scale=0.0), base)
    one = task_arithmetic(base, [ft], scale=1.0)
    assert all(torch.equal(v, _floats(ft)[k]) for k, v in _floats(one).items())  # buffers merged too
    assert torch.equal(one.bn.num_batches_tracked, base.bn.num_batches_tracked)  # integers from the base
    mix = task_arithmetic(base, [ft, ft2], scale=[0.3, -0.2])
    for k, v in _floats(mix).items():
        b = _floats(base)[k].double()
        exp = b + 0.3 * (_floats(ft)[k].double() - b) - 0.2 * (_floats(ft2)[k].double() - b)
        torch.testing.assert_close(v, exp.float(), rtol=0, atol=1e-6)
    assert [model_fingerprint(m) for m in (base, ft, ft2)] == before
    assert one is not ft and one.training == base.training
    tv = task_vectors(base, [ft, ft2])
    assert sorted(tv["0"]) == sorted(n for n, _ in base.named_parameters())  # parameters only
    ties = ties_merge(base, [ft, ft2], density=0.3)  # buffers: the uniform mean of the models'
    torch.testing.assert_close(ties.bn.running_var, (ft.bn.running_var + ft2.bn.running_var) / 2)


def test_uniform_soup_of_identical_models_is_the_model():
    m = hostile_model(3)
    soup = uniform_soup([m, copy.deepcopy(m), copy.deepcopy(m)])
    assert _same(soup, m)
    a, b = _linear([[1.0, 2.0]]), _linear([[3.0, 6.0]])
    assert uniform_soup({"a": a, "b": b}, weights=[3, 1]).weight.tolist() == [[1.5, 3.0]]
    with pytest.raises(ValueError, match="weights"):
        uniform_soup([a, b], weights=[1.0, -1.0])


def test_greedy_soup_keeps_only_improving_ingredients():
    # score = -(|w1 - 2| + |w2 - 2|); alone: A -0.8, B -1.9, C -0.9, D -6 -> order A, C, B, D
    # soup A: -0.8; + C -> (1.75, 2.2): -0.45 kept; + B -> (2.133, 1.8): -0.333 kept; + D -> (2.85, 2.6): -1.45 left out
    ms = [_linear(w) for w in ([[2.0, 2.8]], [[2.9, 1.0]], [[1.5, 1.6]], [[5.0, 5.0]])]
    soup = greedy_soup(ms, lambda m: -float((m.weight.detach() - 2).abs().sum()))
    assert soup.record.ingredient.values.tolist() == ["0", "2", "1", "3"]
    assert soup.record.kept.values.tolist() == [True, True, True, False]
    np.testing.assert_allclose(soup.model.weight.detach().numpy(), [[6.4 / 3, 5.4 / 3]], atol=1e-6)
    np.testing.assert_allclose(soup.record.soup_score.values, [-0.8, -0.45, -1 / 3, -1.45], atol=1e-6)
    loss_soup = greedy_soup(ms, lambda m: float((m.weight.detach() - 2).abs().sum()), maximize=False)
    assert loss_soup.record.kept.values.tolist() == [True, True, True, False]


# -- Fisher-weighted averaging ---------------------------------------------------------------------------------


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


def test_fisher_merge_equal_and_zero_fishers():
    a, b = _mlp(0), _mlp(1)
    g = torch.Generator().manual_seed(0)
    f = {n: torch.rand(p.shape, generator=g) + 0.1 for n, p in a.named_parameters()}
    eq = fisher_merge([a, b], [f, f])
    soup = uniform_soup([a, b])
    for k, v in _floats(eq).items():
        torch.testing.assert_close(v, _floats(soup)[k], rtol=0, atol=1e-6)
    zero = {n: torch.zeros_like(v) for n, v in f.items()}
    assert _same(fisher_merge([a, b], [zero, f]), b)
    assert _same(fisher_merge([a, b], [f, zero]), a)
    with pytest.raises(ValueError, match="fishers"):
        fisher_merge([a, b], [f])


def test_diagonal_fisher_against_per_sample_loops():
    m = _mlp(2)
    x, y = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2])
    lf = nn.CrossEntropyLoss()
    emp, true = diagonal_fisher(m, lf, (x, y)), diagonal_fisher(m, lf, (x, y), kind="true")
    ref_e = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in m.named_parameters()}
    ref_t = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in m.named_parameters()}
    for i in range(6):
        grads = torch.autograd.grad(lf(m(x[i : i + 1]), y[i : i + 1]), list(m.parameters()))
        for (n, _), gr in zip(m.named_parameters(), grads):
            ref_e[n] += gr.double() ** 2 / 6
        logp = torch.log_softmax(m(x[i : i + 1]), -1)[0]
        for c in range(3):
            grads = torch.autograd.grad(logp[c], list(m.parameters()), retain_graph=True)
            for (n, _), gr in zip(m.named_parameters(), grads):
                ref_t[n] += float(logp[c].exp()) * gr.double() ** 2 / 6
    for n in ref_e:
        torch.testing.assert_close(emp[n], ref_e[n], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(true[n], ref_t[n], rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="kind"):
        diagonal_fisher(m, nn.MSELoss(), (x, torch.zeros(6, 3)), kind="true")


# -- the landscape over merge coefficients ---------------------------------------------------------------------


def test_merge_landscape_dims_and_endpoints():
    base, a, b = hostile_model(0), hostile_model(1), hostile_model(2)
    g = torch.Generator().manual_seed(5)
    d1 = (torch.randn(24, 8, generator=g), torch.randint(0, 3, (24,), generator=g))
    d2 = (torch.randn(24, 8, generator=g) + 1, torch.randint(0, 3, (24,), generator=g))
    lf = nn.CrossEntropyLoss()
    before = [model_fingerprint(m) for m in (base, a, b)]
    ds = merge_landscape({"base": base, "a": a, "b": b}, lf, d1, steps=3, tasks={"shifted": d2}, progress=False)
    assert ds.loss.dims == ("task", "c1", "c2") and ds.loss.shape == (2, 3, 3)
    assert ds.task.values.tolist() == ["data", "shifted"] and ds.c1.values.tolist() == [0.0, 0.5, 1.0]
    ends = endpoint_losses(ds)
    for lab, m in (("base", base), ("a", a), ("b", b)):
        exp = [Objective(m, lf, d).evaluate()[0] for d in (d1, d2)]
        assert ends[lab].tolist() == exp  # bitwise: the models' own tensors
    mid = task_arithmetic(base, [a, b], scale=[0.5, 0.5])
    exp = Objective(mid, lf, d1).evaluate()[0]
    assert float(ds.loss.sel(task="data", c1=0.5, c2=0.5)) == pytest.approx(exp, rel=1e-5)
    assert [model_fingerprint(m) for m in (base, a, b)] == before
    one = merge_landscape([a, b], lf, d1, coords=[-0.5, 0.0, 1.0, 1.5], progress=False)
    assert one.loss.dims == ("task", "c1") and one.loss.shape == (1, 4)
    assert float(one.loss.sel(c1=1.0)[0]) == Objective(b, lf, d1).evaluate()[0]
    with pytest.raises(ValueError, match="models"):
        merge_landscape([a], lf, d1, progress=False)


# -- weight spectra --------------------------------------------------------------------------------------------


def _planted(a, n=400, bulk=200, seed=0):
    """A square Linear layer whose W^T W has the quantiles of p(x) ~ x^-a on x >= 1 and a bulk in [0.05, 0.9]."""
    g = torch.Generator().manual_seed(seed)
    lam = np.r_[(1 - (np.arange(n) + 0.5) / n) ** (-1 / (a - 1)), np.linspace(0.05, 0.9, bulk)]
    m = lam.size
    u, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    lin = nn.Linear(m, m, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(u @ torch.diag(torch.from_numpy(np.sqrt(lam))) @ v.T)
    return nn.Sequential(lin)


@pytest.mark.parametrize("a", [2.0, 3.0, 4.0])
def test_alpha_recovers_a_planted_power_law(a):
    ds = weight_spectra(_planted(a), progress=False)
    r = ds.sel(layer="0.weight")
    assert abs(float(r.alpha) - a) < 0.05  # measured: 2.002, 3.004, 4.006
    assert 1.0 <= float(r.xmin) < 1.1 and int(r.n_tail) >= 380  # the bulk below 1 is left out of the fit
    assert float(r.alpha_weighted) == pytest.approx(float(r.alpha) * math.log10(float(r.lambda_max)))
    # sampled (not quantile) tails: 20000 draws, the sampling error of alpha is (a - 1) / sqrt(n) <= 0.02
    rng = np.random.default_rng(int(a))
    x = np.r_[(1 - rng.random(20000)) ** (-1 / (a - 1)), rng.uniform(0.05, 0.9, 5000)]
    assert abs(fit_power_law(x, max_candidates=300)["alpha"] - a) < 0.15


def test_norms_stable_rank_and_mp_soft_rank_closed_forms():
    g = torch.Generator().manual_seed(0)
    s = torch.tensor([3.0, 2.0, 1.0] + [0.5] * 9, dtype=torch.float64)
    u, _ = torch.linalg.qr(torch.randn(20, 12, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    w = u @ torch.diag(s) @ v.T  # 20 x 12
    lin = nn.Linear(12, 20, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(w)
    r = weight_spectra(nn.Sequential(lin), min_tail=5, progress=False).sel(layer="0.weight")
    assert float(r.spectral_norm) == pytest.approx(3.0, rel=1e-12)
    assert float(r.frobenius_norm) == pytest.approx(math.sqrt(float((s**2).sum())), rel=1e-12)
    assert float(r.stable_rank) == pytest.approx(float((s**2).sum()) / 9, rel=1e-12)  # 16.25 / 9
    edge = float(w.var(unbiased=False)) * (math.sqrt(20) + math.sqrt(12)) ** 2
    assert float(r.mp_edge) == pytest.approx(edge, rel=1e-12)
    assert float(r.mp_soft_rank) == pytest.approx(edge / 9, rel=1e-12)
    assert (int(r.n_rows), int(r.n_cols)) == (20, 12)
    np.testing.assert_allclose(np.sort(r.eigenvalues.values)[::-1][:3], [9.0, 4.0, 1.0], rtol=1e-12)


def test_conv_is_read_per_kernel_position_and_traps_are_found():
    conv = nn.Conv2d(6, 10, 3)
    ev = layer_eigenvalues(conv.weight)
    w = conv.weight.detach().double().numpy()
    sv = [np.linalg.svd(w[:, :, i, j], compute_uv=False) for i in range(3) for j in range(3)]
    ref = np.sort(np.concatenate(sv) ** 2)
    np.testing.assert_allclose(ev, ref, rtol=1e-10)
    assert ev.size == 9 * 6
    g = torch.Generator().manual_seed(0)
    clean = nn.Linear(100, 200, bias=False)
    with torch.no_grad():
        clean.weight.copy_(torch.randn(200, 100, generator=g) * 0.1)
    trapped = copy.deepcopy(clean)
    with torch.no_grad():
        trapped.weight[3, 7] = 5.0  # one large element: a spike the shuffle keeps
    r0 = weight_spectra(nn.Sequential(clean), progress=False).sel(layer="0.weight")
    r1 = weight_spectra(nn.Sequential(trapped), progress=False).sel(layer="0.weight")
    assert int(r0.n_traps) == 0 and float(r0.rand_lambda_max) < 1.1 * float(r0.mp_edge)
    assert int(r1.n_traps) >= 1 and float(r1.rand_lambda_max) > 2 * float(r1.mp_edge)


def test_alpha_matches_weightwatcher_on_the_same_model():
    ww = pytest.importorskip("weightwatcher")  # the bench extra (it needs matplotlib): not in dev
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Conv2d(64, 96, 3))
    ours = weight_spectra(net, progress=False, keep_eigenvalues=False)
    d = ww.WeightWatcher(model=copy.deepcopy(net)).analyze(randomize=False, vectors=False, detX=False, plot=False)
    assert len(d) == ours.sizes["layer"] == 3
    # same ESD, same MLE; fit ranges agree on these (>= 20 eigenvalues, no 2-point tail wins)
    np.testing.assert_allclose(ours.alpha.values, d["alpha"].to_numpy(dtype=float), rtol=0, atol=1e-3)
    np.testing.assert_allclose(ours.stable_rank.values, d["stable_rank"].to_numpy(dtype=float), rtol=1e-6)
    # weightwatcher scales conv weights by sqrt(1/2) (conv2d_norm): its conv eigenvalues are half of ours
    ratio = ours.lambda_max.values / d["lambda_max"].to_numpy(dtype=float)
    np.testing.assert_allclose(ratio, [1.0, 1.0, 2.0], rtol=1e-6)


def test_figures_show_every_task_and_the_hessian_per_layer():
    base, a, b = _mlp(0), _mlp(1), _mlp(2)
    d = (torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2] * 4))
    ds = merge_landscape([base, a, b], nn.CrossEntropyLoss(), d, steps=3, tasks={"t2": d}, progress=False)
    fig = plots.merge_landscape(ds)
    assert [t.type for t in fig.data].count("contour") == 2
    np.testing.assert_array_equal(fig.data[0].z, ds.loss.sel(task="data").values.T)  # z[c2, c1]
    spectra = weight_spectra(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)), progress=False)
    hess = xr.Dataset(
        {"eigenvalue": (("block", "rank"), [[9.0], [7.0], [3.0]])}, coords={"block": ["(all)", "0", "2"], "rank": [0]}
    )
    fig = plots.spectra_per_layer(spectra, hess)
    assert [float(v) for v in fig.data[-1].y] == [7.0, 3.0]  # each layer's block, "(all)" left out
    assert plots.esd(spectra, "0.weight").data[1].name.startswith("power law, alpha")
