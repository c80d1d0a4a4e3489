"""The ``features`` probe: pooled activations of named modules for every example, as an xarray Dataset."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import xarray as xr
from torch import nn

from ..capture import POOLS, capture_batch, check_layers, default_layer
from ..data import input_batches
from ..params import model_device_dtype
from ..registry import Tags, probe
from ..state import modes
from ..testing import hostile_transformer
from ..validate import EXPLAINED, boolean, call_error, choice, describe, name_list

__all__ = ["features", "feature_dim"]

SOURCE_PROBS = "source_probs"


def feature_dim(layer: str) -> str:
    """The name of the feature dimension of ``layer``'s variable in a :func:`features` Dataset.

    >>> feature_dim("encoder.layers.0")
    'encoder.layers.0_dim'
    """
    return f"{layer}_dim"


def _case():
    m, x, _ = hostile_transformer()
    return (m, x, ["encoder.layers.0", "encoder.layers.1"]), dict(pool="cls", return_outputs=True)


@probe("transfer.features", tags=Tags(inputs="inputs", uses=("mode", "device")), case=_case)
def features(
    model: nn.Module,
    data: Any,
    layers: str | Sequence[str] | None = None,
    *,
    pool: str = "mean",
    input_of: bool | None = None,
    mask_key: str = "attention_mask",
    return_outputs: bool = False,
    ctx,
) -> xr.Dataset:
    """Pooled activations of the modules named in ``layers`` for every example of ``data`` (one batch:
    a tensor, a mapping of tensors or an ``(inputs, labels)`` pair whose labels are dropped; or a
    DataLoader / list of such batches), read with forward hooks (:mod:`workbench.capture`) without
    gradients, in ``mode`` (default eval).

    ``layers``: module names (default: the input of the last ``nn.Linear``, i.e. the penultimate
    features, named by that Linear). ``input_of``: read a module's input instead of its output
    (default: True only for the default layer). ``pool``: for ``(B, T, D)`` token outputs ``mean``
    (weighted by the batch's ``mask_key`` entry when the inputs are a mapping), ``cls`` (first token),
    ``max`` or ``flatten``; conv maps are averaged (``max``: maxed) over space.

    Returns a Dataset with one float64 variable per layer, named by the layer, over
    ``("example", "<layer>_dim")`` (:func:`feature_dim`; layers may differ in width), and with
    ``return_outputs=True`` and a model whose output is ``(batch, classes)`` logits, ``source_probs``
    over ``("example", "source_class")``: the softmax of the outputs (what LEEP and NCE read).

    >>> from workbench.testing import tiny_classifier
    >>> m, _, (x, y) = tiny_classifier(5)  # Linear(4, 8), Tanh, Linear(8, 3)
    >>> ds = features(m, x, return_outputs=True)
    >>> list(ds.data_vars), ds["2"].dims, ds["2"].shape, ds.source_probs.shape
    (['2', 'source_probs'], ('example', '2_dim'), (5, 8), (5, 3))
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    choice("pool", pool, POOLS)
    boolean("return_outputs", return_outputs)
    if input_of is not None:
        boolean("input_of", input_of)
    if not isinstance(mask_key, str):
        raise TypeError(f"mask_key: expected the name of the mask entry of mapping inputs, got {mask_key!r}")
    if layers is None:
        layers = [default_layer(model)]
        input_of = True if input_of is None else input_of
    layers = list(dict.fromkeys(check_layers(model, name_list("layers", layers))))
    if "" in layers:
        raise ValueError("layers: '' is the whole model; for its output use return_outputs=True, or name a module")
    if return_outputs and SOURCE_PROBS in layers:
        raise ValueError(f"layers: a module named {SOURCE_PROBS!r} clashes with the model outputs; rename it")
    if pool not in POOLS:
        raise ValueError(f"pool: expected 'mean', 'cls', 'max' or 'flatten', got {pool!r}")
    device, dtype = model_device_dtype(model)
    batches = input_batches(data, ctx.device or device, what="data", dtype=dtype)
    parts: dict[str, list] = {l: [] for l in layers}
    probs = []
    with modes(model, ctx.mode), torch.no_grad():
        for batch in ctx.iterate(batches, desc="features"):
            try:
                acts, out = capture_batch(model, batch, layers, pool=pool, input_of=bool(input_of), mask_key=mask_key)
            except EXPLAINED as e:
                what = f"the model's forward failed on inputs {describe(batch)}"
                err = call_error(e, "data", what, "Pass inputs it takes.")
                if err is None:
                    raise
                raise err from e
            for l, t in acts.items():
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(
                        f"model: the features of {l!r} contain NaN or inf values (non-finite weights or activations)"
                    )
                parts[l].append(t.double().cpu())
            if return_outputs and isinstance(out, torch.Tensor) and out.dim() == 2:
                probs.append(torch.softmax(out.double(), -1).cpu())
    where = "input" if input_of else "output"
    ds = xr.Dataset(
        {
            l: (("example", feature_dim(l)), torch.cat(v).numpy(), {"long_name": f"{where} of {l}, pooled ({pool})"})
            for l, v in parts.items()
        }
    )
    if probs and len(probs) == len(batches):
        ds[SOURCE_PROBS] = (
            ("example", "source_class"),
            torch.cat(probs).numpy(),
            {"long_name": "softmax of the model outputs", "units": "1"},
        )
    ctx.record(n_samples=ds.sizes["example"])
    return ds
