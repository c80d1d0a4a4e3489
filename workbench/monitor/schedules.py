"""When a monitor probe runs: every N steps, log-spaced, at given steps, or any union of these (``|``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["Schedule", "every", "log_spaced", "at", "never", "DEFAULT_SCHEDULE"]


class Schedule:
    """A set of steps, asked one step at a time (``step in schedule``); ``a | b`` is the union.

    >>> s = every(100) | log_spaced(per_decade=2)
    >>> [t for t in range(0, 400) if t in s]
    [0, 1, 3, 10, 32, 100, 200, 300, 316]
    """

    def __init__(self, test, text: str):
        self._test, self.text = test, text

    def __contains__(self, step: int) -> bool:
        return bool(self._test(int(step)))

    def __or__(self, other: Schedule) -> Schedule:
        if not isinstance(other, Schedule):
            return NotImplemented
        return Schedule(lambda t: t in self or t in other, f"{self.text} | {other.text}")

    def __repr__(self) -> str:
        return self.text


def _whole(name: str, v, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
    return v


def every(n: int, start: int = 0) -> Schedule:
    """Steps ``start, start + n, start + 2n, ...``."""
    n, start = _whole("n", n, 1), _whole("start", start, 0)
    return Schedule(lambda t: t >= start and (t - start) % n == 0, f"every({n}, start={start})")


def log_spaced(per_decade: int = 10, start: int = 1) -> Schedule:
    """Step 0 and the steps nearest to ``10^(k / per_decade)`` for k = 0, 1, ...: dense early, sparse later
    (the steps ``round(10^(k/per_decade))``, from ``start`` on)."""
    per_decade, start = _whole("per_decade", per_decade, 1), _whole("start", start, 0)

    def test(t: int) -> bool:
        if t == 0:
            return True
        if t < start:
            return False
        k = round(per_decade * math.log10(t))
        return any(round(10 ** (j / per_decade)) == t for j in (k - 1, k, k + 1))

    return Schedule(test, f"log_spaced(per_decade={per_decade}, start={start})")


def at(steps: Iterable[int]) -> Schedule:
    """Exactly the steps given."""
    chosen = frozenset(_whole("steps", int(s) if not isinstance(s, bool) else s, 0) for s in steps)
    return Schedule(lambda t: t in chosen, f"at({sorted(chosen)})")


def never() -> Schedule:
    """No step (switches a probe off)."""
    return Schedule(lambda t: False, "never()")


#: The default schedule of each monitor probe, chosen so that watching costs a few percent of training on a small
#: transformer (benchmarks/monitor.py): the loss every 10 steps, parameter and forward-pass statistics every 100,
#: the top Hessian eigenvalue (5 warm-started products) at steps 1, 10, 100 and every 1000. Denser schedules are one
#: argument away (``schedule={"sharpness": every(50)}``; the edge-of-stability reproduction uses every step).
DEFAULT_SCHEDULE = {
    "loss": every(10),
    "norms": every(100),
    "distance": every(100),
    "attention": every(100),
    "logits": every(100),
    "trajectory": every(100),
    "sharpness": log_spaced(per_decade=1) | every(1000),
}
