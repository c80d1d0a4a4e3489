"""Directions in parameter space for loss-landscape slices.

All functions return directions as ``dict[name -> tensor]`` over the chosen parameters
(see :class:`workbench.params.ParamSpace`), which every landscape probe accepts, as does a list
of tensors in ``model.parameters()`` order.

Normalisation of a random Gaussian direction ``d`` against the weights ``theta``
(Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets", sec. 4):

* ``filter``: for every tensor with ``dim >= 2`` and every filter ``j`` (slice along dim 0: a conv
  output channel or a Linear row), ``d_j <- d_j * ||theta_j|| / (||d_j|| + 1e-10)``;
* ``layer``:  ``d_l <- d_l * ||theta_l|| / (||d_l|| + 1e-10)`` per tensor;
* ``model``:  ``d <- d * ||theta|| / ||d||`` over the whole vector;
* ``none``:   raw N(0, I).

1-D (and 0-d) tensors, i.e. biases and normalisation-layer affine parameters, follow ``one_d``:
``"zero"`` (d = 0, Li's ``ignore='biasbn'``, the default), ``"scale"`` (normalised as one filter:
``d * ||theta|| / ||d||``, so an all-zero bias gets d = 0 instead of a division by zero) or
``"keep"`` (raw Gaussian, then the normalisation above if ``model``).
"""
from __future__ import annotations

import numpy as np
import torch

from .params import ParamSpace

NORMALIZATIONS = ("filter", "layer", "model", "none")
ONE_D = ("zero", "scale", "keep")


def _space(model_or_space, params=None) -> ParamSpace:
    return model_or_space if isinstance(model_or_space, ParamSpace) else ParamSpace(model_or_space, params)


def child_seeds(seed: int, n: int) -> list[int]:
    """Independent per-direction seeds derived from one seed (numpy SeedSequence.spawn)."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def normalize(direction: dict, theta: dict, normalization: str = "filter", one_d: str = "zero") -> dict:
    """Apply filter/layer/model normalisation and the 1-D policy (see module docstring)."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: expected one of {NORMALIZATIONS}, got {normalization!r}")
    if one_d not in ONE_D:
        raise ValueError(f"one_d: expected one of {ONE_D}, got {one_d!r}")
    out = {}
    for name, d in direction.items():
        t = theta[name]
        d = d.clone()
        if d.dim() <= 1:
            if one_d == "zero":
                d.zero_()
            elif one_d == "scale" and normalization != "none":
                d.mul_(t.norm() / (d.norm() + 1e-10))
        elif normalization == "filter":
            tn = t.reshape(t.shape[0], -1).norm(dim=1)
            dn = d.reshape(d.shape[0], -1).norm(dim=1)
            d.mul_((tn / (dn + 1e-10)).reshape(-1, *([1] * (d.dim() - 1))))
        elif normalization == "layer":
            d.mul_(t.norm() / (d.norm() + 1e-10))
        out[name] = d
    if normalization == "model":
        dn = torch.sqrt(sum((v.double() ** 2).sum() for v in out.values()))
        tn = torch.sqrt(sum((theta[k].double() ** 2).sum() for k in out))
        scale = (tn / (dn + 1e-10)).to(next(iter(out.values())).dtype)
        out = {k: v * scale for k, v in out.items()}
    return out


def random_direction(model, seed: int = 0, normalization: str = "filter", one_d: str = "zero", params=None) -> dict:
    """A Gaussian N(0, I) direction drawn with ``seed`` (CPU generator: same on every device), normalised."""
    space = _space(model, params)
    g = torch.Generator().manual_seed(int(seed))
    theta = space.unflatten(space.theta0)
    raw = {n: torch.randn(s, generator=g, dtype=torch.float64).to(space.device, space.dtype)
           for n, s in zip(space.names, space.shapes)}
    return normalize(raw, theta, normalization, one_d)


def random_directions(model, n: int = 2, seed: int = 0, normalization: str = "filter", one_d: str = "zero",
                      params=None) -> tuple[list[dict], list[int]]:
    """``n`` independent random directions and their recorded per-direction seeds."""
    seeds = child_seeds(seed, n)
    return [random_direction(model, s, normalization, one_d, params) for s in seeds], seeds


def checkpoint_direction(model_from, model_to, params=None) -> dict:
    """theta_to - theta_from (the two models must have the same parameter names and shapes)."""
    a, b = _space(model_from, params), _space(model_to, params)
    check_same_space(a, b)
    return b.unflatten(b.theta0 - a.theta0)


def check_same_space(a: ParamSpace, b: ParamSpace, what=("model_a", "model_b")) -> None:
    if a.names != b.names or a.shapes != b.shapes:
        diff = [(n1, s1, n2, s2) for n1, s1, n2, s2 in zip(a.names, a.shapes, b.names, b.shapes) if (n1, s1) != (n2, s2)]
        raise ValueError(
            f"{what[0]} and {what[1]} have different parameters ({len(a.names)} vs {len(b.names)} tensors; first "
            f"mismatch {diff[:1]}); they must share one architecture"
        )


def pca_directions(checkpoints, params=None):
    """Top-2 PCA directions of a training trajectory (Li et al. 2018, sec. 7).

    With ``theta_n`` the last checkpoint, ``M = [theta_i - theta_n]_{i<n}``; the directions are the
    top two right singular vectors of the column-centred ``M`` (orthonormal in weight space).
    Returns ``(directions, info)`` where ``info`` is a dict with ``explained_variance_ratio`` (2,)
    and ``coords`` (n+1, 2): the coordinates <theta_i - theta_n, d_k> of every checkpoint, for
    overlaying the path on a slice centred at the final model.
    """
    spaces = [_space(m, params) for m in checkpoints]
    if len(spaces) < 3:
        raise ValueError(f"checkpoints: PCA of a trajectory needs at least 3 checkpoints, got {len(spaces)}")
    for s in spaces[1:]:
        check_same_space(spaces[0], s, ("checkpoints[0]", "a later checkpoint"))
    final = spaces[-1].theta0.double()
    m = torch.stack([s.theta0.double() - final for s in spaces[:-1]])
    mc = m - m.mean(0, keepdim=True)
    # n x n Gram matrix: cheap for few checkpoints and many parameters
    evals, evecs = torch.linalg.eigh(mc @ mc.T)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    dirs = []
    for k in range(2):
        v = mc.T @ evecs[:, k]
        dirs.append(v / v.norm())
    ratio = (evals[:2] / evals.sum()).numpy()
    allm = torch.stack([s.theta0.double() - final for s in spaces])
    coords = torch.stack([allm @ d for d in dirs], dim=1).numpy()
    sp = spaces[-1]
    out = [sp.unflatten(d.to(sp.dtype).to(sp.device)) for d in dirs]
    return out, {"explained_variance_ratio": ratio, "coords": coords}
