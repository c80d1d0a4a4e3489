"""Neural collapse (Papyan, Han & Donoho 2020) of a layer's features, over checkpoints.

With ``h_i`` the features of example i, ``mu_c`` the class means, ``mu_G`` the global mean,
``Sigma_W = 1/N sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})'`` and ``Sigma_B = 1/C sum_c (mu_c - mu_G)(mu_c - mu_G)'``,
``M = [mu_c - mu_G]_c`` (d x C) and ``W`` (C x d) the classifier's rows:

* **NC1** within-class variability ``tr(Sigma_W Sigma_B^+) / C`` (0 at collapse);
* **NC2** distance to a simplex ETF ``| M'M / |M'M|_F - (I - 11'/C) / sqrt(C - 1) |_F`` (Zhu et al. 2021;
  0 at collapse), with ``nc2_equinorm`` ``std_c |mu_c - mu_G| / mean_c |mu_c - mu_G|`` and
  ``nc2_equiangular`` ``mean_{c != c'} |cos(mu_c - mu_G, mu_c' - mu_G) + 1/(C - 1)|`` (Papyan et al.);
* **NC3** self-duality ``| W' / |W|_F - M / |M|_F |_F`` (0 at collapse; NaN without a classifier of width d);
* **NC4** the rate at which the classifier's prediction agrees with the nearest class mean
  ``argmin_c |h - mu_c|`` (1 at collapse).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..capture import capture_batch, default_layer
from ..params import model_device_dtype
from ..registry import Tags, probe
from ..state import modes
from ..testing import hostile_data, hostile_model
from ..validate import EXPLAINED
from .calibration import check_labels
from .outputs import check_model, forward_error, named_layers
from .similarity import features_array

__all__ = ["collapse_metrics", "neural_collapse", "NC_METRICS"]

NC_METRICS = ("nc1", "nc2", "nc2_equinorm", "nc2_equiangular", "nc3", "nc4")


def collapse_metrics(
    features: Any, labels: Any, weight: Any = None, predictions: Any = None, bias: Any = None
) -> dict[str, float]:
    """NC1-NC4 of ``features`` (N, d) with integer ``labels`` (N,) (see the module docstring). ``weight``
    (C, d) and ``bias`` (C,): the linear classifier on these features (NC3, and NC4's predictions
    ``argmax W h + b``); ``predictions`` (N,): the classifier's predicted classes, when it is not a
    linear map of these features. Classes are ``0 .. C-1`` with ``C = max(labels) + 1`` or the rows of
    ``weight``; every class needs an example.

    >>> C = 3
    >>> M = np.sqrt(C / (C - 1)) * (np.eye(C) - 1 / C)          # a simplex ETF, d = C
    >>> y = np.repeat(np.arange(C), 4)
    >>> r = collapse_metrics(M[y], y, weight=M)
    >>> [round(r[k], 6) for k in ("nc1", "nc2", "nc3", "nc4")]
    [0.0, 0.0, 0.0, 1.0]
    """
    H = features_array("features", features, 2)
    W = None if weight is None else features_array("weight", weight, 2)
    n_classes = W.shape[0] if W is not None else int(np.max(np.asarray(labels))) + 1
    y = check_labels(labels, H.shape[0], max(n_classes, 2))
    C = n_classes
    counts = np.bincount(y, minlength=C)
    if C < 2 or np.any(counts == 0):
        raise ValueError(f"labels: every class 0..{C - 1} needs at least one example; counts {counts.tolist()}")
    mu = np.stack([H[y == c].mean(0) for c in range(C)])  # (C, d)
    mu_g = H.mean(0)
    M = (mu - mu_g).T  # (d, C)
    R = H - mu[y]
    sw = R.T @ R / H.shape[0]
    sb = M @ M.T / C
    nc1 = float(np.trace(sw @ np.linalg.pinv(sb, rcond=1e-10, hermitian=True)) / C)
    G = M.T @ M
    gn = np.linalg.norm(G)
    etf = (np.eye(C) - 1.0 / C) / math.sqrt(C - 1)
    nc2 = float(np.linalg.norm(G / gn - etf)) if gn > 0 else math.nan
    norms = np.linalg.norm(M, axis=0)
    equinorm = float(norms.std() / norms.mean()) if norms.mean() > 0 else math.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = G / np.outer(norms, norms)
    off = ~np.eye(C, dtype=bool)
    equiangular = float(np.mean(np.abs(cos[off] + 1.0 / (C - 1))))
    nc3 = math.nan
    if W is not None:
        if W.shape[1] != H.shape[1]:
            raise ValueError(f"weight: has {W.shape[1]} columns, the features {H.shape[1]}; pass the classifier's rows")
        wn, mn = np.linalg.norm(W), np.linalg.norm(M)
        nc3 = float(np.linalg.norm(W.T / wn - M / mn)) if wn > 0 and mn > 0 else math.nan
    if predictions is not None:
        pred = check_labels(predictions, H.shape[0], max(C, int(np.max(np.asarray(predictions))) + 1), "predictions")
    elif W is not None:
        b = np.zeros(C) if bias is None else np.asarray(bias, dtype=np.float64).reshape(C)
        pred = (H @ W.T + b).argmax(1)
    else:
        pred = None
    ncc = ((H[:, None, :] - mu[None]) ** 2).sum(-1).argmin(1)
    nc4 = float(np.mean(pred == ncc)) if pred is not None else math.nan
    return dict(nc1=nc1, nc2=nc2, nc2_equinorm=equinorm, nc2_equiangular=equiangular, nc3=nc3, nc4=nc4)


def _last_linear(model: nn.Module) -> nn.Linear | None:
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    return last


def _case():
    return ([hostile_model(0), hostile_model(1)], hostile_data(0, n=60)), {}


@probe("compare.neural_collapse", tags=Tags(inputs="models", uses=("mode", "device")), case=_case)
def neural_collapse(
    models: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    data: Any,
    layer: str | None = None,
    *,
    ctx,
) -> xr.Dataset:
    """NC1-NC4 (:func:`collapse_metrics`) of every model (checkpoint) in ``models`` (a list, a dict by
    name, or one model) on the labelled ``data`` (an ``(inputs, labels)`` pair or a DataLoader of them,
    class indices ``0 .. C-1``, every class present), over the dim ``checkpoint``.

    ``layer``: the module whose *output* is read; default the input of the last ``nn.Linear`` (the
    penultimate features), whose weight is the classifier of NC3. NC4 compares the model's own
    prediction (argmax of its outputs) with the nearest class mean of the layer's features; NC3 is NaN
    when the last Linear does not take this layer's width.

    >>> from workbench.testing import tiny_classifier
    >>> m, _, (x, y) = tiny_classifier(60)
    >>> ds = neural_collapse([m, m], (x, y), progress=False)
    >>> ds.nc1.dims, bool((ds.nc4 >= 0).all())
    (('checkpoint',), True)
    """
    if isinstance(models, nn.Module):
        models = [models]
    if isinstance(models, Mapping):
        names, mods = [str(k) for k in models], list(models.values())
    elif isinstance(models, (list, tuple)):
        names, mods = [str(i) for i in range(len(models))], list(models)
    else:
        raise TypeError(f"models: expected a model, a list or a dict of models, got {type(models).__name__}")
    if not mods:
        raise ValueError("models: empty; pass at least one model (checkpoint)")
    for i, m in enumerate(mods):
        check_model(f"models[{names[i]}]", m)
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer: expected a module name (str) or None, got {type(layer).__name__}")
    rows = []
    for name, model in ctx.iterate(list(zip(names, mods)), desc="neural_collapse"):
        lname = default_layer(model) if layer is None else named_layers(model, layer, "layer")[0]
        device, dtype = model_device_dtype(model)
        data_m = ctx.adopt_data(data) if not rows else ctx.data
        feats, outs, labels = [], [], []
        with modes(model, ctx.mode), torch.no_grad():
            for x, y, _ in data_m.batches():
                x = x.to(ctx.device or device, dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                try:
                    acts, out = capture_batch(model, x, [lname], input_of=layer is None)
                except EXPLAINED as e:
                    err = forward_error(e, f"models[{name}]", x)
                    if err is None:
                        raise
                    raise err from e
                feats.append(acts[lname].double().cpu())
                outs.append(torch.as_tensor(getattr(out, "logits", out)).double().cpu())
                labels.append(torch.as_tensor(y).cpu())
        H, Z = torch.cat(feats).numpy(), torch.cat(outs).numpy()
        if not (np.all(np.isfinite(H)) and np.all(np.isfinite(Z))):
            raise ValueError(f"models[{name}]: features or outputs contain NaN or inf (non-finite weights?)")
        if Z.ndim != 2:
            raise ValueError(f"models[{name}]: expected (batch, classes) outputs, got shape {Z.shape}")
        y = check_labels(torch.cat(labels).numpy(), H.shape[0], Z.shape[1], "data")
        head = _last_linear(model)
        W = None
        if head is not None and head.in_features == H.shape[1] and head.out_features == Z.shape[1]:
            W = head.weight.detach().double().cpu().numpy()
        counts = np.bincount(y, minlength=Z.shape[1])
        if np.any(counts == 0):
            raise ValueError(f"data: every class 0..{Z.shape[1] - 1} needs an example; counts {counts.tolist()}")
        r = collapse_metrics(H, y, predictions=Z.argmax(1), weight=None)
        if W is not None:
            r["nc3"] = collapse_metrics(H, y, weight=W)["nc3"]
        rows.append(r)
    ds = xr.Dataset(
        {k: ("checkpoint", np.array([r[k] for r in rows]), {"long_name": _LONG[k]}) for k in NC_METRICS},
        coords={"checkpoint": names},
    )
    ds.attrs.update(layer=layer or "input of the last nn.Linear", nc4_means="agreement rate (1 at collapse)")
    return ds


_LONG = {
    "nc1": "NC1 tr(Sigma_W Sigma_B^+)/C",
    "nc2": "NC2 distance to a simplex ETF",
    "nc2_equinorm": "NC2 std/mean of class-mean norms",
    "nc2_equiangular": "NC2 mean |cos + 1/(C-1)|",
    "nc3": "NC3 distance between classifier and class means",
    "nc4": "NC4 agreement with the nearest class mean",
}
