"""Fisher information matrices: the true Fisher, its Monte-Carlo estimate, and the empirical Fisher.

With per-sample losses ``l_i = -log p(y_i | f_i)`` (the mean loss ``L = (1/N) sum_i l_i``) and
``r_i(y) = d l(f_i, y) / d f_i``, each is ``sum_i J_i^T M_i J_i`` (:class:`~.gauss_newton.OutputCurvature`):

* :class:`FisherOperator`: ``F = (1/N) sum_i J_i^T E_{y ~ p(.|f_i)}[r_i(y) r_i(y)^T] J_i``, the expectation in
  closed form: softmax cross-entropy ``diag(p_i) - p_i p_i^T``; mean squared error, the Gaussian of variance
  ``D/2`` for which ``l_i = (1/D) ||f_i - y||^2`` is the negative log-likelihood, ``(2/D) I``. For both the
  Fisher equals the GGN (Martens 2020, section 9.2), here computed independently of it.
* :class:`MCFisherOperator`: the expectation replaced by ``mc_samples`` labels sampled from the model's
  predictive distribution once (the operator is a fixed matrix), r computed by autograd of ``loss_fn``.
* :class:`EmpiricalFisherOperator`: ``(1/N) sum_i g_i g_i^T`` with ``g_i = J_i^T r_i(y_i)`` at the true labels,
  the per-sample gradients: not a curvature of the loss in general (Kunstner, Hennig & Balles 2019).

Per-sample rows of ``d L_b / d f`` are ``r_i / n_b`` only when the batch loss is the mean of per-sample losses of
each sample's own outputs (no cross-sample terms; class weights or ``ignore_index`` break it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .gauss_newton import OutputCurvature, rowdot


def likelihood(loss_fn) -> str | None:
    """``"categorical"`` (softmax cross-entropy), ``"gaussian"`` (mean squared error) or None: the predictive
    distribution whose negative log-likelihood ``loss_fn`` is, when it can be told.

    >>> import torch
    >>> likelihood(torch.nn.CrossEntropyLoss()), likelihood(torch.nn.MSELoss()), likelihood(torch.nn.L1Loss())
    ('categorical', 'gaussian', None)
    """
    if loss_fn is F.cross_entropy:
        return "categorical"
    if loss_fn is F.mse_loss:
        return "gaussian"
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        plain = loss_fn.reduction == "mean" and loss_fn.weight is None and loss_fn.label_smoothing == 0
        plain = plain and loss_fn.ignore_index < 0  # a sampled label could be the ignored class
        return "categorical" if plain else None
    if isinstance(loss_fn, nn.MSELoss):
        return "gaussian" if loss_fn.reduction == "mean" else None
    return None


def check_likelihood(loss_fn, curvature: str) -> str:
    kind = likelihood(loss_fn)
    if kind is None:
        raise ValueError(
            f"curvature: {curvature!r} needs the loss to be a negative log-likelihood workbench can sample from: "
            "torch.nn.CrossEntropyLoss() (no class weights, label smoothing or class-valued ignore_index) or "
            "torch.nn.MSELoss(), with "
            f"reduction='mean'; got loss_fn={loss_fn!r}. Use curvature='ggn' (the Fisher's equal for those losses) "
            "or 'empirical_fisher' for other losses"
        )
    return kind


def single_output(outs: tuple, kind: str, curvature: str) -> torch.Tensor:
    if len(outs) != 1 or (kind == "categorical" and outs[0].dim() != 2):
        shapes = [tuple(o.shape) for o in outs]
        raise ValueError(
            f"curvature: {curvature!r} with a {kind} likelihood needs the model to return one tensor"
            f"{' of logits (batch, classes)' if kind == 'categorical' else ''}; got outputs of shapes {shapes}. "
            "Use curvature='ggn' (it takes any output)"
        )
    return outs[0]


class FisherOperator(OutputCurvature):
    """The Fisher information ``F = (1/N) sum_i J_i^T E_y[r r^T] J_i`` of the model's predictive distribution
    (see the module docstring), for ``torch.nn.CrossEntropyLoss`` or ``torch.nn.MSELoss`` objectives.

    >>> import torch
    >>> from workbench.objective import Objective
    >>> from workbench.curvature import FisherOperator
    >>> m = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.zero_()          # p = (1/2, 1/2): E[r r^T] = diag(p) - p p^T = [[1, -1], [-1, 1]] / 4
    >>> F = FisherOperator(Objective(m, torch.nn.CrossEntropyLoss(), (torch.eye(2)[:1], torch.tensor([0]))))
    >>> F.dense()[::2, ::2].tolist()      # the weights W[:, 0] of input 1 (x = e1): the block is E[r r^T]
    [[0.25, -0.25], [-0.25, 0.25]]
    """

    def __init__(self, objective, *args, **kwargs):
        super().__init__(objective, *args, **kwargs)
        self.kind = check_likelihood(objective.loss_fn, "fisher")

    def setup(self, outs, y, n, rebuild, index):
        f = single_output(outs, self.kind, "fisher")
        if self.kind == "categorical":
            return torch.softmax(f.to(self.dtype), dim=1).to(f.dtype)
        return torch.full_like(f[:1], 2.0 / f[0].numel())  # E[r r^T] = (2 / D) I per sample

    def middle(self, p, u):
        (u,) = u
        if self.kind == "categorical":
            m = p * u - p * (p * u).sum(1, keepdim=True)
        else:
            m = p * u
        return (m / self.n_total,)


class MCFisherOperator(OutputCurvature):
    """The Monte-Carlo Fisher ``(1/(N S)) sum_i sum_s g_is g_is^T``, ``g_is`` the gradient of the loss at a label
    ``y_is`` sampled from the model's predictive distribution (categorical: softmax of the logits; Gaussian:
    ``N(f_i, D/2)``); ``mc_samples`` = S labels per sample, drawn once per batch from ``generator`` (a
    ``torch.Generator``) and kept, so the operator is one fixed matrix. Unbiased for the Fisher.

    >>> import torch
    >>> from workbench.objective import Objective
    >>> from workbench.curvature import MCFisherOperator
    >>> m = torch.nn.Linear(2, 1, bias=False)     # Gaussian: E over samples -> F = 2 X^T X / N = diag(1, 4)
    >>> obj = Objective(m, torch.nn.MSELoss(), (torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)))
    >>> F = MCFisherOperator(obj, mc_samples=20000, generator=torch.Generator().manual_seed(0))
    >>> [round(v, 1) for v in F.dense().diagonal().tolist()]
    [1.0, 4.0]
    """

    def __init__(self, objective, *args, mc_samples: int = 1, generator=None, **kwargs):
        super().__init__(objective, *args, **kwargs)
        self.kind = check_likelihood(objective.loss_fn, "mc_fisher")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples: expected a positive int (labels sampled per sample), got {mc_samples!r}")
        self.mc_samples = mc_samples
        self.generator = generator
        self.labels: dict[int, list] = {}

    def sample(self, f: torch.Tensor) -> list:
        g = self.generator
        if g is not None and g.device != f.device:
            seed = int(torch.randint(0, 2**62, (1,), generator=g))
            g = torch.Generator(device=f.device).manual_seed(seed)
        if self.kind == "categorical":
            p = torch.softmax(f.detach().double(), dim=1)
            idx = torch.multinomial(p, self.mc_samples, replacement=True, generator=g)
            return [idx[:, s] for s in range(self.mc_samples)]
        sd = math.sqrt(f[0].numel() / 2)
        return [f.detach() + sd * torch.randn(f.shape, generator=g, device=f.device, dtype=f.dtype)
                for _ in range(self.mc_samples)]  # fmt: skip

    def setup(self, outs, y, n, rebuild, index):
        f = single_output(outs, self.kind, "mc_fisher")
        if index not in self.labels:
            self.labels[index] = self.sample(f)
        return [tuple(n * r for r in self.loss_gradient(outs, ys, rebuild)) for ys in self.labels[index]]

    def middle(self, rs, u):
        scale = 1.0 / (self.n_total * len(rs))
        out = [torch.zeros_like(t) for t in u]
        for r in rs:
            d = rowdot(r, u) * scale
            out = [o + d.view(-1, *[1] * (t.dim() - 1)) * t for o, t in zip(out, r)]
        return tuple(out)


class EmpiricalFisherOperator(OutputCurvature):
    """The empirical Fisher ``(1/N) sum_i g_i g_i^T`` of the per-sample gradients ``g_i = d l_i / d theta`` at
    the true labels (any ``loss_fn`` that is a mean of per-sample losses; see the module docstring).

    >>> import torch
    >>> from workbench.objective import Objective
    >>> from workbench.curvature import EmpiricalFisherOperator
    >>> m = torch.nn.Linear(1, 1, bias=False)     # l_i = (w x_i - y_i)^2 at w = 0: g_i = -2 x_i y_i
    >>> with torch.no_grad():
    ...     _ = m.weight.zero_()
    >>> obj = Objective(m, torch.nn.MSELoss(), (torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [1.0]])))
    >>> EmpiricalFisherOperator(obj).dense().tolist()   # (4 + 16) / 2
    [[10.0]]
    """

    def setup(self, outs, y, n, rebuild, index):
        return tuple(n * r for r in self.loss_gradient(outs, y, rebuild))

    def middle(self, r, u):
        d = rowdot(r, u) / self.n_total
        return tuple(d.view(-1, *[1] * (t.dim() - 1)) * t for t in r)
