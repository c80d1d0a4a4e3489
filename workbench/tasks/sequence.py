"""One label per sequence (or per example of a plain module): classification (cross-entropy) and regression
(mean squared error), as Hugging Face's ``*ForSequenceClassification`` heads compute them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import IGNORE_INDEX, Task, float_logits, logits_of, split_targets

__all__ = ["Classification", "Regression"]


class Classification(Task):
    """Cross-entropy of the logits ``(n, C)`` against class labels ``(n,)`` (``-100``: not counted) or class
    probabilities ``(n, C)``; the mean over counted samples, as ``*ForSequenceClassification(labels=...)``.

    >>> from workbench.tasks import classification
    >>> round(float(classification.loss_fn(torch.zeros(2, 4), torch.tensor([1, 3]))), 4)   # log 4
    1.3863
    """

    name = "classification"
    needs_labels = True

    def loss_fn(self, outputs, targets) -> torch.Tensor:
        labels, _ = split_targets(targets)
        logits = float_logits(logits_of(outputs))
        if labels.is_floating_point() and labels.shape == logits.shape:
            return F.cross_entropy(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)

    def labels_for(self, inputs, labels, tokenizer, generator) -> tuple[dict, torch.Tensor]:
        if labels.is_floating_point() and labels.dim() == 1:
            if not bool((labels == labels.round()).all()):
                raise ValueError("data: classification labels must be class indices 0..C-1; got fractional values")
            labels = labels.long()
        return inputs, labels


class Regression(Task):
    """Mean squared error of the outputs against float targets; an output of width 1 is compared with one
    target per sample, as ``*ForSequenceClassification(num_labels=1, problem_type="regression")``.

    >>> from workbench.tasks import regression
    >>> float(regression.loss_fn(torch.tensor([[1.0], [2.0]]), torch.tensor([0.0, 0.0])))   # (1 + 4) / 2
    2.5
    """

    name = "regression"
    needs_labels = True

    def loss_fn(self, outputs, targets) -> torch.Tensor:
        labels, _ = split_targets(targets)
        preds = float_logits(logits_of(outputs))
        if preds.dim() == labels.dim() + 1 and preds.shape[-1] == 1:
            preds = preds.squeeze(-1)
        if preds.shape != labels.shape:
            raise ValueError(
                f"targets: regression targets of shape {tuple(labels.shape)} do not match the outputs of shape "
                f"{tuple(preds.shape)}; pass one target per output"
            )
        return F.mse_loss(preds, labels.to(preds.dtype))

    def labels_for(self, inputs, labels, tokenizer, generator) -> tuple[dict, torch.Tensor]:
        return inputs, labels.float()
