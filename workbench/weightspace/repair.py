"""REPAIR and RESET: fixing the statistics of interpolated networks (Jordan et al. 2023, "REPAIR:
REnormalizing Permuted Activations for Interpolation Repair").

Averaging the weights of two (aligned) networks shrinks the variance of their hidden units: a unit of the
midpoint is a mixture of two units that are only partly correlated (*variance collapse*), and the loss along
the path climbs because of it. **REPAIR** (:func:`repair`) rescales and shifts every hidden channel of the
interpolated network ``theta(t) = (1 - t) theta_A + t theta_B`` so that its activation mean and standard
deviation over the data equal the interpolation of the endpoints' statistics,
``mu_t = (1 - t) mu_A + t mu_B`` and ``sigma_t = (1 - t) sigma_A + t sigma_B``: at each hidden Linear or
Conv output (at the affine BatchNorm that reads it directly, where there is one), in forward order,
``y <- (y - mu) sigma_t / sigma + mu_t``, folded into that layer's weight and bias (a layer without bias is
rescaled only). **RESET** (:func:`reset_batchnorm`) only recomputes the BatchNorm running statistics of the
interpolated network from data (REPAIR's special case for BatchNorm networks, sec. 4.2 there); it is what
``workbench.landscape.interpolate(..., bn_reset=True)`` does, and it does nothing for a network without
BatchNorm.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..capture import stream
from ..data import input_batches
from ..state import modes
from .graph import example_input, permutation_groups, trace

__all__ = ["interpolate_models", "reset_batchnorm", "repair_points", "repair", "unit_statistics"]

_EPS = 1e-5  # a unit whose variance collapsed to zero is not blown up


def interpolate_models(model_a: nn.Module, model_b: nn.Module, t: float) -> nn.Module:
    """A new model with every floating tensor (parameters and buffers) at ``(1 - t) A + t B``
    (``torch.lerp``: t = 0 and t = 1 give the endpoints bitwise); integer buffers are A's.

    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> m = interpolate_models(a, b, 0.5)
    >>> torch.allclose(m.weight, (a.weight + b.weight) / 2)
    True
    """
    new = copy.deepcopy(model_a)
    sb = model_b.state_dict()
    with torch.no_grad():
        for k, v in new.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.lerp(v, sb[k].to(v.dtype), float(t)))
    return new


def _batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def reset_batchnorm(model: nn.Module, data: Any, device=None) -> nn.Module:
    """RESET: a copy of ``model`` with its BatchNorm running statistics recomputed from ``data`` (reset, then a
    cumulative average of the batch statistics over one pass; BatchNorm in train mode, every other module in
    eval mode: ``torch.optim.swa_utils.update_bn`` semantics). Without BatchNorm the copy is unchanged.

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)).eval()
    >>> r = reset_batchnorm(m, torch.randn(64, 2) + 5)
    >>> moved = bool((r[1].running_mean - m[0](torch.zeros(1, 2))[0]).abs().max() > 0.1)
    >>> moved, torch.equal(m[1].running_mean, torch.zeros(3))
    (True, True)
    """
    new = copy.deepcopy(model)
    bns = _batchnorms(new)
    if not bns:
        return new
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    with modes(new, "eval"):
        for m in bns:
            m.train()
        for x in input_batches(data, device, what="data"):
            new(x)
    for m, old in zip(bns, _batchnorms(model)):
        m.momentum = old.momentum
        m.training = old.training
    return new


def repair_points(model: nn.Module, example: Any) -> list[tuple[str, str, int, tuple]]:
    """Where REPAIR acts, in forward order: ``(module whose output is corrected, module the correction is folded
    into, channel axis, output shape without the batch)`` for every hidden Linear / Conv (its output units are
    permutable, not attention heads): at the affine BatchNorm that reads it directly, else at its own output.

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    >>> repair_points(m, torch.zeros(2, 2))
    [('1', '1', 1, (4,))]
    """
    x = example if isinstance(example, torch.Tensor) else example_input(example)
    spec = permutation_groups(model, x)
    hidden = {
        e.name.rsplit(".", 1)[0]
        for g in spec.groups.values()
        if g.heads is None
        for e in g.entries
        if e.axis == 0 and e.name.endswith(".weight")
    }
    gm = trace(model, x)
    out = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or node.target not in hidden:
            continue
        mod = gm.get_submodule(node.target)
        if not isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) or getattr(mod, "transposed", False):
            continue
        users = list(node.users)
        at = node
        if len(users) == 1 and users[0].op == "call_module":
            bn = gm.get_submodule(users[0].target)
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.affine:
                at = users[0]
        shape = tuple(at.meta["tensor_meta"].shape)[1:]
        axis = 1 if isinstance(mod, nn.modules.conv._ConvNd) or at is not node else len(shape)
        out.append((at.target, at.target, axis, shape))
    return out


@torch.no_grad()
def unit_statistics(model: nn.Module, data: Any, points: list, mode: str = "eval", device=None) -> dict:
    """``{module: (mean, std)}`` of every channel at each of ``points`` (:func:`repair_points`) over ``data``
    (every position of a conv map or token sequence a sample; float64)."""
    layers = sorted({p[0] for p in points})
    acc: dict = {}
    with modes(model, mode):
        for acts, _ in stream(model, data, layers, pool="flatten", device=device):
            for name, _, axis, shape in points:
                x = acts[name].reshape((-1,) + tuple(shape)).movedim(axis, -1)
                x = x.reshape(-1, x.shape[-1]).double()
                s = acc.setdefault(name, [0, 0, 0])
                s[0], s[1], s[2] = s[0] + x.shape[0], s[1] + x.sum(0), s[2] + (x * x).sum(0)
    out = {}
    for name, (n, s1, s2) in acc.items():
        mu = s1 / n
        out[name] = (mu, (s2 / n - mu**2).clamp_min(0).sqrt())
    return out


@torch.no_grad()
def repair(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    t: float,
    *,
    points: list | None = None,
    stats: tuple[dict, dict] | None = None,
    mode: str = "eval",
    device=None,
) -> nn.Module:
    """REPAIR: the interpolated model ``(1 - t) A + t B`` with every hidden channel's mean and standard deviation
    over ``data`` set to ``(1 - t) mu_A + t mu_B`` and ``(1 - t) sigma_A + t sigma_B`` (see the module docstring;
    ``B`` should already be aligned to ``A``). ``points``: :func:`repair_points` (found from the model if None);
    ``stats``: the endpoints' :func:`unit_statistics` if already computed. The inputs are not changed.

    >>> torch.manual_seed(0) and None
    >>> a = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    >>> b = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    >>> x = torch.randn(256, 4)
    >>> m = repair(a, b, x, 0.5)
    >>> pts = repair_points(a, x)
    >>> sa, sb, sm = (unit_statistics(n, x, pts)["0"][1] for n in (a, b, m))
    >>> float(((sa + sb) / 2 - sm).abs().max()) < 1e-4
    True
    """
    x0 = example_input(data).to(device) if device is not None else example_input(data)
    points = repair_points(model_a, x0) if points is None else points
    sa, sb = (
        stats if stats is not None else (unit_statistics(n, data, points, mode, device) for n in (model_a, model_b))
    )
    m = interpolate_models(model_a, model_b, t)
    mods = dict(m.named_modules())
    for pt in points:
        name = pt[0]
        mu, sd = unit_statistics(m, data, [pt], mode, device)[name]
        mu_t = (1 - t) * sa[name][0] + t * sb[name][0]
        sd_t = (1 - t) * sa[name][1] + t * sb[name][1]
        scale = sd_t / (sd + _EPS)
        mod = mods[pt[1]]
        w = mod.weight
        w.copy_((w.double() * scale.reshape((-1,) + (1,) * (w.dim() - 1))).to(w.dtype))
        if mod.bias is not None:
            mod.bias.copy_((scale * (mod.bias.double() - mu) + mu_t).to(mod.bias.dtype))
    return m
