"""Full-batch gradient descent on the digits MLP: the edge of stability (Cohen et al. 2021) and sharpness across
widths under the standard and the maximal-update parametrisation (Noci et al. 2024, "Super consistency")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr

from ..config import threads
from ..results import provenance
from .reproduce_models import WidthMLP
from .reproduce_runs import monitored_run, preset_config, seeded

PRESETS = {
    "edge_of_stability": {
        "tiny": dict(lrs=(0.3, 0.5), steps=500, every=20, n=256, width=64, seeds=(0, 1)),
        "default": dict(lrs=(0.3, 0.5), steps=1500, every=10, n=1347, width=64, seeds=(0, 1, 2)),
    },
    "width_sharpness": {
        "tiny": dict(widths=(16, 64, 256), lr=0.03, steps=150, every=25, n=256, base_width=16, seeds=(0,)),
        "default": dict(widths=(32, 128, 512), lr=0.03, steps=500, every=25, n=1347, base_width=32, seeds=(0, 1, 2)),
    },
}


def mse_onehot(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``0.5 mean_i ||f(x_i) - onehot(y_i)||^2``: the square loss on one-hot labels (Cohen et al.'s MSE).

    >>> float(mse_onehot(torch.tensor([[1.0, 0.0]]), torch.tensor([0])))
    0.0
    """
    return 0.5 * (out - F.one_hot(target, out.shape[-1]).to(out.dtype)).pow(2).sum(-1).mean()


def _gd_run(model, lr, steps, every, data, store=None):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data

    def step_fn(step):
        loss = mse_onehot(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    def full_loss(m):
        with torch.no_grad():
            return {"full_loss": float(mse_onehot(m(x), y))}

    r = monitored_run(model, opt, step_fn, steps, every, mse_onehot, data, ("loss", "sharpness"), full_loss, store)
    r["lambda_max"] = r["monitor"].lambda_max.values
    return r


def _digits(n):
    from ..zoo.datasets import digits

    x, y = digits("train")
    return x[:n], y[:n]


def edge_of_stability(preset: str = "tiny", *, store_dir: str | Path | None = None, **overrides) -> xr.Dataset:
    """Progressive sharpening and the edge of stability (Cohen et al. 2021) under full-batch gradient descent.

    The digits MLP (:class:`workbench.zoo.models.MLP`, 64-width-width-10, ReLU) is trained by full-batch GD on
    the first ``n`` training digits with the square loss on one-hot labels (:func:`mse_onehot`) at each
    learning rate in ``lrs``; ``lambda_max``, the top eigenvalue of the Hessian of the training loss, is
    recorded every ``every`` steps. The claim: ``lambda_max`` starts below ``2/lr``, rises to it and hovers
    there; ``hover_ratio`` = median of ``lambda_max / (2/lr)`` over the second half of the run.

    Returns a Dataset over (lr, seed, step): ``lambda_max``, ``loss``; ``edge`` (= 2/lr) over lr;
    ``hover_ratio``, ``start_ratio`` (first ``lambda_max`` over the edge) and ``peak_ratio`` over (lr, seed).

    >>> ds = edge_of_stability("tiny", steps=4, every=2, n=32, seeds=(0,))
    >>> dict(ds.lambda_max.sizes), [round(v, 1) for v in ds.edge.values.tolist()]
    ({'lr': 2, 'seed': 1, 'step': 3}, [6.7, 4.0])
    """
    from ..zoo.models import MLP

    cfg = preset_config(PRESETS["edge_of_stability"], preset, overrides)
    data = _digits(cfg["n"])
    lrs, seeds = [float(v) for v in cfg["lrs"]], list(cfg["seeds"])
    traces = {}
    with threads():
        for lr in lrs:
            for seed in seeds:
                with seeded(seed):
                    model = MLP(width=cfg["width"])
                store = None if store_dir is None else f"{store_dir}/eos-lr{lr:g}-s{seed}.wbmon"
                traces[lr, seed] = _gd_run(model, lr, cfg["steps"], cfg["every"], data, store)
    steps = traces[lrs[0], seeds[0]]["step"]

    def stack(var):
        return np.array([[traces[lr, s][var] for s in seeds] for lr in lrs])

    lam = stack("lambda_max")
    edge = 2.0 / np.asarray(lrs)
    ratio = lam / edge[:, None, None]
    half = ratio[..., len(steps) // 2 :]
    return xr.Dataset(
        {
            "lambda_max": (("lr", "seed", "step"), lam, {"long_name": "top Hessian eigenvalue"}),
            "loss": (("lr", "seed", "step"), stack("full_loss"), {"long_name": "training loss (square)"}),
            "hover_ratio": (
                ("lr", "seed"),
                np.median(half, axis=-1),
                {"long_name": "median lambda_max / (2/lr), 2nd half"},
            ),
            "start_ratio": (("lr", "seed"), ratio[..., 0]),
            "peak_ratio": (("lr", "seed"), ratio.max(-1)),
        },
        coords={"lr": lrs, "seed": seeds, "step": steps, "edge": ("lr", edge)},
        attrs=provenance("monitor.edge_of_stability", dict(cfg, preset=preset)),
    )


def width_sharpness(preset: str = "tiny", **overrides) -> xr.Dataset:
    """``lambda_max`` along training for several widths under the standard (SP) and the maximal-update (muP)
    parametrisation (:class:`~workbench.monitor.reproduce_models.WidthMLP`), full-batch GD at one learning rate.

    Under SP the sharpness grows with width (the output layer's curvature scales with the number of hidden
    units), so one learning rate cannot suit every width; under muP it is nearly width-independent along
    training (Noci et al. 2024), which is why learning rates transfer across widths. ``width_spread`` is
    ``max_width lambda_max / min_width lambda_max`` at each step: the claim is that it is larger under SP.

    Returns a Dataset over (parametrisation, width, seed, step): ``lambda_max``, ``loss``; ``width_spread`` over
    (parametrisation, seed, step).

    >>> ds = width_sharpness("tiny", steps=2, every=1, n=16, widths=(8, 16), base_width=8)
    >>> dict(ds.lambda_max.sizes)
    {'parametrisation': 2, 'width': 2, 'seed': 1, 'step': 3}
    """
    cfg = preset_config(PRESETS["width_sharpness"], preset, overrides)
    data = _digits(cfg["n"])
    pars, widths, seeds = ["sp", "mup"], list(cfg["widths"]), list(cfg["seeds"])
    traces = {}
    with threads():
        for p in pars:
            for w in widths:
                for seed in seeds:
                    with seeded(seed):
                        model = WidthMLP(width=w, parametrisation=p, base_width=cfg["base_width"])
                    traces[p, w, seed] = _gd_run(model, cfg["lr"], cfg["steps"], cfg["every"], data)
    steps = traces[pars[0], widths[0], seeds[0]]["step"]

    def stack(var):
        return np.array([[[traces[p, w, s][var] for s in seeds] for w in widths] for p in pars])

    lam = stack("lambda_max")
    dims = ("parametrisation", "width", "seed", "step")
    return xr.Dataset(
        {
            "lambda_max": (dims, lam, {"long_name": "top Hessian eigenvalue"}),
            "loss": (dims, stack("full_loss")),
            "width_spread": (("parametrisation", "seed", "step"), lam.max(1) / lam.min(1)),
        },
        coords={"parametrisation": pars, "width": widths, "seed": seeds, "step": steps},
        attrs=provenance("monitor.width_sharpness", dict(cfg, preset=preset)),
    )
