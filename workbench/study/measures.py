"""Every generalization measure of the study on one trained run (Jiang et al. 2020, section 5 and
appendix C; the sharpness family through :mod:`workbench.sharpness`, the curvature through
:mod:`workbench.curvature`, landscape widths through :mod:`workbench.landscape`).

All are computed on the run's training set, in eval mode (no dropout), with seed 0. :data:`MEASURES` maps
each name to ``(expected sign, reference)``: +1 when a larger value should mean a larger generalization gap
(sharper, more complex), -1 for flatness / width measures where larger should mean a smaller gap.
Norm measures are computed here (they are about the weights, not the loss):

- ``fisher_rao``: ``(d+1)^2 mean_i <theta, grad_theta l(f(x_i), y_i)>^2`` (Liang et al. 2019; Jiang et
  al. eq. 46), ``d+1`` the number of weight layers; the per-sample directional derivative by forward mode.
- ``path_norm``: ``sum_k f_{theta^2}(1)_k``, the network with squared weights and no biases on an all-ones
  input (Neyshabur et al. 2015; Jiang et al. eq. 44).
- ``log_spec_prod`` / ``log_fro_prod``: ``sum_l log ||W_l||_2^2`` and ``sum_l log ||W_l||_F^2`` (conv kernels
  reshaped to ``(out, in*k*k)``, a proxy for the conv operator norm).
- ``dist_init``: ``||theta - theta_0||_2`` (Nagarajan & Kolter 2019).
- ``pacbayes_flatness``: ``1 / sigma^2`` with ``sigma`` the isotropic Gaussian radius at which the mean loss
  rises by :data:`PACBAYES_RISE` nats (Jiang et al. eq. 52-53; they bound the error rise by 0.1, we the loss
  rise), interpolated in log sigma on a grid of :func:`workbench.sharpness.average_sharpness`.
- ``landscape_width``: the mean over 3 filter-normalised random directions (Li et al. 2018) of the width of
  the interval around 0 on which the loss stays within :data:`PACBAYES_RISE` of ``L(theta)``.
- ``esd_alpha``: the mean per-layer power-law exponent from ``workbench.weightspace.weight_spectra`` when
  that probe exists (Martin & Mahoney 2021); NaN with a note otherwise.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from .. import landscape, sharpness
from .zoo import load_run, run_data

__all__ = [
    "MEASURES",
    "MEASURES_VERSION",
    "PACBAYES_RISE",
    "fisher_rao_norm",
    "path_norm",
    "norm_products",
    "measure_model",
    "measure_run",
    "measure_zoo",
]

MEASURES_VERSION = 1
#: the loss rise (nats) that defines the PAC-Bayes sigma and the landscape width
PACBAYES_RISE = 0.1
#: name -> (expected sign of tau with the gap, reference)
MEASURES: dict[str, tuple[int, str]] = {
    "lambda_max": (1, "Keskar et al. 2017; largest Hessian eigenvalue by Lanczos"),
    "trace": (1, "Hessian trace by Hutch++ (Meyer et al. 2021)"),
    "sam": (1, "SAM sharpness, rho 0.05 (Foret et al. 2021)"),
    "asam": (1, "adaptive SAM sharpness, rho 0.5 (Kwon et al. 2021)"),
    "m_sharpness": (1, "SAM sharpness averaged over subsets of m=32 (Andriushchenko & Flammarion 2022)"),
    "keskar": (1, "epsilon-sharpness, eps 1e-3 (Keskar et al. 2017)"),
    "average_sharpness": (1, "average-case sharpness, rho 0.005 (Andriushchenko et al. 2023)"),
    "gam": (1, "GAM first-order flatness, rho 0.05 (Zhang et al. 2023)"),
    "fisher_rao": (1, "Fisher-Rao norm (Liang et al. 2019)"),
    "path_norm": (1, "path norm (Neyshabur et al. 2015)"),
    "log_spec_prod": (1, "log product of squared spectral norms (Bartlett et al. 2017)"),
    "log_fro_prod": (1, "log product of squared Frobenius norms (Neyshabur et al. 2015)"),
    "dist_init": (1, "distance from initialisation (Nagarajan & Kolter 2019)"),
    "pacbayes_flatness": (1, "1/sigma^2 at a 0.1-nat loss rise (Jiang et al. 2020; Dziugaite & Roy 2017)"),
    "landscape_width": (-1, "width of the 0.1-nat basin along random filter-normalised directions (Li et al. 2018)"),
    "esd_alpha": (-1, "mean power-law exponent of the layer ESDs (Martin & Mahoney 2021)"),
}

_Q = dict(progress=False)


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def fisher_rao_norm(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    """``(d+1)^2 mean_i <theta, grad l_i>^2`` with ``d+1`` the number of weight layers (Liang et al. 2019),
    cross-entropy per sample, in eval mode. For a bias-free ReLU network ``<theta, grad_theta f> = (d+1) f``.

    >>> m = nn.Linear(2, 2, bias=False)
    >>> _ = nn.init.eye_(m.weight)
    >>> x, y = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    >>> p = torch.softmax(torch.tensor([1.0, 0.0]), 0)   # <theta, grad l> = <f, p - e_y> = p_0 - 1
    >>> round(fisher_rao_norm(m, (x, y)), 6) == round(float((p[0] - 1) ** 2), 6)
    True
    """
    from torch.func import functional_call, jvp

    x, y = data
    was = model.training
    model.eval()
    try:
        params = {k: v.detach() for k, v in model.named_parameters()}

        def losses(p):
            return nn.functional.cross_entropy(functional_call(model, p, (x,)), y, reduction="none")

        _, d = jvp(losses, (params,), (params,))
    finally:
        model.train(was)
    return float(len(_layers(model)) ** 2 * (d.double() ** 2).mean())


def path_norm(model: nn.Module, input_shape: tuple[int, ...] = (64,)) -> float:
    """``sum_k f_{theta^2}(1)_k``: the network with every weight squared and every bias zeroed, on an
    all-ones input (Neyshabur et al. 2015), in eval mode; the sum over all input-output paths of the
    product of squared weights.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    >>> with torch.no_grad():
    ...     _ = m[0].weight.fill_(2.0); _ = m[2].weight.fill_(-1.0)
    >>> path_norm(m, (2,))   # 4 paths, each 2^2 * 1^2
    16.0
    """
    from torch.func import functional_call

    sq = {k: torch.zeros_like(v) if k.endswith("bias") else v.detach() ** 2 for k, v in model.named_parameters()}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            dev = next(iter(sq.values())).device if sq else None
            out = functional_call(model, sq, (torch.ones((1, *input_shape), device=dev),))
    finally:
        model.train(was)
    return float(out.double().sum())


def norm_products(model: nn.Module) -> dict[str, float]:
    """``log_spec_prod = sum_l log ||W_l||_2^2``, ``log_fro_prod = sum_l log ||W_l||_F^2`` over the Linear
    and Conv layers (conv kernels reshaped to ``(out, in*k*k)``).

    >>> m = nn.Linear(3, 3, bias=False)
    >>> _ = nn.init.eye_(m.weight)
    >>> {k: round(v, 4) for k, v in norm_products(m).items()}   # ||I||_2 = 1, ||I||_F^2 = 3
    {'log_spec_prod': 0.0, 'log_fro_prod': 1.0986}
    """
    spec = fro = 0.0
    with torch.no_grad():
        for m in _layers(model):
            w = m.weight.detach().double().reshape(m.weight.shape[0], -1)
            spec += 2 * math.log(float(torch.linalg.matrix_norm(w, 2)))
            fro += 2 * math.log(float(torch.linalg.matrix_norm(w)))
    return {"log_spec_prod": spec, "log_fro_prod": fro}


def _crossing(grid: np.ndarray, rise: np.ndarray, level: float) -> float:
    """The first ``grid`` value (log-interpolated) where ``rise`` reaches ``level``; the last if never."""
    above = np.flatnonzero(rise >= level)
    if above.size == 0:
        return float(grid[-1])
    i = int(above[0])
    if i == 0:
        return float(grid[0])
    t = (level - rise[i - 1]) / (rise[i] - rise[i - 1])
    return float(np.exp(np.log(grid[i - 1]) + t * (np.log(grid[i]) - np.log(grid[i - 1]))))


def _width(sl: xr.Dataset, level: float) -> float:
    alpha, widths = sl.alpha.values, []
    base = float(sl.attrs["loss_theta0"])
    mid = int(np.argmin(np.abs(alpha)))
    for row in sl.loss.values:
        ok = row - base <= level
        lo = hi = mid
        while lo > 0 and ok[lo - 1]:
            lo -= 1
        while hi < len(alpha) - 1 and ok[hi + 1]:
            hi += 1
        widths.append(alpha[hi] - alpha[lo])
    return float(np.mean(widths))


def _esd_alpha(model: nn.Module, notes: list[str]) -> float:
    try:
        from ..weightspace import weight_spectra  # written by another helper; may not exist yet
    except ImportError:
        notes.append("esd_alpha: workbench.weightspace.weight_spectra is not available; NaN")
        return math.nan
    try:
        r = weight_spectra(model, progress=False)
        return float(np.nanmean(np.asarray(r["alpha"], dtype=float)))
    except Exception as e:  # an API this module does not know yet: say so, do not stop the study
        notes.append(f"esd_alpha: weight_spectra failed ({type(e).__name__}: {e}); NaN")
        return math.nan


def measure_model(
    model: nn.Module, init: nn.Module | None, data: tuple[torch.Tensor, torch.Tensor], *, seed: int = 0
) -> tuple[dict[str, float], list[str]]:
    """Every measure of :data:`MEASURES` on one model (``init``: the same network at initialisation, for
    ``dist_init``; None gives NaN), on ``data`` with cross-entropy, in eval mode. Returns ``(values, notes)``.

    >>> from workbench.study.zoo import build_model, configs
    >>> torch.manual_seed(0) and None
    >>> m = build_model(configs("tiny")[0]).eval()
    >>> v, notes = measure_model(m, m, (torch.rand(64, 64), torch.arange(64) % 10))
    >>> len(v), v["dist_init"], v["lambda_max"] > 0
    (16, 0.0, True)
    """
    lf, notes, v = nn.CrossEntropyLoss(), [], {}
    kw = dict(seed=seed, **_Q)
    v["lambda_max"] = float(sharpness.hessian_eigenvalues(model, lf, data, k=1, **kw).eigenvalue[0])
    v["trace"] = float(sharpness.hessian_trace(model, lf, data, n_hvp=30, **kw))
    v["sam"] = float(sharpness.sam_sharpness(model, lf, data, 0.05, **kw))
    v["asam"] = float(sharpness.sam_sharpness(model, lf, data, 0.5, True, **kw))
    v["m_sharpness"] = float(sharpness.sam_sharpness(model, lf, data, 0.05, m=32, **kw))
    v["keskar"] = float(sharpness.keskar_sharpness(model, lf, data, 1e-3, **kw))
    v["average_sharpness"] = float(sharpness.average_sharpness(model, lf, data, 0.005, n_draws=10, **kw))
    v["gam"] = float(sharpness.gam_flatness(model, lf, data, 0.05, **kw))
    v["fisher_rao"] = fisher_rao_norm(model, data)
    v["path_norm"] = path_norm(model, tuple(data[0].shape[1:]))
    v.update(norm_products(model))
    if init is None:
        v["dist_init"] = math.nan
    else:
        d2 = sum(float(((a.detach() - b.detach()) ** 2).sum()) for a, b in zip(model.parameters(), init.parameters()))
        v["dist_init"] = math.sqrt(d2)
    grid = np.geomspace(1e-3, 1.0, 16)
    rise = sharpness.average_sharpness(model, lf, data, grid, n_draws=5, **kw).values
    v["pacbayes_flatness"] = 1.0 / _crossing(grid, rise, PACBAYES_RISE) ** 2
    sl = landscape.slice_1d(model, lf, data, steps=41, span=2.0, seeds=[0, 1, 2], **kw)
    v["landscape_width"] = _width(sl, PACBAYES_RISE)
    v["esd_alpha"] = _esd_alpha(model, notes)
    return {k: v[k] for k in MEASURES}, notes


def measure_run(path: str | Path, *, n_data: int = 512, device: str | None = None) -> dict[str, Any]:
    """The measures of a cached run (:func:`workbench.study.zoo.run_path`), on the first ``n_data`` training
    samples (on ``device``, default the CPU), cached beside it as ``<run>.m<MEASURES_VERSION>.json``:
    ``{"values": {...}, "notes": [...]}``.

    >>> from workbench.study.zoo import build_zoo
    >>> r = measure_run(build_zoo("tiny", progress=False).path.values[0])
    >>> sorted(r), r["values"]["sam"] >= 0
    (['notes', 'values'], True)
    """
    path = Path(path)
    out = path.with_suffix(f".m{MEASURES_VERSION}.json")
    if out.exists():
        return json.loads(out.read_text())
    from ..results import atomic_write

    model, init, rec = load_run(path)
    if device is not None:
        model, init = model.to(device), init.to(device)
    x, y = (t[:n_data].to(device or "cpu") for t in run_data(json.loads(rec["spec"]), "train"))
    values, notes = measure_model(model, init, (x, y))
    res = {"values": values, "notes": notes}
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(res)))
    return res


def measure_zoo(runs: xr.Dataset, *, measure: Callable[[str], dict] = measure_run) -> xr.Dataset:
    """``runs`` (from :func:`workbench.study.zoo.build_zoo`) with ``value`` over ``(run, measure)`` added
    (cached measures are read, missing ones computed), ``expected_sign`` over ``measure``, and the notes
    in ``attrs["notes"]``.

    >>> from workbench.study.zoo import build_zoo
    >>> measure_zoo(build_zoo("tiny", progress=False)).value.sizes
    Frozen({'run': 8, 'measure': 16})
    """
    res = [measure(str(p)) for p in runs.path.values]
    names = list(MEASURES)
    vals = np.array([[r["values"][k] for k in names] for r in res], dtype=float)
    notes = sorted({n for r in res for n in r["notes"]})
    out = runs.assign(value=(("run", "measure"), vals)).assign_coords(
        measure=names, expected_sign=("measure", [MEASURES[k][0] for k in names])
    )
    out.attrs["notes"] = json.dumps(notes)
    return out
