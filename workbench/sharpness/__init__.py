"""Sharpness of the data loss L at theta.

In a perturbation ball ``{delta : ||delta / c||_p <= rho}`` (:class:`Ball`; ``c = 1`` or, adaptive,
``c = |theta| + eta``), as a loss increase, with the shared defaults ``rho=0.05, adaptive=False``:
:func:`sam_sharpness` (first order, Foret et al. 2021 / Kwon et al. 2021), :func:`worst_case_sharpness`
and :func:`average_sharpness` (Andriushchenko et al. 2023). Also :func:`keskar_sharpness` (Keskar et
al. 2017), :func:`gam_flatness` (Zhang et al. 2023), :func:`gradient_norm`, and :func:`summary` over
models or checkpoints. The curvature probes of :mod:`workbench.curvature` are re-exported here.
"""

from ..curvature import density_from_nodes, exact_hessian, hessian_eigenvalues, hessian_trace, spectral_density
from .ball import Ball
from .gam import gam_flatness, gradient_norm
from .keskar import keskar_sharpness
from .sam import average_sharpness, sam_sharpness, worst_case_sharpness
from .summary import summary

__all__ = [
    "sam_sharpness",
    "worst_case_sharpness",
    "average_sharpness",
    "keskar_sharpness",
    "gam_flatness",
    "gradient_norm",
    "summary",
    "Ball",
    "hessian_eigenvalues",
    "hessian_trace",
    "spectral_density",
    "exact_hessian",
    "density_from_nodes",
]
