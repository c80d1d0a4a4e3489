"""Attention statistics per (layer, head): the probes :func:`attention_stats`, :func:`entropy` and
:func:`attention_map`, and the steps they share after the forward passes (:mod:`.collect`): stacking
the rows of every batch and reducing them to a Dataset.

Definitions (Zhai et al. 2023 for entropy; Wortsman et al. 2023 for the logit), per query row i:

* entropy ``H_i = -sum_j p_ij ln p_ij`` over allowed keys (nats; padded or causally disallowed keys
  have p = 0);
* normalised entropy ``H_i / ln n_i``, n_i the number of allowed keys (``ln(i + 1)`` for causal rows;
  rows with one allowed key are left out of it);
* max attention logit ``max_j q_i . k_j * scale`` over allowed keys (before an additive mask);
* sink mass ``p_i0``: the probability on the first key.

Per-head values are token-weighted means over valid (example, query) rows (the max logit: the max),
accumulated in float64; see :mod:`workbench.attention.capture` for which rows are valid.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..data import batch_len, input_batches
from ..params import model_device_dtype
from ..registry import Context, Tags, probe
from ..testing import hostile_transformer
from ..validate import EXPLAINED, boolean, call_error, describe, integer, name_list
from . import capture as _capture_module
from .collect import Captured, capture_batches, check_arguments

#: frames of the capture mode, which call torch for the model: their errors are torch's
_CAPTURE_FILE = (_capture_module.__file__,)

KEYS = ("entropy", "normalized_entropy", "max_logit", "sink_mass")
_HOW = {"entropy": "mean", "normalized_entropy": "mean", "max_logit": "max", "sink_mass": "mean"}
_META = {
    "entropy": ("attention entropy", "nats"),
    "normalized_entropy": ("attention entropy / ln(number of allowed keys)", "1"),
    "max_logit": ("maximum attention logit q.k*scale", "1"),
    "sink_mass": ("attention probability on the first key", "1"),
}


def stack_rows(captured: Captured) -> dict[str, np.ndarray]:
    """Concatenate each layer's batches along examples: ``{key: (L, B, H, T) array}``, padded with NaN
    (batches of different lengths, layers with different head counts).

    >>> part = {k: torch.zeros(2, 3, 4, dtype=torch.float64) for k in KEYS}
    >>> stack_rows(Captured(["a"], {"a": [part, part]}))["entropy"].shape
    (1, 4, 3, 4)
    """
    rows = {}
    for key in KEYS:
        mats = []
        for name in captured.order:
            parts = captured.per_layer[name]
            T = max(p[key].shape[-1] for p in parts)
            H = max(p[key].shape[1] for p in parts)
            padded = [
                p[key]
                if p[key].shape[-1] == T
                else torch.nn.functional.pad(p[key], (0, T - p[key].shape[-1], 0, 0), value=math.nan)
                for p in parts
            ]
            padded = [
                torch.cat([p, torch.full((p.shape[0], H - p.shape[1], T), math.nan, dtype=p.dtype)], 1)
                if p.shape[1] < H
                else p
                for p in padded
            ]
            mats.append(torch.cat(padded, dim=0))
        Tm = max(m.shape[-1] for m in mats)
        Hm = max(m.shape[1] for m in mats)
        mats = [
            m
            if m.shape[1:] == (Hm, Tm)
            else torch.nn.functional.pad(m, (0, Tm - m.shape[-1], 0, Hm - m.shape[1]), value=math.nan)
            for m in mats
        ]
        rows[key] = torch.stack(mats).numpy()
    return rows


def _reduce(arr, how, axis):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(arr, axis=axis) if how == "max" else np.nanmean(arr, axis=axis)


def _at_resolution(arr, how, resolution):
    """(dims, values) of one (L, B, H, T) statistic at ``resolution``."""
    L, B, H, T = arr.shape
    if resolution == "head":  # token-weighted over (example, query)
        return ("layer", "head"), _reduce(arr.transpose(0, 2, 1, 3).reshape(L, H, B * T), how, -1)
    if resolution == "example":
        return ("layer", "head", "example"), _reduce(arr, how, -1).transpose(0, 2, 1)  # (L, H, B)
    if resolution == "query":
        return ("layer", "head", "example", "query"), arr.transpose(0, 2, 1, 3)  # (L, H, B, T)
    raise ValueError(f"resolution: expected 'head', 'example' or 'query', got {resolution!r}")


def to_dataset(captured: Captured, resolution: str = "head") -> xr.Dataset:
    """The Dataset of :func:`attention_stats` at ``resolution``: ``"head"`` (token-weighted over valid
    (example, query) rows: mean, or max for the max logit), ``"example"`` (over queries) or ``"query"``
    (every row), plus ``n_rows`` (valid rows per (layer, head)) and attr ``capture``.

    >>> part = {k: torch.ones(2, 3, 4, dtype=torch.float64) for k in KEYS}
    >>> ds = to_dataset(Captured(["a"], {"a": [part]}, {"a": "sdpa"}), "example")
    >>> ds.entropy.dims, int(ds.n_rows[0, 0]), ds.attrs["capture"]
    (('layer', 'head', 'example'), 8, 'sdpa')
    """
    rows = stack_rows(captured)
    L, B, H, T = rows["entropy"].shape
    coords = {
        "layer": np.arange(L),
        "head": np.arange(H),
        "module": ("layer", np.array(captured.order, dtype=object).astype(str)),
    }
    data = {}
    for key, arr in rows.items():
        dims, v = _at_resolution(arr, _HOW[key], resolution)
        data[key] = (dims, v, {"long_name": _META[key][0], "units": _META[key][1]})
    n_rows = np.isfinite(rows["entropy"]).transpose(0, 2, 1, 3).reshape(L, H, -1).sum(-1)
    data["n_rows"] = (("layer", "head"), n_rows.astype(np.int64), {"long_name": "valid query rows averaged"})
    ds = xr.Dataset(data, coords=coords)
    if resolution != "head":
        ds = ds.assign_coords(example=np.arange(B))
    if resolution == "query":
        ds = ds.assign_coords(query=np.arange(T))
    ds.attrs["capture"] = ",".join(sorted(set(captured.kinds.values())))
    return ds


TAGS = Tags(inputs="inputs", attention=True, uses=("mode",))


def prepare(model, inputs, attention_modules, query_chunk=128, exact_outputs=False, resolution="head"):
    """Validated arguments of an attention probe: ``(input batches cast to the model's dtype, attention
    module names or None, query_chunk)``; clear errors name the argument.

    >>> from workbench.testing import hostile_transformer
    >>> m, x, _ = hostile_transformer()
    >>> batches, names, chunk = prepare(m, x.double(), ["encoder.layers.0.self_attn"])
    >>> batches[0].dtype, names, chunk
    (torch.float32, ['encoder.layers.0.self_attn'], 128)
    """
    query_chunk = integer("query_chunk", query_chunk)  # an int; check_arguments says why >= 1
    boolean("exact_outputs", exact_outputs)
    check_arguments(model, resolution, query_chunk)
    if attention_modules is not None:
        attention_modules = name_list("attention_modules", attention_modules, [n for n, _ in model.named_modules()])
    return input_batches(inputs, dtype=model_device_dtype(model)[1]), attention_modules, query_chunk


def explained(run, batches):
    """``run()`` (the forward passes); torch's errors on inputs the model cannot take become a clear error
    naming ``inputs``."""
    try:
        return run()
    except EXPLAINED as e:
        err = call_error(
            e,
            "inputs",
            f"the model's forward failed on inputs {describe(batches[0])}",
            "Pass inputs (and keyword arguments) the model takes.",
            also=_CAPTURE_FILE,
        )
        if err is None:
            raise
        raise err from e


def _stats(model, inputs, forward_kwargs, resolution, query_chunk, attention_modules, exact_outputs, ctx):
    batches, attention_modules, query_chunk = prepare(
        model, inputs, attention_modules, query_chunk, exact_outputs, resolution
    )
    with ctx.bar(len(batches), "attention") as bar:
        captured = explained(
            lambda: capture_batches(
                model,
                batches,
                forward_kwargs,
                query_chunk=query_chunk,
                attention_modules=attention_modules,
                mode=ctx.mode,
                exact_outputs=exact_outputs,
                check=ctx.check_cancel,
                on_batch=bar.update,
            ),
            batches,
        )
    return to_dataset(captured, resolution)


@probe("attention.attention_stats", tags=TAGS)
def attention_stats(
    model: nn.Module,
    inputs: Any,
    *,
    resolution: str = "head",
    query_chunk: int = 128,
    attention_modules: Sequence[str] | None = None,
    exact_outputs: bool = False,
    ctx: Context,
    **forward_kwargs,
) -> xr.Dataset:
    """Entropy, normalised entropy, max attention logit and sink mass per (layer, head) in one forward
    pass per batch (see the module docstring for the definitions and masking rules).

    ``inputs``: a mapping (passed as keyword arguments, e.g. a tokenizer's output with
    ``attention_mask``), a tensor or tuple (passed positionally), or a DataLoader / list of such
    batches (``(inputs, labels)`` batches: labels dropped). ``forward_kwargs`` go to the forward call
    (``src_key_padding_mask``, ``mask``, ``is_causal``...). ``resolution``: ``"head"`` (token-weighted
    mean over valid rows), ``"example"`` or ``"query"``. ``query_chunk``: queries reduced at a time.
    ``attention_modules``: names of modules whose 4-D softmax is attention (when their class name
    lacks "Attention"). ``exact_outputs``: under sdpa the attention output is by default computed from
    the probabilities the probe already has (``softmax(z) @ v``, equal to the kernel's to float
    rounding), which halves the attention work; ``True`` runs the model's own kernel as well.

    >>> from workbench.attention import attention_stats
    >>> from workbench.testing import hostile_transformer
    >>> model, x, mask = hostile_transformer()
    >>> ds = attention_stats(model, x, src_key_padding_mask=mask, progress=False)
    >>> dict(ds.entropy.sizes), ds.attrs["capture"], int(ds.n_rows[0, 0])
    ({'layer': 2, 'head': 4}, 'multi_head_attention_forward', 15)
    """
    return _stats(model, inputs, forward_kwargs, resolution, query_chunk, attention_modules, exact_outputs, ctx)


def _entropy_case():
    m, x, mask = hostile_transformer()
    return (m, x), dict(src_key_padding_mask=mask, normalized=True)


@probe("attention.entropy", tags=TAGS, case=_entropy_case)
def entropy(
    model: nn.Module,
    inputs: Any,
    *,
    normalized: bool = False,
    resolution: str = "head",
    query_chunk: int = 128,
    attention_modules: Sequence[str] | None = None,
    exact_outputs: bool = False,
    ctx: Context,
    **forward_kwargs,
) -> xr.DataArray:
    """Attention entropy in nats, ``H_i = -sum_j p_ij ln p_ij`` over allowed keys (Zhai et al. 2023),
    averaged over valid (example, query) rows per (layer, head) (token-weighted); ``normalized=True``
    divides each row by ``ln`` of its number of allowed keys. See :func:`attention_stats` for the arguments.

    >>> from workbench.attention import entropy
    >>> from workbench.testing import hostile_transformer
    >>> model, x, mask = hostile_transformer()
    >>> ne = entropy(model, x, normalized=True, src_key_padding_mask=mask, progress=False)
    >>> ne.dims, bool(((ne > 0) & (ne <= 1)).all())
    (('layer', 'head'), True)
    """
    boolean("normalized", normalized)
    ds = _stats(model, inputs, forward_kwargs, resolution, query_chunk, attention_modules, exact_outputs, ctx)
    da = ds["normalized_entropy" if normalized else "entropy"].copy()
    da.attrs["capture"] = ds.attrs["capture"]
    return da


def _map_case():
    m, x, mask = hostile_transformer()
    return (m, x, 1), dict(example=1, src_key_padding_mask=mask)


@probe("attention.attention_map", tags=Tags(inputs="inputs", attention=True, uses=()), case=_map_case)
def attention_map(
    model: nn.Module,
    inputs: Any,
    layer: int,
    example: int = 0,
    *,
    attention_modules: Sequence[str] | None = None,
    ctx: Context,
    **forward_kwargs,
) -> xr.DataArray:
    """Attention probabilities ``p_ij = softmax_j(q_i . k_j * scale + mask)`` of one example of the first
    batch at one attention layer (the ``layer``-th captured), over (head, query, key), in eval mode.
    Only that map is kept (the other layers are reduced as by :func:`attention_stats`).

    >>> from workbench.attention import attention_map
    >>> from workbench.testing import hostile_transformer
    >>> model, x, mask = hostile_transformer()
    >>> p = attention_map(model, x, 1, example=2, src_key_padding_mask=mask, progress=False)
    >>> p.dims, p.shape, float(p.isel(key=slice(3, None)).max()), p.attrs["module"]
    (('head', 'query', 'key'), (4, 7, 7), 0.0, 'encoder.layers.1.self_attn')
    """
    layer, example = integer("layer", layer, lo=0), integer("example", example, lo=0)
    batches, attention_modules, _ = prepare(model, inputs, attention_modules)
    if example >= batch_len(batches[0]):
        raise ValueError(f"example: the first batch of inputs has {batch_len(batches[0])} examples, got {example}")
    with ctx.bar(len(batches), "attention map") as bar:
        cap = explained(
            lambda: capture_batches(
                model,
                batches,
                forward_kwargs,
                attention_modules=attention_modules,
                mode=ctx.mode,
                keep=(layer, example),
                check=ctx.check_cancel,
                on_batch=bar.update,
            ),
            batches,
        )
    if not 0 <= layer < len(cap.order):
        raise ValueError(
            f"layer: the model has {len(cap.order)} attention layers (0..{len(cap.order) - 1}), got {layer}"
        )
    name = cap.order[layer]
    if name not in cap.maps:
        raise ValueError(f"example: the first batch of inputs has no example {example}; pass an index below its size")
    p = torch.cat(cap.maps[name], dim=-2).numpy()
    return xr.DataArray(
        p,
        dims=("head", "query", "key"),
        name="attention",
        attrs={"long_name": f"attention probabilities, {name}", "units": "1", "module": name, "example": int(example)},
    )
