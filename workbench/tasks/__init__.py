"""Task adapters: the loss and the data of classification, regression, masked-LM and causal-LM objectives for
Hugging Face models and plain modules, so that any probe takes them as ``(model, task.loss_fn, task.batches(...))``.

``loss_fn(outputs, targets)`` finds the logits (a tensor, a ``ModelOutput``'s ``.logits``, a tuple's first item),
shifts them for a causal LM, skips the ``-100`` labels (padding included) and averages over what is counted;
``batches(data, tokenizer=None, batch_size=8, max_length=None)`` tokenizes texts (with the tokenizer given, or the
one saved in the model's directory) or takes tokenized data or a ``datasets.Dataset``, pads on the right, builds
the labels and, for the per-token tasks, lets probes weight batches by their counted tokens (exact mean over all
tokens; see :mod:`workbench.tasks.base`).

>>> import torch
>>> from workbench import tasks
>>> data = tasks.causal_lm.batches({"input_ids": [[1, 2, 3], [4, 5]]}, batch_size=1)
>>> [int(y["labels"].ne(-100).sum()) for _, y in data]              # 3 and 2 tokens: 2 + 1 are predicted
[3, 2]
>>> tasks.get("causal-lm") is tasks.causal_lm
True
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .base import IGNORE_INDEX, Batches, Task, logits_of
from .lm import CausalLM, MaskedLM
from .sequence import Classification, Regression

__all__ = [
    "IGNORE_INDEX",
    "Task",
    "Batches",
    "logits_of",
    "classification",
    "regression",
    "masked_lm",
    "causal_lm",
    "Classification",
    "Regression",
    "MaskedLM",
    "CausalLM",
    "TASKS",
    "get",
    "resolve",
]

classification = Classification()
regression = Regression()
masked_lm = MaskedLM()
causal_lm = CausalLM()

#: the tasks by name
TASKS = {t.name: t for t in (classification, regression, masked_lm, causal_lm)}


def get(task: str | Task) -> Task:
    """The task named ``task`` (``"causal_lm"``, ``"causal-lm"``, ...), or ``task`` itself when it is a Task."""
    if isinstance(task, Task):
        return task
    key = str(task).strip().lower().replace("-", "_")
    if key not in TASKS:
        raise ValueError(f"task: unknown task {task!r}; expected one of {sorted(TASKS)} or a workbench.tasks.Task")
    return TASKS[key]


def raw(data) -> bool:
    """True for data a task must turn into batches first: texts, a ``(texts, labels)`` pair, a tokenized mapping
    or a mapping of columns, a list of one-example mappings, a ``datasets.Dataset``."""
    if isinstance(data, Batches) or hasattr(data, "column_names"):
        return not isinstance(data, Batches)
    if isinstance(data, Mapping):
        return True
    if isinstance(data, (list, tuple)) and data:
        first = data[0]
        return isinstance(first, (str, Mapping)) or (
            isinstance(first, (list, tuple)) and bool(first) and isinstance(first[0], str)
        )
    return False


def resolve(loss_fn, data, model=None):
    """``(loss_fn, data)`` for a probe: a task name or :class:`Task` given as the loss becomes the task (its
    ``loss_fn``), and raw data (:func:`raw`) become its batches, tokenized with the model's own tokenizer when
    texts are given; anything else passes through unchanged (the ``@probe`` decorator calls this).

    >>> lf, data = resolve("causal-lm", {"input_ids": [[1, 2, 3]]})
    >>> lf is causal_lm, len(data)
    (True, 1)
    """
    if not isinstance(loss_fn, (str, Task)):
        return loss_fn, data
    try:
        task = get(loss_fn)
    except ValueError:
        raise ValueError(
            f"loss_fn: {loss_fn!r} is neither a callable loss_fn(outputs, targets) nor a task name "
            f"({', '.join(sorted(TASKS))})"
        ) from None
    if raw(data):
        data = task.batches(data, tokenizer=model if isinstance(model, torch.nn.Module) else None)
    return task, data
