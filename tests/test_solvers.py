"""The torch-native solvers of workbench.curvature (Lanczos, Hutchinson, Hutch++, XTrace, SLQ) against exact
spectra and traces: diagonal and random symmetric matrices as torch mat-muls, and the Hessian of a small MLP."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import workbench.curvature.probing as probing
from workbench.curvature import (
    HessianOperator,
    exact_hessian,
    hessian_eigenvalues,
    hessian_trace,
    hutchinson,
    hutchpp,
    lanczos,
    rademacher,
    ritz,
    slq,
    spectral_density,
    xtrace,
)
from workbench.curvature.probing import KrylovBasis, resolve_basis
from workbench.objective import Objective

BASES = ["auto", "float64", "float32", "host-float64", "host-float32"]
DTYPES = [torch.float64, torch.float32]


def sym(spectrum, seed=0, dtype=torch.float64):
    """A random symmetric matrix with the given eigenvalues (exactly, up to the dtype's rounding)."""
    g = torch.Generator().manual_seed(seed)
    n = len(spectrum)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (Q @ torch.diag(torch.as_tensor(spectrum, dtype=torch.float64)) @ Q.T).to(dtype)


SPECTRUM = np.r_[[10.0, 9.0, 7.5, 6.0, 5.0], np.linspace(2.0, -3.0, 195)]  # top-5 well separated, negatives too
EPS_TOL = {torch.float64: 1e-10, torch.float32: 2e-5}  # relative to ||A||: roundoff of the working precision


# -- rademacher ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [7, (5, 3), (1, 1)])
def test_rademacher_is_the_numpy_stream_in_any_chunking(shape, monkeypatch):
    ref = np.random.default_rng(11).integers(0, 2, size=shape) * 2.0 - 1
    monkeypatch.setattr(probing, "CHUNK", 4)  # chunk boundaries inside the draw
    z = rademacher(np.random.default_rng(11), shape, dtype=torch.float32)
    assert z.dtype == torch.float32 and z.device.type == "cpu" and tuple(z.shape) == ref.shape
    np.testing.assert_array_equal(z.numpy(), ref)
    rng = np.random.default_rng(11)
    rademacher(rng, shape)
    assert rng.integers(0, 1000) == (lambda r: (r.integers(0, 2, size=shape), r.integers(0, 1000))[1])(
        np.random.default_rng(11)
    )  # the generator advances exactly as one integers() call would


# -- Lanczos on exact spectra -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("basis", BASES)
@pytest.mark.parametrize("reorth", ["full", "selective"])
def test_lanczos_top_and_bottom_eigenvalues_every_basis_and_reorth(dtype, basis, reorth):
    A = sym(SPECTRUM, dtype=dtype)
    v0 = rademacher(np.random.default_rng(0), 200, dtype=dtype)
    res = lanczos(
        lambda v: A @ v, v0, 120, k=5, tol=1e-8 if dtype == torch.float64 else 1e-5, basis=basis, reorth=reorth
    )
    assert res.basis == (("float64" if dtype == torch.float64 else "float32") if basis == "auto" else basis)
    assert res.reorth == reorth and res.n_matvec < 120  # stopped on the residuals
    vals, S, resid = ritz(res, 5)
    np.testing.assert_allclose(vals, SPECTRUM[:5], atol=10 * EPS_TOL[dtype] * max(SPECTRUM))
    Y = res.vectors(S)  # Ritz vectors in parameter space: their true residuals are the Lanczos estimates
    assert Y.dtype == dtype and Y.shape == (200, 5)
    true = torch.linalg.vector_norm(A.double() @ Y.double() - Y.double() * torch.as_tensor(vals), dim=0).numpy()
    coarse = torch.float32 if "float32" in res.basis else dtype  # a float32 basis rounds the vectors, not T
    np.testing.assert_allclose(true, resid, atol=10 * EPS_TOL[coarse] * max(SPECTRUM))
    low = lanczos(lambda v: A @ v, v0, 200, k=1, which="smallest", tol=1e-6, basis=basis, reorth=reorth)
    assert ritz(low, 1, "smallest")[0][0] == pytest.approx(-3.0, abs=1e-3 if dtype == torch.float32 else 1e-8)


def test_selective_agrees_with_full_and_reads_the_basis_less():
    """A spectrum where plain Lanczos makes spurious copies of the top eigenvalues: selective
    reorthogonalisation (Parlett & Scott) gives the full method's Ritz values, a semi-orthogonal basis, no
    copies, and reads fewer stored vectors."""
    spec = np.r_[100.0, 99.0, 50.0, np.linspace(1.0, 0.0, 297)]
    A = sym(spec, seed=3)
    v0 = rademacher(np.random.default_rng(1), 300)
    full = lanczos(lambda v: A @ v, v0, 80, reorth="full")
    sel = lanczos(lambda v: A @ v, v0, 80, reorth="selective")
    assert full.n_matvec == sel.n_matvec == 80
    np.testing.assert_allclose(ritz(sel, 3)[0], spec[:3], rtol=1e-12)
    np.testing.assert_allclose(ritz(sel, 10)[0], ritz(full, 10)[0], rtol=1e-9, atol=1e-9)
    theta = np.linalg.eigvalsh(sel.tridiagonal())
    assert np.sum(np.abs(theta - 100.0) < 1e-6) == 1  # one copy of each converged eigenvalue
    Q = sel.Q
    assert (Q.T @ Q - torch.eye(80, dtype=Q.dtype)).abs().max() < 1e-6  # semi-orthogonal: ~sqrt(eps)
    assert sel.basis_reads < full.basis_reads / 4, (sel.basis_reads, full.basis_reads)
    assert full.basis_reads == 80 * 81  # two block reads of the j + 1 stored vectors per step
    nore = _plain_lanczos(A, v0, 80)
    assert np.sum(np.abs(nore - 100.0) < 1e-6) > 1  # without reorthogonalisation: ghost copies


def _plain_lanczos(A, v0, m):
    q, qp, b = v0 / v0.norm(), torch.zeros_like(v0), 0.0
    al, be = [], []
    for _ in range(m):
        w = A @ q - b * qp
        a = float(q @ w)
        w = w - a * q
        b = float(w.norm())
        al.append(a)
        be.append(b)
        qp, q = q, w / b
    return np.linalg.eigvalsh(np.diag(al) + np.diag(be[:-1], 1) + np.diag(be[:-1], -1))


def test_lanczos_stops_at_an_invariant_subspace_and_on_diagonals():
    d = torch.tensor([3.0, 3.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)  # 2 distinct non-zero + 0: Krylov dim 3
    res = lanczos(lambda v: d * v, torch.ones(6, dtype=torch.float64), 6)
    assert res.n_matvec == 3 and sorted(np.round(np.linalg.eigvalsh(res.tridiagonal()), 10)) == [0.0, 1.0, 3.0]
    r32 = lanczos(lambda v: d.float() * v, torch.ones(6), 6)
    assert r32.n_matvec == 3 and r32.Q.dtype == torch.float32


@pytest.mark.parametrize("reorth", ["full", "selective"])
def test_float32_lanczos_stays_accurate_at_millions_of_parameters(reorth):
    """Sums over P = 2 10^6 float32 entries: BLAS sdot / sgemv accumulate sequentially (with them: 1e-4 relative
    eigenvalue errors here, a basis orthogonal to only 1e-3); cascade sums and float64-accumulated blocks keep
    about 1e-6."""
    P = 2 * 10**6
    d = torch.linspace(0, 1, P)
    d[:5] = torch.tensor([10.0, 9.0, 8.0, 7.0, 6.0])
    v0 = rademacher(np.random.default_rng(0), P, dtype=torch.float32)
    res = lanczos(lambda x: d * x, v0, 16, k=5, tol=1e-4, reorth=reorth)
    assert res.basis == "float32" and res.n_matvec < 16
    np.testing.assert_allclose(ritz(res, 5)[0], [10.0, 9.0, 8.0, 7.0, 6.0], rtol=1e-5)
    Q = res.Q.double()
    assert (Q.T @ Q - torch.eye(Q.shape[1], dtype=torch.float64)).abs().max() < 1e-4


def test_basis_auto_follows_free_memory(monkeypatch):
    free = {"cpu": 10**12, "cuda": 10**12}
    monkeypatch.setattr(probing, "free_memory", lambda dev: free[torch.device(dev).type])
    P, m = 10**6, 100  # 800 MB in float64, 400 MB in float32
    assert resolve_basis("auto", P, m, "cuda", torch.float64) == "float64"
    assert resolve_basis("auto", P, m, "cuda", torch.bfloat16) == "float32"
    free["cuda"] = 10**9  # half of it: 500 MB
    assert resolve_basis("auto", P, m, "cuda", torch.float64) == "host-float64"
    assert resolve_basis("auto", P, m, "cuda", torch.float32) == "float32"
    free["cpu"] = 10**9
    assert resolve_basis("auto", P, m, "cuda", torch.float64) == "float32"
    assert resolve_basis("auto", P, m, "cpu", torch.float64) == "float32"
    free["cuda"] = free["cpu"] = 10**3
    assert resolve_basis("auto", P, m, "cuda", torch.float64) == "host-float32"  # nothing fits: the smallest
    with pytest.raises(ValueError, match="^basis: expected one of 'auto', 'float64'"):
        resolve_basis("float16", P, m, "cpu", torch.float32)
    with pytest.raises(ValueError, match="^reorth: expected one of 'full', 'selective'"):
        lanczos(lambda v: v, torch.ones(3), 2, reorth="partial")


def test_host_basis_blocks_equal_one_block(monkeypatch):
    A = sym(SPECTRUM)
    v0 = rademacher(np.random.default_rng(2), 200)
    one = lanczos(lambda v: A @ v, v0, 30, basis="host-float64")
    monkeypatch.setattr(probing, "BLOCK_BYTES", 3 * 200 * 16)  # three stored vectors per block
    many = lanczos(lambda v: A @ v, v0, 30, basis="host-float64")
    np.testing.assert_allclose(many.alpha, one.alpha, rtol=1e-12)
    np.testing.assert_allclose(many.beta, one.beta, rtol=1e-10)
    B = KrylovBasis(200, 3, "cpu", torch.float64, "host-float32")
    assert B.rows.dtype == torch.float32 and B.kind == "host-float32"


# -- trace estimators -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_trace_estimators_are_exact_where_theory_says(dtype):
    d = torch.linspace(0.1, 5.0, 40, dtype=torch.float64)
    D = torch.diag(d).to(dtype)
    est, se, s = hutchinson(lambda Z: D @ Z, 40, 5, np.random.default_rng(0), dtype=dtype)
    assert est == pytest.approx(float(d.sum()), rel=1e-6) and se == pytest.approx(0, abs=1e-4)  # z^T D z = tr D
    L = sym(np.r_[[4.0, 3.0, -2.0], np.zeros(37)], seed=1, dtype=dtype)  # rank 3
    assert hutchpp(lambda Z: L @ Z, 40, 12, np.random.default_rng(0), dtype=dtype)[0] == pytest.approx(5.0, abs=1e-4)
    t = xtrace(lambda Z: L @ Z, 40, 10, np.random.default_rng(0), dtype=dtype)  # m = 5 >= rank + 1
    assert t[0] == pytest.approx(5.0, abs=1e-4) and t[1] == pytest.approx(0, abs=1e-4)


@pytest.mark.parametrize("estimator", [hutchinson, hutchpp, xtrace])
def test_trace_estimators_are_unbiased_and_keep_the_numpy_stream(estimator):
    spec = np.r_[np.linspace(8, 2, 6), np.random.default_rng(5).normal(0, 0.5, 54)]
    A = sym(spec, seed=2)
    ests = np.array([estimator(lambda Z: A @ Z, 60, 12, np.random.default_rng(s))[0] for s in range(400)])
    assert abs(ests.mean() - spec.sum()) < 4 * ests.std(ddof=1) / np.sqrt(len(ests))
    f32 = estimator(lambda Z: A.float() @ Z, 60, 12, np.random.default_rng(7), dtype=torch.float32)
    f64 = estimator(lambda Z: A @ Z, 60, 12, np.random.default_rng(7))
    assert f32[0] == pytest.approx(f64[0], rel=1e-5)
    if estimator is hutchinson:  # the samples are z^T A z for the very signs numpy draws from the seed
        Z = np.random.default_rng(7).integers(0, 2, size=(60, 12)) * 2.0 - 1
        np.testing.assert_allclose(f64[2], np.einsum("ij,ij->j", Z, A.numpy() @ Z), rtol=1e-12)


def test_slq_moments_are_exact_gauss_quadrature():
    A = sym(SPECTRUM)
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        Ad = A.to(dtype)
        nodes, w = slq(lambda v, Ad=Ad: Ad @ v, 200, 3, 20, np.random.default_rng(4), dtype=dtype, basis="host-float32")
        rng = np.random.default_rng(4)
        for r in range(3):
            q = rng.integers(0, 2, size=200) * 2.0 - 1
            q /= np.linalg.norm(q)
            An = A.numpy()
            assert (nodes[r] * w[r]).sum() == pytest.approx(q @ An @ q, rel=rtol, abs=rtol)
            assert (nodes[r] ** 2 * w[r]).sum() == pytest.approx(q @ An @ An @ q, rel=rtol)
        np.testing.assert_allclose(w.sum(1), 1, rtol=1e-6)


# -- the Hessian of a small MLP ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_mlp():
    from workbench.zoo.datasets import digits

    x, y = digits("train")
    x, y = x[:400], y[:400]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 10))  # 610 parameters
        opt = torch.optim.Adam(m.parameters(), 1e-2)
        for _ in range(100):
            loss = nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    for p in m.parameters():
        p.grad = None
    lf = nn.CrossEntropyLoss()
    m64, data64 = copy.deepcopy(m).double(), (x.double(), y)
    H = exact_hessian(m64, lf, data64, progress=False).values
    return m, m64, lf, (x, y), data64, H, np.linalg.eigvalsh(H)


@pytest.mark.parametrize("reorth", ["full", "selective"])
def test_mlp_hessian_top_eigenvalues_and_eigenvectors(small_mlp, reorth):
    m, m64, lf, data, data64, H, ev = small_mlp
    r = hessian_eigenvalues(m64, lf, data64, k=4, tol=1e-6, reorth=reorth, return_eigenvectors=True, progress=False)
    np.testing.assert_allclose(r.eigenvalue.values, ev[::-1][:4], rtol=1e-9)
    V = r.eigenvector.values.T
    np.testing.assert_allclose(np.linalg.norm(H @ V - V * r.eigenvalue.values, axis=0), r.residual.values, atol=1e-9)
    low = hessian_eigenvalues(m64, lf, data64, k=2, which="smallest", reorth=reorth, progress=False)
    np.testing.assert_allclose(low.eigenvalue.values, ev[:2], rtol=1e-6)  # the negative end: -0.0102, -0.0081


def test_float32_model_eigenvalues_within_the_documented_tolerance(small_mlp):
    """The float32 model runs products and Lanczos in float32: top eigenvalues within 1e-6 ||H|| of the float64
    exact Hessian's (4e-8 measured), on every basis storage."""
    m, m64, lf, data, data64, H, ev = small_mlp
    for basis in ("auto", "float64", "host-float32"):
        r = hessian_eigenvalues(m, lf, data, k=3, basis=basis, progress=False)
        assert r.attrs["n_hvp"] <= 30 and bool(r.converged.all())
        assert abs(r.eigenvalue.values - ev[::-1][:3]).max() <= 1e-6 * ev[-1], basis
        assert f'"basis": "{"float32" if basis == "auto" else basis}"' in r.attrs["probe_params"]


def test_mlp_trace_and_density_against_the_exact_hessian(small_mlp):
    m, m64, lf, data, data64, H, ev = small_mlp
    tr = np.trace(H)
    for model, d in ((m64, data64), (m, data)):
        errs = [abs(float(hessian_trace(model, lf, d, n_hvp=60, seed=s, progress=False)) - tr) / tr for s in range(4)]
        assert np.median(errs) < 0.02, errs
    dens = spectral_density(m64, lf, data64, n_runs=2, n_lanczos=40, reorth="selective", seed=1, progress=False)
    nodes = dens.attrs["slq_nodes"].reshape(2, -1)
    assert nodes.max() == pytest.approx(ev[-1], rel=1e-8) and nodes.min() == pytest.approx(ev[0], abs=1e-3 * ev[-1])


def test_operator_products_feed_lanczos_directly(small_mlp):
    m, m64, lf, data, data64, H, ev = small_mlp
    op = HessianOperator(Objective(m64, lf, data64))
    v0 = rademacher(np.random.default_rng(0), op.shape[0], device=op.device, dtype=op.dtype)
    res = lanczos(op.matvec, v0, 40, k=2, tol=1e-8)
    assert res.n_matvec == op.n_products and ritz(res, 2)[0] == pytest.approx(ev[::-1][:2], rel=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("basis", BASES)
def test_lanczos_on_cuda_with_a_pinned_host_basis(basis):
    A = sym(SPECTRUM).cuda()
    v0 = rademacher(np.random.default_rng(0), 200, device="cuda")
    assert v0.device.type == "cuda"
    res = lanczos(lambda v: A @ v, v0, 120, k=5, tol=1e-8, basis=basis)
    # a float32 basis keeps the Ritz values to float32's unit roundoff (1.5e-9 measured on an H100), float64 to 1e-10
    np.testing.assert_allclose(ritz(res, 5)[0], SPECTRUM[:5], rtol=1e-10 if "64" in basis else 1.2e-7)
    assert res.Q.is_pinned() == basis.startswith("host") and res.vectors(ritz(res, 5)[1]).device.type == "cuda"
    est = hutchpp(lambda Z: A @ Z, 200, 30, np.random.default_rng(0), device="cuda")[0]
    assert est == pytest.approx(hutchpp(lambda Z: A.cpu() @ Z, 200, 30, np.random.default_rng(0))[0], rel=1e-10)
