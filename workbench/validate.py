"""Validators for the numeric, boolean, string and sequence arguments of the probes.

Every probe checks its own arguments with these, once, before any work: a bad value is a
``ValueError`` (wrong value) or ``TypeError`` (wrong type) whose message starts with the argument's
name and says what is expected. Booleans are never numbers here (``k=True`` is refused), integers
accept integral floats (``steps=21.0``) but no other floats, NaN and infinity are refused unless a
validator says otherwise, and counts without a natural bound are capped at :data:`MAX_COUNT` (a
loop that long never finishes: it is a typo).

:func:`call_error` turns what torch raises about arguments it cannot take (a shape or dtype the model
does not accept, targets the loss cannot take) into a clear error naming the data, with torch's own
message kept; an error of the user's own code passes unchanged. :func:`describe` names tensors in
such messages.

>>> from workbench.validate import count, positive
>>> count("steps", 21.0), positive("rho", 0.05)
(21, 0.05)
>>> count("steps", True)
Traceback (most recent call last):
TypeError: steps: expected an int, got True (a bool)
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "MAX_COUNT",
    "integer",
    "count",
    "real",
    "positive",
    "finite_nonneg",
    "fraction",
    "boolean",
    "choice",
    "finite_array",
    "int_list",
    "name_list",
    "describe",
    "call_error",
]

#: the largest count (steps, products, draws, epochs...) a probe accepts
MAX_COUNT = 10**7


def _is_bool(v: Any) -> bool:
    return isinstance(v, (bool, np.bool_))


def integer(name: str, v: Any, *, lo: int | None = None, hi: int | None = None, none: bool = False) -> int | None:
    """``v`` as an ``int`` in ``[lo, hi]`` (either bound optional); ``none=True`` lets None through.

    >>> integer("layer", 2, lo=0, hi=3), integer("m", None, none=True)
    (2, None)
    """
    if v is None and none:
        return None
    if _is_bool(v):
        raise TypeError(f"{name}: expected an int, got {v!r} (a bool)")
    if isinstance(v, numbers.Integral):
        i = int(v)
    elif isinstance(v, numbers.Real):
        if not math.isfinite(float(v)) or float(v) != int(v):
            raise ValueError(f"{name}: expected an int, got {v!r}")
        i = int(v)
    else:
        raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    if lo is not None and i < lo or hi is not None and i > hi:
        rng = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in {lo}..{hi}"
        raise ValueError(f"{name}: expected an int {rng}, got {i}")
    return i


def count(name: str, v: Any, lo: int = 1, hi: int = MAX_COUNT, none: bool = False) -> int | None:
    """A count (steps, products, draws...): an int in ``[lo, hi]``, by default ``1..MAX_COUNT``.

    >>> count("n_draws", 20, lo=2)
    20
    """
    return integer(name, v, lo=lo, hi=hi, none=none)


def real(
    name: str,
    v: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    none: bool = False,
    allow_inf: bool = False,
) -> float | None:
    """``v`` as a float in the interval ``[lo, hi]`` (``lo_open`` / ``hi_open``: excluded), finite unless
    ``allow_inf``; NaN, bools and non-numbers are refused.

    >>> real("confidence", 0.95, lo=0, hi=1, lo_open=True, hi_open=True)
    0.95
    """
    if v is None and none:
        return None
    if _is_bool(v) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
    f = float(v)
    if math.isnan(f) or (math.isinf(f) and not allow_inf):
        raise ValueError(f"{name}: expected a finite number, got {f}")
    below = lo is not None and (f < lo or (lo_open and f == lo))
    if below or (hi is not None and (f > hi or (hi_open and f == hi))):
        left = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
        right = "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"
        raise ValueError(f"{name}: expected a number {' and '.join(s for s in (left, right) if s)}, got {f:g}")
    return f


def positive(name: str, v: Any, none: bool = False) -> float | None:
    """A finite number > 0.

    >>> positive("sigma", 1e-3)
    0.001
    """
    return real(name, v, lo=0.0, lo_open=True, none=none)


def finite_nonneg(name: str, v: Any, none: bool = False) -> float | None:
    """A finite number >= 0.

    >>> finite_nonneg("eta", 0)
    0.0
    """
    return real(name, v, lo=0.0, none=none)


def fraction(name: str, v: Any, closed: bool = False) -> float:
    """A number in the open interval (0, 1) (``closed=True``: [0, 1]).

    >>> fraction("confidence", 0.9)
    0.9
    """
    return real(name, v, lo=0.0, hi=1.0, lo_open=not closed, hi_open=not closed)


def boolean(name: str, v: Any) -> bool:
    """``True`` or ``False`` (numpy bools too); ints, strings and None are refused.

    >>> boolean("adaptive", False)
    False
    """
    if not _is_bool(v):
        raise TypeError(f"{name}: expected True or False, got {type(v).__name__} {v!r}")
    return bool(v)


def choice(name: str, v: Any, options: Sequence[str]) -> str:
    """One of the strings ``options``.

    >>> choice("which", "largest", ("largest", "smallest"))
    'largest'
    """
    if not isinstance(v, str):
        raise TypeError(f"{name}: expected one of {', '.join(map(repr, options))}, got {type(v).__name__} {v!r}")
    if v not in options:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, options))}, got {v!r}")
    return v


def finite_array(name: str, v: Any, ndim: int | None = 1, min_size: int = 1) -> np.ndarray:
    """``v`` (a sequence, numpy array or tensor of numbers) as a finite float64 array of ``ndim`` dims
    (None: any) and at least ``min_size`` entries.

    >>> finite_array("coords", [0.0, 0.5]).tolist()
    [0.0, 0.5]
    """
    if isinstance(v, (str, bytes)) or v is None:
        raise TypeError(f"{name}: expected an array of numbers, got {type(v).__name__} {v!r}")
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    try:
        a = np.asarray(v)
    except (ValueError, TypeError):
        raise TypeError(f"{name}: expected an array of numbers, got {type(v).__name__}") from None
    if a.dtype == bool or a.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected an array of numbers, got {type(v).__name__} of dtype {a.dtype}")
    a = a.astype(np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if a.size < min_size:
        raise ValueError(f"{name}: expected at least {min_size} value(s), got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf; pass finite values")
    return a


def int_list(name: str, v: Any, lo: int | None = 0, min_size: int = 1) -> list[int]:
    """A non-empty iterable of ints (each ``>= lo``) as a list.

    >>> int_list("seeds", range(3))
    [0, 1, 2]
    """
    if isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise TypeError(f"{name}: expected a list of ints, got {type(v).__name__} {v!r}")
    out = [integer(f"{name}", x, lo=lo) for x in v]
    if len(out) < min_size:
        raise ValueError(f"{name}: empty; pass at least {min_size} value(s)")
    return out


def name_list(name: str, v: Any, known: Iterable[str] | None = None, min_size: int = 0) -> list[str]:
    """A string or iterable of strings as a list; with ``known``, every name must be one of them.

    >>> name_list("metrics", ["logme"], known=["logme", "leep"])
    ['logme']
    """
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, Iterable) or isinstance(v, bytes):
        raise TypeError(f"{name}: expected a list of names, got {type(v).__name__}")
    out = list(v)
    bad = [x for x in out if not isinstance(x, str)]
    if bad:
        raise TypeError(f"{name}: expected names (strings), got {bad[:3]}")
    if len(out) < min_size:
        raise ValueError(f"{name}: empty; pass at least {min_size} name(s)")
    if known is not None:
        known = list(known)
        missing = [x for x in out if x not in known]
        if missing:
            raise ValueError(f"{name}: unknown {missing[:5]}; choose from {known[:12]}")
    return out


# -- errors torch raises on what it was given ---------------------------------------------------------


def describe(obj) -> str:
    """A short description of tensors for messages: ``"float32 (40, 8)"``, ``"{input_ids: int64 (2, 5)}"``.

    >>> describe((torch.zeros(2, 3), {"m": torch.ones(2, dtype=torch.bool)}))
    '(float32 (2, 3), {m: bool (2,)})'
    """
    if isinstance(obj, torch.Tensor):
        return f"{str(obj.dtype).removeprefix('torch.')} {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in obj) + ")"
    return type(obj).__name__


_TORCH = os.path.dirname(torch.__file__) + os.sep
#: what torch raises for arguments it cannot take (shapes, dtypes, types); anything else passes unchanged
EXPLAINED = (RuntimeError, TypeError, ValueError, IndexError, AssertionError)


def _raised_in_torch(e: BaseException, also: tuple[str, ...] = ()) -> bool:
    tb, last = e.__traceback__, None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return last is not None and (last.startswith(_TORCH) or last in also)


def call_error(e: BaseException, arg: str, what: str, hint: str, also: tuple[str, ...] = ()) -> ValueError | None:
    """A ValueError naming ``arg`` for an exception a torch operation raised on arguments it cannot take
    (a shape, dtype or type mismatch: ``what`` says what was passed), or None for anything else (an error
    of the user's own code, a planted failure, an interrupt surfaced by torch, an error that already names
    its argument), which must pass unchanged. ``also``: files whose frames call torch for the model (a
    ``TorchFunctionMode``), counted as torch's.
    """
    if not isinstance(e, EXPLAINED) or interrupt_in(e) is not None or not _raised_in_torch(e, also):
        return None
    if isinstance(e, (ValueError, TypeError)) and re.match(r"[A-Za-z_][\w\[\]'. ]{0,40}: ", str(e)):
        return None  # already a clear error of workbench's
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return ValueError(f"{arg}: {what}: {type(e).__name__}: {first}. {hint}")


#: exceptions that are never handled, only passed on
INTERRUPTS = (KeyboardInterrupt, SystemExit, GeneratorExit)


def interrupt_in(exc: BaseException) -> BaseException | None:
    """The interrupt (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``) in an exception's
    ``__cause__`` / ``__context__`` chain or only named in its message (torch's C++ autograd turns a Ctrl-C
    during a backward pass into a ``RuntimeError`` reading ``"KeyboardInterrupt: ..."``), or None. A
    fallback must raise it, never handle it.

    >>> interrupt_in(RuntimeError("The following operation failed ...\\nKeyboardInterrupt: \\n"))
    KeyboardInterrupt('raised inside torch: The following operation failed ...')
    >>> interrupt_in(RuntimeError("shape mismatch")) is None
    True
    """
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        if isinstance(e, INTERRUPTS):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    text, todo = str(exc), list(INTERRUPTS)
    while todo:  # the interrupt classes and their subclasses (workbench.Cancelled, ...), by name
        cls = todo.pop()
        if f"{cls.__name__}: " in text or text.rstrip().endswith(cls.__name__):
            return cls(f"raised inside torch: {text.splitlines()[0][:200]}")
        todo += cls.__subclasses__()
    return None
