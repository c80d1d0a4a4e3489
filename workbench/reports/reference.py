"""Headline numbers set beside a reference the reader can judge them by: the range of the same
quantity over the model's family in the demo zoo (the other seeds and optimisers of its architecture)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import xarray as xr


def _fmt(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.4g}"


def compare(values: dict[str, float], reference: pd.DataFrame | None, model: str, label: str) -> pd.DataFrame:
    """A table ``quantity | value | zoo range | zoo median | rank``: each of ``values`` next to the
    same quantity over ``reference`` (a DataFrame: one row per *other* family model, one column per
    quantity) together with this model; ``label`` names the family (:func:`family_label`).

    >>> import pandas as pd
    >>> ref = pd.DataFrame({"loss": [0.2, 0.4]}, index=["b", "c"])
    >>> compare({"loss": 0.3}, ref, "a", "the 3 x-* zoo models").iloc[0].tolist()
    ['0.3', '0.2 - 0.4', '0.3', '2 of 3 (1 = lowest)']
    """
    rows = {}
    for q, v in values.items():
        col = reference[q].to_numpy(float) if reference is not None and q in reference else np.zeros(0)
        allv = np.r_[col, float(v)]
        allv = allv[np.isfinite(allv)]
        if col.size and allv.size > 1:
            rank = int((allv < float(v)).sum()) + 1
            rows[q] = [
                _fmt(v),
                f"{_fmt(allv.min())} - {_fmt(allv.max())}",
                _fmt(float(np.median(allv))),
                f"{rank} of {allv.size} (1 = lowest)",
            ]
        else:
            rows[q] = [_fmt(v), "n/a", "n/a", "n/a"]
    return pd.DataFrame.from_dict(
        rows, orient="index", columns=[f"{model}", f"range over {label}", "median", "rank among them"]
    )


def reference_results(values: dict[str, float], reference: pd.DataFrame | None, model: str) -> dict[str, xr.DataArray]:
    """The reference as results to save: ``zoo_<quantity>`` over ``zoo_model`` (this model included,
    names sorted so that the results of a family's models line up).

    >>> import pandas as pd
    >>> r = reference_results({"loss": 0.3}, pd.DataFrame({"loss": [0.2]}, index=["b"]), "a")
    >>> r["zoo_loss"].sel(zoo_model="a").item()
    0.3
    """
    if reference is None or reference.empty:
        return {}
    names = [model, *map(str, reference.index)]
    out = {}
    for q, v in values.items():
        if q in reference:
            da = xr.DataArray(
                np.r_[float(v), reference[q].to_numpy(float)],
                dims="zoo_model",
                coords={"zoo_model": names},
                attrs={"long_name": f"{q} of the zoo family"},
            )
            out[f"zoo_{q}"] = da.sortby("zoo_model")
    return out
