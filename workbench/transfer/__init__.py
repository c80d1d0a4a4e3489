"""Transferability: score and rank models (or layers) for a labelled target task without fine-tuning,
and check the scores against real fine-tuning.

Metrics are plain functions on arrays: numpy or torch inputs, computed in float64, plain float
results, higher = more transferable for every one. ``features`` is (N, D); ``labels`` any N values
(remapped to 0..C-1); ``source_probs`` (N, Cs) softmax outputs of the source model's own head.

* :func:`logme` (You et al. 2021/2022; :class:`FeatureStats` streams it), :func:`hscore` (Bao et
  al. 2019; shrinkage: Ibrahim et al. 2022), :func:`leep` (Nguyen et al. 2020), :func:`nce` (Tran et
  al. 2019), :func:`nleep` (Li et al. 2021), :func:`transrate` (Huang et al. 2022), :func:`gbc` (Pandy
  et al. 2022), :func:`sfda` (Shao et al. 2022), :func:`etran` (Gholami et al. 2023),
  :func:`tmi` (Xu & Kang 2023, experimental: it does not rank the demo zoo's sources); :data:`METRICS` maps
  names to them.
* Invariant to a global scaling of the features: LogME, H-score (plain and shrinkage), GBC (while its
  1e-4 variance floor does not bind) and TMI; scale-dependent: TransRate, SFDA and ETran (through the
  LDA shrinkage exp(-5 lambda_max)), ETran's energy and N-LEEP (the GMM's covariance floor).
* Probes: :func:`features` (pooled activations of named layers, a Dataset), :func:`rank` (models x
  layers x metrics, a Dataset), :func:`linear_probe_accuracy` and :func:`finetune_accuracy` (the
  ground truth, 0-d DataArrays). :func:`correlate` (weighted and Kendall tau against the ground truth) and
  :func:`score_interval` (a metric's interval over target samples; :func:`bootstrap_score` is its older name)
  compare and bound scores, both with :func:`workbench.stats.interval` (subsampling without replacement: the
  estimate is always inside its interval).
"""

from ..capture import default_layer
from .features import feature_dim, features
from .geometry import gbc, tmi, transrate
from .harness import finetune_accuracy, linear_probe_accuracy
from .hscore import hscore
from .lda import etran, sfda
from .logme import FeatureStats, logme
from .ranking import EXPERIMENTAL, METRICS, bootstrap_score, correlate, rank, score_interval
from .source import leep, nce, nleep

__all__ = [
    "logme",
    "FeatureStats",
    "hscore",
    "leep",
    "nce",
    "nleep",
    "transrate",
    "gbc",
    "tmi",
    "sfda",
    "etran",
    "METRICS",
    "EXPERIMENTAL",
    "features",
    "feature_dim",
    "default_layer",
    "rank",
    "correlate",
    "score_interval",
    "bootstrap_score",
    "linear_probe_accuracy",
    "finetune_accuracy",
]
