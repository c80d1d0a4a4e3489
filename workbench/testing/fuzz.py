"""A bad-input fuzz over every registered probe, generated from its signature, tags and contract case.

For each probe, :func:`fuzz_cases` takes its contract case (:func:`~workbench.testing.case_of`) and
derives bad variants of it: for every numeric / string / bool / sequence argument a set of bad values
(negative, zero, huge, NaN, inf, a float for an int, a bool for a number, a wrong type, a wrong
string), for the data (wrong shapes and dtypes, NaN / inf inputs, empty data, out-of-range, float,
int32, list and NaN labels, a one-shot generator or ``IterableDataset``, mismatched lengths, ...),
for the loss (not callable, not a scalar, NaN) and for the models (no parameters, mixed dtypes, NaN
weights, not a module). :func:`run_case` classifies each outcome:

* ``clear_error``: a ``ValueError`` / ``TypeError`` whose message starts with the argument's name
  (``"<argument>: ..."``; for data, model and loss variants, any argument of the probe);
* ``deep_crash``: any other exception (raised inside torch / numpy / scipy / sklearn, or unclear), or a
  call that did not finish within ``timeout`` seconds;
* ``silent_wrong``: a result where an error was due, a result that differs from the reference where
  the variant is a valid spelling of the same call (int32 labels must give what int64 labels give), or
  non-finite values where the reference has finite ones;
* ``ok``: a valid variant that gives the reference result (or, for landscapes, a non-finite loss kept
  as NaN cells with a warning).

:func:`fuzz` runs every case of the given probes and returns a :class:`FuzzReport` (``counts()``,
``table()``, ``failures()``).
"""

from __future__ import annotations

import inspect
import re
import threading
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from ..registry import PROBES, ProbeInfo, probes
from ..tail import TAIL, Cancelled
from .checks import case_of
from .fuzz_variants import data_variants, model_variants, value_variants

OUTCOMES = ("clear_error", "deep_crash", "silent_wrong", "ok")
#: probes whose non-finite losses are data (NaN cells with one warning), not errors
NAN_AS_DATA = ("landscape.slice_1d", "landscape.slice_2d", "landscape.interpolate")
#: provenance attrs that legitimately differ between a variant and its reference
_PROVENANCE = {"probe_params", "model_fingerprint", "data_fingerprint", "wall_time_s", "created", "versions"}
_DEPENDENCIES = ("torch", "numpy", "scipy", "sklearn", "xarray", "pandas")


@dataclass
class FuzzCase:
    """One bad (or valid-but-unusual) call of a probe.

    ``target``: the argument varied; ``variant``: what was done to it; ``expect``: ``"error"`` (only a
    clear error is right), ``"equal"`` (a clear error, or the reference result), ``"valid"`` (a clear
    error, or a result finite where the reference is); ``kwargs``: the call; ``reference``: the call
    whose result an ``"equal"`` variant must reproduce (None: the unchanged contract case);
    ``nonfinite``: the variant makes the loss non-finite (landscapes may answer with NaN cells)."""

    probe: str
    target: str
    variant: str
    expect: str
    kwargs: Callable[[], dict]
    reference: Callable[[], dict] | None = None
    nonfinite: bool = False


@dataclass
class FuzzResult:
    case: FuzzCase
    outcome: str
    detail: str = ""


@dataclass
class FuzzReport:
    results: list[FuzzResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Cases per outcome class."""
        c = Counter(r.outcome for r in self.results)
        return {k: c.get(k, 0) for k in OUTCOMES}

    def by_probe(self) -> dict[str, dict[str, int]]:
        out: dict[str, Counter] = {}
        for r in self.results:
            out.setdefault(r.case.probe, Counter())[r.outcome] += 1
        return {p: {k: c.get(k, 0) for k in OUTCOMES} for p, c in out.items()}

    def failures(self, outcomes: Iterable[str] = ("deep_crash", "silent_wrong")) -> list[FuzzResult]:
        return [r for r in self.results if r.outcome in set(outcomes)]

    def table(self) -> str:
        """Outcomes by class and by probe, as fixed-width text."""
        head = f"{'probe':34s}" + "".join(f"{k:>14s}" for k in OUTCOMES) + f"{'cases':>8s}"
        lines = [head, "-" * len(head)]
        for p, c in sorted(self.by_probe().items()):
            lines.append(f"{p:34s}" + "".join(f"{c[k]:14d}" for k in OUTCOMES) + f"{sum(c.values()):8d}")
        tot = self.counts()
        lines.append("-" * len(head))
        lines.append(f"{'all':34s}" + "".join(f"{tot[k]:14d}" for k in OUTCOMES) + f"{len(self.results):8d}")
        return "\n".join(lines)


def _flat_call(info: ProbeInfo) -> dict:
    """The contract case as keyword arguments (forward kwargs flattened)."""
    args, kwargs = case_of(info)
    sig = inspect.signature(info.func)
    bound = sig.bind(*args, **kwargs)
    out = {}
    for name, v in bound.arguments.items():
        if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(v)
        elif name not in ("progress", "cancel"):
            out[name] = v
    return out


def fuzz_cases(info: ProbeInfo) -> list[FuzzCase]:
    """Every bad variant of ``info``'s contract case (models are built once and shared by the cases)."""
    base = _flat_call(info)
    sig = inspect.signature(info.func)
    cases = []

    def add(target, variant, expect, change, reference=None, nonfinite=False):
        def kwargs(change=change):
            kw = dict(base)
            kw.update(change() if callable(change) else change)
            return kw

        ref = None if reference is None else (lambda r=reference: {**base, **r()})
        cases.append(FuzzCase(info.name, target, variant, expect, kwargs, ref, nonfinite))

    for name, p in sig.parameters.items():
        if name in TAIL or p.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if name in ("model", "model_a", "model_b", "models"):
            for variant, expect, value, nonfinite in model_variants(name, base[name], info.tags):
                add(name, variant, expect, {name: value}, nonfinite=nonfinite)
        elif name in ("data", "inputs", "target_data", "train", "test", "loss_fn"):
            for variant, expect, change, ref, nonfinite in data_variants(name, base, info.tags):
                add(name, variant, expect, change, ref, nonfinite)
        else:
            for variant, expect, value in value_variants(name, p.annotation, base.get(name, p.default)):
                add(name, variant, expect, {name: value})
    return cases


# -- running and classifying ---------------------------------------------------------------------------


def _values(obj) -> list[tuple[str, np.ndarray]]:
    """The numeric content of a result: its variables and coordinates (timings aside) and numeric attrs."""
    ds = obj.to_dataset(name=obj.name or "value") if isinstance(obj, xr.DataArray) else obj
    out = []
    for k, v in list(ds.variables.items()):
        if v.attrs.get("units") == "s":
            continue
        out.append((f"var {k}", np.asarray(v.values)))
    for k, v in obj.attrs.items():
        if k not in _PROVENANCE and isinstance(v, (int, float, np.ndarray, np.number)) and not isinstance(v, bool):
            out.append((f"attr {k}", np.asarray(v)))
    return out


def _compare(got, ref, exact: bool) -> str | None:
    """None when ``got`` matches ``ref``: equal values (``exact``), or else finite wherever the reference is
    (a valid variant may change shapes, e.g. a scalar rho for a list, and drop or add variables)."""
    g, r = dict(_values(got)), dict(_values(ref))
    if exact and set(g) != set(r):
        return f"variables differ: {sorted(set(g) ^ set(r))[:4]}"
    for k in sorted(set(r) & set(g)):
        gv, rv = g[k], r[k]
        if rv.dtype.kind not in "fciub" or gv.dtype.kind not in "fciub":
            if exact and not np.array_equal(gv, rv):
                return f"{k}: values differ"
            continue
        gv, rv = gv.astype(np.complex128), rv.astype(np.complex128)
        if gv.shape != rv.shape:
            if exact:
                return f"{k}: shape {gv.shape} vs {rv.shape}"
            if np.all(np.isfinite(rv)) and not np.all(np.isfinite(gv)):
                return f"{k}: non-finite values where the reference has none"
            continue
        if np.any(np.isfinite(rv) & ~np.isfinite(gv)):
            return f"{k}: non-finite where the reference is finite"
        if exact and not np.allclose(gv, rv, rtol=1e-5, atol=1e-7, equal_nan=True):
            with np.errstate(invalid="ignore"):
                err = np.abs(gv - rv)
            return f"{k}: differs from the reference by {float(np.max(err[np.isfinite(err)], initial=0)):.3g}"
    return None


def _names_argument(msg: str, names: set[str]) -> bool:
    head, sep, _ = msg.partition(":")
    if not sep or len(head) > 60:
        return False
    return any(re.search(rf"(^|\W){re.escape(n)}(\W|$)", head) for n in names)


def _where(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    if not tb:
        return "?"
    f = tb[-1]
    parts = f.filename.replace("\\", "/").split("/")
    for dep in _DEPENDENCIES + ("workbench",):
        if dep in parts:
            return "/".join(parts[parts.index(dep) :]) + f":{f.lineno}"
    return f"{parts[-1]}:{f.lineno}"


def _call(info: ProbeInfo, kwargs: dict, timeout: float):
    ev = threading.Event()
    timer = threading.Timer(timeout, ev.set)
    timer.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = info.func(**kwargs, cancel=ev, progress=False)
        return out, [str(w.message) for w in caught]
    finally:
        timer.cancel()


def run_case(case: FuzzCase, reference: Any, timeout: float = 5.0) -> FuzzResult:
    """Run one case and classify it (``reference``: the result of the unchanged contract case)."""
    info = PROBES[case.probe]
    sig = inspect.signature(info.func)
    names = {case.target, case.target.removesuffix("s")}  # "direction 0: ..." names the argument directions
    if case.target in ("data", "inputs", "target_data", "train", "test", "loss_fn"):
        names = set()
    if case.target in ("model", "model_a", "model_b", "models") or not names:
        names = set(sig.parameters) - set(TAIL) | {"data", "inputs", "targets", "labels", "model", "loss_fn"}
    try:
        out, warned = _call(info, case.kwargs(), timeout)
    except Cancelled:
        return FuzzResult(case, "deep_crash", f"did not finish in {timeout:g} s")
    except (ValueError, TypeError) as e:
        if _names_argument(str(e), names):
            return FuzzResult(case, "clear_error", f"{type(e).__name__}: {str(e)[:100]}")
        return FuzzResult(case, "deep_crash", f"unclear {type(e).__name__} at {_where(e)}: {str(e)[:100]}")
    except Exception as e:  # noqa: BLE001  (any exception is an outcome to classify; interrupts pass)
        return FuzzResult(case, "deep_crash", f"{type(e).__name__} at {_where(e)}: {str(e)[:100]}")
    if (case.nonfinite or case.expect == "valid") and case.probe in NAN_AS_DATA:
        if any("non-finite" in w for w in warned):
            return FuzzResult(case, "ok", "non-finite losses kept as NaN cells with a warning")
    if case.expect == "error":
        diff = _compare(out, reference, exact=False)
        return FuzzResult(case, "silent_wrong", f"accepted without an error ({diff or 'a finite result'})")
    if case.expect == "equal":
        ref = reference if case.reference is None else _call(info, case.reference(), timeout)[0]
        diff = _compare(out, ref, exact=True)
    else:
        diff = _compare(out, reference, exact=False)
    return FuzzResult(case, "silent_wrong" if diff else "ok", diff or "")


def check_bad_inputs(info: ProbeInfo, timeout: float = 10.0) -> None:
    """The fuzz of one probe as a contract check: raises AssertionError listing every case that crashed
    inside a dependency or gave a silently wrong result.

    >>> from workbench.registry import probes
    >>> check_bad_inputs(probes()["evaluate"])
    """
    bad = [r for r in fuzz([info.name], timeout=timeout).failures()]
    assert not bad, f"{info.name}: " + "; ".join(
        f"{r.case.target}={r.case.variant}: {r.outcome} ({r.detail})" for r in bad[:8]
    )


def fuzz(names: Iterable[str] | None = None, *, timeout: float = 5.0, verbose: bool = False) -> FuzzReport:
    """Run every fuzz case of the registered probes ``names`` (default all of workbench's own) and classify the
    outcomes.

    >>> rep = fuzz(["sharpness.gradient_norm"])
    >>> len(rep.results) > 30, rep.counts()["deep_crash"] + rep.counts()["silent_wrong"]
    (True, 0)
    """
    allp = probes()
    report = FuzzReport()
    for name in names or sorted(n for n, i in allp.items() if i.func.__module__.startswith("workbench.")):
        info = allp[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = info.func(**_flat_call(info), progress=False)  # the unchanged contract case
        for case in fuzz_cases(info):
            res = run_case(case, reference, timeout)
            report.results.append(res)
            if verbose and res.outcome in ("deep_crash", "silent_wrong"):
                print(f"{res.outcome:13s} {name} {case.target}={case.variant}: {res.detail}")
    return report
