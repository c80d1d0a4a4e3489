"""Curvature of the data loss through matrix-free products: Hessian, GGN and Fisher matrices.

Operators: :class:`CurvatureOperator`, a symmetric matrix known by its products (:mod:`.operators`);
:class:`HessianOperator`, the Hessian of an :class:`~workbench.objective.Objective`'s loss;
:class:`GGNOperator` (:mod:`.gauss_newton`); :class:`FisherOperator`, :class:`MCFisherOperator`,
:class:`EmpiricalFisherOperator` (:mod:`.fisher`); :func:`curvature_operator` chooses one by name;
:func:`parameter_blocks` splits the parameters into blocks for blockwise spectra (:mod:`.blocks`).
Probes: :func:`hessian_eigenvalues` (Lanczos), :func:`hessian_trace` (Hutchinson, Hutch++,
XTrace, exact), :func:`spectral_density` (stochastic Lanczos quadrature), :func:`exact_hessian`.
The matrix-free linear algebra under them (torch-native, on the operator's device) works on any symmetric
operator given by a torch mat-vec.
"""

from .blocks import parameter_blocks
from .density import density_from_nodes, gaussian_density, slq, spectral_density
from .exact import exact_hessian
from .fisher import EmpiricalFisherOperator, FisherOperator, MCFisherOperator
from .gauss_newton import GGNOperator
from .lanczos import LanczosResult, hessian_eigenvalues, lanczos, ritz
from .operators import CurvatureOperator, HessianOperator
from .probing import rademacher
from .select import CURVATURES, curvature_operator
from .trace import hessian_trace, hutchinson, hutchpp, hutchpp_basis, xtrace

__all__ = [
    "CurvatureOperator",
    "HessianOperator",
    "GGNOperator",
    "FisherOperator",
    "MCFisherOperator",
    "EmpiricalFisherOperator",
    "curvature_operator",
    "CURVATURES",
    "parameter_blocks",
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
