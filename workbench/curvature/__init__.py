"""Curvature of the data loss through Hessian-vector products.

Operators (:mod:`.operators`): :class:`CurvatureOperator`, a symmetric matrix known by its products,
and :class:`HessianOperator`, the Hessian of an :class:`~workbench.objective.Objective`'s loss.
Probes: :func:`hessian_eigenvalues` (Lanczos / eigsh), :func:`hessian_trace` (Hutchinson, Hutch++,
XTrace, exact), :func:`spectral_density` (stochastic Lanczos quadrature), :func:`exact_hessian`.
The matrix-free linear algebra under them works on any operator given by a float64 mat-vec.
"""

from .density import density_from_nodes, gaussian_density, slq, spectral_density
from .exact import exact_hessian
from .lanczos import LanczosResult, hessian_eigenvalues, lanczos, ritz
from .operators import CurvatureOperator, HessianOperator
from .probing import rademacher
from .trace import hessian_trace, hutchinson, hutchpp, hutchpp_basis, xtrace

__all__ = [
    "CurvatureOperator",
    "HessianOperator",
    "hessian_eigenvalues",
    "hessian_trace",
    "spectral_density",
    "exact_hessian",
    "density_from_nodes",
    "lanczos",
    "ritz",
    "LanczosResult",
    "hutchinson",
    "hutchpp",
    "hutchpp_basis",
    "xtrace",
    "slq",
    "gaussian_density",
    "rademacher",
]
