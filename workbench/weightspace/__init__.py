"""Weight space: permutation symmetry, alignment before interpolation, REPAIR, merging and weight spectra.

Alignment (:mod:`~workbench.weightspace.graph`, :mod:`~workbench.weightspace.alignment`): the permutation
groups of a model found from its module graph (torch.fx), weight matching and activation matching of model B
to model A. :mod:`~workbench.weightspace.repair`: REPAIR (Jordan et al. 2023) and RESET.
:func:`connectivity`: linear mode connectivity before and after alignment.
"""

__all__ = [
    # alignment (helper "align")
    # merging and spectra (helper "merge")
]
