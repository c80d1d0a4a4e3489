"""One data convention for every probe.

``data`` is an ``(inputs, targets)`` pair of tensors, a ``torch.utils.data.DataLoader``, or any
re-iterable of ``(inputs, targets)`` batches. ``inputs`` may be a tensor, a tuple of tensors
(passed positionally) or a mapping (passed as keyword arguments, HuggingFace style).

Every quantity a probe reduces over batches is *sample-weighted*:
``L = sum_b n_b L_b / N`` with ``L_b`` the mean loss of batch ``b``, so the result equals the
full-batch quantity exactly even when the last batch is short.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from .results.fingerprint import is_shuffled, unordered_fingerprint

__all__ = ["Data", "as_data", "batch_len", "to_device", "input_batches", "call_model"]

ONE_SHOT = (
    "a one-shot iterable (a generator, iterator or IterableDataset that is used up after one pass) cannot "
    "be read twice; pass a list of batches or a DataLoader whose dataset can be iterated again"
)


def batch_len(inputs) -> int:
    """Number of samples in a batch of inputs (size of dim 0 of the first tensor)."""
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() == 0:
            raise ValueError("data: inputs must have a batch dimension (dim 0); got a 0-d tensor")
        return int(inputs.shape[0])
    if isinstance(inputs, Mapping):
        for v in inputs.values():
            if isinstance(v, torch.Tensor):
                return batch_len(v)
    elif isinstance(inputs, (tuple, list)):
        for v in inputs:
            if isinstance(v, torch.Tensor):
                return batch_len(v)
    raise TypeError(
        f"data: cannot find a tensor in the inputs of type {type(inputs).__name__}; "
        "inputs must be a tensor, a tuple of tensors or a dict of tensors"
    )


def to_device(obj, device=None, dtype=None):
    """Move tensors in obj to device; floating tensors are cast to ``dtype`` when given."""
    if isinstance(obj, torch.Tensor):
        if dtype is not None and obj.is_floating_point():
            return obj.to(device=device, dtype=dtype)
        return obj.to(device=device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device, dtype) for v in obj)
    return obj


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k])
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)


def _check_finite(obj, what: str, arg: str = "data", inf_ok=()) -> None:
    """NaN (and inf, except in the mapping entries named in ``inf_ok``, e.g. additive masks) are refused."""
    items = obj.items() if isinstance(obj, Mapping) else [("", obj)]
    for key, part in items:
        for t in _tensors(part):
            if t.is_floating_point() or t.is_complex():
                bad = torch.isnan(t) if key in inf_ok or "mask" in str(key) else ~torch.isfinite(t)
                if bool(bad.any()):
                    raise ValueError(
                        f"{arg}: {what} contain NaN or inf values ({int(bad.sum())} of {t.numel()}); clean or impute "
                        "them before probing (e.g. torch.nan_to_num) or drop the affected samples"
                    )


def _as_tensors(v, what: str):
    """numpy arrays and (nested) lists of numbers as tensors; tensors, mappings and tuples of tensors as they are."""
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biuf":
            raise TypeError(f"{what}: a numpy array of dtype {v.dtype}; pass numbers (a tensor or numeric array)")
        return torch.from_numpy(np.ascontiguousarray(v))
    if isinstance(v, list) and v and all(isinstance(e, (int, float, np.number)) and not isinstance(e, bool) for e in v):
        return torch.as_tensor(v)
    return v


def _refuse_dataset(data, arg: str) -> None:
    if isinstance(data, IterableDataset):
        raise TypeError(f"{arg}: an IterableDataset yields single samples and may be used up; {ONE_SHOT}")
    if isinstance(data, Dataset):
        raise TypeError(
            f"{arg}: a Dataset yields single samples, not batches; wrap it: DataLoader(dataset, batch_size=...)"
        )


class Data:
    """A re-iterable, validated view of the user's data on a given device and dtype.

    In-memory pairs are moved to the device once; loaders are iterated lazily each pass.
    """

    def __init__(self, data, device=None, dtype=None, check_finite: bool = True):
        self.device = device
        self.dtype = dtype
        self._check_finite = check_finite
        self._pair = None
        self._source = None
        if isinstance(data, Data):
            data = data._pair if data._pair is not None else data._source
        _refuse_dataset(data, "data")
        if isinstance(data, (tuple, list)) and len(data) == 2 and not _is_batch_list(data):
            x, y = _as_tensors(data[0], "data"), _as_tensors(data[1], "data")
            nx, ny = batch_len(x), batch_len(y) if isinstance(y, torch.Tensor) else None
            if ny is not None and nx != ny:
                raise ValueError(
                    f"data: inputs have {nx} samples but targets have {ny}; pass an (inputs, targets) "
                    "pair with the same length along dim 0"
                )
            if nx == 0:
                raise ValueError("data: the (inputs, targets) pair is empty (0 samples); pass at least one sample")
            if check_finite:
                _check_finite(x, "inputs")
                _check_finite(y, "targets")
            self._pair = (to_device(x, device, dtype), to_device(y, device, dtype))
            self.n = nx
            self.n_batches = 1
        elif isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str, bytes, Mapping)):
            if iter(data) is data:
                raise TypeError(
                    "data: a one-shot iterator/generator cannot be iterated more than once; pass a "
                    "DataLoader, a list of (inputs, targets) batches, or an (inputs, targets) pair"
                )
            self._source = data
            self.n = None
            n, nb = 0, 0
            for b in self._raw_batches():
                n += b[2]
                nb += 1
            if n == 0:
                raise ValueError("data: the data yielded no samples; pass a non-empty DataLoader or pair")
            self.n = n
            self.n_batches = nb
        else:
            raise TypeError(
                f"data: expected an (inputs, targets) pair of tensors, a DataLoader or a list of "
                f"(inputs, targets) batches; got {type(data).__name__}"
            )

    def _raw_batches(self):
        seen = 0
        for i, item in enumerate(self._source):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(
                    f"data: batch {i} is a {type(item).__name__}, expected an (inputs, targets) pair; "
                    "wrap your dataset so that it yields (inputs, targets)"
                )
            x, y = _as_tensors(item[0], "data"), _as_tensors(item[1], "data")
            n = batch_len(x)
            seen += n
            if isinstance(y, torch.Tensor) and y.dim() > 0 and y.shape[0] != n:
                raise ValueError(f"data: batch {i} has {n} inputs but {y.shape[0]} targets")
            if n == 0:
                continue
            if self._check_finite:
                _check_finite(x, f"inputs of batch {i}")
                _check_finite(y, f"targets of batch {i}")
            yield x, y, n
        if self.n is not None and seen != self.n:
            raise ValueError(f"data: this pass over the data yielded {seen} samples, the first {self.n}: {ONE_SHOT}")

    def batches(self):
        """Yield ``(inputs, targets, n_b)`` on the device."""
        if self._pair is not None:
            yield self._pair[0], self._pair[1], self.n
            return
        for x, y, n in self._raw_batches():
            yield to_device(x, self.device, self.dtype), to_device(y, self.device, self.dtype), n

    def __iter__(self):
        for x, y, _ in self.batches():
            yield x, y

    def subsets(self, m: int | None, seed: int = 0):
        """Disjoint subsets of ``m`` samples (for m-sharpness). ``m=None`` yields the batches as given."""
        if m is None:
            yield from self.batches()
            return
        x, y = self.materialize()
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)).to(_first(x).device)
        for start in range(0, self.n - m + 1, m):
            idx = perm[start : start + m]
            yield _index(x, idx), _index(y, idx), m

    def materialize(self):
        """All samples as one (inputs, targets) pair."""
        if self._pair is not None:
            return self._pair
        xs, ys = [], []
        for x, y, _ in self.batches():
            xs.append(x)
            ys.append(y)
        return _cat(xs), _cat(ys)

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) over the bytes of every input and target tensor, in order; for a loader that
        shuffles, an order-independent fingerprint of its samples
        (:func:`workbench.results.fingerprint.unordered_fingerprint`), the same on every pass."""
        if self._source is not None and is_shuffled(self._source):
            return unordered_fingerprint(self._raw_batches())
        h = hashlib.sha256()
        it = [(self._pair[0], self._pair[1])] if self._pair is not None else ((x, y) for x, y, _ in self._raw_batches())
        for x, y in it:
            for t in list(_tensors(x)) + list(_tensors(y)):
                h.update(str(tuple(t.shape)).encode())
                h.update(str(t.dtype).encode())
                h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return h.hexdigest()[:16]


def _first(x):
    return next(iter(_tensors(x)))


def _index(obj, idx):
    if isinstance(obj, torch.Tensor):
        return obj[idx]
    if isinstance(obj, Mapping):
        return {k: _index(v, idx) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_index(v, idx) for v in obj)
    return obj


def _cat(parts):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    raise TypeError(f"data: cannot concatenate batches of type {type(first).__name__}")


def _is_batch_list(data) -> bool:
    """A list of two (inputs, targets) batches looks like a pair; tell them apart."""
    return isinstance(data, list) and all(
        isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[1], (torch.Tensor, Mapping)) for b in data
    )


def as_data(data, device=None, dtype=None, check_finite: bool = True) -> Data:
    return (
        data
        if isinstance(data, Data) and data.device == device and data.dtype == dtype
        else Data(data, device, dtype, check_finite)
    )


def call_model(model, inputs, kwargs: Mapping | None = None):
    """The one way a model is called on a batch of inputs: a mapping as keyword arguments
    (HuggingFace style), a tuple or list positionally, anything else as the single argument."""
    kwargs = dict(kwargs or {})
    if isinstance(inputs, Mapping):
        return model(**inputs, **kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **kwargs)
    return model(inputs, **kwargs)


def _is_labelled(batch) -> bool:
    """An ``(inputs, labels)`` batch: two items, the second a 1-D tensor with one label per input."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor)):
        return False
    try:
        return batch[1].dim() == 1 and batch[1].shape[0] == batch_len(batch[0])
    except (TypeError, ValueError):
        return False


def input_batches(data, device=None, what: str = "inputs", dtype=None) -> list:
    """The input batches of ``data`` for probes that need no labels, on ``device`` (floating tensors cast
    to ``dtype`` when given).

    ``data`` is one batch (a tensor, a mapping of tensors, a tuple of positional tensors, or an
    ``(inputs, labels)`` pair whose labels are dropped), or a DataLoader / list of such batches; numpy
    arrays are taken as tensors. One-shot iterables and Datasets (single samples) are refused, and so
    are empty batches and NaN (or, outside masks, inf) values.
    """
    from torch.utils.data import DataLoader

    _refuse_dataset(data, what)
    data = _as_tensors(data, what) if isinstance(data, np.ndarray) else data
    if isinstance(data, Data):
        batches = [x for x, _, _ in data.batches()]
    elif isinstance(data, DataLoader) or (
        isinstance(data, list)
        and data
        and not _is_labelled(data)
        and all(isinstance(b, (Mapping, torch.Tensor, tuple, list, np.ndarray)) for b in data)
    ):
        batches = list(data)
    elif isinstance(data, (torch.Tensor, Mapping, tuple)) or _is_labelled(data):
        batches = [data]
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)) and iter(data) is data:
        raise TypeError(f"{what}: {ONE_SHOT}")
    elif isinstance(data, list) and not data:
        raise ValueError(f"{what}: empty; pass a tensor, a mapping of tensors, or a DataLoader of them")
    else:
        raise TypeError(
            f"{what}: expected a tensor, a mapping or tuple of tensors, an (inputs, labels) pair, or a "
            f"DataLoader / list of such batches; got {type(data).__name__}"
        )
    out = []
    for i, b in enumerate(batches):
        b = _as_tensors(b, what)
        b = b[0] if _is_labelled(b) else b
        if batch_len(b) == 0:  # also a clear error for a batch without a tensor
            raise ValueError(f"{what}: batch {i} has no examples (dim 0 is 0); pass non-empty batches")
        _check_finite(b if not isinstance(b, tuple) else b[0], "inputs", what)
        out.append(to_device(b, device, dtype))
    if not out:
        raise ValueError(f"{what}: the data yielded no batches; pass a non-empty DataLoader or batch")
    return out
