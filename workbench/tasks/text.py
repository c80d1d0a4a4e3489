"""From the user's data to padded ``(inputs, targets)`` batches: texts (tokenized here), tokenized mappings, lists
of examples and ``datasets.Dataset`` objects; the tokenizer from an object, a model directory or a loaded model."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .base import IGNORE_INDEX, Batches

__all__ = ["build_batches", "load_tokenizer", "columns_of"]

LABEL_COLUMNS = ("labels", "label")
TEXT_COLUMNS = ("text", "sentence", "content")


def load_tokenizer(tokenizer) -> tuple:
    """``(tokenizer, positions)``: the tokenizer itself, or loaded from a model directory (a path, or the model
    loaded from one: its ``name_or_path``) with ``local_files_only=True``; ``positions`` is the model's
    position limit when the model was given (else None)."""
    if tokenizer is None:
        return None, None
    positions = None
    if isinstance(tokenizer, nn.Module):
        cfg = getattr(tokenizer, "config", None)
        positions = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        path = getattr(tokenizer, "name_or_path", None)
        if not path or not Path(path).is_dir():
            raise ValueError(
                f"tokenizer: the model was not loaded from a local directory (name_or_path={path!r}), so there is "
                "no tokenizer to load with it; pass the tokenizer or the directory it was saved to"
            )
    elif isinstance(tokenizer, (str, os.PathLike)):
        path = tokenizer
    elif callable(tokenizer):
        return tokenizer, None
    else:
        raise TypeError(
            f"tokenizer: expected a tokenizer, a model directory or a model loaded from one, got "
            f"{type(tokenizer).__name__}"
        )
    if not Path(path).is_dir():
        raise ValueError(
            f"tokenizer: {str(path)!r} is not a local directory; workbench never downloads (local_files_only): "
            "pass the directory the tokenizer was saved to (tokenizer.save_pretrained(dir)) or the tokenizer itself"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True), positions
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(
            f"tokenizer: no tokenizer could be loaded from {str(path)!r} ({e}); save one there "
            "(tokenizer.save_pretrained(dir)) or pass the tokenizer"
        ) from e


def is_texts(data) -> bool:
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(t, str) for t in data)


def columns_of(data) -> dict | list:
    """A ``datasets.Dataset`` (anything with ``column_names``) as a dict of columns; other data as it is."""
    cols = getattr(data, "column_names", None)
    if cols is None:
        return data
    if isinstance(cols, Mapping):
        raise TypeError(f"data: a DatasetDict with the splits {sorted(cols)}; pass one split, e.g. data['train']")
    out = {}
    for c in cols:
        v = data[c]
        out[c] = v if isinstance(v, (torch.Tensor, list)) else list(v)
    return out


def rows_of(column, what: str) -> list[torch.Tensor]:
    """A column of token sequences (a 2-D tensor, lists or 1-D tensors) as a list of 1-D int64 tensors."""
    if isinstance(column, torch.Tensor):
        if column.dim() != 2:
            raise ValueError(f"data: '{what}' must be 2-D (sequences x tokens), got shape {tuple(column.shape)}")
        return list(column.long())
    rows = [torch.as_tensor(r).long().reshape(-1) for r in column]
    return rows


def pick(names, wanted, candidates, what: str):
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{what}: {wanted!r} is not a column of the data; it has {sorted(names)}")
        return wanted
    return next((c for c in candidates if c in names), None)


def from_columns(cols: Mapping, tok, max_length, text_column, label_column, keys, per_token) -> tuple[dict, object]:
    """``(token columns: key -> list of 1-D tensors, labels column or None)`` of a mapping of columns."""
    label = pick(cols, label_column, LABEL_COLUMNS[:1] if per_token else LABEL_COLUMNS, "label_column")
    labels = cols[label] if label is not None else None
    if per_token and labels is not None and len(labels) and not is_2d(labels):
        raise ValueError(
            f"data: the column {label!r} holds one value per sequence, but a per-token task needs one label per "
            "token (-100 where not counted), or none (built from input_ids)"
        )
    if "input_ids" in cols:
        if not is_2d(cols["input_ids"]):
            raise ValueError(
                "data: 'input_ids' must hold one sequence of token ids per row (2-D); wrap a single sequence "
                "in a list: {'input_ids': [ids]}"
            )
        out = {k: rows_of(cols[k], k) for k in keys if k in cols}
        return out, labels
    text = pick(cols, text_column, TEXT_COLUMNS, "text_column")
    if text is None:
        strs = [c for c, v in cols.items() if is_texts(list(v[:1])) if isinstance(v, (list, tuple))]
        text = strs[0] if len(strs) == 1 else None
    if text is None:
        raise ValueError(
            f"data: no 'input_ids' and no text column among the columns {sorted(cols)}; name the texts with "
            "text_column=..."
        )
    return tokenize(list(cols[text]), tok, max_length, keys), labels


def tokenize(texts: list, tok, max_length, keys) -> dict:
    if tok is None:
        raise ValueError(
            "tokenizer: texts need a tokenizer; pass tokenizer=<a tokenizer, the model's directory, or the model "
            "loaded from it>"
        )
    enc = tok(texts, truncation=max_length is not None, max_length=max_length)
    return {k: rows_of(enc[k], k) for k in keys if k in enc}


def normalise(data, tok, max_length, text_column, label_column, keys, per_token) -> tuple[dict, object]:
    """``(token columns, labels or None)`` of any accepted form of ``data``."""
    data = columns_of(data)
    if is_texts(data):
        return tokenize(list(data), tok, max_length, keys), None
    if isinstance(data, (tuple, list)) and len(data) == 2 and is_texts(data[0]) and not isinstance(data[1], str):
        return tokenize(list(data[0]), tok, max_length, keys), data[1]
    if isinstance(data, Mapping):
        return from_columns(data, tok, max_length, text_column, label_column, keys, per_token)
    if isinstance(data, (list, tuple)) and data and all(isinstance(e, Mapping) for e in data):
        merged: dict = {}
        for e in data:  # one example per mapping
            for k, v in e.items():
                merged.setdefault(k, []).append(v)
        return from_columns(merged, tok, max_length, text_column, label_column, keys, per_token)
    raise TypeError(
        f"data: expected a list of texts, a (texts, labels) pair, a tokenized mapping (input_ids, ...), a list of "
        f"such mappings or a datasets.Dataset; got {type(data).__name__}"
    )


def pad(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def collate_labels(labels, per_token: bool):
    if labels is None:
        return None
    if per_token:
        return pad(rows_of(labels, "labels"), IGNORE_INDEX)
    if isinstance(labels, torch.Tensor):
        return labels
    return torch.as_tensor([torch.as_tensor(v).tolist() for v in labels])


def is_2d(v) -> bool:
    """A tensor or array with 2 dims, or a non-empty list of sequences."""
    ndim = getattr(v, "ndim", None)
    if ndim is not None:
        return ndim == 2
    return isinstance(v, (list, tuple)) and bool(v) and hasattr(v[0], "__len__") and not isinstance(v[0], str)


def is_batch_list(data) -> bool:
    """A list of tokenized batches (mappings whose ``input_ids`` are 2-D): kept as they are batched."""
    return (
        isinstance(data, (list, tuple))
        and bool(data)
        and all(isinstance(e, Mapping) and "input_ids" in e and is_2d(e["input_ids"]) for e in data)
    )


def build_batches(task, data, tokenizer, batch_size, max_length, text_column, label_column, seed) -> Batches:
    """:meth:`workbench.tasks.Task.batches`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int (sequences per batch), got {batch_size!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length: expected an int >= 2 (tokens per sequence) or None, got {max_length!r}")
    tok, positions = load_tokenizer(tokenizer)
    if max_length is None and tok is not None:
        limit = getattr(tok, "model_max_length", None)
        max_length = limit if isinstance(limit, int) and limit < 1_000_000 else None
    if positions is not None:
        max_length = positions if max_length is None else min(max_length, positions)
    g = torch.Generator().manual_seed(seed)
    groups = [(b, len(b["input_ids"])) for b in data] if is_batch_list(data) else [(data, batch_size)]
    out, n = [], 0
    for part, size in groups:
        batches = group_batches(task, part, tok, size, max_length, text_column, label_column, g)
        n += sum(len(y) for _, y in batches)
        out += batches
    if not task.per_token:
        return Batches(out)
    total = sum(int(task.counted(y).sum()) for _, y in out)
    if total == 0:
        raise ValueError(f"data: no counted tokens for the {task.name} task (every label is padding or -100)")
    return Batches(
        (x, {"labels": y, "total_sequences": torch.full((len(y),), n), "total_tokens": torch.full((len(y),), total)})
        for x, y in out
    )


def group_batches(task, data, tok, batch_size, max_length, text_column, label_column, g) -> list:
    """The ``(inputs, labels)`` batches of one part of the data."""
    cols, labels = normalise(data, tok, max_length, text_column, label_column, task.input_keys(), task.per_token)
    if "input_ids" not in cols:
        raise ValueError("data: no 'input_ids' in the tokenized data; pass token ids under 'input_ids'")
    n = len(cols["input_ids"])
    if n == 0:
        raise ValueError("data: no sequences; pass at least one text or tokenized sequence")
    if labels is None and task.needs_labels:
        raise ValueError(
            f"data: the {task.name} task needs one label per sequence; pass (texts, labels), or a 'labels' / 'label' "
            "column (label_column=...)"
        )
    if labels is not None and not isinstance(labels, torch.Tensor):
        labels = list(labels)
    if labels is not None and len(labels) != n:
        raise ValueError(f"data: {n} sequences but {len(labels)} labels; pass one label per sequence")
    cols.setdefault("attention_mask", [torch.ones_like(r) for r in cols["input_ids"]])
    pad_id = getattr(tok, "pad_token_id", None)
    pad_id = getattr(tok, "eos_token_id", None) if pad_id is None else pad_id
    fill = {"input_ids": 0 if pad_id is None else pad_id, "attention_mask": 0, "token_type_ids": 0}
    out = []
    for s in range(0, n, batch_size):
        inputs = {k: pad(v[s : s + batch_size], fill[k]) for k, v in cols.items()}
        lab = collate_labels(None if labels is None else labels[s : s + batch_size], task.per_token)
        out.append(task.labels_for(inputs, lab, tok, g))
    return out
