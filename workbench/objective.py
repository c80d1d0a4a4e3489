"""The loss as a function of the parameters: L(theta) = sum_b n_b/N * loss_fn(f(x_b; theta), y_b).

:class:`Objective` is the engine under every loss-based probe (landscape, sharpness, evaluation).
It evaluates functionally at any ``theta`` of a :class:`~workbench.params.ParamSpace`, sample-weighted
over batches so that it equals the full-batch mean exactly, in float64 accumulation.

Modes: ``"eval"`` (default: BatchNorm uses running statistics, dropout off) or ``"train"``
(batch statistics and dropout, but running statistics are *not* updated: BatchNorm is handed
copies of its buffers). The caller runs inside :func:`workbench.state.preserve` (the ``@probe``
decorator does), since switching modes touches the modules' flags.
"""
from __future__ import annotations


import torch
from torch import nn

from .data import as_data
from .params import ParamSpace, check_model, check_targets, forward, model_device_dtype
from .state import set_mode


def _check_loss_value(v, where="loss_fn") -> None:
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{where}: loss_fn(outputs, targets) must return a tensor, got {type(v).__name__}")
    if v.numel() != 1:
        raise ValueError(
            f"{where}: loss_fn(outputs, targets) must return the scalar *mean* loss, got shape {tuple(v.shape)}; "
            "use reduction='mean'"
        )


def accuracy_count(outputs, targets) -> float | None:
    """Number of correct argmax predictions, or None if this is not a classification output."""
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)):
        return None
    if targets.is_floating_point() or outputs.dim() != 2 or targets.dim() != 1 or outputs.shape[1] < 2:
        return None
    return float((outputs.argmax(dim=1) == targets).sum())


class Objective:
    def __init__(self, model: nn.Module, loss_fn, data, params=None, mode: str = "eval"):
        check_model(model)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable loss_fn(outputs, targets), got {type(loss_fn).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        self.mode = mode
        set_mode(model, mode)
        self.device, self.dtype = model_device_dtype(model)
        self.data = as_data(data, self.device, self.dtype)
        self.space = ParamSpace(model, params)
        self.fresh = mode == "train"
        self._checked = False
        # parameters outside the probed subset enter detached (no graph through them); computed once
        moved = set(self.space.names) | {a for al in self.space.aliases.values() for a in al}
        self._fixed = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False) if n not in moved}

    @property
    def theta0(self) -> torch.Tensor:
        return self.space.theta0

    def _base(self):
        # eval mode: only the parameters being moved are swapped in (the rest are the module's own,
        # which no probe writes); train mode: fresh buffer copies so running statistics stay put
        base = dict(self._fixed)
        if self.fresh:
            base.update(self.space.fresh_buffers())
        return base

    def _batch_loss(self, theta_dict, x, y, base):
        tensors = dict(base)
        tensors.update(theta_dict)
        out = forward(self.model, tensors, x)
        if not self._checked:
            check_targets(out, y, self.loss_fn)
        loss = self.loss_fn(out, y)
        if not self._checked:
            _check_loss_value(loss)
            self._checked = True
        return loss, out

    @torch.no_grad()
    def evaluate(self, theta: torch.Tensor | None = None, with_accuracy: bool = False, data=None, buffers=None):
        """(mean loss, accuracy or None) at ``theta`` (default theta0) over ``data`` (default the
        objective's data); float64 accumulation. ``buffers`` (by name) replace the model's own for this
        evaluation (e.g. BatchNorm statistics recomputed along an interpolation path)."""
        theta = self.theta0 if theta is None else theta
        data = self.data if data is None else as_data(data, self.device, self.dtype, check_finite=False)
        td = self.space.unflatten(theta)
        total, correct, is_clf = 0.0, 0.0, with_accuracy
        for x, y, n in data.batches():
            base = self._base()
            if buffers is not None:  # train mode gets copies: BatchNorm writes into what it is given
                base.update({k: v.detach().clone() if self.fresh else v.detach() for k, v in buffers.items()})
            loss, out = self._batch_loss(td, x, y, base)
            total += float(loss) * n
            if is_clf:
                c = accuracy_count(out, y)
                if c is None:
                    is_clf = False
                else:
                    correct += c
        loss = total / data.n
        acc = correct / data.n if is_clf else None
        return loss, acc

    def loss(self, theta: torch.Tensor | None = None) -> float:
        return self.evaluate(theta)[0]

    def loss_and_grad(self, theta: torch.Tensor | None = None, data=None):
        """(L(theta), grad L(theta)) as (float, flat tensor), sample-weighted over batches."""
        theta = (self.theta0 if theta is None else theta).detach()
        data = self.data if data is None else as_data(data, self.device, self.dtype)
        total, g = 0.0, torch.zeros_like(theta)
        for x, y, n in data.batches():
            base = self._base()
            th = theta.clone().requires_grad_(True)
            with torch.enable_grad():
                loss, _ = self._batch_loss(self.space.unflatten(th), x, y, base)
                (gb,) = torch.autograd.grad(loss, th)
            total += float(loss.detach()) * n
            g += gb * (n / data.n)
        return total / data.n, g
