"""Fingerprints recorded in provenance: of a model's weights, and of a set of samples in any order.

:func:`model_fingerprint` hashes every parameter and buffer. The parameters' part is cached per module
by the module's id with a weak reference to the module (an entry is used only while that reference
still points to the module, so a new model at a recycled address never inherits another model's
fingerprint; no weakref callback, which could swallow a Ctrl-C, and dead entries are dropped lazily)
and is reused only while every parameter is the same object with
the same autograd version counter, storage pointer and a strided sample of its values (so ``.data``
writes that bypass the version counter are seen). Buffers (BatchNorm running statistics, which forward
passes update without bumping a version counter) are small and hashed on every call.

:func:`unordered_fingerprint` hashes each sample on its own and sums the 64-bit hashes modulo 2**64, so a
shuffled DataLoader gives the same fingerprint on every pass, and so does any batching of the same samples.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

__all__ = ["model_fingerprint", "unordered_fingerprint", "is_shuffled"]

_SAMPLE = 16  # values per parameter compared on each cache lookup
_CACHE: dict[int, tuple] = {}  # id(module) -> (weakref to the module, key, weakrefs to parameters, hash state)
_LOCK = threading.Lock()


def _update(h, name: str, t: torch.Tensor) -> None:
    h.update(name.encode())
    h.update(str(tuple(t.shape)).encode())
    h.update(str(t.dtype).encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # buffer protocol: no copy


def _samples(tensors: list[torch.Tensor]) -> bytes:
    """A strided sample of each tensor's values and its last value (off the CPU: fetched per device at once)."""
    out, by_device = [], {}
    for t in tensors:
        n = t.numel()
        if n == 0:
            continue
        flat = t.detach().reshape(-1)
        if flat.device.type == "cpu":
            rows = flat.view(torch.uint8).numpy().reshape(n, -1)  # no copy; one row of bytes per value
            out += [rows[:: max(1, n // _SAMPLE)][:_SAMPLE].tobytes(), rows[-1].tobytes()]
        else:
            s = torch.cat([flat[:: max(1, n // _SAMPLE)][:_SAMPLE], flat[-1:]]).contiguous()
            by_device.setdefault(str(s.device), []).append(s.view(torch.uint8))
    out += [torch.cat(v).cpu().numpy().tobytes() for _, v in sorted(by_device.items())]
    return b"".join(out)


def model_fingerprint(model: nn.Module) -> str:
    """blake2b (16 hex digits) over names, shapes, dtypes and bytes of all parameters, then all buffers.

    Cached per module (see the module's docstring): repeated probes on an unchanged model do not hash
    its weights again; a changed, replaced or recycled model is hashed afresh.

    >>> m = nn.Linear(2, 2)
    >>> a = model_fingerprint(m)
    >>> _ = m.weight.data.mul_(2)  # bypasses the version counter
    >>> len(a), model_fingerprint(m) != a
    (16, True)
    """
    params = [(n, t) for n, t in model.named_parameters() if t is not None]
    buffers = [(n, t) for n, t in model.named_buffers() if t is not None]
    key = (
        tuple((n, t._version, t.data_ptr(), tuple(t.shape), t.dtype) for n, t in params),
        _samples([t for _, t in params]),
    )
    with _LOCK:
        hit = _CACHE.get(id(model))
    if hit is not None and hit[0]() is model and hit[1] == key and all(r() is t for r, (_, t) in zip(hit[2], params)):
        h = hit[3].copy()
    else:
        h = hashlib.blake2b(digest_size=8)
        for name, t in params:
            _update(h, name, t)
        with _LOCK:
            if len(_CACHE) > 256:  # drop the entries of models that are gone
                for k in [k for k, v in _CACHE.items() if v[0]() is None]:
                    del _CACHE[k]
            _CACHE[id(model)] = (weakref.ref(model), key, tuple(weakref.ref(t) for _, t in params), h.copy())
    for name, t in buffers:
        _update(h, name, t)
    return h.hexdigest()


def _leaves(obj, path: str = ""):
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for k in sorted(obj, key=str):
            yield from _leaves(obj[k], f"{path}/{k}")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}/{i}")


def unordered_fingerprint(batches: Iterable) -> str:
    """blake2b (16 hex digits) of the multiset of samples in ``batches`` (``(inputs, targets)`` pairs, or
    ``(inputs, targets, n)`` triples), independent of their order and of how they are batched.

    Each sample is hashed on its own (64-bit blake2b over its row of every tensor, with each tensor's
    path in the batch structure, per-sample shape and dtype); the hashes are summed modulo 2**64 and
    hashed with the number of samples. A tensor whose dim 0 is not the batch (a per-batch value) enters
    the hash of every sample of its batch; samples whose bytes depend on their batch (padding to the
    longest sequence in the batch) therefore fingerprint differently under a different batching.

    >>> x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    >>> a = unordered_fingerprint([(x, y)])
    >>> p = torch.randperm(6)
    >>> a == unordered_fingerprint([(x[p][:4], y[p][:4]), (x[p][4:], y[p][4:])]), len(a)
    (True, 16)
    >>> a == unordered_fingerprint([(x[:5], y[:5])])
    False
    """
    total, count = 0, 0
    for batch in batches:
        inputs, targets = batch[0], batch[1]
        leaves = list(_leaves(inputs, "x")) + list(_leaves(targets, "y"))
        first = next((t for _, t in leaves if t.dim() > 0), None)
        if first is None:
            raise ValueError("data: a batch without a tensor with a batch dimension cannot be fingerprinted")
        n = int(first.shape[0])
        if n == 0:
            continue
        base = hashlib.blake2b(digest_size=8, person=b"wb-sample")
        rows = []
        for path, t in leaves:
            a = t.detach().cpu().contiguous()
            if a.dim() > 0 and a.shape[0] == n:
                base.update(f"{path}|{tuple(a.shape[1:])}|{a.dtype}|".encode())
                rows.append(a.reshape(n, a.numel() // n).view(torch.uint8).numpy())
            else:
                base.update(f"{path}|batch {tuple(a.shape)}|{a.dtype}|".encode())
                base.update(a.reshape(-1).view(torch.uint8).numpy())
        digests = bytearray(8 * n)
        for i in range(n):
            h = base.copy()
            for r in rows:
                h.update(r[i])
            digests[8 * i : 8 * i + 8] = h.digest()
        total = (total + int(np.frombuffer(bytes(digests), dtype="<u8").sum(dtype=np.uint64))) % 2**64
        count += n
    h = hashlib.blake2b(digest_size=8, person=b"wb-unordered")
    h.update(count.to_bytes(8, "little") + total.to_bytes(8, "little"))
    return h.hexdigest()


def is_shuffled(source) -> bool:
    """Whether the order of the samples a data source yields may change between passes: a DataLoader with
    a sampler other than ``SequentialSampler`` (``shuffle=True``, weighted or custom samplers), a custom
    batch sampler, or an ``IterableDataset``.

    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> ds = TensorDataset(torch.zeros(4, 1), torch.zeros(4))
    >>> is_shuffled(DataLoader(ds, shuffle=True)), is_shuffled(DataLoader(ds)), is_shuffled([(1, 2)])
    (True, False, False)
    """
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset, SequentialSampler

    if not isinstance(source, DataLoader):
        return False
    if isinstance(source.dataset, IterableDataset):
        return True
    bs = source.batch_sampler
    if bs is not None and (type(bs) is not BatchSampler or not isinstance(bs.sampler, SequentialSampler)):
        return True
    return not isinstance(source.sampler, SequentialSampler)
