"""Hessian-vector products of the data loss, sample-weighted over batches.

``H v = sum_b (n_b / N) H_b v`` with ``H_b`` the Hessian of batch b's mean loss, which is
exactly the Hessian of the full-data mean loss. Engines:

* ``"func"``: ``torch.func.jvp(torch.func.grad(L), (theta,), (v,))`` (forward-over-reverse); it
  vectorises over many vectors with ``torch.func.vmap`` (:meth:`HVP.matmat`);
* ``"double_backward"``: ``autograd.grad(g, theta, v)`` on ``g`` built with ``create_graph=True``,
  for modules that break torch.func (data-dependent control flow, in-place ops on inputs, ...);
* ``"auto"``: ``func``, falling back to ``double_backward`` with one warning if it fails.

No ``.backward()`` is ever called: nothing accumulates in ``.grad`` and no reference cycle keeps
graphs alive (PyHessian issue #28).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.func import grad, jvp, vmap

from .objective import Objective


class HVP:
    """The Hessian of ``obj``'s loss at ``theta`` (default theta0) as a linear operator."""

    def __init__(self, obj: Objective, theta: torch.Tensor | None = None, engine: str = "auto", chunk: int = 16):
        if engine not in ("auto", "func", "double_backward"):
            raise ValueError(f"engine: expected 'auto', 'func' or 'double_backward', got {engine!r}")
        self.obj = obj
        self.theta = (obj.theta0 if theta is None else theta).detach()
        self.engine = engine
        self.chunk = int(chunk)
        self.n_hvp = 0  # Hessian-vector products evaluated (each is one pass over the data)
        self.shape = (obj.space.numel, obj.space.numel)

    # -- engines ------------------------------------------------------------------------------
    def _batch_fn(self, x, y, base):
        obj = self.obj

        def f(th):
            loss, _ = obj._batch_loss(obj.space.unflatten(th), x, y, base)
            return loss

        return f

    def _func_mv(self, V: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(V)
        for x, y, n in self.obj.data.batches():
            f = self._batch_fn(x, y, self.obj._base())
            g = grad(f)

            def hv(v):
                return jvp(g, (self.theta,), (v,))[1]

            if V.shape[0] == 1:
                out += hv(V[0])[None] * (n / self.obj.data.n)
            else:
                for s in range(0, V.shape[0], self.chunk):
                    out[s:s + self.chunk] += vmap(hv)(V[s:s + self.chunk]) * (n / self.obj.data.n)
        return out

    def _db_mv(self, V: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(V)
        for x, y, n in self.obj.data.batches():
            th = self.theta.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = self._batch_fn(x, y, self.obj._base())(th)
                (g,) = torch.autograd.grad(loss, th, create_graph=True)
                for i in range(V.shape[0]):
                    (h,) = torch.autograd.grad(g, th, V[i], retain_graph=i < V.shape[0] - 1)
                    out[i] += h.detach() * (n / self.obj.data.n)
        return out

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H @ V for V of shape (k, P) (rows are vectors); counts k HVPs."""
        V = V.to(self.obj.device, self.obj.dtype)
        if self.engine == "double_backward":
            out = self._db_mv(V)
        elif self.engine == "func":
            out = self._func_mv(V)
        else:
            try:
                out = self._func_mv(V)
            except (RuntimeError, NotImplementedError, TypeError) as e:
                out = self._db_mv(V)  # a genuine error in the model raises here too, unchanged
                warnings.warn(f"torch.func HVP failed ({type(e).__name__}: {str(e)[:120]}); using double "
                              "backward for this probe", RuntimeWarning, stacklevel=3)
                self.engine = "double_backward"
        self.n_hvp += V.shape[0]
        return out

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v[None])[0]

    # numpy float64 interface for the linear algebra
    def mv_np(self, v: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64).ravel())
        return self.mv(t).detach().double().cpu().numpy()

    def matmat_np(self, V: np.ndarray) -> np.ndarray:
        """H @ V for V of shape (P, k) (columns are vectors)."""
        t = torch.from_numpy(np.ascontiguousarray(V.T, dtype=np.float64))
        return self.matmat(t).detach().double().cpu().numpy().T

    def as_linear_operator(self):
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator(self.shape, matvec=self.mv_np, matmat=self.matmat_np, dtype=np.float64)

    def dense(self, chunk: int | None = None, progress: bool = False) -> np.ndarray:
        """The full P x P Hessian (float64 numpy), column blocks of H @ I; symmetrised."""
        from tqdm.auto import tqdm

        P = self.shape[0]
        c = chunk or max(1, min(256, P))
        H = np.empty((P, P))
        eye = torch.eye(P, dtype=self.obj.dtype, device=self.obj.device)
        for s in tqdm(range(0, P, c), desc="exact Hessian", disable=not progress, leave=False):
            H[:, s:s + c] = self.matmat(eye[s:s + c]).double().cpu().numpy().T
        return 0.5 * (H + H.T)
