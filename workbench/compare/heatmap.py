"""The layer x layer similarity heatmap between two models on the same inputs (the CKA family)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..capture import POOLS, capture_batch, check_layers
from ..data import input_batches
from ..params import model_device_dtype
from ..registry import Tags, probe
from ..state import modes
from ..stats import interval
from ..testing import hostile_data, hostile_model
from ..validate import EXPLAINED, choice, count, positive, real
from .cca import cca, procrustes, pwcca, svcca
from .outputs import check_model, forward_error, named_layers
from .similarity import MinibatchCKA, cka, linear_cka

__all__ = ["MEASURES", "similarity_layers", "cka_heatmap"]

#: measure name -> (function(X, Y, sigma) -> float, long name)
MEASURES = {
    "linear": (lambda X, Y, s: linear_cka(X, Y), "linear CKA"),
    "rbf": (lambda X, Y, s: cka(X, Y, "rbf", sigma=s), "RBF CKA"),
    "debiased": (lambda X, Y, s: linear_cka(X, Y, debiased=True), "debiased linear CKA"),
    "debiased_rbf": (lambda X, Y, s: cka(X, Y, "rbf", sigma=s, debiased=True), "debiased RBF CKA"),
    "minibatch": (None, "minibatch linear CKA (Nguyen et al. 2021)"),
    "procrustes": (lambda X, Y, s: procrustes(X, Y), "orthogonal Procrustes distance"),
    "cca": (lambda X, Y, s: cca(X, Y), "mean CCA"),
    "svcca": (lambda X, Y, s: svcca(X, Y), "SVCCA"),
    "pwcca": (lambda X, Y, s: pwcca(X, Y), "PWCCA"),
}


def similarity_layers(model: nn.Module) -> list[str]:
    """The default layers of a heatmap: every ``nn.Linear`` and ``nn.Conv1d/2d/3d`` of the model, in order.

    >>> similarity_layers(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1)))
    ['0', '2']
    """
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    out = [n for n, m in model.named_modules() if n and isinstance(m, kinds)]
    if not out:
        raise ValueError("layers_a: the model has no Linear or Conv module; name the layers (layers_a=[...])")
    return out


def _capture(model, name, batches, layers, pool, ctx):
    parts: dict[str, list] = {l: [] for l in layers}
    for b in batches:
        ctx.check_cancel()
        try:
            acts, _ = capture_batch(model, b, layers, pool=pool)
        except EXPLAINED as e:
            err = forward_error(e, name, b)
            if err is None:
                raise
            raise err from e
        for l, t in acts.items():
            t = t.detach().double().cpu()
            if not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"{name}: the features of {l!r} contain NaN or inf (non-finite weights or activations)"
                )
            parts[l].append(t.numpy())
    return parts


def _case():
    return (hostile_model(0), hostile_model(1), hostile_data(0, n=24)[0]), dict(n_resamples=10)


@probe("compare.cka_heatmap", tags=Tags(inputs="two_models", uses=("mode", "device")), case=_case)
def cka_heatmap(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    layers_a: str | Sequence[str] | None = None,
    layers_b: str | Sequence[str] | None = None,
    *,
    measure: str = "linear",
    sigma: float = 0.8,
    pool: str = "mean",
    n_resamples: int = 200,
    level: float = 0.95,
    ctx,
) -> xr.DataArray:
    """Similarity of every layer of ``layers_a`` (of ``model_a``) with every layer of ``layers_b`` (of
    ``model_b``) on the inputs of ``data`` (a batch, an ``(inputs, labels)`` pair, or a DataLoader / list
    of batches): a ``layer_a x layer_b`` DataArray with the ``level`` interval as the coords ``low`` and
    ``high`` (:func:`workbench.stats.interval`: subsamples of the examples without replacement; for
    ``measure="minibatch"``, of the batches).

    Activations are read with :mod:`workbench.capture` (outputs pooled by ``pool`` to one vector per
    example). ``layers_a`` default: every Linear and Conv module (:func:`similarity_layers`);
    ``layers_b`` default: the same names (seeds of one architecture; name them for another one).
    ``measure``: one of :data:`MEASURES` (CKA: 1 = same up to rotation and scale; ``procrustes``: a
    distance, 0 = same). Linear, debiased, Procrustes and the CCA family work in feature space
    (``O(n d^2)``); the RBF measures build ``n x n`` Gram matrices. ``minibatch`` accumulates the
    unbiased HSIC batch by batch (Nguyen et al. 2021; batches of at least 4 examples; its interval needs
    at least 3 batches, else NaN), the others use all examples at once.

    >>> from workbench.testing import tiny_classifier
    >>> m, _, (x, _) = tiny_classifier(30)
    >>> h = cka_heatmap(m, m, x, n_resamples=10, progress=False)
    >>> h.dims, np.round(np.diag(h.values), 6).tolist()
    (('layer_a', 'layer_b'), [1.0, 1.0])
    """
    check_model("model_a", model_a)
    check_model("model_b", model_b)
    choice("measure", measure, list(MEASURES))
    choice("pool", pool, POOLS)
    sigma = positive("sigma", sigma)
    n_resamples = count("n_resamples", n_resamples, lo=10)
    level = real("level", level, lo=0.0, hi=1.0)
    if not 0 < level < 1:
        raise ValueError(f"level: expected a probability in (0, 1) such as 0.95, got {level}")
    la = similarity_layers(model_a) if layers_a is None else named_layers(model_a, layers_a, "layers_a")
    if layers_b is None:
        try:
            lb = check_layers(model_b, la)
        except ValueError:
            raise ValueError(
                f"model_b: has no modules named {la}; for another architecture name its layers (layers_b=[...])"
            ) from None
    else:
        lb = named_layers(model_b, layers_b, "layers_b")
    (dev_a, dt_a), (dev_b, dt_b) = model_device_dtype(model_a), model_device_dtype(model_b)
    ba = input_batches(data, ctx.device or dev_a, what="data", dtype=dt_a)
    bb = input_batches(data, ctx.device or dev_b, what="data", dtype=dt_b)
    with ctx.bar(2, "cka_heatmap: activations") as bar:
        with modes(model_a, ctx.mode), torch.no_grad():
            fa = _capture(model_a, "model_a", ba, la, pool, ctx)
        bar.update()
        with modes(model_b, ctx.mode), torch.no_grad():
            fb = _capture(model_b, "model_b", bb, lb, pool, ctx)
        bar.update()
    n = sum(a.shape[0] for a in fa[la[0]])
    est, lo, hi = (np.full((len(la), len(lb)), np.nan) for _ in range(3))
    f = MEASURES[measure][0]
    with ctx.bar(len(la) * len(lb), "cka_heatmap") as bar:
        for i, a in enumerate(la):
            for j, b in enumerate(lb):
                if measure == "minibatch":
                    acc = MinibatchCKA()
                    for xa, xb in zip(fa[a], fb[b]):
                        acc.update(xa, xb)
                    hs = np.asarray(acc.per_batch)
                    r = (
                        interval(MinibatchCKA.from_hsic, *hs.T, n_resamples=n_resamples, level=level, seed=ctx.seed)
                        if len(hs) >= 3
                        else (acc.value, np.nan, np.nan)
                    )
                else:
                    X, Y = np.concatenate(fa[a]), np.concatenate(fb[b])
                    if n < 3:
                        r = (f(X, Y, sigma), np.nan, np.nan)
                    else:
                        r = interval(_score(f, sigma), X, Y, n_resamples=n_resamples, level=level, seed=ctx.seed)
                est[i, j], lo[i, j], hi[i, j] = r
                bar.update()
    ctx.record(n_samples=int(n))
    return xr.DataArray(
        est,
        dims=("layer_a", "layer_b"),
        coords={
            "layer_a": la,
            "layer_b": lb,
            "low": (("layer_a", "layer_b"), lo, {"long_name": f"lower end of the {level:.0%} interval"}),
            "high": (("layer_a", "layer_b"), hi, {"long_name": f"upper end of the {level:.0%} interval"}),
        },
        name=measure,
        attrs=dict(long_name=MEASURES[measure][1], measure=measure, level=level, pool=pool, units="1"),
    )


def _score(f, sigma):
    def score(X, Y):  # the full-data estimate raises its own clear error; a too small subsample is NaN
        try:
            return f(X, Y, sigma)
        except ValueError:
            return np.nan

    return score
