"""Per-token objectives: causal language modelling (next-token prediction, labels shifted by one) and masked
language modelling (the masked positions only); padding and ``-100`` labels are never counted."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import IGNORE_INDEX, Task, float_logits, logits_of, split_targets, weighted_mean

__all__ = ["CausalLM", "MaskedLM", "token_losses"]


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy of logits ``(n, T, V)`` against labels ``(n, T)``; 0 where the label is -100."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"targets: per-token labels of shape {tuple(labels.shape)} do not match logits of shape "
            f"{tuple(logits.shape)}; a language model needs logits (batch, tokens, vocabulary) and labels "
            "(batch, tokens)"
        )
    logits = float_logits(logits)
    flat = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return flat.view(labels.shape)


def without_padding(labels: torch.Tensor, inputs: dict) -> torch.Tensor:
    if labels.shape != inputs["input_ids"].shape:
        raise ValueError(
            f"data: per-token labels of shape {tuple(labels.shape)} do not match input_ids of shape "
            f"{tuple(inputs['input_ids'].shape)}; pass one label per token"
        )
    mask = inputs.get("attention_mask")
    return labels if mask is None else labels.masked_fill(mask == 0, IGNORE_INDEX)


class CausalLM(Task):
    """Next-token cross-entropy: the logits at position ``t`` against the label at ``t + 1``; the mean over
    counted tokens, as ``*ForCausalLM(labels=...)`` computes it. Labels are the input ids with padding -100.

    >>> from workbench.tasks import causal_lm
    >>> logits = torch.zeros(1, 3, 5)                       # uniform over 5 tokens
    >>> round(float(causal_lm.loss_fn(logits, torch.tensor([[4, 1, -100]]))), 4)   # one counted token: log 5
    1.6094
    """

    name = "causal_lm"
    per_token = True

    def loss_fn(self, outputs, targets) -> torch.Tensor:
        labels, scale = split_targets(targets)
        logits = logits_of(outputs)
        if logits.dim() == 3 and labels.shape == logits.shape[:2]:
            logits, labels = logits[:, :-1], labels[:, 1:]
        tok = token_losses(logits, labels)
        return weighted_mean(tok, labels != IGNORE_INDEX, scale)

    def counted(self, labels: torch.Tensor) -> torch.Tensor:
        return labels[:, 1:] != IGNORE_INDEX

    def input_keys(self) -> tuple[str, ...]:
        return ("input_ids", "attention_mask")  # GPT-2 embeds token_type_ids with its token embedding

    def labels_for(self, inputs, labels, tokenizer, generator) -> tuple[dict, torch.Tensor]:
        return inputs, without_padding(inputs["input_ids"].clone() if labels is None else labels, inputs)


class MaskedLM(Task):
    """Cross-entropy at the masked positions (labels other than -100); the mean over them, as
    ``*ForMaskedLM(labels=...)`` computes it. Data without labels are masked as BERT was trained: each
    non-special, non-padding token is chosen with probability ``mlm_probability`` (at least one per
    sequence), and a chosen token becomes the mask token (80%), a random token (10%) or stays (10%).

    >>> from workbench.tasks import masked_lm
    >>> round(float(masked_lm.loss_fn(torch.zeros(1, 2, 5), torch.tensor([[-100, 3]]))), 4)
    1.6094
    """

    name = "masked_lm"
    per_token = True

    def __init__(self, mlm_probability: float = 0.15):
        if not 0 < mlm_probability <= 1:
            raise ValueError(f"mlm_probability: expected a probability in (0, 1], got {mlm_probability!r}")
        self.mlm_probability = mlm_probability

    def loss_fn(self, outputs, targets) -> torch.Tensor:
        labels, scale = split_targets(targets)
        tok = token_losses(logits_of(outputs), labels)
        return weighted_mean(tok, labels != IGNORE_INDEX, scale)

    def labels_for(self, inputs, labels, tokenizer, generator) -> tuple[dict, torch.Tensor]:
        if labels is not None:
            return inputs, without_padding(labels, inputs)
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            raise ValueError(
                "tokenizer: masking for the masked_lm task needs a tokenizer with a mask token; pass tokenizer=... "
                "(or labels with -100 at unmasked positions)"
            )
        ids = inputs["input_ids"]
        special = torch.tensor(sorted(set(getattr(tokenizer, "all_special_ids", [])) | {mask_id}), dtype=ids.dtype)
        eligible = inputs["attention_mask"].bool() & ~torch.isin(ids, special)
        draw = torch.rand(ids.shape, generator=generator)
        chosen = (draw < self.mlm_probability) & eligible
        none = ~chosen.any(1) & eligible.any(1)  # at least one masked token per sequence
        first = torch.where(eligible, draw, 2.0).argmin(1)
        chosen[none, first[none]] = True
        how = torch.rand(ids.shape, generator=generator)
        random = torch.randint(len(tokenizer), ids.shape, generator=generator)
        new = torch.where(chosen & (how < 0.8), mask_id, ids)
        new = torch.where(chosen & (how >= 0.8) & (how < 0.9), random, new)
        return dict(inputs, input_ids=new), ids.masked_fill(~chosen, IGNORE_INDEX)

    def __repr__(self) -> str:
        p = self.mlm_probability
        return "workbench.tasks.masked_lm" if p == 0.15 else f"workbench.tasks.MaskedLM(mlm_probability={p})"
