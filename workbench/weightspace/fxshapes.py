"""Shape operations for :mod:`~workbench.weightspace.fxrules`: how indexing, reshapes, transposes, reductions,
concatenation and matrix products move the unit labels of a tensor's axes (see that module's docstring)."""

from __future__ import annotations

import math

__all__ = ["multi", "getitem", "reshape", "permute", "reduce", "cat", "matmul", "batch", "merge", "dim"]


def multi(node) -> bool:
    """Whether ``node`` returns a tuple of tensors (its meta is a tuple of TensorMetadata)."""
    m = node.meta.get("tensor_meta")
    return isinstance(m, (tuple, list)) and not hasattr(m, "shape")


def dim(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


def merge(b, items):
    """One axis where several tensors meet: its labels united; one that carries no units pins the rest."""
    labelled = [l for l in items if l is not None]
    if not labelled:
        return None
    if len(labelled) < len(items):
        for l in labelled:
            b.pin(l)
        return None
    out = labelled[0]
    for l in labelled[1:]:
        out = b.unite(out, l)
    return out


def getitem(b, node, state_of, src, idx, out_shape):
    l = state_of.get(src)
    if isinstance(l, list):
        return l[idx]
    if l is None:
        return None if out_shape is None else (None,) * len(out_shape)
    idx = idx if isinstance(idx, tuple) else (idx,)
    given = sum(1 for i in idx if i is not None and i is not Ellipsis)
    out, i = [], 0
    for it in idx:
        if it is Ellipsis:
            span = len(l) - given
            out += l[i : i + span]
            i += span
        elif it is None:
            out.append(None)
        elif isinstance(it, slice) and it == slice(None):
            out.append(l[i])
            i += 1
        else:
            if l[i] is not None:
                b.fail("indexing or slicing an axis that carries units")
            if isinstance(it, slice):
                out.append(None)
            elif not isinstance(it, int):
                b.fail("advanced indexing")
            i += 1
    return tuple(out) + tuple(l[i:])


def reshape(b, labels, ins, outs):
    out = [None] * len(outs)
    i = 0
    while i < len(ins):
        lab = labels[i]
        if lab is None or ins[i] == 1:
            i += 1
            continue
        pre = math.prod(ins[:i])
        j = next((j for j in range(len(outs)) if math.prod(outs[:j]) == pre and outs[j] > 1), None)
        if j is None:
            b.fail(f"a reshape of {list(ins)} to {list(outs)} breaks up an axis that carries units")
        rest = math.prod(ins[i + 1 :])
        if lab[0] == "full":
            s, k = lab[1], lab[2]
            if outs[j] % ins[i] == 0 and rest % (outs[j] // ins[i]) == 0:
                out[j] = ("full", s, k * (outs[j] // ins[i]))
            elif ins[i] % outs[j] == 0 and k % (ins[i] // outs[j]) == 0:
                out[j] = ("full", s, k // (ins[i] // outs[j]))
            elif k == 1 and j + 1 < len(outs) and outs[j] * outs[j + 1] == ins[i]:
                out[j], out[j + 1] = ("head", b.head_group(s, outs[j])), ("within", s)
            else:
                b.fail(f"a reshape of {list(ins)} to {list(outs)} splits units unevenly")
            i += 1
        elif lab[0] == "head" and i + 1 < len(ins) and labels[i + 1] and labels[i + 1][0] == "within":
            s = labels[i + 1][1]
            if outs[j] == ins[i] * ins[i + 1]:
                out[j] = ("full", s, 1)
            elif outs[j] == ins[i] and j + 1 < len(outs) and outs[j + 1] == ins[i + 1]:
                out[j], out[j + 1] = lab, labels[i + 1]
            else:
                b.fail(f"a reshape of {list(ins)} to {list(outs)} mixes heads")
            i += 2
        elif outs[j] == ins[i]:
            out[j] = lab
            i += 1
        else:
            b.fail(f"a reshape of {list(ins)} to {list(outs)} breaks up heads")
    return tuple(out)


def permute(b, node, fn, l0):
    rank = len(l0)
    a = node.args
    if fn == "t":
        order = list(range(rank))[::-1]
    elif fn in ("transpose", "swapaxes", "swapdims"):
        i, j = dim(a[1], rank), dim(a[2], rank)
        order = list(range(rank))
        order[i], order[j] = j, i
    elif fn == "permute":
        dims = a[1] if len(a) == 2 and isinstance(a[1], (list, tuple)) else a[1:]
        order = [dim(d, rank) for d in dims]
    else:
        src, dst = dim(a[1], rank), dim(a[2], rank)
        order = [d for d in range(rank) if d != src]
        order.insert(dst, src)
    return tuple(l0[d] for d in order)


def reduce(b, node, fn, l0, ins, outs):
    a = node.args
    dims = node.kwargs.get("dim", a[2] if fn == "norm" and len(a) > 2 else a[1] if len(a) > 1 else None)
    rank = len(ins)
    if dims is None or not isinstance(dims, (int, list, tuple)):
        if fn == "argmax" and any(l is not None for l in l0):
            b.fail("argmax over units")
        red = set(range(rank))
    else:
        red = {dim(d, rank) for d in ([dims] if isinstance(dims, int) else dims)}
    if fn == "argmax" and any(l0[d] is not None for d in red):
        b.fail("argmax over units (its result depends on their order)")
    keep = len(outs) == rank if not multi(node) else None
    labels = (
        tuple(None if d in red else l0[d] for d in range(rank))
        if keep
        else tuple(l0[d] for d in range(rank) if d not in red)
    )
    if multi(node):  # max / min with a dim: (values, indices)
        if any(l0[d] is not None for d in red):
            b.fail(f"{fn} over units returns their indices")
        return [labels, labels]
    return labels


def cat(b, node, fn, lab, rank):
    seq = node.args[0]
    along = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    if fn == "stack":
        d = dim(along, rank)
        per = [lab[t] for t in seq]
        rest = tuple(merge(b, [p[i] for p in per]) for i in range(rank - 1))
        return rest[:d] + (None,) + rest[d:]
    d = dim(along, rank)
    per = [lab[t] for t in seq]
    if any(p[d] is not None for p in per):
        b.fail("concatenation along an axis that carries units")
    return tuple(None if i == d else merge(b, [p[i] for p in per]) for i in range(rank))


def matmul(b, la, lb, sa, sb):
    if len(sb) == 1:
        merge(b, [la[-1], lb[0]])
        return la[:-1]
    if len(sa) == 1:
        merge(b, [la[0], lb[-2]])
        return lb[:-2] + lb[-1:]
    merge(b, [la[-1], lb[-2]])
    return batch(b, [(la[:-2], sa[:-2]), (lb[:-2], sb[:-2])], max(len(sa), len(sb)) - 2) + (la[-2], lb[-1])


def batch(b, pairs, rank: int) -> tuple:
    """The broadcast batch axes of several ``(labels, shape)``, right-aligned."""
    batch = []
    for i in range(rank):
        items = []
        for l, s in pairs:
            j = i - (rank - len(s))
            if j >= 0 and s[j] > 1:
                items.append(l[j])
        batch.append(merge(b, items))
    return tuple(batch)
