"""The loss as a function of the parameters: L(theta) = sum_b n_b/N * loss_fn(f(x_b; theta), y_b).

:class:`Objective` is the engine under every loss-based probe (landscape, sharpness, evaluation).
It evaluates functionally at any ``theta`` of a :class:`~workbench.params.ParamSpace`, sample-weighted
over batches so that it equals the full-batch mean exactly, in float64 accumulation.

Modes: ``"eval"`` (default: BatchNorm uses running statistics, dropout off) or ``"train"``
(batch statistics and dropout, but running statistics are *not* updated: BatchNorm is handed
copies of its buffers). The mode is applied around each forward pass and the modules' own flags
are put back, so an Objective can be used outside a probe.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .data import as_data
from .params import ParamSpace, check_model, check_targets, class_targets, forward, model_device_dtype
from .state import modes
from .validate import EXPLAINED, call_error, describe


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
    """The mean loss of ``model`` on ``data`` as a function of (a subset of) its parameters:
    ``L(theta) = sum_b n_b / N * loss_fn(f(x_b; theta), y_b)``.

    Parameters
    ----------
    model : nn.Module
    loss_fn : callable ``loss_fn(outputs, targets)`` returning the scalar *mean* loss of a batch
    data : an ``(inputs, targets)`` pair, a DataLoader or a list of batches (:mod:`workbench.data`)
    params : the parameter subset (:class:`~workbench.params.ParamSpace`); default all trainable ones
    mode : ``"eval"`` or ``"train"``; applied around every forward pass and put back afterwards, so
        constructing or using an Objective never changes the model's flags. In train mode BatchNorm is
        handed copies of its buffers: running statistics are never updated.
    device : the device the model lives on (default: the model's)
    on_batch : called before every batch (the ``@probe`` decorator passes its cancellation check)

    The model's own tensors are never written: every evaluation is ``torch.func.functional_call``.

    >>> import torch
    >>> from workbench.objective import Objective
    >>> m = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(1.0)
    >>> obj = Objective(m, torch.nn.MSELoss(), (torch.ones(4, 2), torch.zeros(4, 1)))
    >>> obj.loss(), obj.loss(torch.zeros(2))          # (1 + 1)^2 at theta0, 0 at theta = 0
    (4.0, 0.0)
    """

    def __init__(self, model: nn.Module, loss_fn, data, params=None, mode: str = "eval", device=None, on_batch=None):
        check_model(model)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn: expected a callable loss_fn(outputs, targets), got {type(loss_fn).__name__}")
        if mode not in ("eval", "train"):
            raise ValueError(
                f"mode: expected 'eval' (running statistics, no dropout) or 'train' (batch statistics), got {mode!r}"
            )
        self.model = model
        self.loss_fn = loss_fn
        self.mode = mode
        self.device, self.dtype = model_device_dtype(model)
        self.data = as_data(data, self.device, self.dtype)
        self.space = ParamSpace(model, params)
        self.fresh = mode == "train"
        self.on_batch = on_batch
        self._checked = False
        self._explain = False  # plain (untransformed) calls explain torch's errors on the first batch
        self._checked_targets = None
        self._plain_ok = False
        self._modules = list(model.modules())
        # parameters outside the probed subset enter detached (no graph through them); computed once
        moved = set(self.space.names) | {a for al in self.space.aliases.values() for a in al}
        self._fixed = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False) if n not in moved}

    @property
    def theta0(self) -> torch.Tensor:
        """The flat parameter vector the objective is centred on (the model's own values)."""
        return self.space.theta0

    def base(self) -> dict[str, torch.Tensor]:
        """The tensors every forward pass starts from: parameters outside the subset (detached) and, in
        train mode, fresh copies of the buffers (so that running statistics stay put)."""
        base = dict(self._fixed)
        if self.fresh:
            base.update(self.space.fresh_buffers())
        return base

    def call(self, inputs, tensors: dict | None = None):
        """``model(inputs)`` in the objective's mode with ``tensors`` (by name) swapped in."""
        with modes(self.model, self.mode, self._modules):
            return forward(self.model, self.base() if tensors is None else tensors, inputs)

    @contextlib.contextmanager
    def _explained(self, arg: str, what, hint: str):
        """Re-raise an error torch raised on arguments it cannot take as a ValueError naming ``arg``
        (:func:`workbench.validate.call_error`); anything else (the user's own error, an interrupt) unchanged."""
        try:
            yield
        except EXPLAINED as e:
            err = self._explain and call_error(e, arg, what(), hint)
            if not err:
                raise
            raise err from e

    def batch_loss(self, theta_dict: dict, x, y, base: dict | None = None):
        """(mean loss of one batch, outputs) at the parameters ``theta_dict`` (by name) over ``base``."""
        tensors = dict(self.base() if base is None else base)
        tensors.update(theta_dict)
        with self._explained("data", lambda: f"the model's forward failed on inputs {describe(x)}",
                             "Pass inputs the model takes."):  # fmt: skip
            with modes(self.model, self.mode, self._modules):
                out = forward(self.model, tensors, x)
        if y is not self._checked_targets:  # every batch (a later one may hold the bad label), each tensor once
            check_targets(out, y, self.loss_fn)
            self._checked_targets = y
        with self._explained("loss_fn", lambda: f"failed on outputs {describe(out)} and targets {describe(y)}",
                             "Check the targets."):  # fmt: skip
            loss = self.loss_fn(out, y)
        if not self._checked:
            _check_loss_value(loss)
            self._checked = True
        return loss, out

    def _first(self, x, y, n, call):
        """``call()`` (a plain evaluation of one batch); on the first batch ever, torch's errors about what the
        model or the loss was given become clear errors naming the data or the loss."""
        if self._plain_ok:
            return call()
        self._explain = True
        try:
            out = call()
        finally:
            self._explain = False
        self._plain_ok = True
        return out

    def nonfinite(self, value: float, theta: torch.Tensor | None, what: str | None = None) -> ValueError:
        """The error for a non-finite mean loss ``value`` at ``theta``; ``what`` names the argument that moved
        theta away from theta0 (e.g. ``"rho"``)."""
        dist = 0.0 if theta is None else float((theta.double() - self.theta0.double()).norm())
        if dist == 0.0:
            return ValueError(
                f"data: the mean loss is {value} at the model's parameters; the inputs, targets, weights or loss "
                "produce non-finite values there (check them for NaN, inf or overflow)"
            )
        return ValueError(
            f"{what or 'data'}: the mean loss is {value} at a point {dist:.3g} away from the model's parameters "
            f"(the loss overflows or is undefined there){'; use a smaller ' + what if what else ''}"
        )

    def batch_fn(self, x, y, base: dict | None = None):
        """``theta -> mean loss of the batch (x, y)`` for a flat theta (for torch.func transforms)."""
        base = self.base() if base is None else base

        def f(theta):
            return self.batch_loss(self.space.unflatten(theta), x, y, base)[0]

        return f

    def batches(self, data=None):
        """The batches ``(x, y, n_b)`` of ``data`` (default the objective's), with the ``on_batch`` check;
        class labels as the int64 a class-index loss takes (:func:`~workbench.params.class_targets`)."""
        data = self.data if data is None else as_data(data, self.device, self.dtype)
        for x, y, n in data.batches():
            if self.on_batch is not None:
                self.on_batch()
            yield x, class_targets(y, self.loss_fn), n

    @torch.no_grad()
    def evaluate(
        self,
        theta: torch.Tensor | None = None,
        with_accuracy: bool = False,
        data=None,
        buffers=None,
        finite: bool = True,
        what: str | None = None,
    ):
        """(mean loss, accuracy or None) at ``theta`` (default theta0) over ``data`` (default the
        objective's data); float64 accumulation. ``buffers`` (by name) replace the model's own for this
        evaluation (e.g. BatchNorm statistics recomputed along an interpolation path). A non-finite mean loss
        is a ValueError (:meth:`nonfinite`, naming ``what``) unless ``finite=False`` (landscapes: NaN cells)."""
        at = theta
        theta = self.theta0 if theta is None else theta
        data = self.data if data is None else as_data(data, self.device, self.dtype, check_finite=False)
        td = self.space.unflatten(theta)
        total, correct, is_clf = 0.0, 0.0, with_accuracy
        for x, y, n in self.batches(data):
            base = self.base()
            if buffers is not None:  # train mode gets copies: BatchNorm writes into what it is given
                base.update({k: v.detach().clone() if self.fresh else v.detach() for k, v in buffers.items()})
            loss, out = self._first(x, y, n, lambda: self.batch_loss(td, x, y, base))  # noqa: B023
            total += float(loss) * n
            if is_clf:
                c = accuracy_count(out, y)
                if c is None:
                    is_clf = False
                else:
                    correct += c
        loss = total / data.n
        if finite and not math.isfinite(loss):
            raise self.nonfinite(loss, at, what)
        acc = correct / data.n if is_clf else None
        return loss, acc

    def loss(self, theta: torch.Tensor | None = None, what: str | None = None) -> float:
        """The mean loss at ``theta`` (default theta0); non-finite: a ValueError naming ``what``."""
        return self.evaluate(theta, what=what)[0]

    def loss_and_grad(self, theta: torch.Tensor | None = None, data=None, what: str | None = None):
        """(L(theta), grad L(theta)) as (float, flat tensor), sample-weighted over batches; a non-finite
        loss or gradient is a ValueError (naming ``what``, see :meth:`nonfinite`)."""
        at = theta
        theta = (self.theta0 if theta is None else theta).detach()
        data = self.data if data is None else as_data(data, self.device, self.dtype)
        total, g = 0.0, torch.zeros_like(theta)
        for x, y, n in self.batches(data):
            th = theta.clone().requires_grad_(True)
            with torch.enable_grad():
                loss = self._first(x, y, n, lambda: self.batch_fn(x, y)(th))  # noqa: B023
                (gb,) = torch.autograd.grad(loss, th)
            total += float(loss.detach()) * n
            g += gb * (n / data.n)
        if not math.isfinite(total):
            raise self.nonfinite(total / data.n, at, what)
        if not bool(torch.isfinite(g).all()):
            bad = int((~torch.isfinite(g)).sum())
            raise self.nonfinite(f"finite but its gradient is not ({bad} entries)", at, what)
        return total / data.n, g

    def check_inputs(self) -> None:
        """Run the first batch once, plainly (no gradients): a clear error for inputs the model cannot take or
        targets the loss cannot take, before any vectorised (``vmap``) or differentiated evaluation would raise
        torch's own. Cheap: one batch, once per Objective."""
        if self._plain_ok:
            return
        x, y, n = next(iter(self.batches()))
        with torch.no_grad():
            self._first(x, y, n, lambda: self.batch_loss(self.space.unflatten(self.theta0), x, y))
