"""Curvature matrices as matrix-free linear operators (the pattern of curvlinops, torch-native).

:class:`CurvatureOperator` is a symmetric ``P x P`` matrix known only through its products: a
subclass supplies :meth:`~CurvatureOperator.product` and gets :meth:`~CurvatureOperator.matvec`,
:meth:`~CurvatureOperator.matmat` (on the operator's device and dtype), a product counter,
:meth:`~CurvatureOperator.to_scipy` (a float64 ``scipy.sparse.linalg.LinearOperator`` for the
numpy linear algebra of :mod:`workbench.curvature`) and :meth:`~CurvatureOperator.dense`.

:class:`HessianOperator` is the Hessian of an :class:`~workbench.objective.Objective`'s loss,
``H v = sum_b (n_b / N) H_b v`` with ``H_b`` the Hessian of batch b's mean loss, which is exactly
the Hessian of the full-data mean loss. Engines:

* ``"double_backward"``: ``autograd.grad(g, theta, v)`` through the graph of ``g`` (built with
  ``create_graph=True``; one backward per product, batched over vectors with ``is_grads_batched``), which also
  runs modules that break torch.func (data-dependent control flow, in-place ops on buffers, ...). With one batch
  of data the gradient's graph is built once and kept for every product of the operator;
* ``"func"``: the vjp of ``torch.func.grad(L)`` (reverse over reverse: ``H v = (v^T H)^T``), vectorised over
  many vectors with ``torch.func.vmap``; forward over reverse (``jvp`` of ``grad``) fails inside some losses'
  backward formulas (``mse_loss``), and ``torch.func.hessian`` was measured wrong through batch-statistics
  BatchNorm and layer norm weights, while reverse over reverse agrees with finite differences;
* ``"auto"``: for the Hessian ``double_backward`` (measured cheaper per product: 2.35 gradients on MiniLM
  against 3.14), for the output-space operators of :mod:`.gauss_newton` and :mod:`.fisher` ``func`` (forward-mode
  Jacobian-vector products), each falling back to the other with one warning if it fails (never for an
  interrupt: a Ctrl-C that torch reports as a ``RuntimeError`` is raised as the interrupt it is).

No ``.backward()`` is ever called: nothing accumulates in ``.grad`` and no reference cycle keeps
graphs alive (PyHessian issue #28).
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch.func import grad, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..objective import Objective
from ..validate import interrupt_in

ENGINES = ("auto", "func", "double_backward")
ENGINE_NAMES = {"func": "torch.func", "double_backward": "double backward"}


_SWITCHES: dict = {}
_SWITCH_LOCK = threading.Lock()


@contextlib.contextmanager
def counted(name: str, factory: Callable):
    """The process-wide context ``factory()`` entered by the first user of ``name`` and left by the last one,
    counted under a lock: probes in two threads cannot restore each other's saved settings out of order."""
    with _SWITCH_LOCK:
        entry = _SWITCHES.setdefault(name, [0, None])
        if entry[0] == 0:
            entry[1] = factory()
            entry[1].__enter__()
        entry[0] += 1
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            entry[0] -= 1
            if entry[0] == 0:
                entry[1].__exit__(None, None, None)
                entry[1] = None


@contextlib.contextmanager
def mha_fastpath_off():
    """``nn.MultiheadAttention``'s fused inference path switched off, and back to the caller's setting when the
    last user leaves (the fused kernel has no forward-mode derivative, which the GGN's Jacobian-vector products
    need); counted (:func:`counted`).

    >>> before = torch.backends.mha.get_fastpath_enabled()
    >>> with mha_fastpath_off():
    ...     with mha_fastpath_off():
    ...         inside = torch.backends.mha.get_fastpath_enabled()
    ...     still = torch.backends.mha.get_fastpath_enabled()
    >>> inside, still, torch.backends.mha.get_fastpath_enabled() == before
    (False, False, True)
    """

    @contextlib.contextmanager
    def off():
        before = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            yield
        finally:
            torch.backends.mha.set_fastpath_enabled(before)

    with counted("mha_fastpath_off", off):
        yield


def math_attention():
    """``scaled_dot_product_attention`` through its math backend only (the fused kernels have no second
    derivative), the caller's backends restored when the last user leaves; counted (:func:`counted`)."""
    return counted("sdpa_math", lambda: sdpa_kernel(SDPBackend.MATH))


def process_group(group):
    """``group`` as a ``torch.distributed`` process group: None (one process), True (the default group,
    which must be initialised) or a group object."""
    if group is None or group is False:
        return None
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError(
            "group: data-parallel curvature needs torch.distributed initialised in every process "
            "(torch.distributed.init_process_group('gloo' or 'nccl')); pass group=None for one process"
        )
    return torch.distributed.group.WORLD if group is True else group


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype products are accumulated and returned in: the model's, but at least float32 (bf16/fp16
    models compute their products in their own dtype and sum them in float32)."""
    return dtype if dtype in (torch.float64, torch.float32) or not dtype.is_floating_point else torch.float32


def total_samples(objective: Objective, group) -> int:
    """The number of samples over all ranks of ``group`` (the objective's own when ``group`` is None)."""
    n = objective.data.n
    if group is None:
        return n
    t = torch.tensor([float(n)], dtype=torch.float64, device=objective.device)
    torch.distributed.all_reduce(t, group=group)
    return int(t.item())


class CurvatureOperator:
    """A symmetric ``P x P`` curvature matrix given by its products with vectors.

    Subclasses implement :meth:`product` (``V`` of shape ``(k, P)``, one vector per row, already
    on the operator's device and dtype; returns the ``k`` products as rows). ``n_products`` counts
    the matrix-vector products evaluated; ``callback(k)``, when given, is called after every ``k``
    of them (a progress bar's ``update``: a cancellation point).

    ``group``: a ``torch.distributed`` process group (or ``True`` for the default one) over which the
    products are summed (``all_reduce``): every rank holds a shard of the data and the same vectors, and
    each rank's :meth:`product` returns its shard's part of the full-data product (weighted by its
    samples over the total of all ranks), so every rank receives the full product.

    >>> import torch
    >>> from workbench.curvature import CurvatureOperator
    >>> class Diagonal(CurvatureOperator):
    ...     def __init__(self, d):
    ...         super().__init__(d.numel(), d.device, d.dtype)
    ...         self.d = d
    ...     def product(self, V):
    ...         return V * self.d
    >>> op = Diagonal(torch.tensor([1.0, 2.0, 3.0]))
    >>> op.matvec(torch.ones(3)).tolist(), op.n_products, op.dense().diagonal().tolist()
    ([1.0, 2.0, 3.0], 1, [1.0, 2.0, 3.0])
    """

    def __init__(
        self,
        size: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        callback: Callable[[int], object] | None = None,
        group=None,
    ):
        self.shape = (int(size), int(size))
        self.device = torch.device(device)
        self.dtype = dtype
        self.callback = callback
        self.group = process_group(group)
        self.n_products = 0

    def product(self, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}: a CurvatureOperator must implement product(V)")

    def _rows(self, V: torch.Tensor) -> torch.Tensor:
        out = self.product(V.to(self.device, self.dtype))
        if self.group is not None:
            torch.distributed.all_reduce(out, group=self.group)
        self.n_products += V.shape[0]
        if self.callback is not None:
            self.callback(V.shape[0])
        return out

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` for a vector ``v`` of length P (on the operator's device and dtype)."""
        return self._rows(v.reshape(1, -1))[0]

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``A V`` for ``V`` of shape ``(P, k)`` (one vector per column), shape ``(P, k)``."""
        return self._rows(V.T.contiguous()).T

    def __matmul__(self, V: torch.Tensor) -> torch.Tensor:
        return self.matvec(V) if V.dim() == 1 else self.matmat(V)

    # -- float64 numpy interface for the linear algebra ----------------------------------------
    def matvec_np(self, v: np.ndarray) -> np.ndarray:
        """``A v`` in float64 numpy (the product itself runs in the operator's dtype)."""
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).ravel())
        return self.matvec(t).detach().double().cpu().numpy()

    def matmat_np(self, V: np.ndarray) -> np.ndarray:
        """``A V`` for ``V`` of shape ``(P, k)`` in float64 numpy."""
        t = torch.from_numpy(np.ascontiguousarray(V.T, dtype=np.float64))
        return self._rows(t).detach().double().cpu().numpy().T

    def to_scipy(self) -> LinearOperator:
        """The operator as a float64 ``scipy.sparse.linalg.LinearOperator`` (symmetric: rmatvec = matvec)."""
        return LinearOperator(
            self.shape, matvec=self.matvec_np, rmatvec=self.matvec_np, matmat=self.matmat_np, dtype=np.float64
        )

    def dense(self, chunk: int | None = None) -> np.ndarray:
        """The full ``P x P`` matrix (float64 numpy) from column blocks ``A I[:, s:s+chunk]``, symmetrised."""
        P = self.shape[0]
        c = int(chunk or max(1, min(256, P)))
        H = np.empty((P, P))
        eye = torch.eye(P, dtype=self.dtype, device=self.device)
        for s in range(0, P, c):
            H[:, s : s + c] = self._rows(eye[s : s + c]).double().cpu().numpy().T
        return 0.5 * (H + H.T)


class ModelCurvature(CurvatureOperator):
    """Common part of the curvature operators of an :class:`~workbench.objective.Objective`: the centre
    ``theta`` (default theta0), the ``engine`` (``"auto"``, ``"func"``, ``"double_backward"``), the number of
    vectors ``chunk`` vectorised together by ``torch.func.vmap``, the sample weights ``n_b / N`` (N summed over
    the ranks of ``group``) and attention through the math backend of ``scaled_dot_product_attention``
    (the fused kernels have no second derivative; the caller's backend choice is restored afterwards), and
    ``nn.MultiheadAttention`` off its fused inference path (:func:`mha_fastpath_off`).
    Products are computed in the model's dtype and accumulated in float32 or wider
    (:func:`accumulation_dtype`)."""

    #: the engines ``"auto"`` tries, in order (the second after a failure of the first, with one warning)
    auto_order = ("func", "double_backward")

    def __init__(self, objective, theta=None, engine="auto", chunk=16, callback=None, group=None):
        if engine not in ENGINES:
            raise ValueError(f"engine: expected 'auto', 'func' or 'double_backward', got {engine!r}")
        if not isinstance(objective, Objective):
            raise TypeError(f"objective: expected a workbench.objective.Objective, got {type(objective).__name__}")
        super().__init__(objective.space.numel, objective.device, accumulation_dtype(objective.dtype), callback, group)
        self.objective = objective
        self.theta = objective.theta0.detach() if theta is None else self.check_theta(theta, objective)
        self.engine = engine
        self.chunk = int(chunk)
        self.n_total = total_samples(objective, self.group)
        # every product replays the same random stream: train-mode dropout draws the same masks in every
        # product, so the operator is one fixed matrix (Lanczos needs that) and not a new one per product
        self._cuda = [self.device] if self.device.type == "cuda" else []
        self._draws = (torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self._cuda])

    def _replayed(self, engine: str, V: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=self._cuda):
            torch.set_rng_state(self._draws[0])
            for d, state in zip(self._cuda, self._draws[1]):
                torch.cuda.set_rng_state(state, d)
            return getattr(self, f"_{engine}")(V)

    @staticmethod
    def check_theta(theta, objective) -> torch.Tensor:
        """``theta`` as a flat vector of the objective's parameter space, on its device and in its dtype."""
        P = objective.space.numel
        if not isinstance(theta, torch.Tensor) or theta.shape != (P,) or not theta.is_floating_point():
            got = tuple(theta.shape) if isinstance(theta, torch.Tensor) else type(theta).__name__
            raise ValueError(
                f"theta: expected a flat float tensor of the {P} parameters (the objective's theta0 shape), got {got}"
            )
        return theta.detach().to(objective.device, objective.dtype)

    def weight(self, n: int) -> float:
        """The weight ``n_b / N`` of a batch of ``n`` samples in the full-data mean."""
        return n / self.n_total

    def product(self, V: torch.Tensor) -> torch.Tensor:
        """The operator's product with every row of ``V``, sample-weighted over the objective's batches."""
        V = V.to(self.objective.dtype)
        with math_attention(), mha_fastpath_off():
            if self.engine != "auto":
                return self._replayed(self.engine, V)
            first, second = self.auto_order
            try:
                return self._replayed(first, V)
            except (RuntimeError, NotImplementedError, TypeError) as e:
                hidden = interrupt_in(e)  # a Ctrl-C that torch's C++ autograd turned into a RuntimeError
                if hidden is not None:
                    raise hidden from e
                out = self._replayed(second, V)  # a genuine error in the model raises here too, unchanged
                warnings.warn(
                    f"{ENGINE_NAMES[first]} products failed ({type(e).__name__}: {str(e)[:120]}); using "
                    f"{ENGINE_NAMES[second]} for this probe",
                    RuntimeWarning,
                    stacklevel=5,
                )
                self.engine = second
                return out

    def zeros(self, V: torch.Tensor) -> torch.Tensor:
        return torch.zeros(V.shape, dtype=self.dtype, device=V.device)

    def _func(self, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _double_backward(self, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class HessianOperator(ModelCurvature):
    """The Hessian of ``objective``'s mean loss at ``theta`` (default its theta0) as a linear operator.

    ``engine``: ``"auto"``, ``"func"`` or ``"double_backward"`` (see the module docstring);
    ``chunk``: the number of vectors vectorised together by ``torch.func.vmap``; ``group``: a
    ``torch.distributed`` process group for data-parallel products (see :class:`CurvatureOperator`).

    >>> import torch
    >>> from workbench.objective import Objective
    >>> from workbench.curvature import HessianOperator
    >>> m = torch.nn.Linear(2, 1, bias=False)
    >>> sq = lambda out, y: (out - y).pow(2).mean()
    >>> obj = Objective(m, sq, (torch.eye(2), torch.zeros(2, 1)))
    >>> H = HessianOperator(obj)          # L = mean((w . x)^2) over x = e1, e2: H = I
    >>> H.dense().tolist(), H.n_products
    ([[1.0, 0.0], [0.0, 1.0]], 2)
    """

    # plain double backward is the cheaper product here (MiniLM: 2.35 vs 3.14 gradients), works where torch.func
    # cannot (in-place buffer writes), and with one batch keeps its gradient graph between products
    auto_order = ("double_backward", "func")
    _graph = None
    _batched = True

    def _func(self, V: torch.Tensor) -> torch.Tensor:
        obj = self.objective
        out = self.zeros(V)
        for x, y, n in obj.batches():
            # reverse over reverse: the vjp of the gradient is H v (H symmetric). Forward over reverse fails
            # in some losses' backward formulas (mse_loss) and was measured wrong through train-mode BatchNorm
            pullback = vjp(grad(obj.batch_fn(x, y)), self.theta)[1]
            if V.shape[0] == 1:
                out += pullback(V[0])[0][None] * self.weight(n)
            else:
                for s in range(0, V.shape[0], self.chunk):
                    out[s : s + self.chunk] += vmap(pullback)(V[s : s + self.chunk])[0] * self.weight(n)
        return out

    def _double_backward(self, V: torch.Tensor) -> torch.Tensor:
        obj = self.objective
        out = self.zeros(V)
        single = obj.data.n_batches == 1
        for x, y, n in obj.batches():
            if single and self._graph is not None:
                th, g = self._graph
            else:
                th = self.theta.clone().requires_grad_(True)
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(obj.batch_fn(x, y)(th), th, create_graph=True)
            if single:  # one batch: its gradient graph serves every later product (one backward each)
                self._graph = (th, g)
            for s in range(0, V.shape[0], self.chunk):
                rows = V[s : s + self.chunk]
                keep = single or s + self.chunk < V.shape[0]
                out[s : s + self.chunk] += self._pullback(g, th, rows, keep) * self.weight(n)
        return out

    def _pullback(self, g, th, rows, keep):
        """``H v`` for the rows: ``d(g . v)/d theta`` by one backward through the gradient's graph, batched over
        the rows (``is_grads_batched``) where autograd can, else one row at a time."""
        if rows.shape[0] > 1 and self._batched:
            try:
                return torch.autograd.grad(g, th, rows, retain_graph=True, is_grads_batched=True)[0].detach()
            except (RuntimeError, NotImplementedError) as e:
                if interrupt_in(e) is not None:
                    raise interrupt_in(e) from e
                self._batched = False
        out = [torch.autograd.grad(g, th, r, retain_graph=keep or i < len(rows) - 1)[0] for i, r in enumerate(rows)]
        return torch.stack(out).detach()
