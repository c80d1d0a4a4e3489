"""What every figure module shares: results as a dict of labelled series, categorical vs numeric
axes, integer axes."""

from __future__ import annotations

import numpy as np


def as_dict(results) -> dict:
    """``results`` as a dict label -> result (a single result gets the label ``""``).

    >>> as_dict([1, 2]), as_dict({"a": 1})
    ({'': [1, 2]}, {'a': 1})
    """
    return results if isinstance(results, dict) else {"": results}


def categorical(values) -> tuple[list, bool]:
    """(x values, whether the axis is categorical): numbers (also numbers written as strings, such as
    the step labels of a summary over checkpoints) stay numbers, so a line between them means
    something; anything else becomes strings, drawn as markers and not joined by a line.

    >>> categorical([0, 10, 100]), categorical(["0", "250"]), categorical(["sgd", "sam"])
    (([0, 10, 100], False), ([0, 250], False), (['sgd', 'sam'], True))
    """
    arr = np.asarray(values)
    if arr.dtype.kind in "iuf" and arr.size:
        return arr.tolist(), False
    strings = [str(v) for v in arr.ravel()]
    try:
        nums = [float(v) for v in strings]
    except ValueError:
        return strings, True
    if not strings or not all(np.isfinite(nums)):
        return strings, True
    return [int(v) if v.is_integer() else v for v in nums], False


def integer_axis(axis, n: int) -> None:
    """Ticks at integers only (0, 1, 2, ...; every 2nd, 5th, 10th ... when ``n`` is large), so an
    index axis never shows 0.5.

    >>> import plotly.graph_objects as go
    >>> f = go.Figure()
    >>> integer_axis(f.layout.xaxis, 5); f.layout.xaxis.dtick
    1
    >>> integer_axis(f.layout.xaxis, 80); f.layout.xaxis.dtick
    5
    """
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if n / s <= 20)
    axis.update(tickmode="linear", tick0=0, dtick=step, tickformat="d", range=[-0.5, max(n, 1) - 0.5])
