"""The bad values of :mod:`workbench.testing.fuzz`: per argument kind (from the annotation), for the
data, the loss and the models. Each variant says what a correct probe must do with it: ``"error"`` (a
clear error), ``"equal"`` (a clear error, or the result of the reference call), ``"valid"`` (a clear
error, or a result that is finite where the contract case's is)."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

__all__ = ["value_variants", "data_variants", "model_variants", "OneShot", "Batches"]

#: string arguments that take free-form names (any string is a valid value)
FREE_STRINGS = ("dim", "mask_key")
NAN, INF = math.nan, math.inf


class OneShot(IterableDataset):
    """An ``IterableDataset`` that can be iterated once: every ``iter()`` continues one iterator."""

    def __init__(self, items):
        self.it = iter(items)

    def __iter__(self):
        return self.it


class Batches(IterableDataset):
    """A re-iterable ``IterableDataset`` of ready-made batches (valid data)."""

    def __init__(self, items):
        self.items = list(items)

    def __iter__(self):
        return iter(self.items)


def _tokens(annotation: Any) -> set[str]:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    out, depth, cur = set(), 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            out.add(cur.strip())
            cur = ""
        else:
            cur += ch
    out.add(cur.strip())
    return out


def value_variants(name: str, annotation: Any, value: Any) -> list[tuple[str, str, Any]]:
    """``(variant, expect, bad value)`` for an argument of this annotation whose good value is ``value``."""
    t = _tokens(annotation)
    optional = "None" in t
    seqs = {x for x in t if x.split("[")[0] in ("ArrayLike", "Iterable", "Sequence", "list", "dict")}
    out: list[tuple[str, str, Any]] = []
    numeric = "int" in t or "float" in t
    if numeric:
        is_int = "int" in t and "float" not in t
        out += [
            ("negative", "error", -1 if is_int else -1.0),
            ("zero", "valid", 0 if is_int else 0.0),
            ("huge", "valid", 10**12 if is_int else 1e300),
            ("NaN", "error", NAN),
            ("inf", "valid" if "str" in t else "error", INF),
            ("bool", "error", True),
        ]
        if is_int:
            out.append(("non-integral float", "error", 2.5))
            if isinstance(value, int) and not isinstance(value, bool):
                out.append(("integral float", "equal", float(value)))
        if "str" in t:
            out.append(("wrong string", "error", "nonsense"))
        else:
            out.append(("string", "error", "3"))
    elif t <= {"str", "None"}:
        if name not in FREE_STRINGS:
            out.append(("wrong string", "error", "nonsense"))
        out.append(("wrong type", "error", 3))
    elif t <= {"bool", "None"}:
        out += [("string", "error", "yes"), ("int", "error", 2)]
        if not optional:
            out.append(("None", "error", None))
        return out
    elif "Any" in t and not seqs:
        return [("wrong type", "error", object()), ("wrong string", "error", "nonsense")]
    if not optional and not (t <= {"Any"}) and (numeric or "str" in t):
        out.append(("None", "error", None))
    for s in seqs:
        inner = s[s.find("[") + 1 : -1] if "[" in s else ""
        if s.startswith("dict"):
            continue
        if inner == "str" or "str" in t:
            out += [("unknown name in list", "error", ["nonsense"]), ("wrong type in list", "error", [3])]
            out += [("empty list", "valid", [])]
        elif inner == "int":
            out += [("negative in list", "error", [-1]), ("non-integral in list", "error", [1.5])]
            out += [("bool in list", "error", [True]), ("NaN in list", "error", [NAN]), ("empty list", "error", [])]
        else:
            out += [("NaN in array", "error", [NAN, 0.5]), ("inf in array", "error", [0.5, INF])]
            out += [("empty array", "error", [])]
        out += [("string for a sequence", "error", "abc"), ("object for a sequence", "error", object())]
        break
    return out


# -- models ---------------------------------------------------------------------------------------------


def _converted(model: nn.Module, which: int, dtype: torch.dtype) -> nn.Module:
    m = copy.deepcopy(model)
    lin = [x for x in m.modules() if isinstance(x, nn.Linear)]
    lin[which].to(dtype)
    return m


def _nan_weights(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.view(-1)[0] = NAN
    return m


class _Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 3)

    def forward(self, x):
        return self.lin(x)


def model_variants(name: str, value: Any, tags) -> list[tuple[str, str, Any, bool]]:
    """``(variant, expect, model(s), non-finite loss)`` for a model argument."""
    if isinstance(value, nn.Module):
        out = [
            ("not a module", "error", "model.pt", False),
            ("no parameters", "error", nn.Sequential(nn.ReLU()), False),
            ("mixed dtypes (a float64 layer)", "valid", _converted(value, -1, torch.float64), False),
            ("a half-precision layer", "valid", _converted(value, 0, torch.float16), False),
            ("NaN weights", "error", _nan_weights(value), True),
        ]
        if name == "model_b":
            out.append(("another architecture", "error", _Other(), False))
        return out
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    first = items[0][1]

    def with_first(m):
        new = [(k, m if i == 0 else v) for i, (k, v) in enumerate(items)]
        return dict(new) if isinstance(value, dict) else [v for _, v in new]

    return [
        ("empty", "error", type(value)(), False),
        ("an entry that is not a module", "error", with_first("model.pt"), False),
        ("a model with mixed dtypes", "valid", with_first(_converted(first, -1, torch.float64)), False),
        ("a model with NaN weights", "error", with_first(_nan_weights(first)), True),
        ("a single model", "valid", first, False),
    ]


# -- data and loss ----------------------------------------------------------------------------------------


class _NanLoss(nn.Module):
    def forward(self, out, y):
        return nn.functional.cross_entropy(out, y) * NAN


def _with(x: torch.Tensor, index, value) -> torch.Tensor:
    x = x.clone()
    x[index] = value
    return x


def _pair_variants(name, x, y):
    h = len(x) // 2
    # class labels of a transfer task are categories (any values, remapped): other values make another task
    other = "valid" if name in ("train", "test", "target_data") else "error"
    pair = [
        ("float64 inputs", "equal", (x.double(), y), None, False),
        ("float16 inputs", "equal", (x.half(), y), (x.half().float(), y), False),
        ("int32 labels", "equal", (x, y.int()), None, False),
        ("float labels", "equal", (x, y.float()), None, False),
        ("list labels", "equal", (x, y.tolist()), None, False),
        ("numpy pair", "equal", (x.numpy(), y.numpy()), None, False),
        ("2-D labels (N, 1)", "equal", (x, y[:, None]), None, False),
        # batches: the same value up to rounding, except what is per batch by design (standard errors over
        # batches, BatchNorm statistics repaired batch by batch): valid, not equal
        ("two batches", "valid", [(x[:h], y[:h]), (x[h:], y[h:])], None, False),
        ("DataLoader", "valid", DataLoader(TensorDataset(x, y), batch_size=16), None, False),
        ("loader of a re-iterable IterableDataset", "equal", DataLoader(Batches([(x, y)]), batch_size=None), None, 0),
        ("a Dataset, not a loader", "equal", TensorDataset(x, y), None, False),
        ("NaN inputs", "error", (_with(x, (0, 0), NAN), y), None, False),
        ("inf inputs", "error", (_with(x, (0, 0), INF), y), None, False),
        ("huge inputs", "valid", (x * 1e30, y), None, True),
        ("NaN labels", "error", (x, _with(y.float(), 0, NAN)), None, False),
        ("non-integral labels", other, (x, y.float() + 0.5), None, False),
        ("labels out of range", other, (x, _with(y, 0, 1000)), None, False),
        ("negative labels", other, (x, _with(y, 0, -1)), None, False),
        ("empty", "error", (x[:0], y[:0]), None, False),
        ("empty list", "error", [], None, False),
        ("mismatched lengths", "error", (x, y[:-1]), None, False),
        ("wrong feature count", "error", (x[:, :-1], y), None, False),
        ("1-D inputs", "error", (x[:, 0], y), None, False),
        ("integer inputs", "error", (x.long(), y), None, False),
        ("a generator", "error", (b for b in [(x, y)]), None, False),
        ("a one-shot IterableDataset", "error", OneShot([(x, y)]), None, False),
        ("a loader of a one-shot IterableDataset", "error", DataLoader(OneShot([(x, y)]), batch_size=None), None, 0),
        ("None", "error", None, None, False),
        ("a file name", "error", "data.csv", None, False),
        ("three items", "error", (x, y, y), None, False),
    ]
    if name in ("train", "test", "target_data"):
        pair.append(("one class", "error" if name != "test" else "valid", (x, torch.zeros_like(y)), None, False))
    if name == "test":
        pair.append(("a label unseen in training", "valid", (x, _with(y, 0, int(y.max()) + 5)), None, False))
    if name == "target_data":
        pair.append(("constant inputs", "valid", (torch.zeros_like(x), y), None, False))
        pair.append(("fewer samples than classes", "valid", (x[:2], torch.tensor([0, 1])), None, False))
    return pair


def _input_variants(x):
    return [
        ("float64 inputs", "equal", x.double(), None, False),
        ("float16 inputs", "equal", x.half(), x.half().float(), False),
        ("numpy inputs", "equal", x.numpy(), None, False),
        ("a labelled pair", "equal", (x, torch.zeros(len(x), dtype=torch.long)), None, False),
        ("a list of one batch", "equal", [x], None, False),
        ("NaN inputs", "error", _with(x, (0,) * x.dim(), NAN), None, False),
        ("inf inputs", "error", _with(x, (0,) * x.dim(), INF), None, False),
        ("empty", "error", x[:0], None, False),
        ("empty list", "error", [], None, False),
        ("wrong feature count", "error", x[..., :-1], None, False),
        ("integer inputs", "error", x.long(), None, False),
        ("a generator", "error", (b for b in [x]), None, False),
        ("a one-shot IterableDataset", "error", OneShot([x]), None, False),
        ("None", "error", None, None, False),
        ("a file name", "error", "inputs.pt", None, False),
    ]


def data_variants(name: str, base: dict, tags) -> list[tuple[str, str, Any, Any, bool]]:
    """``(variant, expect, change, reference change or None, non-finite loss)``: ``change`` (a callable
    returning the arguments to replace) makes the variant, the reference change the call it must equal."""
    value = base[name]
    if name == "loss_fn":
        raw = [
            ("not callable", "error", "cross_entropy", False),
            ("per-sample losses (reduction='none')", "error", nn.CrossEntropyLoss(reduction="none"), False),
            ("a Python float", "error", lambda out, y: 1.0, False),
            ("a NaN loss", "error", _NanLoss(), True),
        ]
        return [(v, e, (lambda val=val: {name: val}), None, nf) for v, e, val, nf in raw]
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], torch.Tensor):
        x, y = value
        if not (isinstance(x, torch.Tensor) and x.is_floating_point() and y.dim() == 1):
            return []
        raw = _pair_variants(name, x, y)
    elif isinstance(value, torch.Tensor) and value.is_floating_point():
        raw = _input_variants(value)
    else:
        return []
    out = []
    for v, e, val, ref, nf in raw:
        # a generator or one-shot dataset is used up by one call: make a fresh one per call
        if v in ("a generator", "a one-shot IterableDataset", "a loader of a one-shot IterableDataset"):
            items = list(val.it if isinstance(val, OneShot) else val.dataset.it if isinstance(val, DataLoader) else val)
            make = {
                "a generator": lambda items=items: (b for b in items),
                "a one-shot IterableDataset": lambda items=items: OneShot(items),
                "a loader of a one-shot IterableDataset": lambda items=items: DataLoader(
                    OneShot(items), batch_size=None
                ),
            }[v]
            change = lambda make=make: {name: make()}  # noqa: E731
        else:
            change = lambda val=val: {name: val}  # noqa: E731
        out.append((v, e, change, None if ref is None else (lambda r=ref: {name: r}), bool(nf)))
    return out
