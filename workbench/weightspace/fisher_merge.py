"""Fisher-weighted averaging (Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging").

``theta_j = sum_i w_i F_i,j theta_i,j / sum_i w_i F_i,j`` per parameter entry ``j``, with ``F_i`` the diagonal
Fisher of model ``i``. :mod:`workbench.curvature` offers Fisher *operators* (products ``F v``) but no diagonal, so
:func:`diagonal_fisher` computes it here from per-sample gradients (``torch.func.vmap`` of ``torch.func.grad``):
the **empirical** Fisher ``(1/N) sum_n g_n^2`` with ``g_n`` the gradient of sample ``n``'s loss at its true label,
or the **true** Fisher of a softmax classifier ``(1/N) sum_n sum_c p(c | x_n) (d log p(c | x_n) / d theta)^2``
(the expectation over the model's predictive distribution in closed form, as Matena & Raffel use it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from ..data import as_data
from ..params import class_targets, model_device_dtype
from ..state import modes
from ..validate import choice
from .merging import Models, build_merged, checked_states, labelled, normalized_weights

__all__ = ["diagonal_fisher", "fisher_merge"]


def _one(x: Any) -> Any:
    """One sample of a batch, with a leading batch dim of 1 (tensor, tuple or mapping of tensors)."""
    if isinstance(x, torch.Tensor):
        return x.unsqueeze(0)
    if isinstance(x, Mapping):
        return {k: _one(v) for k, v in x.items()}
    return tuple(_one(v) for v in x)


def _call(model: nn.Module, tensors: dict, x: Any):
    if isinstance(x, Mapping):
        return functional_call(model, tensors, args=(), kwargs=dict(x), strict=False)
    return functional_call(model, tensors, x if isinstance(x, tuple) else (x,), strict=False)


def diagonal_fisher(
    model: nn.Module, loss_fn: Callable, data: Any, *, kind: str = "empirical"
) -> dict[str, torch.Tensor]:
    """The diagonal of the Fisher information of ``model``'s trainable parameters on ``data``, by parameter name
    (float64), in eval mode (running statistics, no dropout); the model is not written.

    ``kind="empirical"``: ``(1/N) sum_n g_n ** 2``, ``g_n`` the gradient of ``loss_fn`` on sample ``n`` alone (its
    true label). ``kind="true"``: ``(1/N) sum_n sum_c p_nc (d log p_nc / d theta) ** 2`` for a softmax classifier
    (``loss_fn`` a ``torch.nn.CrossEntropyLoss``, the model returning logits ``(batch, classes)``).

    >>> m = torch.nn.Linear(2, 1, bias=False)
    >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(1.0)
    >>> diagonal_fisher(m, torch.nn.MSELoss(), (x, y))["weight"].tolist()   # g_n = 2 (w.x_n) x_n
    [[2.0, 32.0]]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(outputs, targets), got {type(loss_fn).__name__}")
    kind = choice("kind", kind, ("empirical", "true"))
    if kind == "true" and not isinstance(loss_fn, nn.CrossEntropyLoss):
        raise ValueError(
            f"kind: 'true' needs a softmax classifier (loss_fn=torch.nn.CrossEntropyLoss()), got {loss_fn!r}; "
            "use kind='empirical'"
        )
    device, dtype = model_device_dtype(model)
    d = as_data(data, device, dtype)
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("model: it has no trainable parameters (requires_grad=True) to take a Fisher of")
    fixed = {n: b.detach() for n, b in model.named_buffers()}
    fixed.update({n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})

    def sample_loss(p, x, y):
        return loss_fn(_call(model, {**fixed, **p}, _one(x)), y.unsqueeze(0))

    def sample_true(p, x):
        def logp(pp):
            return torch.log_softmax(_call(model, {**fixed, **pp}, _one(x)), dim=-1)[0]

        g = jacrev(logp)(p)  # (classes, ...) per parameter
        prob = logp(p).detach().exp()
        return {k: torch.einsum("c,c...->...", prob, v.pow(2)) for k, v in g.items()}

    total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    n_total = 0
    with modes(model, "eval"), torch.no_grad():
        for x, y, n in d.batches():
            if kind == "empirical":
                g = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, class_targets(y, loss_fn))
                sq = {k: v.double().pow(2).sum(0) for k, v in g.items()}
            else:
                sq = {k: v.double().sum(0) for k, v in vmap(sample_true, in_dims=(None, 0))(params, x).items()}
            for k in total:
                total[k] += sq[k]
            n_total += n
    return {k: v / n_total for k, v in total.items()}


def fisher_merge(
    models: Models, fishers: Sequence[Mapping[str, torch.Tensor]], *, weights: Sequence[float] | None = None
) -> nn.Module:
    """Fisher-weighted averaging (Matena & Raffel 2022): ``theta_j = sum_i w_i F_ij theta_ij / sum_i w_i F_ij`` for
    every parameter entry ``j`` with the diagonal Fishers ``fishers`` (one dict name -> tensor per model, as
    :func:`diagonal_fisher` returns; a missing name counts as a Fisher of ones), ``w`` the model weights (default
    uniform). Where ``sum_i w_i F_ij = 0`` the entry is the ``w``-weighted mean, and buffers (no Fisher) are too:
    equal Fishers give the uniform soup; a zero Fisher leaves that model out.

    >>> a, b = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _, _ = a.weight.fill_(1.0), b.weight.fill_(4.0)
    >>> fisher_merge([a, b], [{"weight": torch.ones(1, 1)}, {"weight": 2 * torch.ones(1, 1)}]).weight.item()
    3.0
    """
    labels, ms = labelled(models)
    if not isinstance(fishers, (list, tuple)) or len(fishers) != len(ms):
        raise ValueError(f"fishers: expected a list of one dict name -> diagonal Fisher per model ({len(ms)})")
    uniform_states = checked_states(ms, labels, "models")
    w = normalized_weights(weights, len(ms))
    params = {n for n, _ in ms[0].named_parameters()}
    out = {}
    for k in uniform_states[0]:
        mean = sum(wi * s[k] for wi, s in zip(w, uniform_states))
        if k not in params:
            out[k] = mean
            continue
        fs = []
        for lab, f in zip(labels, fishers):
            if not isinstance(f, Mapping):
                raise TypeError(f"fishers[{lab}]: expected a dict name -> tensor, got {type(f).__name__}")
            v = torch.as_tensor(f[k]).double().to(mean.device) if k in f else torch.ones_like(mean)
            if v.shape != mean.shape or not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
                raise ValueError(
                    f"fishers[{lab}][{k!r}]: expected finite non-negative values of shape {tuple(mean.shape)}"
                )
            fs.append(v)
        den = sum(wi * f for wi, f in zip(w, fs))
        num = sum(wi * f * s[k] for wi, f, s in zip(w, fs, uniform_states))
        out[k] = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), mean)
    return build_merged(ms[0], out)
