"""Cheap statistics of a model in training, one call per monitored step (the monitor's probes).

* :func:`parameter_stats`: per layer (:func:`~workbench.curvature.blocks.layer_of`) the weight norm
  ``||W||_2`` (Frobenius over the layer's parameters), the gradient norm of the ``.grad`` the training step
  left, the update/weight ratio ``||theta_t - theta_s|| / ((t - s) ||theta_t||)`` over the interval since the
  previous monitored step ``s`` (exact per step when ``Monitor.before_step`` saved ``theta_{t-1}``), and the
  distance from initialisation ``||theta_t - theta_0||`` (Hoffer et al. 2017, "Train longer, generalize
  better": it grows like ``log t``).
* :func:`output_stats`: on the fixed probe batch, the log-normaliser ``log Z = logsumexp(z)`` of the
  output logits ``z`` (mean over rows), the logit norm ``||z||_2`` (mean over rows), and the trajectory KL
  ``KL(p_s || p_t)`` between the softmax outputs at consecutive monitored steps (mean over rows; Du et al.
  2022, SAF).
* :class:`SharpnessTracker`: the top eigenvalue of the Hessian of the probe batch's loss by Lanczos started
  from the previous top eigenvector (a few products per call, warm), or of the Adam-preconditioned Hessian
  ``P^{-1/2} H P^{-1/2}`` (Cohen et al. 2022), with the stability threshold of the optimizer (:func:`edge`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..curvature import HessianOperator, lanczos, ritz
from ..curvature.blocks import layer_of
from ..data import call_model, to_device

__all__ = ["parameter_stats", "output_stats", "SharpnessTracker", "edge", "flat_params", "layer_names"]


def layer_names(model: nn.Module) -> list[str]:
    """The layers of ``model`` in order of first appearance (the ``layer`` coordinate of the norms)."""
    return list(dict.fromkeys(layer_of(n) for n, p in model.named_parameters()))


def flat_params(model: nn.Module) -> torch.Tensor:
    """All parameters, flattened and concatenated (detached copy, float32 or wider)."""
    return torch.cat(
        [p.detach().reshape(-1).to(torch.promote_types(p.dtype, torch.float32)) for p in model.parameters()]
    )


def _layer_index(model: nn.Module) -> tuple[list[str], np.ndarray]:
    names = layer_names(model)
    where = {n: i for i, n in enumerate(names)}
    return names, np.array([where[layer_of(n)] for n, _ in model.named_parameters()])


def _sum_by_layer(index: np.ndarray, n_layers: int, values: np.ndarray) -> np.ndarray:
    return np.bincount(index, weights=values, minlength=n_layers)


def parameter_stats(model: nn.Module, previous: torch.Tensor | None, steps: int, init: torch.Tensor | None) -> dict:
    """``{"weight_norm", "grad_norm", "update_ratio": per-layer arrays, "dist_init": float, "grad_finite"}``
    (NaN where undefined: no ``.grad``, no previous or initial parameters). One device-to-host copy: the
    per-parameter squared norms are reduced on the device (``torch._foreach_norm``), then summed per layer."""
    names, index = _layer_index(model)
    params = [p.detach() for p in model.parameters()]
    flat = flat_params(model)
    parts = [torch.stack(torch._foreach_norm(params)).double() ** 2]
    has = np.array([p.grad is not None for p in model.parameters()])
    grads = [p.grad.detach() for p in model.parameters() if p.grad is not None]
    if grads:
        parts.append(torch.stack(torch._foreach_norm(grads)).double() ** 2)
    if previous is not None and steps > 0:
        d = (flat - previous).double().pow(2)
        parts.append(torch.stack([c.sum() for c in d.split([p.numel() for p in params])]))
    if init is not None:
        parts.append((flat - init).double().pow(2).sum().reshape(1))
    host = [t.cpu().numpy() for t in parts]
    k, n = 0, len(names)
    w = np.sqrt(_sum_by_layer(index, n, host[k]))
    out = {"weight_norm": w}
    g2 = np.zeros(len(params))
    if grads:
        k += 1
        g2[has] = host[k]
    out["grad_norm"] = np.where(
        _sum_by_layer(index, n, has.astype(float)) > 0, np.sqrt(_sum_by_layer(index, n, g2)), np.nan
    )
    out["grad_finite"] = bool(np.isfinite(g2).all())
    if previous is not None and steps > 0:
        k += 1
        out["update_ratio"] = np.sqrt(_sum_by_layer(index, n, host[k])) / steps / np.maximum(w, 1e-30)
    else:
        out["update_ratio"] = np.full(n, np.nan)
    out["dist_init"] = float(np.sqrt(host[-1][0])) if init is not None else math.nan
    return out


def _logits(outputs) -> torch.Tensor:
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    return outputs


@torch.no_grad()
def output_stats(
    model: nn.Module, inputs, previous_logp: torch.Tensor | None, mask=None, loss_fn=None, targets=None, kwargs=None
):
    """``{"log_z", "logit_norm", "traj_kl", "probe_loss": floats, "logp": the log-softmax kept for the next
    call}``; ``mask`` (1 = a real token) excludes padded positions of sequence outputs; ``probe_loss`` is
    ``loss_fn(outputs, targets)`` on the probe batch (NaN without a loss); ``kwargs`` go to the forward call."""
    outputs = call_model(model, inputs, kwargs)
    probe_loss = math.nan if loss_fn is None else float(loss_fn(outputs, targets))
    z = _logits(outputs).detach()
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    z = z.reshape(-1, z.shape[-1])
    keep = None if mask is None else to_device(mask, z.device).reshape(-1).bool()
    if keep is not None and keep.numel() == z.shape[0]:
        z = z[keep]
    log_z = torch.logsumexp(z, -1)
    logp = z - log_z[:, None]
    kl = math.nan
    if previous_logp is not None and previous_logp.shape == logp.shape:
        kl = float((previous_logp.exp() * (previous_logp - logp)).sum(-1).mean())
    return {
        "log_z": float(log_z.mean()),
        "logit_norm": float(z.norm(dim=-1).mean()),
        "traj_kl": kl,
        "probe_loss": probe_loss,
        "logp": logp,
    }


def edge(optimizer: torch.optim.Optimizer | None) -> tuple[float, str]:
    """The stability threshold of ``optimizer`` on a quadratic and which sharpness it bounds:
    gradient descent ``2 / lr``; heavy-ball momentum ``beta`` ``(2 + 2 beta) / lr``; Nesterov
    ``(2 + 2 beta) / ((1 + 2 beta) lr)`` (Cohen et al. 2021, appendix); Adam / AdamW the preconditioned
    sharpness ``lambda_max(P^{-1} H)`` against ``(2 + 2 beta_1) / ((1 - beta_1) lr)`` = ``38 / lr`` at
    ``beta_1 = 0.9`` (Cohen et al. 2022). Other optimizers: ``2 / lr`` (stated in the kind).

    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    >>> round(edge(opt)[0], 6), edge(opt)[1]
    (38.0, 'hessian')
    """
    if optimizer is None:
        return math.nan, "hessian"
    optimizer = unwrap(optimizer)
    g = optimizer.param_groups[0]
    lr = float(g["lr"])
    adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
    if lr <= 0:  # a schedule decayed to 0: nothing is unstable
        return math.inf, "adam-preconditioned" if adam else "hessian"
    if adam:
        b1 = float(g["betas"][0])
        return (2 + 2 * b1) / ((1 - b1) * lr), "adam-preconditioned"
    if isinstance(optimizer, torch.optim.SGD):
        b = float(g.get("momentum", 0.0))
        if g.get("nesterov"):
            return (2 + 2 * b) / ((1 + 2 * b) * lr), "hessian"
        return (2 + 2 * b) / lr, "hessian"
    return 2 / lr, f"hessian (2/lr: no threshold known for {type(optimizer).__name__})"


def unwrap(optimizer):
    """The torch optimizer inside a trainer's wrapper (accelerate's ``AcceleratedOptimizer``, Lightning's
    ``LightningOptimizer``: both keep it as ``.optimizer``)."""
    while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def _adam_scale(model: nn.Module, optimizer, names: list[str]) -> torch.Tensor | None:
    """``P^{-1/2}`` flattened in the objective's parameter order, ``P = (1 - beta_1^t) diag(sqrt(v_hat) + eps)``;
    None before Adam's first step."""
    byname = dict(model.named_parameters())
    optimizer = unwrap(optimizer)
    g = optimizer.param_groups[0]
    b1, b2 = g["betas"]
    parts = []
    for n in names:
        st = optimizer.state.get(byname[n], {})
        if "exp_avg_sq" not in st:
            return None
        t = float(st["step"])
        v_hat = st["exp_avg_sq"].detach() / (1 - b2**t)
        p = (1 - b1**t) * (v_hat.sqrt() + g["eps"])
        parts.append(p.reshape(-1).rsqrt())
    return torch.cat(parts)


class SharpnessTracker:
    """The top eigenvalue by ``n_iter`` Lanczos steps from the previous top eigenvector (random the first time).

    >>> torch.manual_seed(0) and None
    >>> m = nn.Linear(3, 1, bias=False)
    >>> x, y = torch.randn(32, 3), torch.zeros(32, 1)
    >>> lam = SharpnessTracker().update(m, nn.MSELoss(), (x, y))["lambda_max"]
    >>> exact = float(torch.linalg.eigvalsh(2 * x.T @ x / 32)[-1])  # the Hessian of the MSE is 2 X^T X / n
    >>> abs(lam - exact) < 1e-4 * exact
    True
    """

    def __init__(self, n_iter: int = 8, seed: int = 0):
        self.n_iter, self.seed = int(n_iter), int(seed)
        self.vector: torch.Tensor | None = None

    def update(self, model: nn.Module, loss_fn, data, optimizer=None, mode: str = "eval") -> dict:
        from ..objective import Objective

        obj = Objective(model, loss_fn, data, mode=mode)
        op = HessianOperator(obj)
        threshold, kind = edge(optimizer)
        scale = _adam_scale(model, optimizer, obj.space.names) if kind == "adam-preconditioned" else None
        if kind == "adam-preconditioned" and scale is None:
            return {"lambda_max": math.nan, "edge": threshold, "kind": kind, "n_products": 0}
        s = None if scale is None else scale.to(op.device, op.dtype)

        def matvec(v):
            return op.matvec(v) if s is None else s * op.matvec(s * v)

        v0 = self.vector
        if v0 is None or v0.numel() != op.shape[0]:
            g = torch.Generator().manual_seed(self.seed)
            v0 = torch.randn(op.shape[0], generator=g, dtype=torch.float64).to(op.device, op.dtype)
        m = min(self.n_iter, op.shape[0])
        res = lanczos(matvec, v0, m=m, k=1)
        vals, S, _ = ritz(res, 1)
        self.vector = res.vectors(S)[:, 0].to(op.dtype)
        return {"lambda_max": float(vals[0]), "edge": threshold, "kind": kind, "n_products": int(res.n_matvec)}
