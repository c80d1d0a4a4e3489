"""workbench.compare against ground truth: invariances and closed forms of the CKA family, unbiasedness of
the debiased estimator, streaming equal to full-batch, calibration metrics against hand computations and
netcal, a planted temperature, divergences of known distributions, neural collapse on a simplex ETF, and
padding that never counts."""

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax
from torch import nn

import workbench.compare as cmp
from workbench.compare.similarity import MinibatchCKA, gram, hsic
from workbench.testing import tiny_classifier


def _rot(d, seed):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


# -- representation similarity -----------------------------------------------------------------------------


def test_cka_is_one_for_identical_and_invariant_to_rotation_and_isotropic_scaling():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    Y = np.tanh(X @ rng.normal(size=(8, 5)))
    Q, R = _rot(8, 1), _rot(5, 2)
    for f in (
        cmp.linear_cka,
        cmp.rbf_cka,
        lambda a, b: cmp.cka(a, b, debiased=True),
        lambda a, b: cmp.linear_cka(a, b, debiased=True),
    ):
        assert f(X, X) == pytest.approx(1.0, abs=1e-12)
        base = f(X, Y)
        assert 0.05 < base < 0.999
        assert f(3.7 * X @ Q, Y) == pytest.approx(base, abs=1e-10)
        assert f(X, 0.5 * Y @ R + 2.0) == pytest.approx(base, abs=1e-9)  # + a shift: centred away
    # linear CKA in feature space equals the Gram-matrix form, plain and debiased
    assert cmp.linear_cka(X, Y) == pytest.approx(cmp.cka(X, Y, "linear"), abs=1e-12)
    assert cmp.linear_cka(X, Y, debiased=True) == pytest.approx(cmp.cka(X, Y, "linear", debiased=True), abs=1e-10)
    # a non-orthogonal linear map changes CKA but not CCA; Procrustes is 0 up to rotation and scale
    A = rng.normal(size=(8, 8))
    assert cmp.linear_cka(X, X @ A) < 0.99
    assert cmp.cca(X, X @ A) == pytest.approx(1.0, abs=1e-8)
    assert cmp.procrustes(X, 2 * X @ Q) == pytest.approx(0.0, abs=1e-10)
    assert cmp.procrustes(X, X @ A) > 0.05
    assert cmp.pwcca(X, 5 * X @ Q) == pytest.approx(1.0, abs=1e-8)


def test_unbiased_hsic_equals_its_u_statistic_and_debiased_cka_is_unbiased_on_independent_features():
    import itertools

    rng = np.random.default_rng(3)
    K, L = gram(rng.normal(size=(7, 2))), gram(rng.normal(size=(7, 3)))
    terms = [
        K[t, u] * L[t, u] + K[t, u] * L[v, w] - 2 * K[t, u] * L[t, v]
        for t, u, v, w in itertools.permutations(range(7), 4)
    ]
    assert hsic(K, L, unbiased=True) == pytest.approx(np.mean(terms), rel=1e-12)
    # n = 24 examples, d = 256 independent features: plain CKA is far above 0, debiased CKA is not
    plain, deb = [], []
    for s in range(40):
        g = np.random.default_rng(100 + s)
        X, Y = g.normal(size=(24, 256)), g.normal(size=(24, 256))
        plain.append(cmp.linear_cka(X, Y))
        deb.append(cmp.linear_cka(X, Y, debiased=True))
    se = np.std(deb, ddof=1) / math.sqrt(len(deb))
    assert abs(np.mean(deb)) < 3 * se, (np.mean(deb), se)
    assert np.mean(plain) > 0.7 and np.mean(plain) - 0 > 100 * np.std(plain, ddof=1) / math.sqrt(len(plain))


def test_minibatch_cka_accumulates_hsic_over_batches():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(96, 6))
    Y = X @ rng.normal(size=(6, 4)) + 0.5 * rng.normal(size=(96, 4))
    sizes = [16, 40, 8, 32]
    edges = np.cumsum([0] + sizes)
    acc = MinibatchCKA()
    kl, kk, ll, per_batch_cka = [], [], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        acc.update(X[a:b], Y[a:b])
        Kb, Lb = gram(X[a:b]), gram(Y[a:b])
        kl.append(hsic(Kb, Lb, True))
        kk.append(hsic(Kb, Kb, True))
        ll.append(hsic(Lb, Lb, True))
        per_batch_cka.append(cmp.cka(X[a:b], Y[a:b], debiased=True))
    full = np.mean(kl) / math.sqrt(np.mean(kk) * np.mean(ll))
    assert acc.value == pytest.approx(full, rel=1e-12)
    assert acc.hsic == pytest.approx((np.mean(kl), np.mean(kk), np.mean(ll)), rel=1e-12)
    assert abs(acc.value - np.mean(per_batch_cka)) > 1e-4  # not the mean of per-batch CKAs
    one = MinibatchCKA().update(X, Y)
    assert one.value == pytest.approx(cmp.cka(X, Y, debiased=True), rel=1e-12)


def test_cross_covariance_streams_exactly():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(50, 6)) + 3.0
    Y = np.tanh(X @ rng.normal(size=(6, 9)) / 3) + 0.5 * rng.normal(size=(50, 9))
    acc = cmp.CrossCovariance()
    for a, b in [(0, 7), (7, 30), (30, 50)]:
        acc.update(X[a:b], Y[a:b])
    assert acc.linear_cka() == pytest.approx(cmp.linear_cka(X, Y), rel=1e-10)
    assert acc.debiased_cka() == pytest.approx(cmp.cka(X, Y, debiased=True), rel=1e-9)
    assert acc.procrustes() == pytest.approx(cmp.procrustes(X, Y), rel=1e-10)
    assert cmp.svcca(acc) == pytest.approx(cmp.svcca(X, Y), rel=1e-10)
    # CCA by hand: singular values of the whitened cross-covariance
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    qx, qy = np.linalg.qr(Xc)[0], np.linalg.qr(Yc)[0]
    rho = np.linalg.svd(qx.T @ qy, compute_uv=False)
    assert cmp.canonical_correlations(acc) == pytest.approx(rho, abs=1e-8)
    assert cmp.cca(acc) == pytest.approx(rho.mean(), abs=1e-8)


def test_cka_heatmap_probe():
    m, _, (x, _) = tiny_classifier(40, seed=0)
    m2, _, _ = tiny_classifier(40, seed=1)
    h = cmp.cka_heatmap(m, m, x, n_resamples=20, progress=False)
    assert h.dims == ("layer_a", "layer_b") and list(h.layer_a.values) == ["0", "2"]
    assert np.diag(h.values) == pytest.approx([1.0, 1.0], abs=1e-12)
    h2 = cmp.cka_heatmap(m, m2, x, ["0", "2"], ["2"], n_resamples=20, progress=False)
    # the heatmap entry equals linear CKA of the captured activations
    acts = [torch.cat([t for t in (m[0](x),)]).detach(), m2(x).detach()]
    assert float(h2.sel(layer_a="0", layer_b="2")) == pytest.approx(cmp.linear_cka(*acts), rel=1e-8)
    assert bool(((h2.low <= h2) & (h2 <= h2.high)).all()) and bool((h2.high > h2.low).all())
    assert h2.attrs["probe"] == "compare.cka_heatmap"
    loader = torch.utils.data.DataLoader(x, batch_size=8)
    mb = cmp.cka_heatmap(m, m2, loader, ["0"], ["2"], measure="minibatch", n_resamples=10, progress=False)
    ref = MinibatchCKA()
    for b in x.split(8):
        ref.update(m[0](b).detach(), m2(b).detach())
    assert mb.item() == pytest.approx(ref.value, rel=1e-8)
    with pytest.raises(ValueError, match="^layers_b: "):
        cmp.cka_heatmap(m, m2, x, ["0"], ["nope"], progress=False)


# -- calibration --------------------------------------------------------------------------------------------


def _planted(n, T, C=5, seed=0):
    rng = np.random.default_rng(seed)
    z = 3.0 * rng.normal(size=(n, C))
    u = rng.random(n)[:, None]
    y = (np.cumsum(softmax(z / T, axis=1), axis=1) < u).sum(1)
    return z, np.minimum(y, C - 1)


def test_calibration_metrics_equal_hand_computations():
    p = np.array([[0.95, 0.05], [0.62, 0.38], [0.3, 0.7], [0.45, 0.55], [0.8, 0.2], [0.1, 0.9]])
    y = np.array([0, 1, 1, 0, 0, 1])
    # confidences 0.95 .62 .7 .55 .8 .9, correct 1 0 1 0 1 1; 5 bins of width 0.2:
    # (0.4, 0.6]: .55 -> acc 0; (0.6, 0.8]: .62 .7 .8 -> acc 2/3, conf .7067; (0.8, 1]: .95 .9 -> acc 1, conf .925
    hand = (1 * abs(0 - 0.55) + 3 * abs(2 / 3 - (0.62 + 0.7 + 0.8) / 3) + 2 * abs(1 - 0.925)) / 6
    assert cmp.ece(p, y, n_bins=5) == pytest.approx(hand, abs=1e-12)
    assert cmp.mce(p, y, n_bins=5) == pytest.approx(0.55, abs=1e-12)
    # equal mass, 3 bins of 2 sorted by confidence: (.55, .62) acc 0; (.7, .8) acc 1; (.9, .95) acc 1
    hand_mass = (2 * abs(0 - 0.585) + 2 * abs(1 - 0.75) + 2 * abs(1 - 0.925)) / 6
    assert cmp.ece(p, y, n_bins=3, binning="mass") == pytest.approx(hand_mass, abs=1e-12)
    assert cmp.nll(p, y) == pytest.approx(-np.mean(np.log([0.95, 0.38, 0.7, 0.45, 0.8, 0.9])), abs=1e-12)
    onehot = np.eye(2)[y]
    assert cmp.brier(p, y) == pytest.approx(np.mean(((p - onehot) ** 2).sum(1)), abs=1e-12)
    assert cmp.brier(p, y) == pytest.approx(np.mean(2 * (1 - p[np.arange(6), y]) ** 2), abs=1e-12)
    # classwise ECE for 2 classes: class 1's bins mirror class 0's, so it equals class 0's ECE of p_0
    r = cmp.reliability(p, y, n_bins=5)
    assert r["count"].values.tolist() == [0, 0, 1, 3, 2]
    ds = cmp.calibration_metrics(p, y, n_bins=5, n_resamples=10)
    assert float(ds.estimate.sel(metric="ece")) == pytest.approx(hand, abs=1e-12)
    with pytest.raises(ValueError, match="^labels: "):
        cmp.ece(p, [0, 1, 2, 0, 0, 1])
    with pytest.raises(ValueError, match="^probs: "):
        cmp.ece(p * 2, y)


def test_calibration_against_netcal():
    netcal = pytest.importorskip("netcal.metrics")  # the bench extra (netcal 1.4.0)
    z, y = _planted(600, 2.0, seed=1)
    p = softmax(z, axis=1)
    for bins in (10, 15):
        # equal-width bins: netcal's ECE and MCE use the same bins ((b-1)/M, b/M]; no value sits on an edge
        assert cmp.ece(p, y, bins) == pytest.approx(netcal.ECE(bins).measure(p, y), abs=1e-10)
        assert cmp.mce(p, y, bins) == pytest.approx(netcal.MCE(bins).measure(p, y), abs=1e-10)
        # netcal's ACE is Neumann et al.'s *average* calibration error: the unweighted mean gap over
        # non-empty equal-width bins, not Nixon et al.'s adaptive one (equal-mass bins per class)
        r = cmp.reliability(p, y, bins)
        ok = r["count"] > 0
        mean_gap = float(np.abs(r.accuracy - r.confidence).where(ok).mean())
        assert mean_gap == pytest.approx(netcal.ACE(bins).measure(p, y), abs=1e-10)
        assert abs(cmp.ace(p, y, bins) - netcal.ACE(bins).measure(p, y)) > 1e-3


def test_temperature_scaling_recovers_a_planted_temperature():
    for T in (0.5, 2.5):
        z, y = _planted(6000, T, seed=2)
        assert cmp.fit_temperature(z, y) == pytest.approx(T, rel=0.05)
    z, y = _planted(1000, 2.5, seed=3)
    ds = cmp.temperature_scaling(z, y, n_resamples=10)
    e = ds.estimate
    assert float(e.sel(metric="nll", scaling="temperature")) < float(e.sel(metric="nll", scaling="none"))
    assert float(e.sel(metric="ece", scaling="temperature")) < 0.5 * float(e.sel(metric="ece", scaling="none"))
    # the NLL is stationary at the fitted T
    Tf = ds.attrs["temperature"]
    f = [cmp.nll(softmax(z / t, axis=1), y) for t in (Tf * 0.99, Tf, Tf * 1.01)]
    assert f[1] < f[0] and f[1] < f[2]


def test_calibration_probe_equals_the_plain_functions():
    m, _, (x, y) = tiny_classifier(80, seed=2)
    ds = cmp.calibration(m, (x, y), n_bins=10, temperature=True, n_resamples=10, progress=False)
    z = m(x).detach().double().numpy()
    p = softmax(z, axis=1)
    assert float(ds.estimate.sel(scaling="none", metric="ece")) == pytest.approx(cmp.ece(p, y, 10), abs=1e-10)
    assert float(ds.estimate.sel(scaling="none", metric="brier")) == pytest.approx(cmp.brier(p, y), abs=1e-10)
    assert ds.attrs["temperature"] == pytest.approx(cmp.fit_temperature(z, y), rel=1e-6)
    assert bool(((ds.low <= ds.estimate) & (ds.estimate <= ds.high)).all())
    assert int(ds.reliability_count.sel(scaling="none").sum()) == 80
    # a held-out fit: the temperature of the held-out logits, the metrics on data
    _, _, (x2, y2) = tiny_classifier(60, seed=5)
    held = cmp.calibration(m, (x, y), temperature=(x2, y2), n_resamples=10, progress=False)
    assert held.attrs["temperature"] == pytest.approx(cmp.fit_temperature(m(x2).detach().double(), y2), rel=1e-6)
    assert held.attrs["fit"] == "held-out data" and "temperature_data_fingerprint" in held.attrs["probe_params"]
    t = held.attrs["temperature"]
    assert float(held.estimate.sel(scaling="temperature", metric="nll")) == pytest.approx(
        cmp.nll(softmax(z / t, axis=1), y), rel=1e-10
    )


# -- divergences ---------------------------------------------------------------------------------------------


def test_divergences_equal_closed_forms():
    p, q = 0.3, 0.8
    P, Q = np.array([p, 1 - p]), np.array([q, 1 - q])
    kl_pq = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert float(cmp.kl(P, Q)) == pytest.approx(kl_pq, abs=1e-12)
    m = (p + q) / 2
    h = lambda t: -t * math.log(t) - (1 - t) * math.log(1 - t)  # noqa: E731
    assert float(cmp.js(P, Q)) == pytest.approx(h(m) - (h(p) + h(q)) / 2, abs=1e-12)
    assert float(cmp.tv(P, Q)) == pytest.approx(0.5, abs=1e-12)
    assert float(cmp.f_divergence(P, Q, lambda t: (t - 1) ** 2)) == pytest.approx(
        (p - q) ** 2 / q + (p - q) ** 2 / (1 - q), abs=1e-12
    )
    # from logits, forward and reverse; a categorical pair with a known KL
    d = cmp.from_logits(torch.tensor(np.log(P)[None]), torch.tensor(np.log(Q)[None]))
    assert float(d["kl"]) == pytest.approx(kl_pq, abs=1e-12)
    assert float(d["reverse_kl"]) == pytest.approx(float(cmp.kl(Q, P)), abs=1e-12)
    assert float(d["js"]) == pytest.approx(float(cmp.js(P, Q)), abs=1e-12)
    C = np.array([0.5, 0.25, 0.25])
    U = np.ones(3) / 3
    assert float(cmp.kl(C, U)) == pytest.approx(math.log(3) - 1.5 * math.log(2), abs=1e-12)
    # top-k: a lower bound; exact when the rest of the mass is split in the same proportions
    za, zb = torch.randn(50, 40), torch.randn(50, 40)
    full, top = cmp.from_logits(za, zb), cmp.from_logits(za, zb, top_k=5)
    for k in ("kl", "reverse_kl", "js", "tv"):
        assert bool((top[k] <= full[k] + 1e-12).all())


class _TokenLM(nn.Module):
    """Per-position logits that depend only on the token at that position."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Embedding(11, 7)
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(11, 7, generator=g))

    def forward(self, input_ids, attention_mask=None):
        return self.emb(input_ids)


def test_per_token_divergences_exclude_padding():
    a, b = _TokenLM(0), _TokenLM(1)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0], [9, 10, 0, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3], [2]])).long()
    other = ids.clone()
    other[mask == 0] = 4  # different tokens (so different logits) at the padded positions only
    r1 = cmp.output_divergence(a, b, {"input_ids": ids, "attention_mask": mask}, n_resamples=10, progress=False)
    assert r1.attrs["sequence"] == 1
    r2 = cmp.output_divergence(a, b, {"input_ids": other, "attention_mask": mask}, n_resamples=10, progress=False)
    assert r1.kl_token.dims == ("example", "position")
    assert bool(r1.kl_token.isnull().values.tolist() == (mask == 0).tolist())
    for v in ("kl", "reverse_kl", "js", "tv", "agreement", "mean", "low", "high"):
        np.testing.assert_array_equal(r1[v].values, r2[v].values)
    # the per-example value is the mean over real positions, the overall mean weights positions
    za, zb = a(ids).detach().double(), b(ids).detach().double()
    per = cmp.from_logits(za, zb)["kl"]
    assert float(r1.kl[1]) == pytest.approx(float(per[1, :3].mean()), rel=1e-12)
    assert float(r1["mean"].sel(kind="kl")) == pytest.approx(float(per[mask.bool()].mean()), rel=1e-12)
    # without the mask the padded positions count, and the values change
    r3 = cmp.output_divergence(a, b, {"input_ids": other}, n_resamples=10, progress=False)
    assert float(r3["mean"].sel(kind="kl")) != pytest.approx(float(r1["mean"].sel(kind="kl")))


def test_output_divergence_between_classifiers(tmp_path):
    import workbench as wb

    m, _, (x, _) = tiny_classifier(50, seed=0)
    m2, _, _ = tiny_classifier(50, seed=1)
    r = cmp.output_divergence(m, m2, x, n_resamples=10, progress=False)
    d = cmp.from_logits(m(x), m2(x))
    assert r.kl.values == pytest.approx(d["kl"].numpy(), rel=1e-10)
    agree = float(d["agree"].mean())
    assert float(r["mean"].sel(kind="agreement")) == pytest.approx(agree)
    assert float(r["mean"].sel(kind="disagreement")) == pytest.approx(1 - agree)
    top = cmp.output_divergence(m, m2, x, top_k=2, n_resamples=10, progress=False)
    wb.save(top, tmp_path / "div.nc")
    assert wb.load(tmp_path / "div.nc").attrs["approximation"] == top.attrs["approximation"]
    assert "lower bound" in top.attrs["approximation"]
    with pytest.raises(ValueError, match="^model_b: "):
        cmp.output_divergence(m, nn.Sequential(nn.Linear(4, 3)), x, progress=False)


# -- neural collapse -----------------------------------------------------------------------------------------


def test_neural_collapse_on_a_simplex_etf():
    C, d = 4, 6
    M = np.sqrt(C / (C - 1)) * (np.eye(C) - 1 / C)  # rows: a simplex ETF in R^C
    E = np.zeros((C, d))
    E[:, :C] = M @ _rot(C, 0)
    E = E @ _rot(d, 1)  # rotated into R^6
    y = np.repeat(np.arange(C), 5)
    shift = np.full(d, 1.5)  # a shift of the global mean (the classifier's bias absorbs it) changes nothing
    r = cmp.collapse_metrics(E[y] + shift, y, weight=2 * E, bias=-2 * E @ shift)
    assert r["nc1"] == pytest.approx(0.0, abs=1e-10)
    assert r["nc2"] == pytest.approx(0.0, abs=1e-10)
    assert r["nc2_equinorm"] == pytest.approx(0.0, abs=1e-10)
    assert r["nc2_equiangular"] == pytest.approx(0.0, abs=1e-10)
    assert r["nc3"] == pytest.approx(0.0, abs=1e-10)
    assert r["nc4"] == 1.0
    # off collapse: within-class noise raises NC1 to its closed form, a random classifier raises NC3
    noise = np.random.default_rng(0).normal(size=(len(y), d)) * 0.3
    r2 = cmp.collapse_metrics(E[y] + noise, y, weight=np.random.default_rng(1).normal(size=(C, d)))
    H = E[y] + noise
    mu = np.stack([H[y == c].mean(0) for c in range(C)])
    sw = sum(np.outer(h - mu[c], h - mu[c]) for h, c in zip(H, y)) / len(y)
    sb = (mu - H.mean(0)).T @ (mu - H.mean(0)) / C
    assert r2["nc1"] == pytest.approx(np.trace(sw @ np.linalg.pinv(sb)) / C, rel=1e-8)
    assert r2["nc1"] > 0.01 and r2["nc3"] > 0.5


def test_neural_collapse_probe_over_checkpoints():
    m, _, (x, y) = tiny_classifier(60, seed=0)
    m2, _, _ = tiny_classifier(60, seed=1)
    ds = cmp.neural_collapse({"early": m2, "late": m}, (x, y), progress=False)
    assert list(ds.checkpoint.values) == ["early", "late"]
    h = torch.tanh(m[0](x)).detach().numpy()
    ref = cmp.collapse_metrics(h, y.numpy(), weight=m[2].weight.detach().numpy())
    for k in ("nc1", "nc2", "nc3"):
        assert float(ds[k].sel(checkpoint="late")) == pytest.approx(ref[k], rel=1e-8)
    named = cmp.neural_collapse(m, (x, y), layer="1", progress=False)  # the Tanh's output: the same features
    for k in cmp.NC_METRICS:
        assert float(named[k].item()) == pytest.approx(float(ds[k].sel(checkpoint="late")), rel=1e-10)
    pred = m(x).argmax(1).numpy()
    assert float(ds.nc4.sel(checkpoint="late")) == pytest.approx(
        cmp.collapse_metrics(h, y.numpy(), predictions=pred)["nc4"]
    )


# -- front ends ----------------------------------------------------------------------------------------------


def test_compare_explorer_redraws_on_each_control():
    from workbench.widgets.compare import CompareExplorer

    a, _, (x, y) = tiny_classifier(40, seed=0)
    b, _, _ = tiny_classifier(40, seed=1)
    ex = CompareExplorer(a, b, (x, y), n_resamples=10, background=False)
    assert ex.last_error is None and len(ex.cka_fig.data) == 1 and len(ex.rel_fig.data) == 4
    assert float(ex.heatmap.sel(layer_a="0", layer_b="0")) == pytest.approx(
        cmp.linear_cka(a[0](x).detach(), b[0](x).detach()), rel=1e-8
    )
    ex.measure.value = "procrustes"
    assert ex.cka_fig.layout.title.text == "orthogonal Procrustes distance between layers"
    ex.n_bins.value = 4
    assert ex.rel_fig.layout.title.text == "reliability (none scaling, 4 equal-width bins)"
    assert len(ex.rel_fig.data[0].y) == 4
    ex.kind.value = "js"
    assert ex.div_fig.layout.title.text.startswith("Jensen-Shannon divergence (a vs b): mean ")
    assert ex.last_error is None


def test_compare_report_on_the_zoo(tmp_path, zoo_built):
    import re

    import workbench as wb
    from workbench import reports

    params = dict(runs=["sgd-small", "sam"], seeds=[0, 1], n_resamples=20)
    r = reports.run_report("compare", params, tmp_path)
    html = open(r["html"], encoding="utf-8").read()
    assert not re.search(r"""<(script|link|img|iframe)[^>]+(src|href)=["']https?://""", html)
    assert html.count('class="plotly-graph-div"') >= 3 and "Traceback" not in html and "results: " in html
    ds = wb.load(r["nc"])
    assert (
        ds.attrs["report"] == "compare" and sorted(ds.group.values.tolist()) == ["mlp-sam"] * 2 + ["mlp-sgd-small"] * 2
    )
    # the stored numbers are the probes' numbers
    x, y = zoo_built.data("test")
    m = zoo_built.load("mlp-sam-s1")
    cal = cmp.calibration(m, (x, y), temperature=True, n_resamples=20, progress=False)
    assert float(ds.calibration.sel(run="mlp-sam-s1", metric="ece")) == float(
        cal.estimate.sel(scaling="none", metric="ece")
    )
    assert float(ds.temperature.sel(run="mlp-sam-s1")) == cal.attrs["temperature"]
    h = cmp.cka_heatmap(zoo_built.load("mlp-sam-s0"), m, x, ["head"], n_resamples=20, progress=False)
    sel = (ds.seed_group == "mlp-sam") & (ds.layer == "head")
    assert ds.cka_between_seeds.where(sel, drop=True).item() == pytest.approx(h.item(), rel=1e-12)
    assert bool((ds.calibration_low <= ds.calibration).all() and (ds.calibration <= ds.calibration_high).all())
