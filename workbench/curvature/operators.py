"""Curvature matrices as matrix-free linear operators (the pattern of curvlinops, torch-native).

:class:`CurvatureOperator` is a symmetric ``P x P`` matrix known only through its products: a
subclass supplies :meth:`~CurvatureOperator.product` and gets :meth:`~CurvatureOperator.matvec`,
:meth:`~CurvatureOperator.matmat` (on the operator's device and dtype), a product counter,
:meth:`~CurvatureOperator.to_scipy` (a float64 ``scipy.sparse.linalg.LinearOperator`` for the
numpy linear algebra of :mod:`workbench.curvature`) and :meth:`~CurvatureOperator.dense`.

:class:`HessianOperator` is the Hessian of an :class:`~workbench.objective.Objective`'s loss,
``H v = sum_b (n_b / N) H_b v`` with ``H_b`` the Hessian of batch b's mean loss, which is exactly
the Hessian of the full-data mean loss. Engines:

* ``"func"``: ``torch.func.jvp(torch.func.grad(L), (theta,), (v,))`` (forward-over-reverse),
  vectorised over many vectors with ``torch.func.vmap``;
* ``"double_backward"``: ``autograd.grad(g, theta, v)`` on ``g`` built with ``create_graph=True``,
  for modules that break torch.func (data-dependent control flow, in-place ops on buffers, ...);
* ``"auto"``: ``func``, falling back to ``double_backward`` with one warning if it fails (never for an
  interrupt: a Ctrl-C that torch reports as a ``RuntimeError`` is raised as the interrupt it is).

No ``.backward()`` is ever called: nothing accumulates in ``.grad`` and no reference cycle keeps
graphs alive (PyHessian issue #28).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch.func import grad, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..objective import Objective
from ..validate import interrupt_in

ENGINES = ("auto", "func", "double_backward")


class CurvatureOperator:
    """A symmetric ``P x P`` curvature matrix given by its products with vectors.

    Subclasses implement :meth:`product` (``V`` of shape ``(k, P)``, one vector per row, already
    on the operator's device and dtype; returns the ``k`` products as rows). ``n_products`` counts
    the matrix-vector products evaluated; ``callback(k)``, when given, is called after every ``k``
    of them (a progress bar's ``update``: a cancellation point).

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
    ):
        self.shape = (int(size), int(size))
        self.device = torch.device(device)
        self.dtype = dtype
        self.callback = callback
        self.n_products = 0

    def product(self, V: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}: a CurvatureOperator must implement product(V)")

    def _rows(self, V: torch.Tensor) -> torch.Tensor:
        out = self.product(V.to(self.device, self.dtype))
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


class HessianOperator(CurvatureOperator):
    """The Hessian of ``objective``'s mean loss at ``theta`` (default its theta0) as a linear operator.

    ``engine``: ``"auto"``, ``"func"`` or ``"double_backward"`` (see the module docstring);
    ``chunk``: the number of vectors vectorised together by ``torch.func.vmap``.

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

    def __init__(
        self,
        objective: Objective,
        theta: torch.Tensor | None = None,
        engine: str = "auto",
        chunk: int = 16,
        callback: Callable[[int], object] | None = None,
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine: expected 'auto', 'func' or 'double_backward', got {engine!r}")
        if not isinstance(objective, Objective):
            raise TypeError(f"objective: expected a workbench.objective.Objective, got {type(objective).__name__}")
        super().__init__(objective.space.numel, objective.device, objective.dtype, callback)
        self.objective = objective
        self.theta = (objective.theta0 if theta is None else theta).detach()
        self.engine = engine
        self.chunk = int(chunk)

    def _func(self, V: torch.Tensor) -> torch.Tensor:
        obj = self.objective
        out = torch.zeros_like(V)
        for x, y, n in obj.batches():
            g = grad(obj.batch_fn(x, y))

            def hv(v, g=g):
                return jvp(g, (self.theta,), (v,))[1]

            if V.shape[0] == 1:
                out += hv(V[0])[None] * (n / obj.data.n)
            else:
                for s in range(0, V.shape[0], self.chunk):
                    out[s : s + self.chunk] += vmap(hv)(V[s : s + self.chunk]) * (n / obj.data.n)
        return out

    def _double_backward(self, V: torch.Tensor) -> torch.Tensor:
        obj = self.objective
        out = torch.zeros_like(V)
        for x, y, n in obj.batches():
            th = self.theta.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = obj.batch_fn(x, y)(th)
                (g,) = torch.autograd.grad(loss, th, create_graph=True)
                for i in range(V.shape[0]):
                    (h,) = torch.autograd.grad(g, th, V[i], retain_graph=i < V.shape[0] - 1)
                    out[i] += h.detach() * (n / obj.data.n)
        return out

    def product(self, V: torch.Tensor) -> torch.Tensor:
        """``H v`` for every row ``v`` of ``V``, sample-weighted over the objective's batches. Attention runs
        through ``scaled_dot_product_attention``'s math backend here (the fused kernels have no second
        derivative); the caller's backend choice is restored afterwards."""
        with sdpa_kernel(SDPBackend.MATH):
            return self._product(V)

    def _product(self, V: torch.Tensor) -> torch.Tensor:
        if self.engine == "double_backward":
            return self._double_backward(V)
        if self.engine == "func":
            return self._func(V)
        try:
            return self._func(V)
        except (RuntimeError, NotImplementedError, TypeError) as e:
            hidden = interrupt_in(e)  # a Ctrl-C that torch's C++ autograd turned into a RuntimeError
            if hidden is not None:
                raise hidden from e
            out = self._double_backward(V)  # a genuine error in the model raises here too, unchanged
            warnings.warn(
                f"torch.func HVP failed ({type(e).__name__}: {str(e)[:120]}); using double backward for this probe",
                RuntimeWarning,
                stacklevel=4,
            )
            self.engine = "double_backward"
            return out
