"""Compare what models compute: representation similarity, calibration, output divergences, neural collapse.

Plain functions on arrays (numpy or torch, float64, plain float results):

* similarity of two representations of the same examples (:mod:`.similarity`, :mod:`.cca`):
  :func:`cka` (linear / RBF kernel, ``debiased=True`` for the unbiased HSIC of Song et al. 2012),
  :func:`linear_cka`, :func:`rbf_cka`, :func:`hsic`, :class:`MinibatchCKA` (Nguyen et al. 2021: HSIC
  accumulated over batches), :func:`procrustes` (Ding et al. 2021), :func:`cca`, :func:`svcca` (Raghu et
  al. 2017), :func:`pwcca` (Morcos et al. 2018); :class:`CrossCovariance` streams linear CKA (plain and
  debiased), Procrustes and the CCA family exactly over batches;
* calibration of probabilities (:mod:`.calibration`): :func:`ece` (equal-width or equal-mass bins),
  :func:`mce`, :func:`ace`, :func:`classwise_ece`, :func:`nll`, :func:`brier`, :func:`reliability`,
  :func:`calibration_metrics` (all with intervals), :func:`fit_temperature` (Guo et al. 2017);
* divergences of distributions (:mod:`.divergences`): :func:`kl`, :func:`js`, :func:`tv`,
  :func:`f_divergence`, :func:`from_logits` (with the top-k approximation);
* :func:`collapse_metrics`: NC1-NC4 of Papyan et al. (2020).

Probes (xarray with provenance): :func:`cka_heatmap` (``layer_a x layer_b`` with intervals),
:func:`calibration` (metrics with intervals, reliability bins, temperature scaling),
:func:`output_divergence` (per example / per position, padding excluded), :func:`neural_collapse`
(over checkpoints).
"""

from .calibration import METRICS as CALIBRATION_METRICS
from .calibration import ace, brier, classwise_ece, ece, mce, nll, reliability
from .calibration import metrics as calibration_metrics
from .cca import CrossCovariance, canonical_correlations, cca, procrustes, pwcca, svcca
from .collapse import NC_METRICS, collapse_metrics, neural_collapse
from .divergences import KINDS, f_divergence, from_logits, js, kl, output_divergence, tv
from .heatmap import MEASURES, cka_heatmap, similarity_layers
from .similarity import MinibatchCKA, cka, gram, hsic, linear_cka, rbf_cka
from .temperature import calibration, fit_temperature, temperature_scaling

__all__ = [
    "cka",
    "linear_cka",
    "rbf_cka",
    "hsic",
    "gram",
    "MinibatchCKA",
    "CrossCovariance",
    "procrustes",
    "cca",
    "svcca",
    "pwcca",
    "canonical_correlations",
    "MEASURES",
    "similarity_layers",
    "cka_heatmap",
    "ece",
    "mce",
    "ace",
    "classwise_ece",
    "nll",
    "brier",
    "reliability",
    "calibration_metrics",
    "CALIBRATION_METRICS",
    "fit_temperature",
    "temperature_scaling",
    "calibration",
    "kl",
    "js",
    "tv",
    "f_divergence",
    "from_logits",
    "KINDS",
    "output_divergence",
    "collapse_metrics",
    "NC_METRICS",
    "neural_collapse",
]
