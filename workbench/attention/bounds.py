"""Attention from the weights alone: the spectral norms of W_Q^T W_K per head (:func:`qk_spectral_norms`)
and the lower bound they put on attention entropy (:func:`entropy_lower_bound`, Zhai et al. 2023)."""

from __future__ import annotations

import math

import numpy as np
import torch
import xarray as xr
from numpy.typing import ArrayLike
from torch import nn

from ..registry import Context, Tags, probe


def _effective_weight(lin: nn.Linear) -> torch.Tensor:
    """The weight a Linear applies: ``effective_weight()`` in eval mode when it has one (sigma-reparam)."""
    if hasattr(lin, "effective_weight"):
        was = lin.training
        lin.eval()
        try:
            return lin.effective_weight()
        finally:
            lin.train(was)
    return lin.weight


def qk_weights(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``[(module name, W_Q (H, d_h, D), W_K (H, d_h, D))]`` of the recognised attention modules:
    ``nn.MultiheadAttention`` (packed in_proj_weight) and modules with Linear attributes query/key, q/k
    or q_proj/k_proj and a head count (``num_attention_heads``, ``heads`` or ``num_heads``).

    >>> [(n, tuple(q.shape)) for n, q, k in qk_weights(nn.MultiheadAttention(8, 2))]
    [('', (2, 4, 8))]
    """
    out = []
    for name, m in model.named_modules():
        q = k = None
        H = None
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            D = m.embed_dim
            q, k, H = m.in_proj_weight[:D], m.in_proj_weight[D : 2 * D], m.num_heads
        else:
            for qa, ka in (("query", "key"), ("q", "k"), ("q_proj", "k_proj")):
                qm, km = getattr(m, qa, None), getattr(m, ka, None)
                if isinstance(qm, nn.Linear) and isinstance(km, nn.Linear):
                    q, k = _effective_weight(qm), _effective_weight(km)
                    H = (
                        getattr(m, "num_attention_heads", None)
                        or getattr(m, "heads", None)
                        or getattr(m, "num_heads", None)
                    )
                    break
        if q is not None and H:
            d_h = q.shape[0] // H
            out.append((name, q.detach().reshape(H, d_h, -1), k.detach().reshape(H, d_h, -1)))
    return out


@probe("attention.qk_spectral_norms", tags=Tags(inputs="model", attention=True, uses=()))
def qk_spectral_norms(model: nn.Module, *, ctx: Context) -> xr.DataArray:
    """``sigma_h = ||W_Q^h^T W_K^h||_2 / sqrt(d_h)`` per (layer, head), in float64: the largest attention
    logit a pair of unit-norm inputs can produce (Zhai et al. 2023 bound attention entropy from below by
    a function of it, :func:`entropy_lower_bound`). Recognises nn.MultiheadAttention and modules with
    query/key, q/k or q_proj/k_proj Linears; NaN pads layers with fewer heads.

    >>> from workbench.attention import qk_spectral_norms
    >>> from workbench.testing import hostile_transformer
    >>> s = qk_spectral_norms(hostile_transformer()[0], progress=False)
    >>> s.dims, s.shape, s.module.values.tolist()
    (('layer', 'head'), (2, 4), ['encoder.layers.0.self_attn', 'encoder.layers.1.self_attn'])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    with torch.no_grad():
        ws = qk_weights(model)
        if not ws:
            raise ValueError(
                "model: no attention module with recognisable query/key projections "
                "(nn.MultiheadAttention, or Linear attributes query/key, q/k, q_proj/k_proj)"
            )
        H = max(w[1].shape[0] for w in ws)
        arr = np.full((len(ws), H), np.nan)
        for i, (name, wq, wk) in enumerate(ctx.iterate(ws, desc="spectral norms")):
            if not (bool(torch.isfinite(wq).all()) and bool(torch.isfinite(wk).all())):
                raise ValueError(f"model: the query / key weights of {name or '<model>'!r} contain NaN or inf values")
            d_h = wq.shape[1]
            for h in range(wq.shape[0]):
                arr[i, h] = float(torch.linalg.matrix_norm(wq[h].double().T @ wk[h].double(), ord=2)) / math.sqrt(d_h)
    return xr.DataArray(
        arr,
        dims=("layer", "head"),
        name="qk_spectral_norm",
        coords={"layer": np.arange(len(ws)), "head": np.arange(H), "module": ("layer", [w[0] for w in ws])},
        attrs={"long_name": "||W_Q^T W_K||_2 / sqrt(d_h)", "units": "1"},
    )


def entropy_lower_bound(sigma: ArrayLike, n_keys: ArrayLike, *, constraint: str = "norm") -> np.ndarray | float:
    """Lower bound on the entropy (nats) of one attention row over ``T = n_keys`` keys, given a bound
    ``sigma`` on its logits. With ``Delta`` the largest gap the constraint allows between the top logit
    and all the others,

    ``H >= ln(1 + (T - 1) e^-Delta) + Delta (T - 1) e^-Delta / (1 + (T - 1) e^-Delta)``,

    attained by the row with one logit on top and the other T - 1 equal. It is ln T at sigma = 0 and
    falls exponentially in sigma: a small spectral norm keeps attention from collapsing.

    * ``constraint="norm"`` (Zhai et al. 2023, Thm 3.1): the logit row a has ``||a||_2 <= sigma``, as
      for ``a_i = X W x_i`` with ``||W||_2 = sigma`` (:func:`qk_spectral_norms`) and
      ``||x_i|| ||X||_2 <= 1``. The extreme row is ``sigma sqrt((T-1)/T)`` and ``-sigma / sqrt(T (T-1))``:
      ``Delta = sigma sqrt(T / (T - 1))``.
    * ``constraint="box"``: every logit in ``[-sigma, sigma]``, as for unit-norm tokens
      (``||x_i|| <= 1`` only, a weaker assumption, hence a lower bound): ``Delta = 2 sigma``.

    LayerNorm's learned gain makes real inputs non-unit, so for a trained model read it as a trend.
    ``sigma`` and ``n_keys`` broadcast (numpy); returns an array of their broadcast shape.

    >>> float(entropy_lower_bound(0.0, 10))  # ln 10: uniform attention
    2.302585092994046
    >>> entropy_lower_bound([1.0, 3.0], 10).round(4).tolist(), float(entropy_lower_bound(3.0, 10, constraint="box"))
    ([2.2191, 1.1952], 0.1530)
    """
    if constraint not in ("norm", "box"):
        raise ValueError(
            f"constraint: expected 'norm' (||logits||_2 <= sigma, Zhai et al.) or 'box' "
            f"(|logit| <= sigma), got {constraint!r}"
        )
    s = np.asarray(sigma, dtype=float)
    T = np.asarray(n_keys, dtype=float)
    if np.any(T < 1):
        raise ValueError("n_keys: the number of keys must be at least 1")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"sigma: expected a finite spectral norm >= 0 (qk_spectral_norms), got {sigma}")
    gap = 2 * s if constraint == "box" else s * np.sqrt(T / np.maximum(T - 1, 1))
    r = (T - 1) * np.exp(-gap)
    return np.log1p(r) + gap * r / (1 + r)
