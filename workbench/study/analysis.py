"""Does a measure rank the runs by their generalization gap? Kendall's tau, Jiang et al.'s granulated
coefficient Psi per hyper-parameter axis, the worst axis (the distributional-robustness view of
Dziugaite et al. 2020), and Jiang et al.'s conditional mutual information, each with an interval over
runs from :func:`workbench.stats.interval` (subsampling runs without replacement).

Jiang et al. 2020, "Fantastic generalization measures and where to find them", eq. (3)-(5) (tau, psi_i,
Psi) and section 6 (conditional independence); Dziugaite et al. 2020, "In search of robust measures of
generalization" (report the worst environment, not the average).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..stats import granulated_tau, interval, kendall_tau
from .zoo import AXES

__all__ = ["factors_of", "conditional_mi", "correlate", "table"]


def factors_of(runs: xr.Dataset) -> dict[str, np.ndarray]:
    """The hyper-parameter axes of a study table that take more than one value: ``{axis: value per run}``.

    >>> from workbench.study.zoo import build_zoo
    >>> list(factors_of(build_zoo("tiny", progress=False)))
    ['lr', 'width', 'weight_decay', 'seed']
    """
    return {k: runs[k].values for k in AXES if k in runs.coords and len(np.unique(runs[k].values)) > 1}


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def conditional_mi(measure: Any, gap: Any, factors: dict[str, Any], max_set: int = 2) -> tuple[float, str]:
    """Jiang et al.'s conditional-independence score ``K(mu) = min_S I(V_mu; V_g | U_S) / H(V_g | U_S)``.

    Over the pairs of runs that differ in exactly one hyper-parameter, ``V_mu = sign(mu_i - mu_j)`` and
    ``V_g = sign(g_i - g_j)`` (both orders of each pair; pairs tied in either are dropped); ``U_S`` is the
    ordered pair's values of the axes in ``S``, for every ``S`` of at most ``max_set`` axes (an ``S`` that
    determines ``V_g`` in every cell, ``H = 0``, is skipped). A measure whose ranking of the gap is explained
    away by some pair of hyper-parameters scores ~0. Returns ``(K, the minimising S as "a,b")``.

    >>> f = {"lr": np.repeat([1, 2, 3], 4), "seed": np.tile([0, 1, 2, 3], 3)}
    >>> gap = 0.1 * f["lr"] + np.random.default_rng(0).normal(0, 0.1, 12)
    >>> conditional_mi(gap, gap, f)[0]  # the measure is the gap: K = 1
    1.0
    >>> conditional_mi(f["lr"], gap, f)  # a function of lr alone is explained away by lr: K = 0
    (0.0, 'lr')
    """
    mu, g = np.asarray(measure, float), np.asarray(gap, float)
    cols = {k: np.unique(np.asarray(v), return_inverse=True)[1] for k, v in factors.items()}
    F = np.stack(list(cols.values()), axis=1)
    i, j = np.triu_indices(len(mu), 1)
    one = (F[i] != F[j]).sum(axis=1) == 1
    i, j = np.concatenate([i[one], j[one]]), np.concatenate([j[one], i[one]])  # both orders: symmetric
    vm, vg = np.sign(mu[i] - mu[j]), np.sign(g[i] - g[j])
    keep = (vm != 0) & (vg != 0) & np.isfinite(vm) & np.isfinite(vg)
    i, j, vm, vg = i[keep], j[keep], (vm[keep] > 0).astype(int), (vg[keep] > 0).astype(int)
    if i.size < 2:
        return math.nan, ""
    names = list(cols)
    best, arg = math.inf, ""
    for r in range(0, max_set + 1):
        for S in itertools.combinations(range(len(names)), r):
            key = np.concatenate([F[i][:, list(S)], F[j][:, list(S)]], axis=1) if S else np.zeros((i.size, 1), int)
            _, u = np.unique(key, axis=0, return_inverse=True)
            u = u.ravel()
            mi = hg = 0.0
            for k in range(int(u.max()) + 1):
                sel = u == k
                pu = sel.mean()
                joint = np.bincount(2 * vm[sel] + vg[sel], minlength=4).astype(float)
                h_g = _entropy(joint.reshape(2, 2).sum(0))
                mi += pu * (_entropy(joint.reshape(2, 2).sum(1)) + h_g - _entropy(joint))
                hg += pu * h_g
            score = mi / hg if hg > 0 else math.nan
            if math.isfinite(score) and score < best:
                best, arg = score, ",".join(names[s] for s in S)
    return (float(best) if math.isfinite(best) else math.nan), arg


def correlate(
    runs: xr.Dataset,
    *,
    target: str = "gap",
    n_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    converged_only: bool = True,
) -> xr.Dataset:
    """Every measure of a study table (``value`` over ``(run, measure)``, from
    :func:`workbench.study.measure_zoo`) against ``target`` (``"gap"``: train minus test accuracy, or
    ``"loss_gap"``), over the runs that reached the training criterion (``converged_only``).

    Returns a Dataset over ``measure`` (and ``axis``): ``tau`` (Kendall over all runs), ``psi`` (per axis),
    ``Psi`` (their mean, Jiang et al.'s granulated coefficient), ``worst`` (the lowest ``psi`` after the
    expected sign is applied: the worst axis), each with ``_low`` / ``_high`` (``level`` intervals by
    subsampling runs without replacement, ``n_resamples`` from ``seed``, not median-centred: tau is a
    U-statistic, its subsample average is the full-sample tau), ``n_groups`` and ``cmi`` /
    ``cmi_set`` (:func:`conditional_mi`).

    >>> from workbench.study import build_zoo, measure_zoo
    >>> res = correlate(measure_zoo(build_zoo("tiny", progress=False)), n_resamples=20)
    >>> dict(res.sizes), bool((res.tau_low <= res.tau).all() and (res.tau <= res.tau_high).all())
    ({'measure': 16, 'axis': 4}, True)
    """
    if "value" not in runs:
        raise ValueError("runs: expected the study table with measures (workbench.study.measure_zoo(runs))")
    if target not in runs:
        raise ValueError(f"target: expected 'gap' or 'loss_gap', got {target!r}")
    sel = runs.where(runs.converged, drop=True) if converged_only else runs
    g = sel[target].values.astype(float)
    fac = {k: sel[k].values for k in factors_of(sel)}
    idx = np.arange(g.size)
    groups = [_groups(fac, a) for a in fac]
    kw = dict(n_resamples=n_resamples, level=level, seed=seed, bounds=(-1.0, 1.0), centre="none")
    out: dict[str, list] = {k: [] for k in ("tau", "tau_low", "tau_high", "Psi", "Psi_low", "Psi_high")}
    out.update({k: [] for k in ("psi", "psi_low", "psi_high", "n_groups", "worst", "cmi", "cmi_set")})
    for m in sel.measure.values:
        mu = sel.value.sel(measure=m).values.astype(float)
        sign = int(sel.expected_sign.sel(measure=m))
        for name, r in (("tau", interval(lambda i, mu=mu: kendall_tau(mu[i], g[i]), idx, **kw)),):
            out[name].append(r.estimate), out[f"{name}_low"].append(r.low), out[f"{name}_high"].append(r.high)
        gt = granulated_tau(mu, g, fac)
        psi_of = _PsiCache(mu, g, groups)
        r = interval(psi_of.total, idx, **kw)
        out["Psi"].append(r.estimate), out["Psi_low"].append(r.low), out["Psi_high"].append(r.high)
        per = [interval(psi_of.axis(a), idx, **kw) for a in range(len(fac))]
        out["psi"].append([p.estimate for p in per])
        out["psi_low"].append([p.low for p in per])
        out["psi_high"].append([p.high for p in per])
        out["n_groups"].append(gt.n_groups.values)
        signed = sign * gt.psi.values
        out["worst"].append(float(np.nanmin(signed)) if np.isfinite(signed).any() else math.nan)
        c, s = conditional_mi(mu, g, fac)
        out["cmi"].append(c), out["cmi_set"].append(s)
    dims1, dims2 = ("measure",), ("measure", "axis")
    two = ("psi", "psi_low", "psi_high", "n_groups")
    data = {k: (dims2 if k in two else dims1, np.asarray(v)) for k, v in out.items()}
    ds = xr.Dataset(data, coords={"measure": sel.measure.values, "axis": list(fac), "expected_sign": sel.expected_sign})
    ds.attrs.update(
        target=target, n_runs=int(g.size), n_resamples=int(n_resamples), level=float(level), scheme="subsample"
    )
    return ds


def _groups(fac: dict[str, np.ndarray], axis: str) -> np.ndarray:
    """Group labels of the runs for one axis: equal labels = equal values of every other axis."""
    others = [np.unique(v, return_inverse=True)[1] for k, v in fac.items() if k != axis]
    if not others:
        return np.zeros(len(next(iter(fac.values()))), int)
    return np.unique(np.stack(others, axis=1), axis=0, return_inverse=True)[1].ravel()


def _tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b of a small group by pair signs (equal to scipy's; NaN on a constant vector)."""
    i, j = np.triu_indices(x.size, 1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    den = math.sqrt(float(np.sum(sx != 0)) * float(np.sum(sy != 0)))
    return float(np.sum(sx * sy) / den) if den > 0 else math.nan


class _PsiCache:
    """psi per axis on a subset of runs, computed once per subset (the Psi and per-axis intervals draw the
    same subsets from the same seed); the same numbers as :func:`workbench.stats.granulated_tau`."""

    def __init__(self, mu: np.ndarray, g: np.ndarray, groups: list[np.ndarray]):
        self.mu, self.g, self.groups, self.memo = mu, g, groups, {}

    def __call__(self, i: np.ndarray) -> np.ndarray:
        key = i.tobytes()
        if key not in self.memo:
            ok = np.isfinite(self.mu[i]) & np.isfinite(self.g[i])
            i = i[ok]
            psi = []
            for grp in self.groups:
                lab = grp[i]
                taus = [_tau_b(self.mu[i[lab == k]], self.g[i[lab == k]]) for k in np.unique(lab)]
                taus = [t for t in taus if math.isfinite(t)]
                psi.append(float(np.mean(taus)) if taus else math.nan)
            self.memo[key] = np.array(psi)
        return self.memo[key]

    def total(self, i: np.ndarray) -> float:
        psi = self(i)
        return float(np.nanmean(psi)) if np.isfinite(psi).any() else math.nan

    def axis(self, a: int) -> Callable[[np.ndarray], float]:
        return lambda i: float(self(i)[a])


def table(res: xr.Dataset, digits: int = 2) -> pd.DataFrame:
    """The correlation table as text: one row per measure, ``tau [low, high]``, ``Psi [low, high]``, the
    per-axis ``psi``, ``worst`` and ``cmi``, sorted by ``Psi`` times the expected sign.

    >>> from workbench.study import build_zoo, measure_zoo
    >>> table(correlate(measure_zoo(build_zoo("tiny", progress=False)), n_resamples=20)).shape
    (16, 9)
    """
    f = f"{{:.{digits}f}}"

    def ci(v, lo, hi):
        return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]" if math.isfinite(v) else "nan"

    rows = {}
    for m in res.measure.values:
        r = res.sel(measure=m)
        row = {
            "sign": int(r.expected_sign),
            "tau": ci(float(r.tau), float(r.tau_low), float(r.tau_high)),
            "Psi": ci(float(r.Psi), float(r.Psi_low), float(r.Psi_high)),
        }
        row.update({f"psi[{a}]": f.format(float(r.psi.sel(axis=a))) for a in res.axis.values})
        row.update(worst=f.format(float(r.worst)), cmi=f.format(float(r.cmi)))
        rows[str(m)] = row
    order = sorted(rows, key=lambda m: -float(res.Psi.sel(measure=m)) * int(res.expected_sign.sel(measure=m)))
    return pd.DataFrame.from_dict(rows, orient="index").loc[order]
