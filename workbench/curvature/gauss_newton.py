"""The generalised Gauss-Newton matrix and other curvatures of the form ``J^T M J``.

For a batch b with outputs ``f_b(theta)`` (any pytree of float tensors, e.g. logits or a Hugging Face
``ModelOutput``), Jacobian ``J_b = d f_b / d theta`` and an output-space matrix ``M_b``,

    ``C v = sum_b J_b^T M_b (J_b v)``.

:class:`OutputCurvature` computes ``J v`` by forward mode (``torch.func.jvp``) or by the double-vjp trick
(``J v = d/du <J^T u, v>``, reverse over reverse), and ``J^T w`` by one vjp; subclasses give ``M_b``.
:class:`GGNOperator` takes ``M_b = (n_b / N) d^2 L_b / d f^2``, the Hessian of the batch's mean loss with
respect to the outputs: ``G = sum_b (n_b / N) J_b^T H_b^out J_b`` (Schraudolph 2002; Martens 2020, "New
insights and perspectives on the natural gradient method"). G is positive semi-definite for convex losses
and equals the Hessian when the model is linear in theta (or the residuals vanish).
"""

from __future__ import annotations

import torch
from torch.func import grad, jvp, vjp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from .operators import ModelCurvature


def rowdot(a: tuple, b: tuple) -> torch.Tensor:
    """Per-sample dot products ``sum over leaves and non-batch dims of a * b`` (shape ``(n_b,)``)."""
    return sum((x * y).reshape(x.shape[0], -1).sum(1) for x, y in zip(a, b))


class OutputCurvature(ModelCurvature):
    """``C v = sum_b J_b^T M_b (J_b v)``: a subclass implements :meth:`setup` (per batch, from the detached
    outputs: whatever :meth:`middle` needs, the sample weights included) and :meth:`middle` (``M_b u`` for a
    tuple ``u`` of output-shaped tensors; pure tensor algebra, vectorised by ``vmap``)."""

    def outputs_fn(self, x, base):
        """(``theta -> tuple of the float output leaves``, ``leaves -> the model's output pytree``)."""
        obj, meta = self.objective, {}

        def outputs(theta):
            tensors = dict(base)
            tensors.update(obj.space.unflatten(theta))
            leaves, spec = tree_flatten(obj.call(x, tensors))
            idx = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.is_floating_point()]
            meta.update(leaves=leaves, spec=spec, idx=idx)
            return tuple(leaves[i] for i in idx)

        def rebuild(floats):
            leaves = list(meta["leaves"])
            for i, t in zip(meta["idx"], floats):
                leaves[i] = t
            return tree_unflatten(leaves, meta["spec"])

        return outputs, rebuild

    def loss_gradient(self, outs: tuple, y, rebuild) -> tuple:
        """``d L_b / d f`` at the detached outputs (zeros for leaves the loss does not use)."""
        req = tuple(o.detach().requires_grad_(True) for o in outs)
        with torch.enable_grad():
            loss = self.objective.loss_fn(rebuild(req), y)
            g = torch.autograd.grad(loss, req, allow_unused=True)
        return tuple(torch.zeros_like(o) if gi is None else gi for o, gi in zip(outs, g))

    def setup(self, outs: tuple, y, n: int, rebuild, index: int):
        raise NotImplementedError

    def middle(self, state, u: tuple) -> tuple:
        raise NotImplementedError

    def _func(self, V: torch.Tensor) -> torch.Tensor:
        obj = self.objective
        out = self.zeros(V)
        for b, (x, y, n) in enumerate(obj.batches()):
            f, rebuild = self.outputs_fn(x, obj.base())
            outs, pullback = vjp(f, self.theta)
            state = self.setup(tuple(o.detach() for o in outs), y, n, rebuild, b)

            def one(v, f=f, pullback=pullback, state=state):
                return pullback(self.middle(state, jvp(f, (self.theta,), (v,))[1]))[0]

            for s in range(0, V.shape[0], self.chunk):
                out[s : s + self.chunk] += vmap(one)(V[s : s + self.chunk])
        return out

    def _double_backward(self, V: torch.Tensor) -> torch.Tensor:
        obj = self.objective
        out = self.zeros(V)
        for b, (x, y, n) in enumerate(obj.batches()):
            f, rebuild = self.outputs_fn(x, obj.base())
            th = self.theta.clone().requires_grad_(True)
            with torch.enable_grad():
                outs = f(th)
                dummy = tuple(torch.zeros_like(o, requires_grad=True) for o in outs)
                (jtu,) = torch.autograd.grad(outs, th, dummy, create_graph=True)  # J^T u, linear in u
                state = self.setup(tuple(o.detach() for o in outs), y, n, rebuild, b)
                for i in range(V.shape[0]):
                    jv = torch.autograd.grad(jtu, dummy, V[i], retain_graph=True, allow_unused=True)
                    jv = tuple(torch.zeros_like(o) if t is None else t for o, t in zip(outs, jv))
                    w = self.middle(state, jv)
                    (h,) = torch.autograd.grad(outs, th, w, retain_graph=i < V.shape[0] - 1)
                    out[i] += h.detach()
        return out


class GGNOperator(OutputCurvature):
    """The generalised Gauss-Newton matrix ``G = sum_b (n_b / N) J_b^T (d^2 L_b / d f^2) J_b`` of ``objective``
    as a linear operator (see the module docstring; same arguments as
    :class:`~workbench.curvature.HessianOperator`). Works for any ``loss_fn`` twice differentiable in the
    outputs; the output-space Hessian-vector product is the vjp of ``torch.func.grad`` of the loss.

    >>> import torch
    >>> from workbench.objective import Objective
    >>> from workbench.curvature import GGNOperator
    >>> m = torch.nn.Linear(2, 1, bias=False)     # linear model, squared error: G = H = 2 X^T X / N
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    >>> G = GGNOperator(Objective(m, torch.nn.MSELoss(), (x, torch.zeros(2, 1))))
    >>> G.dense().tolist()
    [[1.0, 0.0], [0.0, 4.0]]
    """

    def setup(self, outs, y, n, rebuild, index):
        def lossf(fl):
            return self.objective.loss_fn(rebuild(fl), y)

        # reverse over reverse in output space (H_out is symmetric: the vjp of the gradient is H_out u);
        # forward mode through some losses' backward formulas fails (mse_loss: "ZeroTensors are immutable")
        return vjp(grad(lossf), outs)[1], self.weight(n)

    def middle(self, state, u):
        pullback, w = state
        return tuple(t * w for t in pullback(tuple(u))[0])
