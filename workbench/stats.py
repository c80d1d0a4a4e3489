"""Intervals and rank correlations for dataset-level scores (engine floor: imports no probe package).

:func:`interval` bounds any score computed from samples (a transfer metric, CKA, a calibration error, a
rank correlation over runs) by resampling the samples (or whole groups of them), in one of two schemes:

- ``"subsample"`` (default; Politis & Romano 1994, "Large sample confidence regions based on subsamples
  under minimal assumptions"; Politis, Romano & Wolf 1999, *Subsampling*): subsets of size
  ``b = round(rate * n)`` drawn **without replacement**, so no sample is ever duplicated into the score
  (duplicates inflate evidence- and covariance-based scores: LogME, H-score). The differences
  ``D = score(subset) - estimate`` are rescaled by the finite-population rate correction
  ``sqrt(b / (n - b))`` (exact for a mean: ``var(theta_b - theta_n) = sigma^2 (1/b - 1/n)`` while
  ``var(theta_n - theta) = sigma^2 / n``), then centred at their median, so that the systematic
  dependence of a score on the sample size (a score evaluated on half the samples is biased, not just
  noisier) is not mistaken for sampling spread. The interval is ``[estimate - q_hi, estimate - q_lo]``
  with ``q`` the quantiles of the centred, rescaled differences: the estimate is always inside.
- ``"bca"`` (Efron 1987, "Better bootstrap confidence intervals"; Efron & Tibshirani 1993, ch. 14): the
  bias-corrected and accelerated percentile bootstrap (resampling with replacement), with bias correction
  ``z0 = Phi^-1(#{theta* < theta} / R)`` and acceleration ``a`` from the jackknife
  (``a = sum (m - J_i)^3 / (6 (sum (m - J_i)^2)^1.5)``, delete-one, or delete-block with 100 blocks beyond
  100 units). The percentiles ``Phi(z0 + (z0 + z)/(1 - a (z0 + z)))`` are then clipped so that the
  interval contains the estimate (a score that duplicated samples inflate would otherwise land outside).

:func:`kendall_tau` and :func:`weighted_tau` wrap scipy; :func:`granulated_tau` is the granulated Kendall
coefficient of Jiang et al. 2020 ("Fantastic generalization measures and where to find them"), Psi.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=60)
>>> est, lo, hi = interval(np.mean, x, n_resamples=100)
>>> bool(lo <= est <= hi), round(est, 3)
(True, 0.077)
"""

from __future__ import annotations

import math
import numbers
from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import xarray as xr
from scipy.stats import kendalltau, norm, weightedtau

__all__ = ["Interval", "interval", "kendall_tau", "weighted_tau", "granulated_tau", "SCHEMES"]

#: ``(estimate, low, high)``: a score on all samples and its interval
Interval = namedtuple("Interval", "estimate low high")

#: the resampling schemes :func:`interval` knows
SCHEMES = ("subsample", "bca")

#: up to this many pairs' length, :func:`kendall_tau` counts pair signs itself (O(n^2) numpy)
SMALL_TAU = 200

#: the jackknife of ``"bca"`` deletes blocks instead of single units beyond this many units
JACKKNIFE_BLOCKS = 100


def _take(a: Any, idx: np.ndarray) -> Any:
    if hasattr(a, "index_select") and hasattr(a, "device"):  # a torch tensor, without importing torch here
        import torch

        return a[torch.as_tensor(idx, device=a.device)]
    return a[idx]


def _arrays(arrays: tuple) -> tuple[tuple, int]:
    if not arrays:
        raise ValueError("arrays: pass at least one array (the samples the score is computed from)")
    out = []
    for i, a in enumerate(arrays):
        if not hasattr(a, "__getitem__") or not hasattr(a, "shape"):
            a = np.asarray(a)
        if len(a.shape) == 0:
            raise ValueError(f"arrays[{i}]: expected samples along axis 0, got a scalar")
        out.append(a)
    n = int(out[0].shape[0])
    for i, a in enumerate(out):
        if int(a.shape[0]) != n:
            raise ValueError(
                f"arrays[{i}]: has {int(a.shape[0])} samples along axis 0, arrays[0] has {n}; "
                "the arrays are indexed together, so they must have the same length"
            )
    return tuple(out), n


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError) as e:
        raise TypeError(f"score: must return a float (or a 0-d array), returned {type(v).__name__}") from e


def interval(
    score: Callable[..., Any],
    *arrays: Any,
    n_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
    scheme: str = "subsample",
    rate: float = 0.5,
    groups: Any = None,
    bounds: tuple[float, float] | None = None,
    centre: str = "median",
) -> Interval:
    """The score on all samples and its ``level`` interval by resampling (see the module docstring).

    ``score(*subset_arrays) -> float``; the ``arrays`` (numpy arrays, torch tensors, anything indexable
    by an integer array along axis 0) are indexed together along axis 0. ``groups`` (one label per
    sample): resample whole groups (seeds, runs, sources) instead of samples. Resamples on which the
    score is not finite (a subset with one class, say) are dropped; a non-finite estimate gives
    ``Interval(nan, nan, nan)``. ``rate`` is the subsample fraction (``"subsample"`` only); ``b`` is
    clipped to ``2 .. n-1``. ``bounds``: the range the score can take (``(-1, 1)`` for a correlation); the
    interval is clipped to it (a rescaled subsample spread can reach past a bound). ``centre`` (``"subsample"``
    only): ``"median"`` centres the differences at their median (scores with a systematic dependence on the
    sample size: evidence, covariance-based scores); ``"none"`` keeps them as they are, right for U-statistics
    such as a mean or Kendall's tau, whose subsample average *is* the full-sample value (measured: random
    measures against 8 runs, tau intervals hold 0 in 86 % with ``"median"``, 91 % with ``"none"``). Either way
    the interval is widened to hold the estimate.

    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> x, y = rng.normal(size=(2, 80))
    >>> r = interval(lambda a, b: np.corrcoef(a, b)[0, 1], x, x + y, n_resamples=100)
    >>> bool(r.low < r.estimate < r.high), round(r.estimate, 2)
    (True, 0.66)
    >>> interval(np.mean, x, scheme="bca", n_resamples=100).low < 0.05
    True
    """
    if not callable(score):
        raise TypeError(f"score: expected a function score(*arrays) -> float, got {type(score).__name__}")
    arrays, n = _arrays(arrays)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, numbers.Integral) or n_resamples < 10:
        raise ValueError(f"n_resamples: expected an int >= 10, got {n_resamples!r}")
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level: expected a probability in (0, 1) such as 0.95, got {level!r}")
    if centre not in ("median", "none"):
        raise ValueError(f"centre: expected 'median' or 'none', got {centre!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme: expected one of {SCHEMES}, got {scheme!r}")
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 < rate < 1:
        raise ValueError(f"rate: expected a fraction in (0, 1) such as 0.5, got {rate!r}")
    if bounds is not None:
        b_lo, b_hi = (float(v) for v in bounds)
        if not b_lo < b_hi:
            raise ValueError(f"bounds: expected (low, high) with low < high, got {bounds!r}")
    if groups is None:
        units = [np.array([i]) for i in range(n)]
    else:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise ValueError(f"groups: expected one label per sample ({n}), got shape {g.shape}")
        _, inv = np.unique(g, return_inverse=True)
        units = [np.flatnonzero(inv == k) for k in range(inv.max() + 1)]
    m = len(units)
    if m < 3:
        raise ValueError(f"arrays: need at least 3 samples (or groups) to resample, got {m}")

    def at(sel: np.ndarray) -> float:
        idx = sel if groups is None else np.concatenate([units[k] for k in sel])
        return _float(score(*(_take(a, idx) for a in arrays)))

    est = _float(score(*arrays))
    if not math.isfinite(est):
        return Interval(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    alpha = (1 - float(level)) / 2
    if scheme == "subsample":
        b = min(max(int(round(rate * m)), 2), m - 1)
        picks = np.argsort(rng.random((int(n_resamples), m)), axis=1)[:, :b]
        d = np.array([at(np.sort(p)) for p in picks]) - est
        d = d[np.isfinite(d)] * math.sqrt(b / (m - b))
        if d.size == 0:
            return Interval(est, math.nan, math.nan)
        if centre == "median":
            d = d - np.median(d)
        q_lo, q_hi = np.quantile(d, [alpha, 1 - alpha])
        return _clip(Interval(est, est - max(q_hi, 0.0), est - min(q_lo, 0.0)), bounds)
    # BCa
    boot = np.array([at(rng.integers(0, m, m)) for _ in range(int(n_resamples))])
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return Interval(est, math.nan, math.nan)
    frac = (np.sum(boot < est) + 0.5 * np.sum(boot == est)) / boot.size
    z0 = norm.ppf(np.clip(frac, 0.5 / boot.size, 1 - 0.5 / boot.size))
    blocks = np.array_split(rng.permutation(m), min(m, JACKKNIFE_BLOCKS))
    jack = np.array([at(np.setdiff1d(np.arange(m), blk)) for blk in blocks])
    jack = jack[np.isfinite(jack)]
    dj = jack.mean() - jack if jack.size else np.zeros(1)
    den = 6 * np.sum(dj**2) ** 1.5
    a = float(np.sum(dj**3) / den) if den > 0 else 0.0
    z = norm.ppf([alpha, 1 - alpha])
    p = norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    lo, hi = np.quantile(boot, np.clip(p, 0, 1))
    return _clip(Interval(est, min(float(lo), est), max(float(hi), est)), bounds)


def _clip(r: Interval, bounds: tuple[float, float] | None) -> Interval:
    if bounds is None:
        return r
    lo, hi = float(bounds[0]), float(bounds[1])
    return Interval(r.estimate, min(max(r.low, lo), r.estimate), max(min(r.high, hi), r.estimate))


def _pair(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"y: expected as many values as x ({x.size}), got {y.size}")
    return x, y


def kendall_tau(x: Any, y: Any) -> float:
    """Kendall's tau-b between two score vectors (``scipy.stats.kendalltau``): the difference of concordant
    and discordant pairs over ``sqrt((P - ties_x)(P - ties_y))``; NaN when either vector is constant or
    shorter than 2. Pairs with a NaN are dropped.

    >>> round(kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]), 12)  # 5 concordant, 1 discordant pair of 6
    0.666666666667
    """
    x, y = _pair(x, y)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    if x.size <= SMALL_TAU:  # pair signs directly: the same number, without scipy's per-call overhead
        i, j = np.triu_indices(x.size, 1)
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        return float(np.sum(sx * sy) / math.sqrt(float(np.count_nonzero(sx)) * float(np.count_nonzero(sy))))
    return float(kendalltau(x, y).statistic)


def weighted_tau(x: Any, y: Any) -> float:
    """Vigna's weighted tau (``scipy.stats.weightedtau``, hyperbolic weights ``1/(r+1)`` on the rank by
    importance, the average of the two rankings): swaps among the top-ranked items count most, as in the
    transferability benchmarks (Nguyen et al. 2020, You et al. 2021). NaN pairs are dropped.

    >>> round(weighted_tau([1, 2, 3, 4], [1, 2, 4, 3]), 3)  # the top two swapped
    0.52
    >>> round(weighted_tau([1, 2, 3, 4], [2, 1, 3, 4]), 3)  # the bottom two swapped
    0.813
    """
    x, y = _pair(x, y)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(weightedtau(x, y).statistic)


def granulated_tau(measure: Any, gap: Any, factors: Mapping[str, Any]) -> xr.Dataset:
    """Jiang et al.'s granulated Kendall coefficient: for each hyper-parameter axis ``i``,
    ``psi_i = mean over groups of tau(measure, gap within the group)``, a group being the runs whose other
    factors are all equal (the runs that differ only along axis ``i``); ``Psi = mean_i psi_i``.

    ``factors``: one array per axis, one value per run. Groups with fewer than two runs, or with a tie in
    the measure or the gap throughout, give no tau and are skipped (``n_groups`` counts the groups used);
    an axis with no usable group has ``psi = NaN`` and is left out of ``Psi``. Within a group tau is
    :func:`kendall_tau` (tau-b, which is Jiang et al.'s sign-average tau-a when there are no ties).

    Returns a Dataset over ``axis``: ``psi``, ``n_groups``, and the 0-d ``Psi`` (and ``tau``, the plain
    tau over all runs).

    >>> f = {"lr": [1, 2, 1, 2], "wd": [0, 0, 1, 1]}
    >>> ds = granulated_tau([1, 2, 3, 4], [1, 2, 4, 3], f)
    >>> ds.psi.values.tolist(), float(ds.Psi)
    ([0.0, 1.0], 0.5)
    """
    mu, g = _pair(measure, gap)
    if not isinstance(factors, Mapping) or not factors:
        raise TypeError("factors: expected a dict {axis name: one value per run}")
    cols = {}
    for k, v in factors.items():
        v = np.asarray(v)
        if v.shape != mu.shape:
            raise ValueError(f"factors[{k!r}]: expected one value per run ({mu.size}), got shape {v.shape}")
        cols[str(k)] = np.unique(v, return_inverse=True)[1]
    names = list(cols)
    psi, counts = [], []
    for k in names:
        others = [cols[o] for o in names if o != k]
        key = np.stack(others, axis=1) if others else np.zeros((mu.size, 1), int)
        _, grp = np.unique(key, axis=0, return_inverse=True)
        taus = [kendall_tau(mu[grp == j], g[grp == j]) for j in range(int(grp.max()) + 1)]
        taus = [t for t in taus if math.isfinite(t)]
        psi.append(float(np.mean(taus)) if taus else math.nan)
        counts.append(len(taus))
    psi_a = np.array(psi)
    ok = np.isfinite(psi_a)
    return xr.Dataset(
        {
            "psi": ("axis", psi_a),
            "n_groups": ("axis", np.array(counts)),
            "Psi": float(psi_a[ok].mean()) if ok.any() else math.nan,
            "tau": kendall_tau(mu, g),
        },
        coords={"axis": names},
        attrs={"reference": "Jiang et al. 2020, Fantastic generalization measures, eq. (4)-(5)"},
    )
