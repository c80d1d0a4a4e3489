"""Transfer zoo and its ground truth: source models, target tasks, and a fine-tuning /
linear-probe harness that measures how well each source transfers to each target.

Ground truth for (source, target):
  * ``linear_probe_acc``: multinomial logistic regression (L2, C=1, lbfgs) on the source model's
    frozen penultimate features (``model.features``), trained on the target's train split,
    accuracy on its test split;
  * ``finetune_acc``: the whole source network with a fresh head, trained with Adam (lr 3e-3,
    batch 32, fixed number of epochs, seeded) on the target's train split; test accuracy.
"""

from __future__ import annotations

from torch import nn

from ..transfer import finetune_accuracy as _finetune
from ..transfer import linear_probe_accuracy as _linear_probe
from .datasets import digits

# target tasks: name -> digits() keyword arguments
TARGETS = {
    "digits-5to9": dict(classes=[5, 6, 7, 8, 9]),
    "flipped-5to9": dict(classes=[5, 6, 7, 8, 9], transform="flip"),
    "noisy-all": dict(transform="noise"),
}


def target_data(target: str, split: str = "train"):
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {sorted(TARGETS)}, got {target!r}")
    return digits(split, **TARGETS[target])


def linear_probe_accuracy(model: nn.Module, target: str, seed: int = 0) -> float:
    return float(
        _linear_probe(model, target_data(target, "train"), target_data(target, "test"), seed=seed, progress=False)
    )


def finetune_accuracy(model: nn.Module, target: str, epochs: int = 8, lr: float = 3e-3, seed: int = 0) -> float:
    return float(
        _finetune(
            model,
            target_data(target, "train"),
            target_data(target, "test"),
            epochs=epochs,
            lr=lr,
            seed=seed,
            progress=False,
        )
    )


def ground_truth(models: dict, targets=None, seed: int = 0) -> dict:
    """{(source, target): (linear_probe_acc, finetune_acc)} for the given source models."""
    targets = list(TARGETS) if targets is None else list(targets)
    out = {}
    for s, m in models.items():
        for t in targets:
            out[(s, t)] = (linear_probe_accuracy(m, t, seed), finetune_accuracy(m, t, seed=seed))
    return out
