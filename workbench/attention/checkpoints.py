"""Attention statistics across the checkpoints of a training run (:func:`over_checkpoints`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from torch import nn

from ..data import input_batches
from ..registry import Context, Tags, probe
from ..testing import hostile_transformer
from .collect import capture_batches, check_arguments
from .statistics import to_dataset


def _case():
    m0, x, mask = hostile_transformer(0)
    m1 = hostile_transformer(1)[0]
    return ([m0, m1], x), dict(losses=[1.5, 0.5], src_key_padding_mask=mask)


@probe("attention.over_checkpoints", tags=Tags(inputs="models", attention=True, uses=("mode",)), case=_case)
def over_checkpoints(
    models: Sequence[nn.Module] | Mapping[Any, nn.Module],
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

    >>> from workbench.attention import over_checkpoints
    >>> from workbench.testing import hostile_transformer
    >>> (a, x, mask), b = hostile_transformer(0), hostile_transformer(1)[0]
    >>> ds = over_checkpoints({0: a, 100: b}, x, losses=[1.2, 0.7], dim="step", src_key_padding_mask=mask,
    ...                       progress=False)
    >>> ds.entropy.dims, ds.step.values.tolist(), ds.loss.values.tolist()
    (('step', 'layer', 'head'), [0, 100], [1.2, 0.7])
    """
    items = list(models.items()) if isinstance(models, Mapping) else list(enumerate(models))
    if not items:
        raise ValueError("models: empty; pass a list or dict of models (the checkpoints of a run)")
    for _, m in items:
        check_arguments(m, resolution, query_chunk)
    loss = None if losses is None else np.asarray(list(losses), float)
    if loss is not None and loss.shape != (len(items),):
        raise ValueError(f"losses: expected one value per model ({len(items)}), got shape {loss.shape}")
    batches = input_batches(inputs)
    parts = []
    for _, m in ctx.iterate(items, desc="attention over checkpoints"):
        captured = capture_batches(
            m,
            batches,
            forward_kwargs,
            query_chunk=query_chunk,
            attention_modules=attention_modules,
            mode=ctx.mode,
            exact_outputs=exact_outputs,
            check=ctx.check_cancel,
        )
        parts.append(to_dataset(captured, resolution))
    ds = xr.concat(parts, dim=dim, combine_attrs="drop_conflicts").assign_coords({dim: [k for k, _ in items]})
    if loss is not None:
        ds["loss"] = (dim, loss, {"long_name": "training loss"})
    return ds
