"""Random probe vectors for the randomised linear algebra of :mod:`workbench.curvature`."""

from __future__ import annotations

import numpy as np


def rademacher(rng: np.random.Generator, shape: int | tuple[int, ...]) -> np.ndarray:
    """Independent random signs +-1 (float64) of ``shape``, drawn from ``rng``.

    >>> import numpy as np
    >>> from workbench.curvature import rademacher
    >>> rademacher(np.random.default_rng(0), 4).tolist()
    [1.0, 1.0, 1.0, -1.0]
    """
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2 - 1
