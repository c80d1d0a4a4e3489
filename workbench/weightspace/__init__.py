"""Weight space: permutation symmetry, alignment before interpolation, REPAIR, merging and weight spectra.

Alignment (:mod:`~workbench.weightspace.graph`, :mod:`~workbench.weightspace.alignment`): the permutation
groups of a model found from its module graph (torch.fx), weight matching, activation matching and
straight-through estimation of model B to model A. :mod:`~workbench.weightspace.repair`: REPAIR (Jordan et
al. 2023) and RESET.
:func:`connectivity`: linear mode connectivity before and after alignment.
"""

from .alignment import ALIGN_METHODS, Aligned, align, equivalence_error, match, permute
from .fisher_merge import diagonal_fisher, fisher_merge
from .graph import PermutationSpec, permutation_groups
from .lmc import LMC_METHODS, barriers, connectivity, singular_cosines
from .merge_sweep import endpoint_losses, merge_landscape
from .merging import Soup, greedy_soup, sign_conflicts, task_arithmetic, task_vectors, ties_merge, uniform_soup
from .repair import interpolate_models, repair, repair_points, reset_batchnorm, unit_statistics
from .spectra import fit_power_law, layer_eigenvalues, layer_weights, weight_spectra

__all__ = [
    # alignment (helper "align")
    "permutation_groups",
    "PermutationSpec",
    "match",
    "permute",
    "align",
    "Aligned",
    "equivalence_error",
    "ALIGN_METHODS",
    "connectivity",
    "LMC_METHODS",
    "barriers",
    "singular_cosines",
    "repair",
    "reset_batchnorm",
    "repair_points",
    "unit_statistics",
    "interpolate_models",
    # merging and spectra (helper "merge")
    "uniform_soup",
    "greedy_soup",
    "Soup",
    "task_vectors",
    "task_arithmetic",
    "ties_merge",
    "sign_conflicts",
    "diagonal_fisher",
    "fisher_merge",
    "merge_landscape",
    "endpoint_losses",
    "weight_spectra",
    "layer_eigenvalues",
    "layer_weights",
    "fit_power_law",
]
