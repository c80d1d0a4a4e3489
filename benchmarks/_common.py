"""Helpers shared by the benchmark scripts."""

import importlib
import statistics
import subprocess
import sys
import time


def need(module: str, pip_name: str):
    """Import a peer package installed only for the benchmarks (``--no-deps``: it must not move torch)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        print(f"installing {pip_name} for the benchmark (pip --no-deps)", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", pip_name])
        return importlib.import_module(module)


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
