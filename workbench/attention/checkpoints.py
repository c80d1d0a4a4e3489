"""Attention statistics across the checkpoints of a training run (:func:`over_checkpoints`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import xarray as xr
from torch import nn

from ..data import input_batches
from ..registry import Context, Tags, probe
from ..runs import load_run
from ..testing import hostile_transformer
from ..validate import finite_array
from .collect import capture_batches, check_arguments
from .statistics import explained, prepare, to_dataset

#: the dims of the statistics themselves, which ``dim`` must not take
_OWN_DIMS = ("layer", "head", "example", "query", "module")


def _case():
    m0, x, mask = hostile_transformer(0)
    m1 = hostile_transformer(1)[0]
    return ([m0, m1], x), dict(losses=[1.5, 0.5], src_key_padding_mask=mask)


@probe("attention.over_checkpoints", tags=Tags(inputs="models", attention=True, uses=("mode",)), case=_case)
def over_checkpoints(
    models: Sequence[nn.Module] | Mapping[Any, nn.Module] | str | os.PathLike,
    inputs: Any,
    *,
    losses: Iterable[float] | None = None,
    dim: str = "checkpoint",
    resolution: str = "head",
    query_chunk: int = 128,
    attention_modules: Sequence[str] | None = None,
    exact_outputs: bool = False,
    ctx: Context,
    **forward_kwargs,
) -> xr.Dataset:
    """:func:`~workbench.attention.attention_stats` of each model of a list / dict (the checkpoints of a
    run) on the same ``inputs``, stacked along ``dim`` ("checkpoint" or "step"; coordinates: the list
    index or the dict keys), with ``losses`` (e.g. the training loss per checkpoint) alongside as
    variable ``loss``. The other arguments are those of :func:`~workbench.attention.attention_stats`.
    ``models`` may be a run directory (:func:`workbench.runs.load_run`: Hugging Face ``checkpoint-<step>``
    folders, TorchScript or Lightning files loadable without a builder), stacked by increasing step along
    ``step`` unless ``dim`` says otherwise.

    >>> from workbench.attention import over_checkpoints
    >>> from workbench.testing import hostile_transformer
    >>> (a, x, mask), b = hostile_transformer(0), hostile_transformer(1)[0]
    >>> ds = over_checkpoints({0: a, 100: b}, x, losses=[1.2, 0.7], dim="step", src_key_padding_mask=mask,
    ...                       progress=False)
    >>> ds.entropy.dims, ds.step.values.tolist(), ds.loss.values.tolist()
    (('step', 'layer', 'head'), [0, 100], [1.2, 0.7])
    """
    if isinstance(models, (str, os.PathLike)):
        models, dim = load_run(models), "step" if dim == "checkpoint" else dim
    if not isinstance(models, (Sequence, Mapping)) or isinstance(models, str):
        raise TypeError(
            f"models: expected a list or dict of models (the checkpoints of a run), got {type(models).__name__}"
        )
    items = list(models.items()) if isinstance(models, Mapping) else list(enumerate(models))
    if not items:
        raise ValueError("models: empty; pass a list or dict of models (the checkpoints of a run)")
    for k, m in items:
        if not isinstance(m, nn.Module):
            raise TypeError(f"models: entry {k!r} is a {type(m).__name__}, not an nn.Module")
        check_arguments(m, resolution, 1)
    if not isinstance(dim, str) or not dim.isidentifier() or dim in _OWN_DIMS:
        raise ValueError(f"dim: expected a name for the new dimension (e.g. 'checkpoint' or 'step'), got {dim!r}")
    loss = None if losses is None else finite_array("losses", list(losses) if isinstance(losses, Iterable) else losses)
    if loss is not None and loss.shape != (len(items),):
        raise ValueError(f"losses: expected one value per model ({len(items)}), got shape {loss.shape}")
    raw = input_batches(inputs)  # read once (a loader may be one-shot); cast to each model's dtype below
    parts = []
    for _, m in ctx.iterate(items, desc="attention over checkpoints"):
        batches, modules, chunk = prepare(m, raw, attention_modules, query_chunk, exact_outputs, resolution)
        captured = explained(
            lambda m=m, batches=batches, modules=modules, chunk=chunk: capture_batches(
                m,
                batches,
                forward_kwargs,
                query_chunk=chunk,
                attention_modules=modules,
                mode=ctx.mode,
                exact_outputs=exact_outputs,
                check=ctx.check_cancel,
            ),
            batches,
        )
        parts.append(to_dataset(captured, resolution))
    ds = xr.concat(parts, dim=dim, combine_attrs="drop_conflicts").assign_coords({dim: [k for k, _ in items]})
    if loss is not None:
        ds["loss"] = (dim, loss, {"long_name": "training loss"})
    return ds
