"""Directions in parameter space for loss-landscape slices.

Directions are ``dict[name -> tensor]`` over the chosen parameters (see
:class:`workbench.params.ParamSpace`); every landscape probe also accepts a list of tensors in
``model.parameters()`` order or a flat vector.

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

:func:`pca_directions` is a probe: the principal directions of a training trajectory (Li et al.
2018, sec. 7) as an ``xr.Dataset`` that :func:`~workbench.landscape.slice_2d` takes as ``directions``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..params import ParamSpace
from ..registry import Tags, probe
from ..testing import hostile_model
from ..validate import integer

__all__ = [
    "NORMALIZATIONS",
    "ONE_D",
    "child_seeds",
    "normalize",
    "random_direction",
    "random_directions",
    "checkpoint_direction",
    "check_same_space",
    "as_direction",
    "pca_directions",
]

NORMALIZATIONS = ("filter", "layer", "model", "none")
ONE_D = ("zero", "scale", "keep")


def _space(model_or_space, params=None) -> ParamSpace:
    return model_or_space if isinstance(model_or_space, ParamSpace) else ParamSpace(model_or_space, params)


def child_seeds(seed: int, n: int) -> list[int]:
    """Independent per-direction seeds derived from one seed (numpy ``SeedSequence.spawn``).

    >>> from workbench.landscape import child_seeds
    >>> s = child_seeds(0, 2)
    >>> len(s), s[0] != s[1], s == child_seeds(0, 2)
    (2, True, True)
    """
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(int(seed)).spawn(n)]


def normalize(
    direction: dict[str, torch.Tensor],
    theta: dict[str, torch.Tensor],
    normalization: str = "filter",
    one_d: str = "zero",
) -> dict[str, torch.Tensor]:
    """Apply filter/layer/model normalisation and the 1-D policy (see the module docstring).

    >>> import torch
    >>> from workbench.landscape import normalize
    >>> d = normalize({"w": torch.ones(2, 2), "b": torch.ones(2)}, {"w": 3 * torch.eye(2), "b": torch.ones(2)})
    >>> d["w"].norm(dim=1).tolist(), d["b"].tolist()      # each row scaled to its weight row's norm; 1-D zeroed
    ([3.0, 3.0], [0.0, 0.0])
    """
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


def random_direction(
    model: nn.Module | ParamSpace,
    seed: int = 0,
    normalization: str = "filter",
    one_d: str = "zero",
    params: str | list[str] | None = None,
) -> dict[str, torch.Tensor]:
    """A Gaussian N(0, I) direction drawn with ``seed`` (CPU generator: the same on every device),
    normalised (:func:`normalize`) against the model's weights.

    >>> import torch
    >>> from workbench.landscape import random_direction
    >>> d = random_direction(torch.nn.Linear(3, 2), seed=0)
    >>> sorted(d), d["weight"].shape, float(d["bias"].abs().sum())
    (['bias', 'weight'], torch.Size([2, 3]), 0.0)
    """
    space = _space(model, params)
    g = torch.Generator().manual_seed(int(seed))
    theta = space.unflatten(space.theta0)
    raw = {
        n: torch.randn(s, generator=g, dtype=torch.float64).to(space.device, space.dtype)
        for n, s in zip(space.names, space.shapes)
    }
    return normalize(raw, theta, normalization, one_d)


def random_directions(
    model: nn.Module | ParamSpace,
    n: int = 2,
    seed: int = 0,
    normalization: str = "filter",
    one_d: str = "zero",
    params: str | list[str] | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[int]]:
    """``n`` independent random directions and their per-direction seeds (``child_seeds(seed, n)``).

    >>> import torch
    >>> from workbench.landscape import random_directions
    >>> dirs, seeds = random_directions(torch.nn.Linear(3, 2), 2, seed=0)
    >>> len(dirs), len(seeds)
    (2, 2)
    """
    seeds = child_seeds(seed, n)
    return [random_direction(model, s, normalization, one_d, params) for s in seeds], seeds


def check_same_space(a: ParamSpace, b: ParamSpace, what: tuple[str, str] = ("model_a", "model_b")) -> None:
    """Raise ValueError (naming both arguments) unless ``a`` and ``b`` have the same parameter names and shapes.

    >>> import torch
    >>> from workbench.landscape import check_same_space
    >>> from workbench.params import ParamSpace
    >>> check_same_space(ParamSpace(torch.nn.Linear(3, 2)), ParamSpace(torch.nn.Linear(3, 2)))  # no error
    """
    if a.names != b.names or a.shapes != b.shapes:
        diff = [
            (n1, s1, n2, s2) for n1, s1, n2, s2 in zip(a.names, a.shapes, b.names, b.shapes) if (n1, s1) != (n2, s2)
        ]
        raise ValueError(
            f"{what[1]}: {what[0]} and {what[1]} have different parameters ({len(a.names)} vs {len(b.names)} "
            f"tensors; first mismatch {diff[:1]}); they must share one architecture"
        )


def checkpoint_direction(
    model_from: nn.Module, model_to: nn.Module, params: str | list[str] | None = None
) -> dict[str, torch.Tensor]:
    """``theta_to - theta_from`` (the two models must have the same parameter names and shapes).

    >>> import torch
    >>> from workbench.landscape import checkpoint_direction
    >>> a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    >>> d = checkpoint_direction(a, b)
    >>> torch.equal(d["bias"], b.bias.detach() - a.bias.detach())
    True
    """
    a, b = _space(model_from, params), _space(model_to, params)
    check_same_space(a, b)
    return b.unflatten(b.theta0 - a.theta0)


def as_direction(space: ParamSpace, d: Any, what: str = "direction") -> torch.Tensor:
    """One direction as a flat vector of ``space`` (its device and dtype), validated: ``d`` is a dict
    by parameter name, a list of tensors in ``model.parameters()`` order, or a flat vector (tensor,
    numpy array or xarray DataArray, e.g. a row of ``pca_directions(...).direction``).

    >>> import torch
    >>> from workbench.landscape import as_direction
    >>> from workbench.params import ParamSpace
    >>> sp = ParamSpace(torch.nn.Linear(2, 1))
    >>> as_direction(sp, {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}).tolist()
    [1.0, 1.0, 0.0]
    """
    if isinstance(d, xr.DataArray):
        d = d.values
    if isinstance(d, np.ndarray) and d.ndim == 1:  # e.g. a Hessian eigenvector from hessian_eigenvalues
        d = torch.from_numpy(d)
    if isinstance(d, torch.Tensor) and d.dim() == 1 and d.numel() != space.numel and d.numel() > len(space.names):
        raise ValueError(
            f"{what}: a flat vector must have {space.numel} entries (the parameter space), got "
            f"{d.numel()}; give one value per parameter in model.parameters() order, or a dict by "
            "parameter name"
        )
    if isinstance(d, torch.Tensor) and d.dim() == 1 and d.numel() == space.numel:
        v = d.to(space.device, space.dtype)
    else:
        try:
            v = space.flatten(d)
        except ValueError as e:
            raise ValueError(str(e).replace("direction:", f"{what}:")) from None
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{what}: contains NaN or inf values")
    if not bool((v != 0).any()):
        raise ValueError(f"{what}: is all zeros; a slice along it would be constant")
    return v


def _case_pca():
    return ([hostile_model(0), hostile_model(1), hostile_model(2)],), dict(n_components=1)


@probe("landscape.pca_directions", tags=Tags(inputs="models", uses=("params",)), case=_case_pca)
def pca_directions(models: list[nn.Module] | dict[str, nn.Module], *, n_components: int = 2, ctx) -> xr.Dataset:
    """Principal directions of a training trajectory (Li et al. 2018, sec. 7).

    With ``theta_n`` the last checkpoint, ``M = [theta_i - theta_n]_{i<n}``; the directions are the
    top ``n_components`` right singular vectors of the column-centred ``M`` (orthonormal in weight
    space; sklearn's ``PCA`` of ``M``). ``models`` is a list of checkpoints in training order (or a
    dict label -> model) of one architecture: at least ``n_components + 2`` of them (the ``n - 1``
    centred rows of ``M`` span at most ``n - 2`` directions).

    Returns an ``xr.Dataset``: ``direction`` (component, param), flat float64 vectors in the
    parameter order of the chosen ``params``; ``explained_variance_ratio`` (component); ``coords``
    (checkpoint, component), the coordinates ``<theta_i - theta_n, d_k>`` of every checkpoint (the
    last is at the origin). Read it as ``ds["coords"]`` (``ds.coords`` is xarray's coordinates).
    ``slice_2d(final_model, ..., directions=ds)`` slices the plane of the first two directions
    centred at the final model and overlays the trajectory.

    >>> import torch
    >>> from workbench.landscape import pca_directions
    >>> traj = [torch.nn.Linear(3, 2) for _ in range(4)]
    >>> ds = pca_directions(traj)
    >>> ds.direction.shape, ds["coords"].shape, float(abs(ds["coords"][-1]).max())
    ((2, 8), (4, 2), 0.0)
    """
    if not isinstance(models, (list, tuple, dict)):
        raise TypeError(
            f"models: expected a list (or dict label -> model) of the checkpoints of a run, got {type(models).__name__}"
        )
    labels = list(models) if isinstance(models, dict) else list(range(len(models)))
    ms = list(models.values()) if isinstance(models, dict) else list(models)
    n_components = integer("n_components", n_components, lo=1)
    if len(ms) < 3:
        raise ValueError(f"models: PCA of a trajectory needs at least 3 checkpoints, got {len(ms)}")
    if len(ms) < n_components + 2:
        raise ValueError(
            f"n_components: PCA of a trajectory needs at least n_components + 2 = {n_components + 2} checkpoints "
            f"(the centred differences to the last one span at most n - 2 directions), got {len(ms)}; pass more "
            "checkpoints or a smaller n_components"
        )
    spaces = [ParamSpace(m, ctx.params, arg=f"models[{label!r}]") for label, m in zip(labels, ms)]
    for s in spaces[1:]:
        check_same_space(spaces[0], s, ("models[0]", "a later checkpoint"))
    final = spaces[-1].theta0.double()
    m = torch.stack([s.theta0.double() - final for s in spaces[:-1]])
    mc = m - m.mean(0, keepdim=True)
    # n x n Gram matrix: cheap for few checkpoints and many parameters
    evals, evecs = torch.linalg.eigh(mc @ mc.T)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0), evecs[:, order]
    rank = int((evals > 1e-12 * evals[0]).sum()) if float(evals[0]) > 0 else 0
    if rank < n_components:
        raise ValueError(
            f"n_components: the {len(ms)} checkpoints span only {rank} direction(s) after centring "
            f"(the rest is rounding noise); pass n_components={max(rank, 1)} or more checkpoints"
        )
    dirs = []
    for k in range(n_components):
        v = mc.T @ evecs[:, k]
        dirs.append(v / v.norm())
    ratio = (evals[:n_components] / evals.sum()).cpu().numpy()
    allm = torch.stack([s.theta0.double() - final for s in spaces])
    coords = torch.stack([allm @ d for d in dirs], dim=1).cpu().numpy()
    ctx.record(n_checkpoints=len(ms), n_params=spaces[-1].numel)
    comp = np.arange(n_components)
    return xr.Dataset(
        {
            "direction": (
                ("component", "param"),
                torch.stack(dirs).cpu().numpy(),
                {"long_name": "principal direction (unit norm, flat in parameter order)"},
            ),
            "explained_variance_ratio": ("component", ratio, {"long_name": "explained variance ratio", "units": "1"}),
            "coords": (
                ("checkpoint", "component"),
                coords,
                {"long_name": "checkpoint coordinates relative to the last checkpoint"},
            ),
        },
        coords={"component": comp, "checkpoint": labels},
    )
