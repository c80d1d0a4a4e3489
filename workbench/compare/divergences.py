"""Divergences between the output distributions of two models (or two checkpoints) on the same inputs.

Plain functions on probabilities along the last axis (numpy; any leading shape), in nats:

* :func:`kl` ``KL(P || Q) = sum_x p log(p / q)`` (``inf`` where ``q = 0 < p``); reverse KL is ``kl(q, p)``;
* :func:`js` ``JS = KL(P || M) / 2 + KL(Q || M) / 2``, ``M = (P + Q) / 2`` (in [0, log 2]);
* :func:`tv` total variation ``sum_x |p - q| / 2`` (in [0, 1]);
* :func:`f_divergence` ``D_f(P || Q) = sum_x q f(p / q)`` for a convex ``f`` with ``f(1) = 0`` (terms
  with ``q = 0 < p`` are ``inf``; ``f = t log t`` gives KL, ``|t - 1| / 2`` TV, ``(t - 1)^2`` chi^2).

:func:`from_logits` computes all of them from two logit tensors in float64, optionally with the
**top-k approximation** (large vocabularies): the k most probable classes of the *first* model, plus one
bucket holding the rest of each distribution's mass. Merging classes can only lower an f-divergence
(data-processing inequality), so the top-k values are lower bounds; :func:`output_divergence` says so in
its attrs whenever it uses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from ..data import input_batches
from ..params import model_device_dtype
from ..registry import Tags, probe
from ..state import modes
from ..stats import interval
from ..testing import hostile_data, hostile_model
from ..validate import boolean, count, real
from .outputs import check_model, logits_of, padding_mask

__all__ = ["kl", "js", "tv", "f_divergence", "from_logits", "KINDS", "output_divergence"]

#: the divergences :func:`from_logits` computes
KINDS = ("kl", "reverse_kl", "js", "tv")


def _probs(name: str, v: Any) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().double().numpy()
    if isinstance(v, (str, bytes)) or v is None:
        raise TypeError(f"{name}: expected an array of probabilities, got {type(v).__name__}")
    a = np.asarray(v)
    if a.dtype == bool or a.dtype.kind not in "iuf" or a.ndim == 0 or a.shape[-1] < 1:
        raise TypeError(f"{name}: expected probabilities along the last axis, got dtype {a.dtype} shape {a.shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)) or a.min() < 0 or np.abs(a.sum(-1) - 1).max() > 1e-6:
        raise ValueError(f"{name}: expected finite probabilities >= 0 summing to 1 along the last axis")
    return a


def _both(p, q):
    p, q = _probs("p", p), _probs("q", q)
    if p.shape != q.shape:
        raise ValueError(f"q: shape {q.shape} differs from p's {p.shape}; pass distributions over the same classes")
    return p, q


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    return t.sum(-1)


def kl(p: Any, q: Any) -> np.ndarray | float:
    """``KL(P || Q)`` along the last axis.

    >>> round(float(kl([0.5, 0.5], [0.9, 0.1])), 6)  # 0.5 log(0.5/0.9) + 0.5 log(0.5/0.1)
    0.510826
    """
    p, q = _both(p, q)
    return _kl(p, q)


def js(p: Any, q: Any) -> np.ndarray | float:
    """Jensen-Shannon divergence along the last axis (nats).

    >>> round(float(js([1.0, 0.0], [0.0, 1.0])), 6) == round(float(np.log(2)), 6)
    True
    """
    p, q = _both(p, q)
    m = (p + q) / 2
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def tv(p: Any, q: Any) -> np.ndarray | float:
    """Total variation distance ``sum |p - q| / 2`` along the last axis.

    >>> float(tv([0.5, 0.5], [0.9, 0.1]))
    0.4
    """
    p, q = _both(p, q)
    return 0.5 * np.abs(p - q).sum(-1)


def f_divergence(p: Any, q: Any, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | float:
    """``D_f(P || Q) = sum_x q(x) f(p(x) / q(x))`` along the last axis; ``f`` maps an array of ratios to
    an array (vectorised), convex with ``f(1) = 0``.

    >>> p, q = [0.5, 0.5], [0.9, 0.1]
    >>> round(float(f_divergence(p, q, lambda t: t * np.log(t))), 6) == round(float(kl(p, q)), 6)
    True
    >>> round(float(f_divergence(p, q, lambda t: (t - 1) ** 2)), 6)  # chi^2 = sum (p - q)^2 / q
    1.777778
    """
    if not callable(f):
        raise TypeError(f"f: expected a function of the ratio p/q, got {type(f).__name__}")
    p, q = _both(p, q)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(q > 0, p / np.where(q > 0, q, 1.0), 1.0)
        v = np.asarray(f(t), dtype=np.float64)
        if v.shape != t.shape:
            raise ValueError(f"f: must return one value per ratio (shape {t.shape}), returned shape {v.shape}")
        terms = np.where(q > 0, q * v, np.where(p > 0, np.inf, 0.0))
    return terms.sum(-1)


def _topk(la: torch.Tensor, lb: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities over the k top classes of ``la`` plus one bucket for the rest."""
    idx = la.topk(k, dim=-1).indices
    ta, tb = la.gather(-1, idx), lb.gather(-1, idx)

    def rest(t):  # log(1 - sum exp t), clamped (the bucket may be ~0)
        return torch.log1p(-t.exp().sum(-1, keepdim=True).clamp(max=1 - 1e-15))

    return torch.cat([ta, rest(ta)], -1), torch.cat([tb, rest(tb)], -1)


def from_logits(logits_a: Any, logits_b: Any, top_k: int | None = None) -> dict[str, torch.Tensor]:
    """``{kind: tensor over the leading dims}`` for every kind of :data:`KINDS` plus ``agree`` (1 where
    the argmaxes agree), from logits (last axis = classes or vocabulary), in float64; ``kl`` is
    ``KL(P_a || P_b)`` (``a`` the reference: teacher, earlier checkpoint), ``reverse_kl`` ``KL(P_b || P_a)``.
    ``top_k``: the top-k approximation of the module docstring (lower bounds).

    >>> za, zb = torch.tensor([[0.0, 0.0]]), torch.tensor([[np.log(9.0), 0.0]])
    >>> d = from_logits(za, zb)
    >>> round(float(d["kl"]), 6), round(float(d["tv"]), 6), float(d["agree"])
    (0.510826, 0.4, 1.0)
    """
    za, zb = (torch.as_tensor(z).detach().to("cpu", torch.float64) for z in (logits_a, logits_b))
    if za.shape != zb.shape:
        raise ValueError(
            f"model_b: its outputs have shape {tuple(zb.shape)}, model_a's {tuple(za.shape)}; compare models with "
            "the same output classes (vocabulary)"
        )
    la, lb = torch.log_softmax(za, -1), torch.log_softmax(zb, -1)
    agree = (za.argmax(-1) == zb.argmax(-1)).double()
    if top_k is not None:
        top_k = count("top_k", top_k)
        if top_k < za.shape[-1]:
            la, lb = _topk(la, lb, top_k)
    pa, pb = la.exp(), lb.exp()
    fwd = (pa * (la - lb)).sum(-1)
    rev = (pb * (lb - la)).sum(-1)
    lm = torch.logaddexp(la, lb) - np.log(2.0)
    jsd = 0.5 * (pa * (la - lm)).sum(-1) + 0.5 * (pb * (lb - lm)).sum(-1)
    tvd = 0.5 * (pa - pb).abs().sum(-1)
    return {"kl": fwd.clamp_min(0), "reverse_kl": rev.clamp_min(0), "js": jsd.clamp_min(0), "tv": tvd, "agree": agree}


def _case():
    return (hostile_model(0), hostile_model(1), hostile_data()[0]), dict(n_resamples=10)


@probe("compare.output_divergence", tags=Tags(inputs="two_models", uses=("mode", "device")), case=_case)
def output_divergence(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Any,
    *,
    top_k: int | None = None,
    mask_key: str = "attention_mask",
    same_architecture: bool = True,
    n_resamples: int = 200,
    level: float = 0.95,
    ctx,
) -> xr.Dataset:
    """Forward and reverse KL, JS, total variation and argmax agreement between the output distributions
    (softmax of the outputs) of ``model_a`` (the reference: teacher, earlier checkpoint) and ``model_b`` on
    the inputs of ``data`` (see :func:`from_logits`), per example, and per position for sequence models.

    Outputs ``(batch, classes)`` give variables over ``example``; ``(batch, positions, vocab)`` give
    ``<kind>_token`` over ``("example", "position")`` (NaN at padding: positions where the batch's
    ``mask_key`` entry is 0 never count, whatever the logits there) and ``<kind>`` over ``example`` the
    mean over its real positions. ``mean``, ``low``, ``high`` over ``kind``: the mean over all real
    positions (examples weighted by their number of positions) with its ``level`` interval
    (:func:`workbench.stats.interval` over examples). ``agreement`` is the rate of equal argmaxes,
    ``disagreement`` ``1 - agreement``. With ``top_k``, the attrs ``approximation`` states the top-k
    approximation (lower bounds). ``same_architecture`` (default True): model_b must have model_a's
    parameter names and shapes (two checkpoints, two seeds); False compares any two models with the
    same outputs (a student and its teacher).

    >>> from workbench.testing import tiny_classifier
    >>> a, _, (x, _) = tiny_classifier(30, seed=0)
    >>> b, _, _ = tiny_classifier(30, seed=1)
    >>> ds = output_divergence(a, a, x, n_resamples=10, progress=False)
    >>> float(ds["mean"].sel(kind="kl")), float(ds["mean"].sel(kind="agreement"))
    (0.0, 1.0)
    >>> bool(output_divergence(a, b, x, n_resamples=10, progress=False)["kl"].min() > 0)
    True
    """
    check_model("model_a", model_a)
    check_model("model_b", model_b)
    if not boolean("same_architecture", same_architecture):
        pass
    elif _shapes(model_a) != _shapes(model_b):
        raise ValueError(
            "model_b: its parameters (names and shapes) differ from model_a's; to compare models of two "
            "architectures (a student and its teacher) pass same_architecture=False"
        )
    if top_k is not None:
        top_k = count("top_k", top_k)
    if not isinstance(mask_key, str):
        raise TypeError(f"mask_key: expected the name of the mask entry of mapping inputs, got {mask_key!r}")
    n_resamples = count("n_resamples", n_resamples, lo=10)
    level = real("level", level, lo=0.0, hi=1.0)
    if not 0 < level < 1:
        raise ValueError(f"level: expected a probability in (0, 1) such as 0.95, got {level}")
    dev_a, dt_a = model_device_dtype(model_a)
    dev_b, dt_b = model_device_dtype(model_b)
    batches_a = input_batches(data, ctx.device or dev_a, what="data", dtype=dt_a)
    batches_b = input_batches(data, ctx.device or dev_b, what="data", dtype=dt_b)
    names = (*KINDS, "agree")
    per_tok: dict[str, list] = {k: [] for k in names}
    per_ex: dict[str, list] = {k: [] for k in names}
    weights, seq = [], None
    with modes(model_a, ctx.mode), modes(model_b, ctx.mode), torch.no_grad():
        for ba, bb in ctx.iterate(list(zip(batches_a, batches_b)), desc="output_divergence"):
            za, zb = logits_of(model_a, ba, "model_a"), logits_of(model_b, bb, "model_b")
            d = from_logits(za, zb, top_k)
            seq = za.dim() == 3
            mask = padding_mask(ba, tuple(za.shape), mask_key) if seq else None
            if seq:
                mask = torch.ones(za.shape[:2], dtype=torch.bool) if mask is None else mask
                w = mask.double().sum(1)
                for k in names:
                    v = d[k].masked_fill(~mask, float("nan"))
                    per_tok[k].append(v.numpy())
                    per_ex[k].append((d[k] * mask).sum(1).numpy() / np.maximum(w.numpy(), 1))
                weights.append(w.numpy())
            else:
                for k in names:
                    per_ex[k].append(d[k].reshape(-1).numpy())
                weights.append(np.ones(za.shape[0]))
    w = np.concatenate(weights)
    ex = {k: np.concatenate(v) for k, v in per_ex.items()}
    ds = xr.Dataset()
    for k in names:
        name = "agreement" if k == "agree" else k
        ds[name] = ("example", np.where(w > 0, ex[k], np.nan), {"long_name": _LONG[k]})
        if seq:
            width = max(a.shape[1] for a in per_tok[k])
            tok = np.concatenate(
                [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=np.nan) for a in per_tok[k]]
            )
            ds[f"{name}_token"] = (("example", "position"), tok, {"long_name": _LONG[k] + " per position"})
    kinds = [*KINDS, "agreement", "disagreement"]
    rows = []
    for k in kinds:
        v = ex["agree"] if k in ("agreement", "disagreement") else ex[k]
        v = 1 - v if k == "disagreement" else v
        ok = w > 0
        if ok.sum() >= 3:
            r = interval(_weighted_mean, v[ok], w[ok], n_resamples=n_resamples, level=level, seed=ctx.seed)
        else:
            r = (_weighted_mean(v[ok], w[ok]), math.nan, math.nan)
        rows.append(r)
    est, lo, hi = (np.array(c, dtype=np.float64) for c in zip(*rows))
    ds["mean"] = ("kind", est, {"long_name": "mean over real positions (examples)"})
    ds["low"] = ("kind", lo, {"long_name": f"lower end of the {level:.0%} interval"})
    ds["high"] = ("kind", hi, {"long_name": f"upper end of the {level:.0%} interval"})
    ds = ds.assign_coords(kind=kinds)
    ds.attrs.update(units="nats", reference="model_a", sequence=int(bool(seq)), n_positions=float(w.sum()))
    if top_k is not None and top_k < za.shape[-1]:
        ds.attrs["approximation"] = (
            f"top-{top_k}: the {top_k} most probable classes of model_a plus one bucket for the rest of each "
            "distribution (KL, JS and TV are lower bounds of the full-vocabulary values)"
        )
    ctx.record(n_samples=int(len(w)))
    return ds


_LONG = {
    "kl": "KL(P_a || P_b)",
    "reverse_kl": "KL(P_b || P_a)",
    "js": "Jensen-Shannon divergence",
    "tv": "total variation distance",
    "agree": "argmax agreement",
}


def _shapes(model: nn.Module) -> list:
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


def _weighted_mean(v: np.ndarray, w: np.ndarray) -> float:
    s = float(np.sum(w))
    return float(np.sum(v * w) / s) if s > 0 else math.nan
