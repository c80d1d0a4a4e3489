"""Process-wide settings: the number of CPU threads probes run with.

On small shared machines one intra-op thread is often many times faster than two
(measured on a 2-core box: 200 small matmuls took 4.8 s with 2 threads, 0.18 s with 1).
Probes therefore run inside :func:`threads`, which applies the configured count and restores
torch's own setting afterwards, so the user's session is left as it was.

The count comes from, in order: :func:`set_threads`, the environment variable
``WORKBENCH_THREADS``, else torch's current setting (unchanged).
"""

from __future__ import annotations

import contextlib
import os

import torch

_THREADS: int | None = None


def _env_threads() -> int | None:
    raw = os.environ.get("WORKBENCH_THREADS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(
            f"WORKBENCH_THREADS={raw!r} is not an integer; set it to a positive thread count, e.g. 1"
        ) from None
    if n < 1:
        raise ValueError(f"WORKBENCH_THREADS={raw!r} must be >= 1")
    return n


def set_threads(n: int | None) -> None:
    """Set the number of torch intra-op threads used while a probe runs.

    ``n=None`` clears the setting (fall back to ``WORKBENCH_THREADS``, else torch's own).
    """
    global _THREADS
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"set_threads: n must be a positive int or None, got {n!r}")
    _THREADS = n


def get_threads() -> int:
    """The thread count a probe will run with."""
    if _THREADS is not None:
        return _THREADS
    env = _env_threads()
    return env if env is not None else torch.get_num_threads()


@contextlib.contextmanager
def threads(n: int | None = None):
    """Run the body with ``n`` (default :func:`get_threads`) torch threads, then restore."""
    want = get_threads() if n is None else n
    before = torch.get_num_threads()
    if want != before:
        torch.set_num_threads(want)
    try:
        yield want
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
