"""Sharpness and curvature probe.

Curvature of the data loss L at theta, through Hessian-vector products (:mod:`workbench.hvp`):

* :func:`hessian_eigenvalues`: extreme eigenvalues (largest or smallest *algebraic*, not largest
  magnitude) by Lanczos with full reorthogonalisation, stopped on Ritz residuals
  ``||H y - lambda y|| <= tol |lambda|``; or ``scipy.sparse.linalg.eigsh`` over a LinearOperator;
* :func:`hessian_trace`: Hutchinson, Hutch++ (Meyer et al. 2021) and XTrace (Epperly et al. 2024)
  with standard errors and confidence intervals, optional stopping on a CI; exact for small models;
* :func:`spectral_density`: stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019);
* :func:`exact_hessian`: the dense Hessian of small models, to calibrate the estimators.

Sharpness in a perturbation ball ``{delta : ||delta / c||_p <= rho}``, ``c = 1`` or, adaptive,
``c = |theta| + eta`` (Kwon et al. 2021), always "loss increase":

* :func:`sam_sharpness`: first-order SAM value ``L(theta + eps*) - L(theta)`` (Foret et al. 2021),
  ``eps* = rho c^2 g / ||c g||_2`` (p = 2) or ``rho c sign(g)`` (p = inf); m-sharpness with ``m``;
* :func:`worst_case_sharpness`: ``max_{delta in ball} L(theta + delta) - L(theta)`` by projected
  gradient ascent with momentum and step halving (Andriushchenko et al. 2023);
* :func:`average_sharpness`: ``E_delta L(theta + delta) - L(theta)``, delta ~ N(0, rho^2 diag(c^2))
  (p = 2) or U[-rho c, rho c] (p = inf) (Andriushchenko et al. 2023);
* :func:`keskar_sharpness`: ``100 (max_{|y_i| <= eps (|theta_i| + 1)} L(theta + y) - L) / (1 + L)``
  by L-BFGS-B (Keskar et al. 2017);
* :func:`gam_flatness`: first-order flatness ``rho max_{theta' in B(theta, rho)} ||grad L(theta')||``
  (Zhang et al. 2023, GAM), ascent on ``||grad L||`` with one HVP per step.

Every sharpness value carries a standard error: over disjoint subsets of m samples when ``m`` is
given (m-sharpness), else over the data's batches (the spread of the per-batch loss increases).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr
from torch import nn

from . import linalg
from .data import as_data
from .hvp import HVP
from .objective import Objective
from .registry import probe
from .results import provenance


def _case(**kw):
    def case():
        from .testing import hostile_case

        m, lf, d = hostile_case()
        return (m, lf, d), kw

    return case


def _params(obj, **kw):
    return dict(kw, mode=obj.mode, n_samples=obj.data.n, n_params=obj.space.numel)


# -- curvature --------------------------------------------------------------------------------

@probe("sharpness.exact_hessian", case=_case())
def exact_hessian(model: nn.Module, loss_fn, data, *, params=None, mode: str = "eval", max_params: int = 20_000,
                  engine: str = "auto", chunk: int = 256, progress: bool = True) -> xr.DataArray:
    """The dense Hessian ``H_ij = d^2 L / d theta_i d theta_j`` (float64 result, symmetrised) built
    from P Hessian-vector products in chunks. Refuses models with more than ``max_params`` parameters."""
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    P = obj.space.numel
    if P > max_params:
        raise ValueError(f"params: the exact Hessian of {P} parameters needs {P * P * 8 / 2**30:.1f} GiB; choose a "
                         f"parameter subset (params=...) or raise max_params (now {max_params})")
    op = HVP(obj, engine=engine, chunk=min(chunk, 64))
    H = op.dense(chunk=chunk, progress=progress)
    da = xr.DataArray(H, dims=("row", "col"), name="hessian",
                      attrs={"long_name": "Hessian of the mean loss", "units": "nats / param^2"})
    da.attrs.update(provenance("sharpness.exact_hessian", _params(obj, params=params), model, obj.data))
    da.attrs["n_hvp"] = op.n_hvp
    return da


@probe("sharpness.hessian_eigenvalues", case=_case(k=2, progress=False))
def hessian_eigenvalues(model: nn.Module, loss_fn, data, k: int = 5, which: str = "largest", *,
                        method: str = "lanczos", tol: float = 1e-3, max_hvp: int | None = None, seed: int = 0,
                        return_eigenvectors: bool = False, params=None, mode: str = "eval", engine: str = "auto",
                        progress: bool = True):
    """The ``k`` largest (or smallest) algebraic eigenvalues of the Hessian of the data loss.

    ``method="lanczos"``: Lanczos with full reorthogonalisation from a seeded Rademacher start,
    stopped when every wanted Ritz pair has residual ``||H y - lambda y|| <= tol |lambda|`` or after
    ``max_hvp`` Hessian-vector products (default ``min(P, max(60, 10 k))``). Eigenvalue errors shrink
    like residual^2 / gap, so the default ``tol=1e-3`` gives eigenvalues near float32 precision.
    ``method="eigsh"``: ``scipy.sparse.linalg.eigsh(which='LA' / 'SA')`` over the same operator.

    Returns a DataArray ``eigenvalue`` over ``rank`` (0 = most extreme) with coordinate ``residual``
    and attrs ``n_hvp``; with ``return_eigenvectors=True`` a Dataset that also holds ``eigenvector``
    over (rank, param): flat vectors in ``model.parameters()`` order, usable as landscape directions.
    """
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    P = obj.space.numel
    if not (isinstance(k, int) and 1 <= k <= P):
        raise ValueError(f"k: expected an int in 1..{P} (the number of parameters), got {k!r}")
    if which not in ("largest", "smallest"):
        raise ValueError(f"which: expected 'largest' or 'smallest', got {which!r}")
    op = HVP(obj, engine=engine)
    rng = np.random.default_rng(seed)
    max_hvp = min(P, max(60, 10 * k)) if max_hvp is None else int(max_hvp)
    if method == "lanczos":
        res = linalg.lanczos(op.mv_np, linalg.rademacher(rng, P), max_hvp, k=k, which=which, tol=tol)
        vals, S, resid = linalg.ritz(res, k, which)
        vecs = res.Q @ S if return_eigenvectors else None
    elif method == "eigsh":
        from scipy.sparse.linalg import eigsh

        v0 = linalg.rademacher(rng, P)
        vals, vecs = eigsh(op.as_linear_operator(), k=k, which="LA" if which == "largest" else "SA", v0=v0,
                           tol=tol * 1e-3, maxiter=max_hvp)
        order = np.argsort(vals)[::-1] if which == "largest" else np.argsort(vals)
        vals, vecs = vals[order], vecs[:, order]
        resid = np.linalg.norm(op.matmat_np(vecs) - vecs * vals, axis=0)
    else:
        raise ValueError(f"method: expected 'lanczos' or 'eigsh', got {method!r}")
    n_hvp = op.n_hvp
    da = xr.DataArray(vals, dims="rank", coords={"rank": np.arange(len(vals)), "residual": ("rank", resid)},
                      name="eigenvalue", attrs={"long_name": f"{which} Hessian eigenvalues", "units": "nats / param^2"})
    attrs = provenance("sharpness.hessian_eigenvalues", _params(obj, k=k, which=which, method=method, tol=tol,
                                                                params=params), model, obj.data, seed)
    attrs["n_hvp"] = int(n_hvp)
    da.attrs.update(attrs)
    if not return_eigenvectors:
        return da
    ds = da.to_dataset()
    ds["eigenvector"] = (("rank", "param"), vecs.T, {"long_name": "unit eigenvectors (flat, parameters() order)"})
    ds.attrs = dict(da.attrs)
    return ds


def _trace_result(obj, model, method, est, se, n_hvp, seed, confidence, params, samples=None):
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    da = xr.DataArray(float(est), name="trace", attrs={"long_name": "Hessian trace", "units": "nats / param^2"})
    da.attrs.update(provenance("sharpness.hessian_trace", _params(obj, method=method, params=params,
                                                                  confidence=confidence), model, obj.data, seed))
    se = float(se) if se is not None else math.nan
    da.attrs.update(stderr=se, ci_low=float(est) - z * se, ci_high=float(est) + z * se, confidence=float(confidence),
                    n_hvp=int(n_hvp), method=method, trace_per_param=float(est) / obj.space.numel)
    return da


@probe("sharpness.hessian_trace", case=_case(n_hvp=12, progress=False))
def hessian_trace(model: nn.Module, loss_fn, data, n_hvp: int = 99, method: str = "hutch++", *, seed: int = 0,
                  rtol: float | None = None, max_hvp: int = 2000, confidence: float = 0.95, params=None,
                  mode: str = "eval", engine: str = "auto", progress: bool = True) -> xr.DataArray:
    """Trace of the Hessian, ``tr H = sum_i H_ii``.

    ``method``: ``"hutchinson"`` (``mean z^T H z`` over Rademacher z), ``"hutch++"`` (low-rank part
    exact, Hutchinson on the rest; about 10x more accurate than Hutchinson at 100 HVPs on the demo
    MLP), ``"xtrace"`` (exchangeable Hutch++), or ``"exact"`` (P HVPs). attrs: ``stderr`` and a normal
    ``confidence`` interval (``ci_low``, ``ci_high``). With ``rtol`` (Hutchinson and Hutch++), Rademacher
    probes are added in blocks until the CI half-width is at most ``rtol |trace|`` or ``max_hvp`` is spent.
    """
    if rtol is not None and not rtol > 0:
        raise ValueError(f"rtol: the target relative half-width of the confidence interval must be > 0, got {rtol}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), e.g. 0.95, got {confidence}")
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    P = obj.space.numel
    op = HVP(obj, engine=engine)
    rng = np.random.default_rng(seed)
    if method == "exact":
        H = op.dense()
        return _trace_result(obj, model, method, np.trace(H), 0.0, op.n_hvp, None, confidence, params)
    if n_hvp < 4:
        raise ValueError(f"n_hvp: need at least 4 Hessian-vector products, got {n_hvp}")
    mm = op.matmat_np
    if method == "hutchinson":
        est, se, s = linalg.hutchinson(mm, P, n_hvp, rng)
        t_low = 0.0
    elif method == "hutch++":
        est, se, s = linalg.hutchpp(mm, P, n_hvp, rng)
        t_low = est - s.mean()
        s = s - t_low
    elif method == "xtrace":
        if rtol is not None:
            raise ValueError("rtol: CI-based stopping is available for 'hutchinson' and 'hutch++'; XTrace is not incremental")
        est, se, _ = linalg.xtrace(mm, P, n_hvp, rng)
        return _trace_result(obj, model, method, est, se, op.n_hvp, seed, confidence, params)
    else:
        raise ValueError(f"method: expected 'hutchinson', 'hutch++', 'xtrace' or 'exact', got {method!r}")
    if rtol is not None:
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + confidence / 2))
        Q = None
        if method == "hutch++":  # keep deflating with the same basis: the residual estimator stays unbiased
            Q = _hutchpp_basis(op, P, n_hvp, seed)
        while z * se > rtol * abs(est) and op.n_hvp < max_hvp:
            block = min(len(s), max_hvp - op.n_hvp)
            G = linalg.rademacher(rng, (P, block))
            if Q is not None:
                G = G - Q @ (Q.T @ G)
            s = np.r_[s, np.einsum("ij,ij->j", G, mm(G))]
            est, se = t_low + s.mean(), s.std(ddof=1) / np.sqrt(len(s))
    return _trace_result(obj, model, method, est, se, op.n_hvp, seed, confidence, params)


def _hutchpp_basis(op, P, n_hvp, seed):
    # recompute the sketch basis of linalg.hutchpp with the same random stream (no extra HVPs counted
    # would be dishonest, so they are counted)
    rng = np.random.default_rng(seed)
    S = linalg.rademacher(rng, (P, n_hvp // 3))
    Q, _ = np.linalg.qr(op.matmat_np(S))
    return Q


@probe("sharpness.spectral_density", case=_case(n_runs=2, n_steps=6, progress=False))
def spectral_density(model: nn.Module, loss_fn, data, n_runs: int = 5, n_steps: int = 60, *,
                     sigma: float | None = None, grid=None, n_grid: int = 400, seed: int = 0, params=None,
                     mode: str = "eval", engine: str = "auto", progress: bool = True) -> xr.DataArray:
    """Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019):
    ``phi(t) = (1/n_runs) sum_runs sum_k tau_k N(t; lambda_k, sigma^2)`` with nodes lambda_k and
    weights tau_k from ``n_steps`` Lanczos steps per Rademacher start.

    ``sigma`` defaults to 1 % of the node range. The nodes and weights are kept in attrs
    (``slq_nodes``, ``slq_weights``, shape n_runs x n_steps flattened) so the density can be
    re-smoothed at any width without new HVPs (:func:`density_from_nodes`). The density integrates to
    1 and its first moment is a Hutchinson estimate of ``tr(H) / P``.
    """
    if int(n_runs) < 1:
        raise ValueError(f"n_runs: need at least 1 Lanczos run, got {n_runs}")
    if int(n_steps) < 2:
        raise ValueError(f"n_steps: need at least 2 Lanczos steps per run (60 is typical), got {n_steps}")
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    P = obj.space.numel
    op = HVP(obj, engine=engine)
    rng = np.random.default_rng(seed)
    m = min(int(n_steps), P)
    nodes, weights = linalg.slq(op.mv_np, P, int(n_runs), m, rng)
    da = density_from_nodes(nodes, weights, sigma=sigma, grid=grid, n_grid=n_grid)
    da.attrs.update(provenance("sharpness.spectral_density", _params(obj, n_runs=n_runs, n_steps=m, params=params),
                               model, obj.data, seed))
    da.attrs["n_hvp"] = int(op.n_hvp)
    return da


def density_from_nodes(nodes, weights, sigma: float | None = None, grid=None, n_grid: int = 400) -> xr.DataArray:
    """Gaussian-smoothed SLQ density over an ``eigenvalue`` grid from nodes and weights (n_runs, m)."""
    nodes, weights = np.asarray(nodes, float), np.asarray(weights, float)
    if nodes.ndim == 1:
        nodes, weights = nodes[None], weights[None]
    lo, hi = np.nanmin(nodes), np.nanmax(nodes)
    span = max(hi - lo, 1e-12)
    sigma = float(sigma) if sigma is not None else 0.01 * span
    if not sigma > 0:
        raise ValueError(f"sigma: the kernel width must be > 0, got {sigma}")
    if grid is None:
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, n_grid)
    grid = np.asarray(grid, float)
    dens = linalg.gaussian_density(nodes, weights, grid, sigma)
    return xr.DataArray(dens, dims="eigenvalue", coords={"eigenvalue": grid}, name="density",
                        attrs={"long_name": "Hessian eigenvalue density", "units": "1 / eigenvalue", "sigma": sigma,
                               "slq_nodes": np.nan_to_num(nodes.ravel(), nan=0.0),
                               "slq_weights": weights.ravel(), "n_runs": int(nodes.shape[0])})


# -- the perturbation ball ----------------------------------------------------------------------

class Ball:
    """``{delta : ||delta / c||_p <= rho}`` with ``c = 1`` or ``c = |theta| + eta`` (adaptive).

    Optimisation works in ``u = delta / c``, where the set is a plain p-ball of radius rho (so the
    adaptive l2 "ellipsoid" projection is exact without bisection).
    """

    def __init__(self, theta: torch.Tensor, rho: float, norm=2, adaptive: bool = False, eta: float = 0.0):
        if norm not in (2, "2", math.inf, "inf"):
            raise ValueError(f"norm: expected 2 or 'inf', got {norm!r}")
        if not (isinstance(rho, (int, float, np.floating)) and rho >= 0 and math.isfinite(rho)):
            raise ValueError(f"rho: expected a finite radius >= 0, got {rho!r}")
        self.p = 2 if norm in (2, "2") else math.inf
        self.rho = float(rho)
        self.c = (theta.abs() + eta) if adaptive else torch.ones_like(theta)

    def first_order(self, g: torch.Tensor) -> torch.Tensor:
        """argmax of g^T delta over the ball: rho c^2 g / ||c g|| (p = 2) or rho c sign(g) (p = inf)."""
        cg = self.c * g
        if self.p == 2:
            n = cg.norm()
            return torch.zeros_like(g) if n == 0 else self.rho * self.c * cg / n
        return self.rho * self.c * torch.sign(g)

    def project_u(self, u: torch.Tensor) -> torch.Tensor:
        if self.p == 2:
            n = u.norm()
            return u if n <= self.rho else u * (self.rho / n)
        return u.clamp(-self.rho, self.rho)

    def ascent_dir_u(self, g_u: torch.Tensor) -> torch.Tensor:
        if self.p == 2:
            n = g_u.norm()
            return g_u / n if n > 0 else g_u
        return torch.sign(g_u)

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        z = torch.randn(self.c.shape, generator=gen, dtype=torch.float64).to(self.c)
        if self.p == 2:
            return self.rho * self.c * z
        u = torch.rand(self.c.shape, generator=gen, dtype=torch.float64).to(self.c) * 2 - 1
        return self.rho * self.c * u


def _batch_rises(obj: Objective, delta: torch.Tensor, data):
    """(weighted mean, stderr over batches) of L_b(theta + delta) - L_b(theta)."""
    th0 = obj.theta0
    rises, ns = [], []
    for x, y, n in data.batches():
        one = [(x, y)]
        d = as_data(one, obj.device, obj.dtype, check_finite=False)
        rises.append(obj.evaluate(th0 + delta, data=d)[0] - obj.evaluate(th0, data=d)[0])
        ns.append(n)
    return _weighted_mean_se(np.array(rises), np.array(ns, float))


def _weighted_mean_se(v, w):
    w = w / w.sum()
    mean = float((w * v).sum())
    if len(v) < 2:
        return mean, math.nan
    # standard error of a weighted mean of independent batch estimates
    var = float((w * (v - mean) ** 2).sum()) / (1 - (w ** 2).sum())
    return mean, math.sqrt(var * (w ** 2).sum())


def _subsets(obj: Objective, m, seed):
    if m is None:
        return None
    m = int(m)
    if not 1 <= m <= obj.data.n:
        raise ValueError(f"m: the m-sharpness subset size must be in 1..{obj.data.n} (the number of samples), got {m}")
    return [as_data([(x, y)], obj.device, obj.dtype, check_finite=False) for x, y, _ in obj.data.subsets(m, seed)]


def _rho_result(name, long_name, rhos, values, errs, scalar, obj, model, probe_name, params, seed=None, extra=None):
    values, errs = np.asarray(values, float), np.asarray(errs, float)
    if scalar:
        da = xr.DataArray(values[0], name=name, coords={"rho": rhos[0], "stderr": errs[0]})
    else:
        da = xr.DataArray(values, dims="rho", coords={"rho": rhos, "stderr": ("rho", errs)}, name=name)
    da.attrs.update({"long_name": long_name, "units": "nats"})
    da.attrs.update(provenance(probe_name, _params(obj, **params), model, obj.data, seed))
    if extra:
        da.attrs.update(extra)
    return da


def _rhos(rho):
    scalar = np.ndim(rho) == 0
    rhos = np.atleast_1d(np.asarray(rho, dtype=float))
    if rhos.size == 0 or not np.all(np.isfinite(rhos)) or np.any(rhos < 0):
        raise ValueError(f"rho: expected finite radii >= 0, got {rho!r}")
    return rhos, scalar


@probe("sharpness.sam_sharpness", case=_case(rho=[0.01, 0.05], m=10, progress=False))
def sam_sharpness(model: nn.Module, loss_fn, data, rho=0.05, adaptive: bool = False, *, norm=2, eta: float = 0.0,
                  m: int | None = None, seed: int = 0, params=None, mode: str = "eval", progress: bool = True):
    """First-order SAM sharpness ``L(theta + eps*) - L(theta)`` (Foret et al. 2021); ``adaptive=True``
    gives ASAM's (Kwon et al. 2021) with ``c = |theta| + eta``. ``eps*`` maximises the linearised loss
    in the ball (see :class:`Ball`). With ``m``: m-sharpness, the mean over disjoint subsets of m
    samples, each with its own eps* (stderr over subsets); else one eps* from the full gradient and a
    stderr over batches. ``rho`` may be an array: the result is then over ``rho``.
    """
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    rhos, scalar = _rhos(rho)
    subsets = _subsets(obj, m, seed)
    vals, errs = [], []
    grads = [obj.loss_and_grad(data=s)[1] for s in subsets] if subsets else [obj.loss_and_grad()[1]]
    for r in rhos:
        if subsets:
            rises = []
            for s, g in zip(subsets, grads):
                eps = Ball(obj.theta0, r, norm, adaptive, eta).first_order(g)
                rises.append(obj.evaluate(obj.theta0 + eps, data=s)[0] - obj.evaluate(obj.theta0, data=s)[0])
            v, e = _weighted_mean_se(np.array(rises), np.ones(len(rises)))
        else:
            eps = Ball(obj.theta0, r, norm, adaptive, eta).first_order(grads[0])
            v, e = _batch_rises(obj, eps, obj.data)
        vals.append(v)
        errs.append(e)
    name = "asam_sharpness" if adaptive else "sam_sharpness"
    return _rho_result(name, f"first-order {'adaptive ' if adaptive else ''}SAM sharpness", rhos, vals, errs, scalar,
                       obj, model, "sharpness.sam_sharpness",
                       dict(adaptive=adaptive, norm=str(norm), eta=eta, m=m, params=params), seed if m else None)


@probe("sharpness.worst_case_sharpness", case=_case(rho=0.05, n_steps=3, progress=False))
def worst_case_sharpness(model: nn.Module, loss_fn, data, rho=0.1, adaptive: bool = True, *, norm=2,
                         eta: float = 0.0, n_steps: int = 20, m: int | None = None, seed: int = 0, params=None,
                         mode: str = "eval", progress: bool = True):
    """Worst-case (adaptive) sharpness ``max_{||delta / c||_p <= rho} L(theta + delta) - L(theta)``
    (Andriushchenko et al. 2023), by projected gradient ascent in ``u = delta / c`` from the
    first-order SAM point: normalised (p = 2) or sign (p = inf) steps, momentum 0.75, initial step
    ``2 rho`` halved whenever a step fails to improve, the best iterate kept. A lower bound on the
    true maximum, at least the first-order SAM value. With ``m``: the mean over disjoint m-subsets.
    """
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    rhos, scalar = _rhos(rho)
    subsets = _subsets(obj, m, seed) or [obj.data]
    from tqdm.auto import tqdm

    vals, errs, nfe = [], [], 0
    for r in rhos:
        rises = []
        for s in tqdm(subsets, desc="worst-case sharpness", disable=not progress or len(subsets) < 2, leave=False):
            ball = Ball(obj.theta0, r, norm, adaptive, eta)
            l0, g0 = obj.loss_and_grad(data=s)
            u = ball.project_u(ball.first_order(g0) / torch.where(ball.c > 0, ball.c, torch.ones_like(ball.c)))
            if not bool((u != 0).any()):  # zero gradient (a critical point): start from a random point of the ball
                z = torch.randn(u.shape, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64).to(u)
                u = ball.project_u(z * (r / z.norm() if ball.p == 2 else r))
            best_u, best = u, obj.evaluate(obj.theta0 + ball.c * u, data=s)[0]
            step, mom = 2 * r, torch.zeros_like(u)
            for _ in range(int(n_steps)):
                l, g = obj.loss_and_grad(obj.theta0 + ball.c * u, data=s)
                nfe += 1
                if l > best:
                    best, best_u = l, u
                d = ball.ascent_dir_u(ball.c * g)
                mom = 0.75 * mom + d
                cand = ball.project_u(u + step * ball.ascent_dir_u(mom))
                lc = obj.evaluate(obj.theta0 + ball.c * cand, data=s)[0]
                if lc > best:
                    best, best_u, u = lc, cand, cand
                else:
                    step *= 0.5
                    u = best_u
            if len(subsets) > 1:
                rises.append(best - l0)
            else:
                v, e = _batch_rises(obj, ball.c * best_u, s)
                rises.append((v, e))
        if len(subsets) > 1:
            v, e = _weighted_mean_se(np.array(rises), np.ones(len(rises)))
        else:
            v, e = rises[0]
        vals.append(v)
        errs.append(e)
    return _rho_result("worst_case_sharpness", "worst-case sharpness (projected ascent)", rhos, vals, errs, scalar, obj,
                       model, "sharpness.worst_case_sharpness",
                       dict(adaptive=adaptive, norm=str(norm), eta=eta, m=m, n_steps=n_steps, params=params),
                       seed if m else None, {"n_gradient_evals": int(nfe)})


@probe("sharpness.average_sharpness", case=_case(rho=0.05, n_samples=3, progress=False))
def average_sharpness(model: nn.Module, loss_fn, data, rho=0.05, adaptive: bool = False, *, norm=2,
                      eta: float = 0.0, n_samples: int = 20, seed: int = 0, params=None, mode: str = "eval",
                      progress: bool = True):
    """Average-case sharpness ``E_delta L(theta + delta) - L(theta)`` with delta ~ N(0, rho^2 diag(c^2))
    (p = 2) or U[-rho c, rho c] (p = inf) (Andriushchenko et al. 2023); Monte Carlo over
    ``n_samples`` seeded draws, stderr over draws."""
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    rhos, scalar = _rhos(rho)
    if n_samples < 2:
        raise ValueError(f"n_samples: need at least 2 draws for a standard error, got {n_samples}")
    l0 = obj.loss()
    vals, errs = [], []
    from tqdm.auto import tqdm

    for r in rhos:
        gen = torch.Generator().manual_seed(int(seed))
        ball = Ball(obj.theta0, r, norm, adaptive, eta)
        draws = np.array([obj.loss(obj.theta0 + ball.sample(gen)) - l0
                          for _ in tqdm(range(int(n_samples)), desc="average sharpness", disable=not progress, leave=False)])
        vals.append(float(draws.mean()))
        errs.append(float(draws.std(ddof=1) / np.sqrt(len(draws))))
    return _rho_result("average_sharpness", "average-case sharpness", rhos, vals, errs, scalar, obj, model,
                       "sharpness.average_sharpness",
                       dict(adaptive=adaptive, norm=str(norm), eta=eta, n_samples=n_samples, params=params), seed)


@probe("sharpness.keskar_sharpness", case=_case(eps=1e-3, maxiter=2))
def keskar_sharpness(model: nn.Module, loss_fn, data, eps: float = 1e-3, *, maxiter: int = 10, params=None,
                     mode: str = "eval") -> xr.DataArray:
    """Keskar et al. (2017) epsilon-sharpness (full space, A = I):
    ``phi = 100 (max_{y in C} L(theta + y) - L(theta)) / (1 + L(theta))``,
    ``C = {|y_i| <= eps (|theta_i| + 1)}``, maximised by L-BFGS-B (``maxiter`` iterations) from y = 0."""
    from scipy.optimize import minimize

    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    if not eps > 0:
        raise ValueError(f"eps: expected a box size > 0, got {eps}")
    th0 = obj.theta0
    l0 = obj.loss()
    bound = (eps * (th0.abs() + 1)).double().cpu().numpy()

    def f(y):
        l, g = obj.loss_and_grad(th0 + torch.from_numpy(y).to(th0))
        return -l, -g.double().cpu().numpy()

    r = minimize(f, np.zeros_like(bound), jac=True, method="L-BFGS-B", bounds=np.c_[-bound, bound],
                 options={"maxiter": int(maxiter)})
    best = max(-float(r.fun), l0)
    val = 100 * (best - l0) / (1 + l0)
    da = xr.DataArray(val, name="keskar_sharpness",
                      attrs={"long_name": "Keskar epsilon-sharpness", "units": "percent"})
    da.attrs.update(provenance("sharpness.keskar_sharpness", _params(obj, eps=eps, maxiter=maxiter, params=params),
                               model, obj.data))
    da.attrs.update(n_gradient_evals=int(r.nfev), eps=float(eps))
    return da


@probe("sharpness.gam_flatness", case=_case(rho=0.05, n_steps=2))
def gam_flatness(model: nn.Module, loss_fn, data, rho=0.05, *, n_steps: int = 1, params=None, mode: str = "eval",
                 engine: str = "auto"):
    """First-order flatness of GAM (Zhang et al. 2023): ``R1 = rho max_{||theta' - theta|| <= rho} ||grad L(theta')||``.

    Ascent on ``||grad L||``, whose gradient is ``H g / ||g||`` (one HVP per step): step to
    ``theta + rho u / ||u||`` then, for more steps, normalised steps of ``rho / n_steps`` projected on
    the ball; the largest gradient norm seen (theta included) is kept. attrs: ``grad_norm`` at theta.
    """
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    rhos, scalar = _rhos(rho)
    l0, g0 = obj.loss_and_grad()
    g0n = float(g0.norm())
    vals, errs = [], []
    n_hvp = 0
    for r in rhos:
        best = g0n
        delta = torch.zeros_like(g0)
        for i in range(max(1, int(n_steps))):
            _, g = obj.loss_and_grad(obj.theta0 + delta)
            gn = g.norm()
            if gn == 0:
                break
            op = HVP(obj, obj.theta0 + delta, engine=engine)
            u = op.mv(g / gn)
            n_hvp += 1
            if u.norm() == 0:
                break
            step = r if i == 0 else r / n_steps
            delta = delta + step * u / u.norm()
            if delta.norm() > r:
                delta = delta * (r / delta.norm())
            best = max(best, float(obj.loss_and_grad(obj.theta0 + delta)[1].norm()))
        vals.append(r * best)
        errs.append(math.nan)
    return _rho_result("gam_flatness", "first-order flatness (GAM)", rhos, vals, errs, scalar, obj, model,
                       "sharpness.gam_flatness", dict(n_steps=n_steps, params=params), None,
                       {"grad_norm": g0n, "n_hvp": int(n_hvp)})


def gradient_norm(model: nn.Module, loss_fn, data, params=None, mode: str = "eval") -> float:
    """||grad L(theta)||_2 (a plain float)."""
    from .state import preserve

    with preserve(model):
        return float(Objective(model, loss_fn, data, params=params, mode=mode).loss_and_grad()[1].norm())


# -- summary ------------------------------------------------------------------------------------

def summary(models, loss_fn, data, *, k: int = 5, n_hvp: int = 99, rho: float = 0.05, adaptive_rho: float = 0.5,
            n_samples: int = 10, seed: int = 0, params=None, mode: str = "eval", progress: bool = True) -> xr.Dataset:
    """All sharpness scalars side by side for one model, or over a list / dict of models (checkpoints),
    stacked along ``checkpoint``: loss, accuracy, top-k eigenvalues, trace (+stderr), lambda_max / trace,
    trace / P, SAM and ASAM sharpness, average-case sharpness, GAM flatness, gradient norm."""
    from tqdm.auto import tqdm

    from .evaluate import evaluate

    if isinstance(models, nn.Module):
        items, single = [("model", models)], True
    elif isinstance(models, dict):
        items, single = list(models.items()), False
    else:
        items, single = [(i, m) for i, m in enumerate(models)], False
    if not items:
        raise ValueError("models: empty; pass a model, a list of models or a dict name -> model")
    rows = []
    for label, m in tqdm(items, desc="sharpness summary", disable=not progress or single, leave=False):
        kw = dict(params=params, mode=mode)
        ev = evaluate(m, loss_fn, data, mode=mode, params=params)
        eig = hessian_eigenvalues(m, loss_fn, data, k=k, seed=seed, progress=False, **kw)
        tr = hessian_trace(m, loss_fn, data, n_hvp=n_hvp, seed=seed, progress=False, **kw)
        sam = sam_sharpness(m, loss_fn, data, rho=rho, progress=False, **kw)
        asam = sam_sharpness(m, loss_fn, data, rho=adaptive_rho, adaptive=True, progress=False, **kw)
        avg = average_sharpness(m, loss_fn, data, rho=rho / 10, n_samples=n_samples, seed=seed, progress=False, **kw)
        gam = gam_flatness(m, loss_fn, data, rho=rho, **kw)
        ds = xr.Dataset({
            "loss": ev.loss, "accuracy": ev.accuracy,
            "eigenvalues": eig.drop_vars("residual").rename("eigenvalues"),
            "lambda_max": ((), float(eig[0]), {"long_name": "largest Hessian eigenvalue"}),
            "trace": ((), float(tr), {"long_name": "Hessian trace (Hutch++)"}),
            "trace_stderr": ((), tr.attrs["stderr"]),
            "lambda_max_over_trace": ((), float(eig[0]) / float(tr)),
            "trace_per_param": ((), tr.attrs["trace_per_param"]),
            "sam_sharpness": ((), float(sam), {"long_name": f"SAM sharpness, rho={rho}"}),
            "sam_stderr": ((), float(sam.stderr)),
            "asam_sharpness": ((), float(asam), {"long_name": f"ASAM sharpness, rho={adaptive_rho}"}),
            "asam_stderr": ((), float(asam.stderr)),
            "average_sharpness": ((), float(avg), {"long_name": f"average-case sharpness, rho={rho / 10}"}),
            "average_stderr": ((), float(avg.stderr)),
            "gam_flatness": ((), float(gam), {"long_name": f"GAM first-order flatness, rho={rho}"}),
            "grad_norm": ((), gam.attrs["grad_norm"]),
        })
        for v in ds.data_vars:
            ds[v].attrs.pop("probe_params", None)
        ds.attrs = provenance("sharpness.summary", dict(k=k, n_hvp=n_hvp, rho=rho, adaptive_rho=adaptive_rho,
                                                        mode=mode, params=params), m if single else None, None, seed)
        rows.append(ds)
    if single:
        return rows[0]
    out = xr.concat(rows, dim="checkpoint", combine_attrs="override").assign_coords(checkpoint=[str(l) for l, _ in items])
    return out
