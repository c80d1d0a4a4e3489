"""Random probe vectors for the randomised linear algebra of :mod:`workbench.curvature`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def rademacher(rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    """Independent random signs +-1 (float64) of ``shape``, drawn from ``rng``.

    >>> import numpy as np
    >>> from workbench.curvature import rademacher
    >>> rademacher(np.random.default_rng(0), 4).tolist()
    [1.0, 1.0, 1.0, -1.0]
    """
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2 - 1


def finite_products(fn: Callable, obj) -> Callable:
    """``fn`` (a mat-vec or mat-mat of a curvature operator of the Objective ``obj``) that raises a clear
    error instead of returning NaN or inf products (which would reach the linear algebra as a LinAlgError or
    a NaN result): a non-finite loss is named as such (:meth:`~workbench.objective.Objective.loss`), else the
    second derivatives themselves are non-finite.

    >>> import numpy as np
    >>> finite_products(lambda v: 2 * v, None)(np.ones(2)).tolist()
    [2.0, 2.0]
    """

    def checked(v):
        out = fn(v)
        ok = bool(torch.isfinite(out).all()) if isinstance(out, torch.Tensor) else bool(np.all(np.isfinite(out)))
        if not ok:
            if obj is not None:
                obj.loss()  # raises, naming the data, when the loss itself is not finite
            raise ValueError(
                "model: a Hessian-vector product has NaN or inf entries while the loss is finite: the loss is not "
                "twice differentiable at the parameters or its second derivatives overflow (check the model's "
                "weights and non-smooth operations)"
            )
        return out

    return checked
