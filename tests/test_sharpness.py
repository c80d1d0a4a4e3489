import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import workbench.sharpness as S
from workbench.curvature import CurvatureOperator, HessianOperator, rademacher
from workbench.objective import Objective

# -- fixtures ---------------------------------------------------------------------------------


class Quadratic(nn.Module):
    """L(theta) = 1/2 (theta - c)^T A (theta - c): Hessian A, gradient A (theta - c)."""

    def __init__(self, A, theta, center):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())
        self.register_buffer("A", A)
        self.register_buffer("center", center)

    def forward(self, x):
        d = self.theta - self.center
        return (0.5 * d @ self.A @ d).expand(x.shape[0])


def mean_out(out, y):
    return out.mean()


DUMMY = (torch.zeros(6, 1, dtype=torch.float64), torch.zeros(6, dtype=torch.float64))


def quadratic(spectrum, seed=0, offset=0.3):
    g = torch.Generator().manual_seed(seed)
    P = len(spectrum)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.as_tensor(spectrum, dtype=torch.float64)) @ Q.T
    center = torch.randn(P, generator=g, dtype=torch.float64)
    theta = center + offset * torch.randn(P, generator=g, dtype=torch.float64)
    return Quadratic(A, theta, center)


@pytest.fixture(scope="module")
def mlp():
    from workbench.zoo.datasets import digits

    x, y = digits("train")
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))  # 2,410 parameters
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    lf = nn.CrossEntropyLoss()
    for _ in range(200):
        loss = lf(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    for p in m.parameters():
        p.grad = None
    H = S.exact_hessian(copy.deepcopy(m).double(), lf, (x.double(), y), progress=False).values
    return m, lf, (x, y), H, np.linalg.eigvalsh(H)


# -- exact Hessian ----------------------------------------------------------------------------


def test_exact_hessian_equals_torch_func_hessian():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))
    lf = nn.CrossEntropyLoss()
    H = S.exact_hessian(m, lf, (x, y), progress=False).values
    names = [n for n, _ in m.named_parameters()]
    shapes = [p.shape for p in m.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    def f(flat):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            parts[n] = flat[i : i + k].reshape(s)
            i += k
        return lf(torch.func.functional_call(m, parts, (x,)), y)

    ref = torch.func.hessian(f)(flat0).numpy()
    np.testing.assert_allclose(H, ref, rtol=1e-10, atol=1e-12)


def test_exact_hessian_refuses_large_models():
    m = nn.Linear(200, 200)
    with pytest.raises(ValueError, match="GiB"):
        S.exact_hessian(m, nn.MSELoss(), (torch.randn(3, 200), torch.randn(3, 200)), max_params=1000)


# -- eigenvalues ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top5_within_1e4_with_at_most_25_hvps(mlp, seed):
    m, lf, data, H, ev = mlp
    top = ev[::-1][:5]
    r = S.hessian_eigenvalues(m, lf, data, k=5, seed=seed, progress=False)
    assert r.attrs["n_hvp"] <= 25
    vals = r["eigenvalue"].values
    np.testing.assert_allclose(vals, top, rtol=1e-4)
    assert np.all(r["residual"].values <= 1e-3 * np.abs(vals) + 1e-7)


def test_lanczos_agrees_with_scipy_eigsh_and_the_exact_hessian(mlp):
    """scipy's ARPACK stays a cross-check only: through HessianOperator.to_scipy(), not the probe."""
    from scipy.sparse.linalg import eigsh

    m, lf, data, H, ev = mlp
    r = S.hessian_eigenvalues(m, lf, data, k=3, return_eigenvectors=True, progress=False)
    op = HessianOperator(Objective(m, lf, data))
    ref = np.sort(eigsh(op.to_scipy(), k=3, which="LA", tol=1e-8, return_eigenvectors=False))[::-1]
    np.testing.assert_allclose(ref, ev[::-1][:3], rtol=1e-5)
    np.testing.assert_allclose(r.eigenvalue.values, ev[::-1][:3], rtol=1e-4)
    np.testing.assert_allclose(r.eigenvalue.values, ref, rtol=1e-4)
    v = r.eigenvector.values[0]
    assert r.eigenvector.dtype == np.float64 and abs(np.linalg.norm(v) - 1) < 1e-6
    assert np.linalg.norm(H @ v - ev[-1] * v) < 1e-3 * ev[-1]
    assert abs(abs(v @ np.linalg.eigh(H)[1][:, -1]) - 1) < 1e-3
    with pytest.raises(ValueError, match=r"^method: 'eigsh' was removed.*to_scipy\(\)"):
        S.hessian_eigenvalues(m, lf, data, k=3, method="eigsh", progress=False)


def test_largest_algebraic_not_largest_magnitude():
    spec = [-5.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, -0.1]
    q = quadratic(spec)
    r = S.hessian_eigenvalues(q, mean_out, DUMMY, k=2, progress=False)
    np.testing.assert_allclose(r["eigenvalue"].values, [3.0, 2.0], rtol=1e-8)
    s = S.hessian_eigenvalues(q, mean_out, DUMMY, k=2, which="smallest", progress=False)
    np.testing.assert_allclose(s["eigenvalue"].values, [-5.0, -0.1], rtol=1e-8)


def test_parameter_subset_gives_the_block_spectrum(mlp):
    m, lf, data, H, ev = mlp
    r = S.hessian_eigenvalues(m, lf, data, k=3, params=["2"], progress=False)  # last Linear: 330 params
    blk = H[-330:, -330:]
    np.testing.assert_allclose(r["eigenvalue"].values, np.linalg.eigvalsh(blk)[::-1][:3], rtol=1e-4)


def test_double_backward_engine_matches_func(mlp):
    m, lf, data, H, ev = mlp
    a = S.hessian_eigenvalues(m, lf, data, k=2, engine="func", progress=False)
    b = S.hessian_eigenvalues(m, lf, data, k=2, engine="double_backward", progress=False)
    np.testing.assert_allclose(a["eigenvalue"].values, b["eigenvalue"].values, rtol=1e-5)


def test_hvp_is_sample_weighted_over_uneven_batches(mlp):
    m, lf, (x, y), H, ev = mlp
    loader = DataLoader(TensorDataset(x, y), batch_size=500)  # 500, 500, 347
    r = S.hessian_eigenvalues(m, lf, loader, k=1, progress=False)
    np.testing.assert_allclose(r["eigenvalue"].values, ev[-1:], rtol=1e-4)


# -- trace ------------------------------------------------------------------------------------


def test_exact_trace(mlp):
    m, lf, data, H, ev = mlp
    t = S.hessian_trace(m, lf, data, method="exact", progress=False)
    assert float(t) == pytest.approx(np.trace(H), rel=1e-5)


def test_hutchpp_within_1pct_median_over_seeds(mlp):
    m, lf, data, H, ev = mlp
    tr = np.trace(H)
    errs = [abs(float(S.hessian_trace(m, lf, data, n_hvp=100, seed=s, progress=False)) - tr) / tr for s in range(8)]
    hutch = [
        abs(float(S.hessian_trace(m, lf, data, n_hvp=100, method="hutchinson", seed=s, progress=False)) - tr) / tr
        for s in range(8)
    ]
    assert np.median(errs) < 0.01
    assert np.median(errs) < np.median(hutch)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_stderr_coverage_on_a_known_spectrum(method):
    spec = np.r_[np.linspace(10, 2, 10), np.abs(np.random.default_rng(0).normal(0, 0.3, 70))]
    q = quadratic(spec, offset=0.0)
    hits = []
    for s in range(120):
        t = S.hessian_trace(q, mean_out, DUMMY, n_hvp=30, method=method, seed=s, progress=False)
        hits.append(t.attrs["ci_low"] <= spec.sum() <= t.attrs["ci_high"])
    cover = np.mean(hits)
    assert (0.85 if method != "xtrace" else 0.75) <= cover <= 1.0, cover


def test_trace_stops_on_a_confidence_interval(mlp):
    m, lf, data, H, ev = mlp
    t = S.hessian_trace(m, lf, data, n_hvp=20, method="hutchinson", rtol=0.03, progress=False)
    half = (t.attrs["ci_high"] - t.attrs["ci_low"]) / 2
    assert half <= 0.03 * abs(float(t)) and t.attrs["n_hvp"] > 20


# -- spectral density -------------------------------------------------------------------------


def test_slq_density_integrates_to_one_and_matches_moments(mlp):
    m, lf, data, H, ev = mlp
    P = H.shape[0]
    d = S.spectral_density(m, lf, data, n_runs=3, n_lanczos=30, seed=4, progress=False)
    assert np.trapezoid(d.values, d.eigenvalue.values) == pytest.approx(1.0, abs=1e-3)
    nodes = d.attrs["slq_nodes"].reshape(3, -1)
    w = d.attrs["slq_weights"].reshape(3, -1)
    rng = np.random.default_rng(4)
    qs = []
    for _ in range(3):
        v = rademacher(rng, P).numpy()
        q = v / np.linalg.norm(v)
        qs.append(q)
    first = (nodes * w).sum(1)  # exact Gauss quadrature: e1^T T e1 = q^T H q
    np.testing.assert_allclose(first, [q @ H @ q for q in qs], rtol=1e-4)
    second = (nodes**2 * w).sum(1)  # e1^T T^2 e1 = ||H q||^2
    np.testing.assert_allclose(second, [np.sum((H @ q) ** 2) for q in qs], rtol=1e-3)
    assert first.mean() == pytest.approx(np.trace(H) / P, rel=0.25)
    np.testing.assert_allclose(w.sum(1), 1, rtol=1e-10)
    wide = S.density_from_nodes(nodes, w, sigma=0.05)
    assert wide.attrs["sigma"] == 0.05
    assert np.trapezoid(wide.values, wide.eigenvalue.values) == pytest.approx(1, abs=1e-3)


# -- sharpness in a ball: closed forms on a quadratic ------------------------------------------


def _qparts(q):
    A, c, th = q.A, q.center, q.theta.detach()
    g = A @ (th - c)
    L = lambda t: float(0.5 * (t - c) @ A @ (t - c))  # noqa: E731
    return A, th, g, L


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_and_asam_closed_form(adaptive):
    q = quadratic([4.0, 2.0, 1.0, 0.5, 0.1])
    A, th, g, L = _qparts(q)
    rho = 0.05
    c = th.abs() if adaptive else torch.ones_like(th)
    eps = rho * c**2 * g / torch.linalg.norm(c * g)
    ref = L(th + eps) - L(th)
    r = S.sam_sharpness(q, mean_out, DUMMY, rho=rho, adaptive=adaptive, progress=False)
    assert float(r) == pytest.approx(ref, rel=1e-10)
    inf = S.sam_sharpness(q, mean_out, DUMMY, rho=rho, adaptive=adaptive, norm="inf", progress=False)
    assert float(inf) == pytest.approx(L(th + rho * c * torch.sign(g)) - L(th), rel=1e-10)


def test_sam_rho_sweep_and_batches(mlp):
    m, lf, (x, y), H, ev = mlp
    r = S.sam_sharpness(
        m, lf, DataLoader(TensorDataset(x, y), batch_size=300), rho=[0.0, 0.02, 0.05, 0.1], progress=False
    )
    assert r.dims == ("rho",) and float(r[0]) == 0.0
    assert np.all(np.diff(r.values) > 0)
    assert np.all(np.isfinite(r.stderr.values[1:])) and np.all(r.stderr.values[1:] > 0)
    one = S.sam_sharpness(m, lf, (x, y), rho=0.05, progress=False)
    assert math.isnan(float(one.stderr))  # one batch: no spread to estimate from
    assert float(one) == pytest.approx(float(r.sel(rho=0.05)), rel=1e-5)  # batching does not change the value
    full_m = S.sam_sharpness(m, lf, (x, y), rho=0.05, m=len(y), progress=False)
    assert float(full_m) == pytest.approx(float(one), rel=1e-5)
    m32 = S.sam_sharpness(m, lf, (x, y), rho=0.05, m=128, progress=False)
    assert float(m32.stderr) > 0 and float(m32) != pytest.approx(float(one), rel=1e-3)


def test_worst_case_reaches_the_top_eigen_direction_at_a_minimum():
    spec = [4.0, 2.0, 1.0, 0.5, 0.1, 0.05]
    q = quadratic(spec, offset=0.0)  # theta = center: gradient zero
    rho = 0.1
    r = S.worst_case_sharpness(q, mean_out, DUMMY, rho=rho, adaptive=False, n_steps=60, progress=False)
    assert float(r) == pytest.approx(0.5 * rho**2 * 4.0, rel=1e-2)
    assert float(r) <= 0.5 * rho**2 * 4.0 * (1 + 1e-9)


def test_worst_case_between_first_order_and_upper_bound():
    q = quadratic([4.0, 2.0, 1.0, 0.5, 0.1])
    A, th, g, L = _qparts(q)
    rho = 0.2
    sam = float(S.sam_sharpness(q, mean_out, DUMMY, rho=rho, progress=False))
    wc = float(S.worst_case_sharpness(q, mean_out, DUMMY, rho=rho, adaptive=False, n_steps=30, progress=False))
    upper = rho * float(torch.linalg.norm(g)) + 0.5 * rho**2 * 4.0
    assert sam <= wc + 1e-12 <= upper + 1e-12
    # the maximiser of this trust-region problem, by brute force on the sphere (P = 5)
    rng = np.random.default_rng(0)
    best = max(L(th + rho * torch.from_numpy(v / np.linalg.norm(v))) - L(th) for v in rng.normal(size=(20000, 5)))
    assert wc >= best - 1e-4


def test_average_sharpness_closed_form():
    q = quadratic([4.0, 2.0, 1.0, 0.5, 0.1])
    A, th, g, L = _qparts(q)
    rho = 0.05
    r = S.average_sharpness(q, mean_out, DUMMY, rho=rho, n_draws=400, progress=False)
    ref = 0.5 * rho**2 * float(torch.trace(A))  # E[g^T d + d^T A d / 2], d ~ N(0, rho^2 I)
    assert abs(float(r) - ref) < 4 * float(r.stderr)
    ra = S.average_sharpness(q, mean_out, DUMMY, rho=rho, adaptive=True, n_draws=400, progress=False)
    ref_a = 0.5 * rho**2 * float((th**2 * torch.diag(A)).sum())
    assert abs(float(ra) - ref_a) < 4 * float(ra.stderr)


def test_keskar_on_a_linear_loss_hits_the_box_vertex():
    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))

        def forward(self, x):
            return (
                x @ torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64) * 0
                + self.w @ torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
                + 2.0
            ).expand(x.shape[0])

    m = Lin()
    data = (torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    eps = 1e-3
    r = S.keskar_sharpness(m, mean_out, data, eps=eps)
    a = np.array([0.3, -0.2, 0.1])
    w = np.array([1.0, -2.0, 0.5])
    L0 = w @ a + 2.0
    ref = 100 * (np.abs(a) * eps * (np.abs(w) + 1)).sum() / (1 + L0)
    assert float(r) == pytest.approx(ref, rel=1e-6)


def test_gam_one_step_closed_form():
    q = quadratic([4.0, 2.0, 1.0, 0.5, 0.1])
    A, th, g, L = _qparts(q)
    rho = 0.05
    u = A @ (g / torch.linalg.norm(g))
    tp = th + rho * u / torch.linalg.norm(u)
    ref = rho * max(float(torch.linalg.norm(A @ (tp - q.center))), float(torch.linalg.norm(g)))
    r = S.gam_flatness(q, mean_out, DUMMY, rho=rho)
    assert float(r) == pytest.approx(ref, rel=1e-10)
    assert r.attrs["grad_norm"] == pytest.approx(float(torch.linalg.norm(g)))


def test_bad_arguments_name_themselves(mlp):
    m, lf, data, H, ev = mlp
    with pytest.raises(ValueError, match="rho"):
        S.sam_sharpness(m, lf, data, rho=-1, progress=False)
    with pytest.raises(ValueError, match="k:"):
        S.hessian_eigenvalues(m, lf, data, k=0, progress=False)
    with pytest.raises(ValueError, match="method"):
        S.hessian_trace(m, lf, data, method="magic", progress=False)
    with pytest.raises(ValueError, match="norm"):
        S.sam_sharpness(m, lf, data, norm=3, progress=False)
    with pytest.raises(ValueError, match="m:"):
        S.sam_sharpness(m, lf, data, m=10**6, progress=False)


def test_summary_over_checkpoints(zoo_built, tmp_path):
    zoo = zoo_built
    x, y = zoo.data("train")
    cks = {c["step"]: c["model"] for c in zoo.checkpoints("mlp-sgd-small-s0")[-2:]}
    ds = S.summary(cks, nn.CrossEntropyLoss(), (x[:400], y[:400]), k=2, n_hvp=12, n_draws=3, progress=False)
    assert ds.lambda_max.dims == ("checkpoint",) and ds.sizes["checkpoint"] == 2
    assert np.all(ds.lambda_max.values > 0) and np.all(ds.trace.values > ds.lambda_max.values)
    np.testing.assert_allclose(ds.trace_per_param.values, ds.trace.values / 8970, rtol=1e-12)  # P of the demo MLP
    np.testing.assert_allclose(ds.lambda_max_over_trace.values, ds.lambda_max.values / ds.trace.values, rtol=1e-12)
    import workbench as wb

    wb.save(ds, tmp_path / "summary.nc")
    assert wb.load(tmp_path / "summary.nc").identical(ds)


def test_zoo_sharpness_measures_agree_on_the_cnn_and_disagree_on_the_mlp(zoo_built):
    """lambda_max ranks large batch sharpest for both architectures (3 seeds); adaptive (ASAM)
    sharpness agrees on the CNN but not on the MLP, whose full-batch run ends with a tiny gradient
    and smaller weights: the measures disagree, as Andriushchenko et al. (2023) report."""
    zoo = zoo_built
    x, y = zoo.data("train")
    lf = nn.CrossEntropyLoss()
    for arch in ("mlp", "cnn"):
        for seed in (0, 1, 2):
            lam, asam = {}, {}
            for run in ("sgd-small", "sgd-large", "sam"):
                m = zoo.load(f"{arch}-{run}-s{seed}")
                lam[run] = float(S.hessian_eigenvalues(m, lf, (x, y), k=1, progress=False)["eigenvalue"][0])
                asam[run] = float(S.sam_sharpness(m, lf, (x, y), rho=0.5, adaptive=True, progress=False))
            assert lam["sgd-large"] > 3 * max(lam["sgd-small"], lam["sam"]), (arch, seed, lam)
            if arch == "cnn":
                assert asam["sgd-large"] > max(asam["sgd-small"], asam["sam"]), (arch, seed, asam)
            else:
                assert asam["sgd-large"] < asam["sgd-small"], (arch, seed, asam)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda m, lf, d: S.spectral_density(m, lf, d, n_lanczos=1, progress=False), "n_lanczos"),
        (lambda m, lf, d: S.spectral_density(m, lf, d, n_runs=0, progress=False), "n_runs"),
        (lambda m, lf, d: S.hessian_trace(m, lf, d, rtol=-0.1, progress=False), "rtol"),
        (lambda m, lf, d: S.hessian_trace(m, lf, d, confidence=95, progress=False), "confidence"),
        (lambda m, lf, d: S.sam_sharpness(m, lf, d, mode="inference", progress=False), "mode: expected"),
    ],
)
def test_more_bad_arguments_name_themselves(call, words):
    from workbench.testing import tiny_classifier

    with pytest.raises(ValueError, match=words):
        call(*tiny_classifier())


# -- the operator, progress and the restructured API ---------------------------------------------


def test_hessian_operator_matches_the_exact_hessian_in_every_interface():
    q = quadratic([4.0, 2.0, 1.0, 0.5, 0.1])
    op = HessianOperator(Objective(q, mean_out, DUMMY))
    A = q.A.numpy()
    V = torch.randn(5, 3, dtype=torch.float64)
    np.testing.assert_allclose(op.matmat(V).numpy(), A @ V.numpy(), rtol=1e-10)
    np.testing.assert_allclose(op.matvec(V[:, 0]).numpy(), A @ V[:, 0].numpy(), rtol=1e-10)
    np.testing.assert_allclose((op @ V).numpy(), A @ V.numpy(), rtol=1e-10)
    lo = op.to_scipy()
    assert lo.dtype == np.float64 and lo.shape == (5, 5)
    np.testing.assert_allclose(lo @ np.ones(5), A @ np.ones(5), rtol=1e-10)
    np.testing.assert_allclose(op.dense(), A, rtol=1e-10, atol=1e-12)
    assert op.n_products == 3 + 1 + 3 + 1 + 5
    with pytest.raises(ValueError, match="engine"):
        HessianOperator(Objective(q, mean_out, DUMMY), engine="magic")
    with pytest.raises(NotImplementedError, match="product"):
        CurvatureOperator(3).matvec(torch.ones(3))


PROBE_CALLS = {
    "exact_hessian": lambda m, lf, d, **k: S.exact_hessian(m, lf, d, params=["2"], chunk=4, **k),
    "hessian_eigenvalues": lambda m, lf, d, **k: S.hessian_eigenvalues(m, lf, d, k=1, **k),
    "hessian_trace": lambda m, lf, d, **k: S.hessian_trace(m, lf, d, n_hvp=6, **k),
    "spectral_density": lambda m, lf, d, **k: S.spectral_density(m, lf, d, n_runs=2, n_lanczos=4, **k),
    "sam_sharpness": lambda m, lf, d, **k: S.sam_sharpness(m, lf, d, rho=[0.01, 0.05], **k),
    "worst_case_sharpness": lambda m, lf, d, **k: S.worst_case_sharpness(m, lf, d, n_steps=3, **k),
    "average_sharpness": lambda m, lf, d, **k: S.average_sharpness(m, lf, d, n_draws=3, **k),
    "keskar_sharpness": lambda m, lf, d, **k: S.keskar_sharpness(m, lf, d, maxiter=3, **k),
    "gam_flatness": lambda m, lf, d, **k: S.gam_flatness(m, lf, d, n_steps=3, **k),
    "summary": lambda m, lf, d, **k: S.summary([m, m], lf, d, k=1, n_hvp=4, n_draws=2, **k),
}


@pytest.mark.parametrize("name", sorted(PROBE_CALLS))
def test_every_loop_reports_progress_and_stops_on_cancel(name):
    import threading

    from workbench.registry import Cancelled
    from workbench.testing import tiny_classifier

    calls = []
    PROBE_CALLS[name](*tiny_classifier(), progress=lambda done, total: calls.append((done, total)))
    assert len(calls) >= 2 and calls[-1][0] >= 2, calls

    ev = threading.Event()

    def stop_after_first(done, total):
        ev.set()

    with pytest.raises(Cancelled):
        PROBE_CALLS[name](*tiny_classifier(), progress=stop_after_first, cancel=ev)


def test_gradient_norm_is_a_probe_result():
    q = quadratic([4.0, 2.0, 1.0])
    A, th, g, L = _qparts(q)
    r = S.gradient_norm(q, mean_out, DUMMY)
    assert r.dims == () and r.attrs["probe"] == "sharpness.gradient_norm"
    assert float(r) == pytest.approx(float(torch.linalg.norm(g)), rel=1e-12)


def test_rho_ball_probes_share_defaults_and_eigenvalues_are_a_dataset():
    import inspect

    for f in (S.sam_sharpness, S.worst_case_sharpness, S.average_sharpness):
        p = inspect.signature(f).parameters
        assert (p["rho"].default, p["adaptive"].default) == (0.05, False), f.__name__
    assert "n_draws" in inspect.signature(S.average_sharpness).parameters
    q = quadratic([3.0, 2.0, 1.0])
    ds = S.hessian_eigenvalues(q, mean_out, DUMMY, k=2, progress=False)
    assert set(ds.data_vars) == {"eigenvalue", "residual", "converged"}
    assert ds.attrs["probe"] == "curvature.hessian_eigenvalues" and bool(ds.converged.all())
    ds = S.hessian_eigenvalues(q, mean_out, DUMMY, k=2, return_eigenvectors=True, progress=False)
    assert ds["eigenvector"].dims == ("rank", "param")


def test_summary_of_one_model_and_of_a_list():
    from workbench.testing import tiny_classifier

    m, lf, d = tiny_classifier()
    one = S.summary(m, lf, d, k=2, n_hvp=6, n_draws=2, progress=False)
    assert "checkpoint" not in one.dims and one["eigenvalues"].dims == ("rank",)
    assert one.attrs["probe"] == "sharpness.summary" and "data_fingerprint" in one.attrs
    assert all("probe" not in one[v].attrs and "probe_params" not in one[v].attrs for v in one.variables)
    many = S.summary([m, m], lf, d, k=2, n_hvp=6, n_draws=2, progress=False)
    assert list(many.checkpoint.values) == ["0", "1"]
    np.testing.assert_array_equal(many["lambda_max"].values, [float(one["lambda_max"])] * 2)
    with pytest.raises(ValueError, match="models: empty"):
        S.summary([], lf, d, progress=False)


# -- bad arguments, non-finite losses, fewer and unconverged eigenvalues -------------------------------------


def _small():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return m, nn.CrossEntropyLoss(), (torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,)))


@pytest.mark.parametrize(
    "probe, kw, exc, msg",
    [
        ("exact_hessian", dict(chunk=-1), ValueError, "^chunk: expected an int >= 1"),
        ("exact_hessian", dict(max_params=2.5), ValueError, "^max_params: expected an int"),
        ("hessian_eigenvalues", dict(k=True), TypeError, "^k: expected an int, got True"),
        ("hessian_eigenvalues", dict(max_hvp=0), ValueError, "^max_hvp: expected an int in 1.."),
        ("hessian_eigenvalues", dict(tol=float("nan")), ValueError, "^tol: expected a finite number"),
        ("hessian_trace", dict(n_hvp=10**12), ValueError, "^n_hvp: expected an int in 4..10000000"),
        ("hessian_trace", dict(confidence=1.0), ValueError, "^confidence: expected a number > 0 and < 1"),
        ("spectral_density", dict(n_runs=1.5), ValueError, "^n_runs: expected an int"),
        ("spectral_density", dict(grid=[0.0, float("nan")]), ValueError, "^grid: contains NaN or inf"),
        ("sam_sharpness", dict(rho="0.1"), TypeError, "^rho: expected a number"),
        ("sam_sharpness", dict(m=0), ValueError, "^m: expected an int >= 1"),
        ("sam_sharpness", dict(adaptive=1), TypeError, "^adaptive: expected True or False"),
        ("worst_case_sharpness", dict(eta=-1.0), ValueError, "^eta: expected a number >= 0"),
        ("average_sharpness", dict(n_draws=True), TypeError, "^n_draws: expected an int"),
        ("keskar_sharpness", dict(maxiter=float("inf")), ValueError, "^maxiter: expected an int"),
        ("gam_flatness", dict(n_steps=0), ValueError, "^n_steps: expected an int in 1.."),
        ("summary", dict(adaptive_rho=-0.5), ValueError, "^adaptive_rho: expected a number >= 0"),
    ],
)
def test_bad_numeric_arguments_are_named(probe, kw, exc, msg):
    m, lf, data = _small()
    with pytest.raises(exc, match=msg):
        getattr(S, probe)(m, lf, data, progress=False, **kw)


@pytest.mark.parametrize(
    "probe, kw",
    [
        ("hessian_eigenvalues", dict(k=2)),
        ("hessian_eigenvalues", dict(k=2, reorth="selective", basis="host-float32")),
        ("spectral_density", dict(n_runs=1, n_lanczos=4)),
        ("hessian_trace", dict(n_hvp=6)),
        ("exact_hessian", {}),
        ("sam_sharpness", {}),
        ("average_sharpness", dict(n_draws=2)),
        ("gam_flatness", {}),
        ("gradient_norm", {}),
    ],
)
def test_a_nan_loss_is_a_clear_error_never_a_linalg_error_or_a_nan(probe, kw):
    m, _, data = _small()

    def nan_loss(out, y):
        return nn.functional.cross_entropy(out, y) * float("nan")

    with pytest.raises(ValueError, match="^data: the mean loss is nan at the model's parameters"):
        getattr(S, probe)(m, nan_loss, data, progress=False, **kw)


def test_non_finite_second_derivatives_and_perturbed_losses_name_their_cause():
    m = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        m.weight.zero_()
    data = (torch.ones(4, 2, dtype=torch.float64), torch.zeros(4, 1, dtype=torch.float64))

    def sqrt_abs(out, y):  # finite loss, infinite curvature at out == y
        return (out - y).abs().sqrt().mean()

    with pytest.raises(ValueError, match="^model: a Hessian-vector product has NaN or inf entries"):
        S.hessian_trace(m, sqrt_abs, data, n_hvp=4, progress=False)
    mm, lf, d = _small()
    with pytest.raises(ValueError, match="^rho: the mean loss is (inf|nan) at a point"):
        S.sam_sharpness(mm, lambda o, y: lf(o, y) * torch.exp(o.abs().max()), d, rho=1e3, progress=False)
    g = S.Ball(torch.zeros(2, dtype=torch.float64), rho=1.0).first_order(
        torch.tensor([1e200, 1e200], dtype=torch.float64)
    )
    assert torch.allclose(g, torch.tensor([0.5**0.5, 0.5**0.5], dtype=torch.float64))  # no overflow to 0


def test_fewer_or_unconverged_eigenvalues_come_with_a_warning_and_a_converged_variable():
    m = nn.Linear(4, 1, bias=False).double()
    x = torch.ones(6, 4, dtype=torch.float64)  # rank-1 data: the Hessian 2 x x^T / N has rank 1
    sq = nn.MSELoss()
    with pytest.warns(RuntimeWarning, match="only 2 were found"):
        ds = S.hessian_eigenvalues(m, sq, (x, torch.zeros(6, 1, dtype=torch.float64)), k=3, progress=False)
    assert ds.sizes["rank"] == 2 and bool(ds.converged.all())
    assert float(ds.eigenvalue[0]) == pytest.approx(2 * 4.0, rel=1e-10)  # 2 ||x||^2
    q = quadratic(np.linspace(1, 10, 30))
    with pytest.warns(RuntimeWarning, match="did not converge|converged"):
        ds = S.hessian_eigenvalues(q, mean_out, DUMMY, k=3, max_hvp=4, progress=False)
    assert ds.converged.dtype == bool and not bool(ds.converged.all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the converged case says nothing
        ok = S.hessian_eigenvalues(q, mean_out, DUMMY, k=3, progress=False)
    assert bool(ok.converged.all())


def _tiny_bert(attn, path=None):
    from transformers import BertConfig, BertForSequenceClassification

    if path is None:
        cfg = BertConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
            num_labels=3,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return BertForSequenceClassification(cfg)
    return BertForSequenceClassification.from_pretrained(path, attn_implementation=attn, dtype=torch.float64).eval()


class _Logits(nn.Module):
    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids, attention_mask):
        return self.hf(input_ids=input_ids, attention_mask=attention_mask).logits


def test_hvp_probes_run_on_an_sdpa_transformer_and_equal_its_eager_twin(tmp_path, monkeypatch):
    """HF BERT under sdpa (a fused CPU kernel without a second derivative): curvature runs through the math backend
    and equals the exact Hessian of the same weights under eager attention; without the switch it fails."""
    import contextlib

    import workbench.curvature.operators as ops

    _tiny_bert(None).save_pretrained(tmp_path)
    sdpa, eager = _Logits(_tiny_bert("sdpa", tmp_path)), _Logits(_tiny_bert("eager", tmp_path))
    assert sdpa.hf.config._attn_implementation == "sdpa"
    g = torch.Generator().manual_seed(1)
    ids, mask = torch.randint(1, 50, (6, 8), generator=g), torch.ones(6, 8, dtype=torch.long)
    mask[2, 5:] = 0
    data = ({"input_ids": ids, "attention_mask": mask}, torch.randint(0, 3, (6,), generator=g))
    lf, P = nn.CrossEntropyLoss(), r"attention\.self\.(query|key)\."
    H = S.exact_hessian(eager, lf, data, params=P, progress=False).values
    top = np.linalg.eigvalsh(H)[::-1][:2]
    r = S.hessian_eigenvalues(sdpa, lf, data, k=2, params=P, tol=1e-6, progress=False)
    np.testing.assert_allclose(r.eigenvalue.values, top, rtol=1e-6)
    tr = S.hessian_trace(sdpa, lf, data, method="exact", params=P, progress=False)
    assert float(tr) == pytest.approx(np.trace(H), rel=1e-9)
    monkeypatch.setattr(ops, "sdpa_kernel", lambda *a: contextlib.nullcontext())  # the fused kernel, as before
    with pytest.raises(Exception, match="derivative|not implemented"):
        S.hessian_eigenvalues(sdpa, lf, data, k=2, params=P, engine="double_backward", progress=False)
