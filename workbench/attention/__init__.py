"""Attention probes: per layer and head (and per example or query) entropy of attention
probabilities, maximum attention logit and first-token ("sink") mass, for any transformer, under any
attention kernel, without changing the model or its config.

* :func:`attention_stats`, :func:`entropy`, :func:`attention_map` (:mod:`.statistics`): one forward
  pass per batch, attention intercepted (:mod:`.capture`) and reduced block by block (:mod:`.reduction`),
  so no layer's full attention tensor is kept;
* :func:`detect_collapse`, :func:`detect_overload` (:mod:`.detectors`): entropy collapse (Zhai et al.
  2023) and entropic overload (Jha & Reagen 2025) from those statistics;
* :func:`qk_spectral_norms`, :func:`entropy_lower_bound` (:mod:`.bounds`): from the weights alone;
* :func:`over_checkpoints` (:mod:`.checkpoints`): the statistics along a training run.
"""

from .bounds import entropy_lower_bound, qk_spectral_norms
from .checkpoints import over_checkpoints
from .detectors import detect_collapse, detect_overload
from .statistics import attention_map, attention_stats, entropy

__all__ = [
    "attention_stats",
    "entropy",
    "attention_map",
    "detect_collapse",
    "detect_overload",
    "qk_spectral_norms",
    "entropy_lower_bound",
    "over_checkpoints",
]
