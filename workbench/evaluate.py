"""The simplest probe: mean loss and accuracy of a model on data."""

from __future__ import annotations

import xarray as xr
from torch import nn

from .registry import Tags, probe


@probe("evaluate", tags=Tags(inputs="pair", uses=("mode", "params", "device")))
def evaluate(model: nn.Module, loss_fn, data, *, ctx) -> xr.Dataset:
    """Mean loss ``L = sum_b n_b loss_b / N`` and top-1 accuracy over ``data``.

    Returns a Dataset with scalar variables ``loss`` and ``accuracy`` (NaN when the outputs are
    not class scores with integer labels).

    >>> import torch, workbench as wb
    >>> m = torch.nn.Linear(2, 2)
    >>> ds = wb.evaluate(m, torch.nn.CrossEntropyLoss(), (torch.randn(8, 2), torch.randint(0, 2, (8,))))
    >>> sorted(ds.data_vars), ds.attrs["probe"]
    (['accuracy', 'loss'], 'evaluate')
    """
    obj = ctx.objective()
    loss, acc = obj.evaluate(with_accuracy=True)
    return xr.Dataset(
        {
            "loss": ((), loss, {"long_name": "mean loss", "units": "nats"}),
            "accuracy": ((), float("nan") if acc is None else acc, {"long_name": "top-1 accuracy", "units": "1"}),
        }
    )
