"""Helpers shared by the benchmark scripts.

The peer packages the benchmarks compare against are the ``bench`` extra of pyproject.toml. They are
installed once by ``make benchmarks`` with ``pip install --no-deps`` (their own requirements would
replace the pinned torch: backpack-for-pytorch asks for torchvision, which asks for the newest torch),
never by a benchmark at run time. ``python benchmarks/_common.py --bench-requirements`` prints the
extra's pins for that command.
"""

import hashlib
import importlib
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = (
    "make benchmarks  (or: .venv/bin/pip install --no-deps "
    "$(.venv/bin/python benchmarks/_common.py --bench-requirements))"
)


def bench_requirements() -> list[str]:
    """The ``bench`` extra of pyproject.toml: exact pins only (they go through a shell unquoted)."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        reqs = tomllib.load(f)["project"]["optional-dependencies"]["bench"]
    bad = [r for r in reqs if not re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.]+", r)]
    if bad:
        raise ValueError(f"pyproject.toml [bench]: expected exact pins 'name==version', got {bad}")
    return reqs


def need(module: str, pip_name: str):
    """Import a peer package of the ``bench`` extra; a clear stop (never an install) when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SystemExit(
            f"{sys.argv[0]}: this benchmark compares against {pip_name} (module {module!r}), which is not "
            f"installed ({e}).\nInstall the benchmark peers (the 'bench' extra, with --no-deps so that torch "
            f"stays as pinned):\n  {INSTALL}"
        ) from None


def timed(fn, repeat=3):
    """(median seconds, last result) over ``repeat`` runs."""
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def interleaved(fns: dict, repeat=3):
    """Run the candidates round-robin (so machine load hits all alike); median seconds and results."""
    times = {k: [] for k in fns}
    outs = {}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def reset_peak_rss() -> int:
    """Reset the process's peak resident set (VmHWM) to its current size (Linux ``clear_refs`` 5);
    returns the current RSS in bytes, the baseline of the next :func:`peak_rss`."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """Peak resident set size (VmHWM) since the last :func:`reset_peak_rss`, in bytes."""
    return _status_kib("VmHWM") * 1024


def exact_spectrum(model, loss_fn, x, y, tag: str):
    """Eigenvalues (ascending) of the exact float64 Hessian of ``loss_fn(model(x), y)``, cached under
    zoo.cache_root() / "bench" by model fingerprint and ``tag`` (benchmarks/sharpness.py uses the sample count)."""
    import copy

    import numpy as np

    import workbench as wb
    from workbench import sharpness as S
    from workbench import zoo

    key = hashlib.sha256((wb.results.model_fingerprint(model) + tag).encode()).hexdigest()[:12]
    cache = zoo.cache_root() / "bench" / f"exact_spectrum_{key}.npz"
    if cache.exists():
        return np.load(cache)["ev"]
    P = sum(p.numel() for p in model.parameters())
    print(f"  computing the exact Hessian ({P} params, cached afterwards) ...", flush=True)
    t0 = time.perf_counter()
    H = S.exact_hessian(copy.deepcopy(model).double(), loss_fn, (x.double(), y), progress=False).values
    ev = np.linalg.eigvalsh(H)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, ev=ev)
    print(f"  exact Hessian + eigvalsh: {time.perf_counter() - t0:.0f} s", flush=True)
    return ev


if __name__ == "__main__":
    if sys.argv[1:] == ["--bench-requirements"]:
        print(" ".join(bench_requirements()))
