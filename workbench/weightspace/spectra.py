"""Weight-spectrum diagnostics per layer (Martin & Mahoney 2021, "Implicit self-regularization in deep neural
networks"; Martin, Peng & Mahoney 2021, "Predicting trends in the quality of state-of-the-art neural networks").

The empirical spectral density (ESD) of a layer is the set of eigenvalues ``lambda_k = sigma_k(W)^2`` of ``W^T W``
(not divided by N, as WeightWatcher does by default). A convolution weight ``(out, in, *kernel)`` is read the way
WeightWatcher reads it (``pool=True``): one ``(out, in)`` matrix per kernel position, the eigenvalues of all of them
pooled into one ESD; every other weight of two or more dims is ``W.reshape(shape[0], -1)``. Each matrix is taken
as ``N x M`` with ``N >= M`` (so there are ``M`` eigenvalues per matrix).

:func:`fit_power_law` fits ``p(lambda) ~ lambda^-alpha`` for ``lambda >= xmin`` by maximum likelihood with ``xmin``
chosen to minimise the Kolmogorov-Smirnov distance (Clauset, Shalizi & Newman 2009; the ``powerlaw`` package).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr
from numpy.typing import ArrayLike
from torch import nn

from ..registry import Tags, probe
from ..testing import hostile_model
from ..validate import boolean, count, finite_array, finite_nonneg

__all__ = ["weight_spectra", "layer_eigenvalues", "fit_power_law", "layer_weights"]


def layer_weights(model: nn.Module) -> dict[str, tuple[torch.Tensor, bool]]:
    """The weights a spectrum is taken of, by name: every parameter with two or more dims, with a flag telling
    whether it is a convolution kernel (of a ``torch.nn`` convolution: read per kernel position).

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> {k: (tuple(w.shape), conv) for k, (w, conv) in layer_weights(net).items()}
    {'0.weight': ((4, 3, 3, 3), True), '2.weight': ((2, 4), False)}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    out = {}
    for mname, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if p.dim() >= 2:
                out[f"{mname}.{pname}" if mname else pname] = (p, isinstance(mod, nn.modules.conv._ConvNd))
    return out


def _matrices(weight: torch.Tensor, conv: bool) -> torch.Tensor:
    """A batch ``(k, N, M)`` of the matrices of a weight, ``N >= M``."""
    w = weight.detach().to("cpu", torch.float64)
    if conv and w.dim() >= 3:
        mats = w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1)  # one (out, in) matrix per kernel position
    else:
        mats = w.reshape(w.shape[0], -1).unsqueeze(0)
    return mats if mats.shape[1] >= mats.shape[2] else mats.transpose(1, 2)


def layer_eigenvalues(weight: torch.Tensor, conv: bool | None = None) -> np.ndarray:
    """The ESD of one weight: the eigenvalues ``sigma_k^2`` of ``W^T W``, ascending (float64). ``conv`` (default:
    ``weight.dim() >= 3``) reads a ``(out, in, *kernel)`` tensor as one matrix per kernel position, pooled.

    >>> layer_eigenvalues(torch.diag(torch.tensor([3.0, 1.0, 2.0]))).tolist()
    [1.0, 4.0, 9.0]
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError("weight: expected a tensor of two or more dims (a weight matrix or a convolution kernel)")
    if not bool(torch.isfinite(weight.detach()).all()):
        raise ValueError("weight: it has NaN or inf entries; its spectrum is undefined")
    mats = _matrices(weight, weight.dim() >= 3 if conv is None else conv)
    return np.sort(torch.linalg.svdvals(mats).pow(2).reshape(-1).numpy())


def fit_power_law(evals: ArrayLike, *, min_tail: int = 10, max_candidates: int = 2000) -> dict[str, float]:
    """Fit ``p(x) ~ x^-alpha`` on ``x >= xmin`` (continuous power law, Clauset et al. 2009).

    For each candidate ``xmin`` (every distinct value leaving at least ``min_tail`` points in the tail; at most
    ``max_candidates`` of them, evenly spaced), the maximum-likelihood ``alpha = 1 + n / sum_i ln(x_i / xmin)``
    and the Kolmogorov-Smirnov distance ``D = sup_x |S(x) - F(x)|`` between the tail's empirical CDF ``S`` (both
    sides of each step) and ``F(x) = 1 - (x / xmin)^(1 - alpha)``; the ``xmin`` of the smallest ``D`` is kept.
    Values ``<= 1e-10 max(x)`` are dropped (rank deficiency). Returns ``alpha``, ``xmin``, ``xmax`` (the largest
    value), ``ks_distance``, ``n_tail`` and ``sigma = (alpha - 1) / sqrt(n_tail)`` (the standard error); NaN when
    fewer than ``min_tail`` values remain.

    >>> x = (1 - (np.arange(2000) + 0.5) / 2000) ** (-1 / 2.0)   # quantiles of p(x) ~ x^-3 on x >= 1
    >>> round(fit_power_law(x)["alpha"], 2)
    3.0
    """
    x = np.sort(finite_array("evals", evals))
    min_tail = count("min_tail", min_tail, lo=2)
    max_candidates = count("max_candidates", max_candidates)
    x = x[x > 1e-10 * x[-1]] if x[-1] > 0 else x[:0]
    nan = dict(alpha=math.nan, xmin=math.nan, xmax=math.nan, ks_distance=math.nan, n_tail=0, sigma=math.nan)
    n = x.size
    if n < min_tail:
        return nan
    logx = np.log(x)
    suffix = np.cumsum(logx[::-1])[::-1]  # sum_{j >= i} ln x_j
    first = np.r_[True, x[1:] != x[:-1]]  # the first index of each distinct value
    cand = np.nonzero(first[: n - min_tail + 1])[0]
    if cand.size > max_candidates:
        cand = cand[np.linspace(0, cand.size - 1, max_candidates).round().astype(int)]
    best = None
    for i in cand:
        m = n - i
        denom = suffix[i] - m * logx[i]
        if denom <= 0:
            continue
        alpha = float(1.0 + m / denom)
        cdf = 1.0 - np.exp((1.0 - alpha) * (logx[i:] - logx[i]))
        k = np.arange(m)
        d = max(float(np.max(cdf - k / m)), float(np.max((k + 1) / m - cdf)))
        if best is None or d < best[0]:
            best = (d, alpha, i)
    if best is None:
        return nan
    d, alpha, i = best
    m = n - i
    sigma = (alpha - 1) / math.sqrt(m)
    return dict(alpha=alpha, xmin=float(x[i]), xmax=float(x[-1]), ks_distance=d, n_tail=int(m), sigma=sigma)


def _case():
    return (hostile_model(0),), dict(min_evals=2, min_tail=2)


VARS = {
    "alpha": "power-law exponent of the ESD tail",
    "xmin": "start of the fit range",
    "xmax": "end of the fit range (largest eigenvalue)",
    "ks_distance": "Kolmogorov-Smirnov distance of the fit",
    "n_tail": "eigenvalues in the fit range",
    "alpha_weighted": "alpha * log10(lambda_max)",
    "lambda_max": "largest eigenvalue of W^T W (= spectral_norm^2)",
    "spectral_norm": "largest singular value of W",
    "frobenius_norm": "Frobenius norm of W",
    "stable_rank": "||W||_F^2 / ||W||_2^2",
    "mp_edge": "Marchenko-Pastur bulk edge sigma^2 (sqrt(N) + sqrt(M))^2",
    "mp_soft_rank": "mp_edge / lambda_max",
    "rand_lambda_max": "largest eigenvalue of the element-shuffled W",
    "n_traps": "eigenvalues of the shuffled W above (1 + trap_margin) mp_edge",
    "n_rows": "N (rows of each matrix, N >= M)",
    "n_cols": "M (columns of each matrix)",
    "n_matrices": "matrices pooled (kernel positions of a convolution)",
}


@probe("weightspace.weight_spectra", case=_case, tags=Tags(inputs="model", stochastic=True, uses=("seed",)))
def weight_spectra(
    model: nn.Module,
    *,
    min_evals: int = 8,
    min_tail: int = 10,
    trap_margin: float = 0.1,
    keep_eigenvalues: bool = True,
    ctx,
) -> xr.Dataset:
    """Spectral diagnostics of every weight matrix of ``model`` (see the module docstring for how the ESD is read).

    Over dim ``layer`` (parameter names, in module order; weights with fewer than ``min_evals`` eigenvalues per
    matrix are left out): the power-law fit of the ESD (:func:`fit_power_law`: ``alpha``, its range ``xmin`` ..
    ``xmax``, ``ks_distance``, ``n_tail``); ``alpha_weighted = alpha log10(lambda_max)`` (Martin et al. 2021);
    ``lambda_max``, ``spectral_norm = sqrt(lambda_max)``, ``frobenius_norm = sqrt(sum lambda)``, ``stable_rank =
    sum lambda / lambda_max``; the Marchenko-Pastur bulk edge of a random matrix with W's element variance,
    ``mp_edge = sigma^2 (sqrt(N) + sqrt(M))^2``, and ``mp_soft_rank = mp_edge / lambda_max`` (Martin & Mahoney
    2021); correlation traps: the ESD of W with its elements shuffled (seeded by ``seed``) should be
    Marchenko-Pastur; ``n_traps`` counts its eigenvalues above ``(1 + trap_margin) mp_edge`` (large single
    elements survive shuffling as spikes), ``rand_lambda_max`` its largest. ``keep_eigenvalues``: also the ESD
    itself, ``eigenvalues`` (layer, rank), descending, NaN-padded.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    >>> ds = weight_spectra(net, progress=False)
    >>> ds.layer.values.tolist(), ds.stable_rank.dims
    (['0.weight', '2.weight'], ('layer',))
    """
    min_evals = count("min_evals", min_evals)
    min_tail = count("min_tail", min_tail, lo=2)
    trap_margin = finite_nonneg("trap_margin", trap_margin)
    keep_eigenvalues = boolean("keep_eigenvalues", keep_eigenvalues)
    weights = layer_weights(model)
    rows, esds, names = [], [], []
    for name, (w, conv) in ctx.iterate(list(weights.items()), desc="weight_spectra"):
        if not bool(torch.isfinite(w.detach()).all()):
            raise ValueError(f"model: the weight {name!r} has NaN or inf entries; its spectrum is undefined")
        mats = _matrices(w, conv)
        k, n_rows, n_cols = mats.shape
        if n_cols < min_evals:
            continue
        ev = np.sort(torch.linalg.svdvals(mats).pow(2).reshape(-1).numpy())
        fit = fit_power_law(ev, min_tail=min_tail)
        flat = mats.reshape(-1)
        shuffled = flat[torch.randperm(flat.numel(), generator=ctx.generator)].reshape(mats.shape)
        rand = torch.linalg.svdvals(shuffled).pow(2).reshape(-1).numpy()
        var = float(flat.var(unbiased=False))
        edge = var * (math.sqrt(n_rows) + math.sqrt(n_cols)) ** 2
        lmax = float(ev[-1])
        row = dict(fit)
        row.update(
            alpha_weighted=fit["alpha"] * math.log10(lmax) if lmax > 0 else math.nan,
            lambda_max=lmax,
            spectral_norm=math.sqrt(lmax),
            frobenius_norm=math.sqrt(float(ev.sum())),
            stable_rank=float(ev.sum()) / lmax if lmax > 0 else math.nan,
            mp_edge=edge,
            mp_soft_rank=edge / lmax if lmax > 0 else math.nan,
            rand_lambda_max=float(rand.max()),
            n_traps=int((rand > (1 + trap_margin) * edge).sum()),
            n_rows=n_rows,
            n_cols=n_cols,
            n_matrices=k,
        )
        rows.append(row)
        esds.append(ev[::-1])
        names.append(name)
    if not names:
        raise ValueError(
            f"model: no weight has at least min_evals={min_evals} eigenvalues per matrix (weights of two or more "
            "dims with min(rows, cols) >= min_evals); lower min_evals"
        )
    ds = xr.Dataset(
        {k: ("layer", np.array([r[k] for r in rows]), {"long_name": v}) for k, v in VARS.items()},
        coords={"layer": names},
        attrs={"min_tail": min_tail, "trap_margin": trap_margin, "conv": "per kernel position, pooled (WeightWatcher)"},
    )
    if keep_eigenvalues:
        width = max(e.size for e in esds)
        pad = np.full((len(esds), width), np.nan)
        for i, e in enumerate(esds):
            pad[i, : e.size] = e
        ds["eigenvalues"] = (("layer", "rank"), pad, {"long_name": "eigenvalues of W^T W, descending"})
    ctx.record(n_layers=len(names))
    return ds
