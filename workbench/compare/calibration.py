"""Calibration of a classifier's probabilities: binned errors, proper scores, temperature scaling.

Plain functions on ``probs`` (N, C) (rows summing to 1) or ``logits`` (N, C) and integer ``labels`` (N,).
Confidence is the top probability ``p_max``, the prediction its argmax.

* :func:`ece`: ``sum_b |B_b|/N |acc(B_b) - conf(B_b)|`` over ``n_bins`` bins of the confidence (Guo et
  al. 2017): ``binning="width"`` uses the intervals ``((b-1)/M, b/M]`` (the first closed at 0);
  ``"mass"`` splits the examples sorted by confidence into ``n_bins`` near-equal groups (ties may
  straddle two bins). :func:`mce` is the largest gap over non-empty bins.
* :func:`ace`: adaptive calibration error of Nixon et al. (2019): for every class k, equal-mass bins of
  ``p_k``; the mean over classes and bins of ``|freq_k(B) - mean p_k(B)|``.
* :func:`classwise_ece`: Kull et al. (2019): ``1/C sum_k sum_b |B_kb|/N |freq_k(B_kb) - mean p_k(B_kb)|``
  with equal-width bins of ``p_k``.
* :func:`nll` ``-mean log p_y`` and :func:`brier` ``mean sum_k (p_k - [y = k])^2`` (Brier 1950, summed
  over classes: in [0, 2]).

Temperature scaling and the calibration probe are in :mod:`workbench.compare.temperature`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import xarray as xr

from ..stats import interval
from ..validate import choice, count, real

__all__ = [
    "check_probs",
    "check_labels",
    "ece",
    "mce",
    "ace",
    "classwise_ece",
    "nll",
    "brier",
    "reliability",
    "METRICS",
    "metrics",
]

BINNINGS = ("width", "mass")


def check_probs(probs: Any, name: str = "probs") -> np.ndarray:
    """``probs`` as a finite float64 (N, C) array of rows on the simplex (tolerance 1e-4).

    >>> check_probs([[0.25, 0.75]]).shape
    (1, 2)
    """
    if isinstance(probs, (str, bytes)) or probs is None:
        raise TypeError(f"{name}: expected an (examples, classes) array of probabilities, got {type(probs).__name__}")
    if hasattr(probs, "detach"):
        probs = probs.detach().cpu().double().numpy()
    p = np.asarray(probs)
    if p.dtype == bool or p.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected numbers, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"{name}: expected an (examples, classes >= 2) array, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name}: contains NaN or inf; pass finite probabilities")
    if p.min() < -1e-9 or np.abs(p.sum(1) - 1).max() > 1e-4:
        raise ValueError(f"{name}: rows must be probabilities summing to 1; for logits use softmax (or logits=)")
    return np.clip(p, 0.0, 1.0)


def check_labels(labels: Any, n: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """``labels`` as an int64 (N,) array of classes ``0 .. n_classes - 1``; integral floats pass.

    >>> check_labels([0.0, 2], 2, 3).tolist()
    [0, 2]
    """
    if isinstance(labels, (str, bytes)) or labels is None:
        raise TypeError(f"{name}: expected an array of class indices, got {type(labels).__name__}")
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dtype == bool or y.dtype.kind not in "iuf" or y.ndim != 1:
        raise TypeError(f"{name}: expected a 1-D array of class indices, got dtype {y.dtype} shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{name}: has {y.shape[0]} entries but there are {n} examples")
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
        raise ValueError(f"{name}: class indices must be integers, got non-integral values")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name}: class indices must lie in 0..{n_classes - 1}, got {y.min()}..{y.max()}")
    return y


def _inputs(probs, labels):
    p = check_probs(probs)
    return p, check_labels(labels, p.shape[0], p.shape[1])


def _bins(values: np.ndarray, n_bins: int, binning: str) -> np.ndarray:
    """The bin index of every value (see the module docstring)."""
    if binning == "width":
        return np.clip(np.ceil(values * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    order = np.argsort(values, kind="stable")
    idx = np.empty(len(values), np.int64)
    for b, part in enumerate(np.array_split(order, n_bins)):
        idx[part] = b
    return idx


def _gaps(conf: np.ndarray, hit: np.ndarray, n_bins: int, binning: str):
    """Per bin: count, mean confidence, mean outcome."""
    b = _bins(conf, n_bins, binning)
    cnt = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.bincount(b, weights=conf, minlength=n_bins) / cnt
        a = np.bincount(b, weights=hit, minlength=n_bins) / cnt
    return cnt, c, a


def _check_bins(n_bins: int, binning: str) -> tuple[int, str]:
    return count("n_bins", n_bins, hi=100_000), choice("binning", binning, BINNINGS)


def ece(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width") -> float:
    """Expected calibration error of the top-label confidence (see the module docstring).

    >>> p = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    >>> round(ece(p, [0, 1, 1, 0], n_bins=2), 4)  # bin (0.5, 1]: conf 0.75, acc 0.75 -> 0
    0.0
    >>> round(ece(p, [0, 1, 1, 0], n_bins=10), 4)  # |0.9-1| + |0.8-0| + |0.7-1| + |0.6-1|, / 4
    0.4
    """
    n_bins, binning = _check_bins(n_bins, binning)
    p, y = _inputs(probs, labels)
    cnt, c, a = _gaps(p.max(1), (p.argmax(1) == y).astype(np.float64), n_bins, binning)
    ok = cnt > 0
    return float(np.sum(cnt[ok] * np.abs(a[ok] - c[ok])) / len(y))


def mce(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width") -> float:
    """Maximum calibration error: the largest ``|acc(B) - conf(B)|`` over non-empty bins.

    >>> round(mce([[0.9, 0.1], [0.8, 0.2]], [0, 1], n_bins=10), 4)
    0.8
    """
    n_bins, binning = _check_bins(n_bins, binning)
    p, y = _inputs(probs, labels)
    cnt, c, a = _gaps(p.max(1), (p.argmax(1) == y).astype(np.float64), n_bins, binning)
    return float(np.max(np.abs(a - c)[cnt > 0]))


def _per_class(p, y, n_bins, binning, weighted):
    out = []
    for k in range(p.shape[1]):
        cnt, c, a = _gaps(p[:, k], (y == k).astype(np.float64), n_bins, binning)
        ok = cnt > 0
        gap = np.abs(a[ok] - c[ok])
        out.append(np.sum(cnt[ok] * gap) / len(y) if weighted else np.mean(gap))
    return float(np.mean(out))


def ace(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Adaptive calibration error (Nixon et al. 2019): equal-mass bins per class, unweighted mean gap.

    >>> round(ace([[0.9, 0.1], [0.2, 0.8]], [0, 1], n_bins=2), 4)
    0.15
    """
    n_bins, _ = _check_bins(n_bins, "mass")
    p, y = _inputs(probs, labels)
    return _per_class(p, y, n_bins, "mass", weighted=False)


def classwise_ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al. 2019): equal-width bins of every class probability, weighted gaps,
    mean over classes.

    >>> round(classwise_ece([[0.9, 0.1], [0.2, 0.8]], [0, 1], n_bins=10), 4)
    0.15
    """
    n_bins, _ = _check_bins(n_bins, "width")
    p, y = _inputs(probs, labels)
    return _per_class(p, y, n_bins, "width", weighted=True)


def nll(probs: Any, labels: Any) -> float:
    """Negative log-likelihood ``-mean_i log p_i[y_i]`` (probabilities floored at 1e-300).

    >>> round(nll([[0.5, 0.5], [0.25, 0.75]], [0, 1]), 6)  # -(log 0.5 + log 0.75) / 2
    0.490415
    """
    p, y = _inputs(probs, labels)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-300))))


def brier(probs: Any, labels: Any) -> float:
    """Multi-class Brier score ``mean_i sum_k (p_ik - [y_i = k])^2`` (in [0, 2]).

    >>> brier([[1.0, 0.0], [0.5, 0.5]], [0, 1])
    0.25
    """
    p, y = _inputs(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def _accuracy(probs: Any, labels: Any) -> float:
    p, y = _inputs(probs, labels)
    return float(np.mean(p.argmax(1) == y))


#: metric name -> (function(probs, labels, n_bins), long name)
METRICS = {
    "ece": (lambda p, y, b: ece(p, y, b, "width"), "ECE, equal-width bins"),
    "ece_mass": (lambda p, y, b: ece(p, y, b, "mass"), "ECE, equal-mass bins"),
    "mce": (lambda p, y, b: mce(p, y, b, "width"), "maximum calibration error, equal-width bins"),
    "ace": (lambda p, y, b: ace(p, y, b), "adaptive calibration error (Nixon et al. 2019)"),
    "classwise_ece": (lambda p, y, b: classwise_ece(p, y, b), "classwise ECE (Kull et al. 2019)"),
    "nll": (lambda p, y, b: nll(p, y), "negative log-likelihood"),
    "brier": (lambda p, y, b: brier(p, y), "Brier score (summed over classes)"),
    "accuracy": (lambda p, y, b: _accuracy(p, y), "top-1 accuracy"),
}


def metrics(
    probs: Any, labels: Any, n_bins: int = 15, *, n_resamples: int = 200, level: float = 0.95, seed: int = 0
) -> xr.Dataset:
    """Every metric of :data:`METRICS` with its ``level`` interval (:func:`workbench.stats.interval`:
    subsamples without replacement; the estimate is always inside): a Dataset with ``estimate``,
    ``low`` and ``high`` over ``metric``.

    >>> rng = np.random.default_rng(0)
    >>> p = rng.dirichlet([1, 1, 1], size=100)
    >>> ds = metrics(p, rng.integers(0, 3, 100), n_resamples=20)
    >>> bool((ds.low <= ds.estimate).all() and (ds.estimate <= ds.high).all()), ds.sizes["metric"]
    (True, 8)
    """
    p, y = _inputs(probs, labels)
    n_bins = count("n_bins", n_bins, hi=100_000)
    level = real("level", level, lo=0.0, hi=1.0)
    rows = [
        interval(lambda pp, yy, f=f: f(pp, yy, n_bins), p, y, n_resamples=n_resamples, level=level, seed=seed)
        if len(y) >= 3
        else (f(p, y, n_bins), math.nan, math.nan)
        for f, _ in METRICS.values()
    ]
    est, lo, hi = (np.array(v, dtype=np.float64) for v in zip(*rows))
    coords = {"metric": list(METRICS), "long_name": ("metric", [v[1] for v in METRICS.values()])}
    return xr.Dataset(
        {
            "estimate": ("metric", est, {"long_name": "value on all examples"}),
            "low": ("metric", lo, {"long_name": f"lower end of the {level:.0%} interval"}),
            "high": ("metric", hi, {"long_name": f"upper end of the {level:.0%} interval"}),
        },
        coords=coords,
        attrs=dict(n_bins=n_bins, level=level, n_resamples=n_resamples, n_examples=len(y)),
    )


def reliability(probs: Any, labels: Any, n_bins: int = 15, binning: str = "width") -> xr.Dataset:
    """Reliability-diagram data: per bin of the top-label confidence, ``count``, mean ``confidence``
    and ``accuracy`` (NaN in empty bins), and the bin edges (``lo``, ``hi``; for equal-mass bins the
    smallest and largest confidence in the bin).

    >>> r = reliability([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]], [0, 1, 1], n_bins=2)
    >>> r["count"].values.tolist(), np.round(r.accuracy.values, 3).tolist()
    ([0.0, 3.0], [nan, 0.667])
    """
    n_bins, binning = _check_bins(n_bins, binning)
    p, y = _inputs(probs, labels)
    conf = p.max(1)
    cnt, c, a = _gaps(conf, (p.argmax(1) == y).astype(np.float64), n_bins, binning)
    if binning == "width":
        lo, hi = np.arange(n_bins) / n_bins, np.arange(1, n_bins + 1) / n_bins
    else:
        b = _bins(conf, n_bins, binning)
        lo = np.array([conf[b == k].min() if cnt[k] else np.nan for k in range(n_bins)])
        hi = np.array([conf[b == k].max() if cnt[k] else np.nan for k in range(n_bins)])
    return xr.Dataset(
        {
            "count": ("bin", cnt, {"long_name": "examples in the bin"}),
            "confidence": ("bin", c, {"long_name": "mean confidence", "units": "1"}),
            "accuracy": ("bin", a, {"long_name": "accuracy", "units": "1"}),
            "lo": ("bin", lo),
            "hi": ("bin", hi),
        },
        coords={"bin": np.arange(n_bins)},
        attrs=dict(binning=binning, n_bins=n_bins),
    )
