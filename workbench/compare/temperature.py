"""Temperature scaling (Guo et al. 2017) and the calibration probe.

:func:`fit_temperature` finds ``T* = argmin_T -mean_i log softmax(z_i / T)[y_i]``: the NLL is convex in
``beta = 1/T`` (a log-sum-exp of linear functions minus a linear one), so its minimum is unique; it is
found by L-BFGS on ``log T`` with the exact gradient, as Guo et al. fit their one parameter on held-out
logits. :func:`temperature_scaling` reports the metrics before and after; :func:`calibration` is the
probe on (model, data).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax
from torch import nn

from ..data import as_data
from ..params import model_device_dtype
from ..registry import Tags, probe
from ..state import modes
from ..testing import hostile_data, hostile_model
from ..validate import choice, count
from .calibration import BINNINGS, check_labels, metrics, reliability
from .outputs import check_model, logits_of

__all__ = ["check_logits", "fit_temperature", "temperature_scaling", "calibration"]


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    """``logits`` as a finite float64 (N, C >= 2) array; errors name ``name``.

    >>> check_logits([[1, 2]]).dtype
    dtype('float64')
    """
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().double().numpy()
    if isinstance(logits, (str, bytes)) or logits is None:
        raise TypeError(f"{name}: expected an (examples, classes) array, got {type(logits).__name__}")
    z = np.asarray(logits)
    if z.dtype == bool or z.dtype.kind not in "iuf" or z.ndim != 2 or z.shape[1] < 2 or z.shape[0] < 1:
        raise ValueError(f"{name}: expected an (examples, classes >= 2) array of numbers, got shape {z.shape}")
    z = z.astype(np.float64)
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name}: contains NaN or inf; pass finite logits")
    return z


def fit_temperature(logits: Any, labels: Any) -> float:
    """Temperature scaling (Guo et al. 2017): ``T* = argmin_T -mean log softmax(z_i / T)[y_i]``, by
    L-BFGS on ``t = log T`` with the exact gradient ``dNLL/dbeta = mean_i (E_{softmax(beta z_i)}[z_i] -
    z_i[y_i])``, ``beta = 1/T``, started at T = 1. Logits that separate the labels perfectly drive T
    to 0: the search is bounded to ``T in [1e-3, 1e3]``.

    >>> z = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    >>> T = fit_temperature(z, [0, 1, 1, 0])  # half right: the best is uniform, T -> large
    >>> T > 100
    True
    """
    z = check_logits(logits)
    y = check_labels(labels, z.shape[0], z.shape[1])
    zy = z[np.arange(len(y)), y]

    def f(t):
        beta = math.exp(-float(t[0]))
        lp = log_softmax(beta * z, axis=1)
        val = -float(np.mean(lp[np.arange(len(y)), y]))
        dbeta = float(np.mean(np.sum(np.exp(lp) * z, axis=1) - zy))
        return val, np.array([dbeta * -beta])  # d/dt = d/dbeta * dbeta/dt, dbeta/dt = -beta

    bounds = [(math.log(1e-3), math.log(1e3))]
    res = minimize(f, np.zeros(1), jac=True, method="L-BFGS-B", bounds=bounds, options=dict(ftol=1e-15, gtol=1e-10))
    return float(math.exp(float(res.x[0])))


def _report(z, y, T, n_bins, binning, n_resamples, level, seed) -> xr.Dataset:
    parts = []
    for name, t in (("none", 1.0), ("temperature", T)) if T is not None else (("none", 1.0),):
        p = softmax(z / t, axis=1)
        m = metrics(p, y, n_bins, n_resamples=n_resamples, level=level, seed=seed)
        r = reliability(p, y, n_bins, binning).rename(
            {k: f"reliability_{k}" for k in ("count", "confidence", "accuracy", "lo", "hi")}
        )
        parts.append(xr.merge([m, r], combine_attrs="override").expand_dims(scaling=[name]))
    ds = xr.concat(parts, "scaling", combine_attrs="override")
    ds.attrs.update(n_bins=n_bins, binning=binning, level=level, n_resamples=n_resamples, n_examples=len(y))
    if T is not None:
        ds.attrs["temperature"] = float(T)
    return ds


def temperature_scaling(
    logits: Any,
    labels: Any,
    eval_logits: Any = None,
    eval_labels: Any = None,
    n_bins: int = 15,
    binning: str = "width",
    *,
    n_resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> xr.Dataset:
    """Fit ``T`` on ``(logits, labels)`` (:func:`fit_temperature`) and report every calibration metric
    (:func:`workbench.compare.calibration_metrics`, with intervals) and the reliability bins of
    ``softmax(z)`` and ``softmax(z / T)`` over ``scaling = ["none", "temperature"]`` on
    ``(eval_logits, eval_labels)`` (default: the fitting data itself, an in-sample fit). attrs:
    ``temperature``.

    >>> rng = np.random.default_rng(0)
    >>> z = 3 * rng.normal(size=(400, 4))
    >>> y = np.array([rng.choice(4, p=softmax(r / 3)) for r in z])  # drawn with T* = 3
    >>> ds = temperature_scaling(z, y, n_resamples=10)
    >>> nll = ds.estimate.sel(metric="nll")
    >>> round(ds.temperature, 1), bool(nll.sel(scaling="temperature") < nll.sel(scaling="none"))
    (3.3, True)
    """
    T = fit_temperature(logits, labels)
    if (eval_logits is None) != (eval_labels is None):
        raise ValueError("eval_labels: give both eval_logits and eval_labels, or neither")
    z = check_logits(
        logits if eval_logits is None else eval_logits, "eval_logits" if eval_logits is not None else "logits"
    )
    y = check_labels(labels if eval_labels is None else eval_labels, z.shape[0], z.shape[1])
    n_bins, binning = count("n_bins", n_bins, hi=100_000), choice("binning", binning, BINNINGS)
    ds = _report(z, y, T, n_bins, binning, n_resamples, level, seed)
    ds.attrs["fit"] = "in-sample (the evaluation data)" if eval_logits is None else "held-out logits"
    return ds


def _logits_labels(model, data, ctx, arg):
    device, dtype = model_device_dtype(model)
    try:
        d = ctx.adopt_data(data) if arg == "data" else as_data(data)
    except (TypeError, ValueError) as e:
        if arg == "data":
            raise
        raise type(e)(f"{arg}: expected False, True or labelled data to fit the temperature on; {e}") from None
    zs, ys = [], []
    with modes(model, ctx.mode), torch.no_grad():
        for x, y, _ in d.batches():
            ctx.check_cancel()
            x = x.to(ctx.device or device, dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
            z = logits_of(model, x)
            if z.dim() != 2:
                raise ValueError(
                    f"model: expected (batch, classes) outputs for calibration, got shape {tuple(z.shape)}"
                )
            zs.append(z)
            ys.append(torch.as_tensor(y).cpu())
    z = torch.cat(zs).numpy()
    return z, check_labels(torch.cat(ys).numpy(), z.shape[0], z.shape[1], arg)


def _case():
    return (hostile_model(0), hostile_data(0, n=40)), dict(temperature=True, n_resamples=10)


@probe("compare.calibration", tags=Tags(inputs="pair", uses=("mode", "seed", "device")), case=_case)
def calibration(
    model: nn.Module,
    data: Any,
    *,
    n_bins: int = 15,
    binning: str = "width",
    temperature: bool | Any = False,
    n_resamples: int = 200,
    level: float = 0.95,
    ctx,
) -> xr.Dataset:
    """Calibration of ``model``'s softmax outputs on the labelled ``data`` (class indices): every metric
    of :data:`workbench.compare.CALIBRATION_METRICS` (ECE with equal-width and equal-mass bins, MCE, ACE,
    classwise ECE, NLL, Brier, accuracy) as ``estimate`` with its ``level`` interval ``low``, ``high``
    (:func:`workbench.stats.interval`, subsampling the examples with ``seed``), and the reliability
    bins (``reliability_*`` over ``bin``, binned by ``binning``), over ``scaling``.

    ``temperature``: ``True`` fits temperature scaling (Guo et al. 2017, :func:`fit_temperature`) on
    ``data`` itself (in-sample), labelled data fits it there (held out) and evaluates on ``data``;
    then ``scaling = ["none", "temperature"]`` and the attrs hold ``temperature``.

    >>> from workbench.testing import tiny_classifier
    >>> m, _, (x, y) = tiny_classifier(60)
    >>> ds = calibration(m, (x, y), temperature=True, n_resamples=10, progress=False)
    >>> ds.estimate.dims, list(ds.scaling.values), ds.temperature > 0
    (('scaling', 'metric'), ['none', 'temperature'], True)
    """
    check_model("model", model)
    n_bins, binning = count("n_bins", n_bins, hi=100_000), choice("binning", binning, BINNINGS)
    n_resamples = count("n_resamples", n_resamples, lo=10)
    z, y = _logits_labels(model, data, ctx, "data")
    T = None
    if isinstance(temperature, (bool, np.bool_)):
        if temperature:
            T = fit_temperature(z, y)
    elif temperature is None:
        raise TypeError("temperature: expected False, True or labelled data to fit the temperature on, got None")
    else:
        zf, yf = _logits_labels(model, temperature, ctx, "temperature")
        ctx.record(temperature_data_fingerprint=as_data(temperature).fingerprint())
        if zf.shape[1] != z.shape[1]:
            raise ValueError(f"temperature: its outputs have {zf.shape[1]} classes, data's {z.shape[1]}")
        T = fit_temperature(zf, yf)
    ds = _report(z, y, T, n_bins, binning, n_resamples, level, ctx.seed)
    if T is not None:
        ds.attrs["fit"] = "in-sample (data)" if isinstance(temperature, (bool, np.bool_)) else "held-out data"
    ctx.record(n_samples=int(len(y)))
    return ds
