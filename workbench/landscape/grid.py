"""The lattice evaluator under every slice: ``L(theta0 + sum_k c_k d_k)`` for many coefficient vectors.

The grid is an exact lattice on the coordinates given; where 0 is among them the cell is
``L(theta0)`` itself (``theta0 + 0 * d`` is never formed: the coefficient is skipped, so the cell is
bitwise the loss at theta0). Evaluation is functional (the model is never written) and
sample-weighted over batches (:class:`~workbench.objective.Objective`). Engines: ``"loop"`` (one
full-data evaluation per grid point; on a CPU this is already at the forward-pass floor) and
``"vmap"`` (``torch.func.vmap`` over chunks of grid points, which pays off on a GPU for small
models); ``"auto"`` picks vmap on CUDA. Train mode always loops (batch statistics and dropout are
not batched over grid points).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch.func import vmap

from ..objective import Objective, accuracy_count
from ..validate import choice, count, finite_array, real

__all__ = ["ENGINES", "lattice_axis", "mark_nonfinite", "Grid"]

ENGINES = ("auto", "loop", "vmap")


def lattice_axis(
    coords: ArrayLike | None = None,
    steps: int | None = None,
    span: float | tuple[float, float] = 1.0,
    default_steps: int = 21,
) -> np.ndarray:
    """The coefficients of one grid axis: ``coords`` as given (1-D, finite), or ``steps`` points on
    ``[-span, span]`` (``span`` may also be a ``(lo, hi)`` pair) with an exact 0 at the centre.

    >>> from workbench.landscape.grid import lattice_axis
    >>> lattice_axis(steps=5, span=0.5).tolist()
    [-0.5, -0.25, 0.0, 0.25, 0.5]
    """
    n = count("steps", default_steps if steps is None else steps)
    lo, hi = check_span(span)
    if coords is None:
        c = np.linspace(lo, hi, n)
        if n % 2 == 1 and lo == -hi:
            c[n // 2] = 0.0  # exactly zero at the centre, not 1e-17
        return c
    return finite_array("coords", coords, ndim=None).ravel()


def check_span(span: Any) -> tuple[float, float]:
    """``(lo, hi)`` of a ``span``: a number s > 0 (``[-s, s]``) or a finite pair ``lo < hi``.

    >>> from workbench.landscape.grid import check_span
    >>> check_span(0.5), check_span((0, 1))
    ((-0.5, 0.5), (0.0, 1.0))
    """
    if isinstance(span, (tuple, list)) and len(span) == 2:
        lo, hi = real("span", span[0]), real("span", span[1])
        if not lo < hi:
            raise ValueError(f"span: a (lo, hi) pair needs lo < hi, got {tuple(span)}")
        return lo, hi
    s = real("span", span, lo=0.0, lo_open=True)
    return -s, s


def mark_nonfinite(values: np.ndarray, what: str) -> np.ndarray:
    """Set non-finite losses to NaN in place (they are data, not errors) with one RuntimeWarning
    saying how many; returns ``values``.

    >>> import numpy as np, warnings
    >>> from workbench.landscape.grid import mark_nonfinite
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     mark_nonfinite(np.array([1.0, np.inf]), "slice_1d").tolist()
    [1.0, nan]
    """
    bad = ~np.isfinite(values)
    values[bad] = np.nan
    if bad.any():
        warnings.warn(
            f"{what}: {int(bad.sum())} of {values.size} grid cells have a non-finite loss; they are NaN in the result",
            RuntimeWarning,
            stacklevel=3,
        )
    return values


class Grid:
    """Mean loss (and accuracy) at ``theta0 + sum_k c_k d_k`` for the rows ``c`` of a coefficient array.

    ``obj``: the :class:`~workbench.objective.Objective`; ``dirs``: flat directions of its space;
    ``engine``: ``"auto"``, ``"loop"`` or ``"vmap"``; ``chunk``: grid points per vmap call.

    >>> import numpy as np, torch
    >>> from workbench.objective import Objective
    >>> from workbench.landscape.grid import Grid
    >>> m = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(1.0)
    >>> obj = Objective(m, torch.nn.MSELoss(), (torch.ones(4, 2), torch.zeros(4, 1)))
    >>> loss, acc = Grid(obj, [torch.ones(2)]).run(np.array([[-1.0], [0.0]]))
    >>> loss.tolist()                                   # (w . x)^2 at w = 0 and w = 1
    [0.0, 4.0]
    """

    def __init__(
        self, obj: Objective, dirs: list[torch.Tensor], engine: str = "auto", chunk: int = 32, accuracy: bool = False
    ):
        choice("engine", engine, ENGINES)
        chunk = count("chunk", chunk, hi=None)
        if engine == "auto":
            engine = "vmap" if obj.device.type == "cuda" else "loop"
        if engine == "vmap" and obj.mode == "train":
            engine = "loop"  # train-mode BatchNorm/dropout are not batched over grid points
        self.obj, self.dirs, self.accuracy = obj, dirs, accuracy
        self.engine, self.chunk = engine, int(chunk)
        if engine == "vmap":
            obj.check_inputs()  # torch's errors on bad inputs are clear ones before vmap hides them

    def theta(self, c: ArrayLike) -> torch.Tensor:
        """``theta0 + sum_k c_k d_k``; zero coefficients are skipped, so ``c = 0`` is theta0 itself."""
        th = self.obj.theta0
        for ck, d in zip(c, self.dirs):
            if ck != 0.0:
                th = th + float(ck) * d
        return th

    def run(self, coeffs: np.ndarray, bar: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(loss, accuracy) per row of ``coeffs`` (accuracy NaN unless asked for and a classifier);
        ``bar``: an object with ``update(k)`` (a ``ctx.bar``: progress and cancellation point)."""
        n = len(coeffs)
        loss = np.full(n, np.nan)
        acc = np.full(n, np.nan)
        if self.engine == "loop":
            for i, c in enumerate(coeffs):
                l, a = self.obj.evaluate(self.theta(c), with_accuracy=self.accuracy, finite=False)
                loss[i] = l
                acc[i] = np.nan if a is None else a
                if bar is not None:
                    bar.update(1)
        else:
            for s in range(0, n, self.chunk):
                part = coeffs[s : s + self.chunk]
                loss[s : s + len(part)], acc[s : s + len(part)] = self._vmap_eval(part)
                if bar is not None:
                    bar.update(len(part))
        return loss, acc

    def _cell(self, x, y, base):
        """``theta -> (mean loss, outputs)`` of the batch (x, y) at a flat theta (vmapped over grid points)."""
        obj = self.obj
        return lambda th: obj.batch_loss(obj.space.unflatten(th), x, y, base)

    @torch.no_grad()
    def _vmap_eval(self, part):
        obj = self.obj
        thetas = torch.stack([self.theta(c) for c in part])
        total = torch.zeros(len(part), dtype=torch.float64, device=thetas.device)
        correct = torch.zeros_like(total)
        is_clf = self.accuracy
        for x, y, nb in obj.batches():
            ls, outs = vmap(self._cell(x, y, obj.base()))(thetas)
            total += ls.double() * nb
            if is_clf:
                c = [accuracy_count(o, y) for o in outs]
                if c[0] is None:
                    is_clf = False
                else:
                    correct += torch.tensor(c, dtype=torch.float64, device=total.device)
        loss = (total / obj.data.n).cpu().numpy()
        acc = (correct / obj.data.n).cpu().numpy() if is_clf else np.full(len(part), np.nan)
        return loss, acc
