"""Loss landscapes: 1-D / 2-D slices of the loss around a model, the directions they are taken
along, and the linear path between two models (mode connectivity).

Probes: :func:`slice_1d`, :func:`slice_2d`, :func:`interpolate`, :func:`pca_directions`. Directions:
:func:`random_direction`, :func:`random_directions`, :func:`checkpoint_direction`, :func:`normalize`
(:data:`NORMALIZATIONS`). The lattice evaluator is :class:`~workbench.landscape.grid.Grid`.
"""

from .connectivity import interpolate, repaired_buffers, reset_buffers
from .directions import (
    NORMALIZATIONS,
    ONE_D,
    as_direction,
    check_same_space,
    checkpoint_direction,
    child_seeds,
    normalize,
    pca_directions,
    random_direction,
    random_directions,
)
from .grid import Grid
from .slices import slice_1d, slice_2d

__all__ = [
    "slice_1d",
    "slice_2d",
    "interpolate",
    "pca_directions",
    "random_direction",
    "random_directions",
    "checkpoint_direction",
    "normalize",
    "NORMALIZATIONS",
    "ONE_D",
    "child_seeds",
    "check_same_space",
    "as_direction",
    "reset_buffers",
    "repaired_buffers",
    "Grid",
]
