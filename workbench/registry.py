"""Probe registry and the ``@probe`` decorator every probe goes through.

The decorator is where the contract is enforced once for all probes: the configured thread
count (:mod:`workbench.config`), bitwise restoration of every ``nn.Module`` argument
(:func:`workbench.state.preserve`), and wall time in the result's attrs. Registration also
records a *contract case*, a small call of the probe that the shared contract suite
(``tests/test_contract.py``) runs against a hostile model (train mode, BatchNorm, dropout, a frozen
layer, a stale ``.grad``).
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import xarray as xr
from torch import nn

from .config import threads
from .state import preserve


@dataclass
class ProbeInfo:
    name: str
    func: Callable
    case: Callable | None  # () -> (args, kwargs): a small call on a hostile model
    deterministic: bool = True


PROBES: dict[str, ProbeInfo] = {}


def _modules_in(obj, out):
    if isinstance(obj, nn.Module):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _modules_in(v, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _modules_in(v, out)
    return out


def probe(name: str, case: Callable | None = None, deterministic: bool = True):
    """Register ``func`` as a probe named ``name`` and wrap it in the state/threads contract."""

    def deco(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            mods = []
            _modules_in(list(args) + list(kwargs.values()), mods)
            uniq = list({id(m): m for m in mods}.values())
            t0 = time.perf_counter()
            with threads(), preserve(*uniq):
                out = func(*args, **kwargs)
            if isinstance(out, (xr.DataArray, xr.Dataset)) and "wall_time_s" not in out.attrs:
                out.attrs["wall_time_s"] = float(time.perf_counter() - t0)
            return out

        wrapper.probe_name = name
        PROBES[name] = ProbeInfo(name, wrapper, case, deterministic)
        return wrapper

    return deco


def probes() -> dict[str, ProbeInfo]:
    """All registered probes (importing the probe modules registers them)."""
    from . import evaluate, landscape  # noqa: F401  (registration side effects)

    for mod in ("sharpness", "attention", "transfer"):
        try:
            __import__(f"{__package__}.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{mod}":
                raise
    return dict(PROBES)
