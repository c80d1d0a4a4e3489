"""The simplest probe: mean loss and accuracy of a model on data."""
from __future__ import annotations

import xarray as xr

from .objective import Objective
from .registry import probe
from .results import provenance


def _case():
    from .testing import hostile_case

    model, loss_fn, data = hostile_case()
    return (model, loss_fn, data), {}


@probe("evaluate", case=_case)
def evaluate(model, loss_fn, data, mode: str = "eval", params=None) -> xr.Dataset:
    """Mean loss ``L = sum_b n_b loss_b / N`` and top-1 accuracy over ``data``.

    Returns a Dataset with scalar variables ``loss`` and ``accuracy`` (NaN when the outputs are
    not class scores with integer labels).
    """
    obj = Objective(model, loss_fn, data, params=params, mode=mode)
    loss, acc = obj.evaluate(with_accuracy=True)
    ds = xr.Dataset(
        {
            "loss": ((), loss, {"long_name": "mean loss", "units": "nats"}),
            "accuracy": ((), float("nan") if acc is None else acc, {"long_name": "top-1 accuracy", "units": "1"}),
        }
    )
    ds.attrs.update(provenance("evaluate", {"mode": mode, "n_samples": obj.data.n}, model, obj.data))
    return ds
