"""The :class:`Task` every adapter is: a ``loss_fn`` probes take and ``batches`` that turn texts, tokenized data or
a ``datasets.Dataset`` into the ``(inputs, targets)`` batches probes take as data.

Weighting. workbench averages batch losses with sample weights, ``L = sum_b n_b L_b / N`` (``n_b`` sequences in
batch ``b``). A language-model loss is a mean over *tokens*, and batches hold different numbers of counted tokens,
so the targets :meth:`Task.batches` builds for a per-token task carry the data's totals: ``{"labels": labels,
"total_sequences": N, "total_tokens": T}`` (both repeated once per sequence, int64). With them ``loss_fn`` returns
``L_b = (N / T) * (sum of the batch's token losses) / n_b``, and ``sum_b n_b L_b / N`` is exactly the mean over all
``T`` counted tokens. Given a plain labels tensor, ``loss_fn`` returns the batch's own mean over counted tokens,
which is what Hugging Face's ``model(**inputs, labels=labels).loss`` computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["IGNORE_INDEX", "Batches", "Task", "logits_of", "split_targets", "weighted_mean"]

#: the label of a position that is not counted (padding, unmasked tokens), as in Hugging Face and torch
IGNORE_INDEX = -100


def logits_of(outputs) -> torch.Tensor:
    """The logits in a model's outputs: a tensor as it is, a ``ModelOutput``'s (or mapping's) ``logits``, the
    first item of a tuple.

    >>> logits_of((torch.ones(2, 3), "hidden")).shape
    torch.Size([2, 3])
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    if logits is None and isinstance(outputs, (tuple, list)) and outputs:
        logits = outputs[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"loss_fn: cannot find logits in model outputs of type {type(outputs).__name__}; the model must return "
            "a tensor of logits, an object or mapping with a 'logits' tensor (a Hugging Face ModelOutput), or a "
            "tuple whose first item is the logits"
        )
    return logits


def split_targets(targets) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(labels, scale)``: the labels tensor and, for targets built by :meth:`Task.batches` for a per-token task,
    the per-sequence factor ``total_sequences / total_tokens`` (else None)."""
    if isinstance(targets, torch.Tensor):
        return targets, None
    if isinstance(targets, Mapping) and isinstance(targets.get("labels"), torch.Tensor):
        n, t = targets.get("total_sequences"), targets.get("total_tokens")
        if isinstance(n, torch.Tensor) and isinstance(t, torch.Tensor):
            return targets["labels"], n.double() / t.double()
        return targets["labels"], None
    raise TypeError(
        f"targets: expected a labels tensor or the {{'labels': ...}} targets Task.batches builds, got "
        f"{type(targets).__name__}"
    )


def float_logits(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32 (as Hugging Face does before a cross-entropy); wider ones as they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def weighted_mean(token_losses: torch.Tensor, counted: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The loss of a batch from its per-token losses (shape ``(n, T)``, zero where not counted) and the counted
    positions (bool, same shape): the mean over counted tokens (``scale`` None), else
    ``mean_i scale_i * sum_t loss_it`` (see the module docstring).

    >>> weighted_mean(torch.tensor([[1.0, 3.0], [2.0, 0.0]]), torch.tensor([[True, True], [True, False]]), None)
    tensor(2.)
    """
    if scale is None:
        return token_losses.sum() / counted.sum()
    per_seq = token_losses.reshape(token_losses.shape[0], -1).sum(1)
    return (per_seq * scale.to(per_seq.dtype)).mean()


class Batches(Sequence):
    """The ``(inputs, targets)`` batches :meth:`Task.batches` returns: indexable and re-iterable like a list (a
    list of exactly two batches whose targets are mappings would read as one ``(inputs, targets)`` pair).

    >>> b = Batches([({"input_ids": torch.zeros(1, 2)}, torch.zeros(1))])
    >>> len(b), list(b)[0][1]
    (1, tensor([0.]))
    """

    def __init__(self, batches: list):
        self._batches = list(batches)

    def __getitem__(self, i):
        return self._batches[i]

    def __len__(self) -> int:
        return len(self._batches)

    def __repr__(self) -> str:
        n = sum(len(next(iter(x.values()))) for x, _ in self._batches) if self._batches else 0
        return f"Batches({len(self)} batches, {n} sequences)"


class Task:
    """A training objective as workbench probes take it: ``loss_fn(outputs, targets)`` and
    ``batches(data, tokenizer=None, batch_size=8, max_length=None)``.

    Subclasses set ``name``, ``per_token`` (the loss is a mean over tokens, weighted as the module docstring
    says), ``needs_labels`` (data must bring one label per sequence) and implement :meth:`loss_fn` and
    :meth:`labels_for` (the labels of a collated batch).
    """

    name = "task"
    per_token = False
    needs_labels = False

    def loss_fn(self, outputs, targets) -> torch.Tensor:
        """The scalar loss of one batch (the mean over its samples, or over its counted tokens)."""
        raise NotImplementedError

    def __call__(self, outputs, targets) -> torch.Tensor:
        return self.loss_fn(outputs, targets)

    def counted(self, labels: torch.Tensor) -> torch.Tensor:
        """The counted positions of per-token ``labels`` (bool, one row per sequence)."""
        return labels != IGNORE_INDEX

    def labels_for(self, inputs: dict, labels, tokenizer, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
        """``(inputs, labels)`` of one collated batch; ``labels`` are the data's (None where it has none)."""
        raise NotImplementedError

    def input_keys(self) -> tuple[str, ...]:
        """The tokenizer outputs passed to the model."""
        return ("input_ids", "attention_mask", "token_type_ids")

    def batches(
        self,
        data,
        tokenizer=None,
        batch_size: int = 8,
        max_length: int | None = None,
        *,
        text_column: str | None = None,
        label_column: str | None = None,
        seed: int = 0,
    ) -> list:
        """``data`` as a list of ``(inputs, targets)`` batches for any probe (``inputs`` a dict of int64 tensors
        padded on the right, passed to the model as keyword arguments).

        ``data``: a list of texts; a ``(texts, labels)`` pair; a tokenized mapping (``input_ids`` and optionally
        ``attention_mask``, ``token_type_ids``, ``labels``, as lists or tensors; a ``BatchEncoding``); a list of
        such mappings, one per example; a mapping of columns with a text column; or a ``datasets.Dataset``.
        ``tokenizer``: a tokenizer, a model directory or the model loaded from one (its tokenizer is loaded with
        ``AutoTokenizer.from_pretrained(dir, local_files_only=True)``); needed for texts (and for masking
        tokenized data for a masked LM). ``max_length`` truncates texts (default: the tokenizer's limit, capped by
        the model's positions when the model is given). ``seed`` draws the masked positions of a masked LM.
        Padded positions are never counted. For per-token tasks the targets carry the data's totals, so that
        probes get the exact mean over all counted tokens: pass the whole list on (a part of it is weighted by
        the totals of the whole; call ``batches`` on the part instead).
        """
        from .text import build_batches

        return build_batches(self, data, tokenizer, batch_size, max_length, text_column, label_column, seed)

    def __repr__(self) -> str:
        return f"workbench.tasks.{self.name}"
