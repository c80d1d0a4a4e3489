"""Attention-entropy probe: per layer and head (and per example or query) entropy of attention
probabilities, maximum attention logit and first-token ("sink") mass, for any transformer,
under any attention kernel, without changing the model or its config.

Capture. A :class:`torch.overrides.TorchFunctionMode` is active during one forward pass and
intercepts

* ``F.scaled_dot_product_attention`` (HuggingFace sdpa, timm fused attention, hand-written code):
  the probabilities are recomputed from q, k, the mask, ``scale`` and ``is_causal`` (GQA aware);
* ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``; an
  active mode also turns off torch's fused fast path): called with ``need_weights=True,
  average_attn_weights=False`` and its per-head weights used; the caller gets what it asked for.
  Only probabilities come back, so the max logit is NaN on this path (softmax is shift-invariant);
* ``softmax`` over the last dim of a 4-D tensor inside a module whose class name contains
  "Attention" or that is named in ``attention_modules`` (eager HuggingFace attention, hand-written
  attention): the softmax input is the masked, scaled logits.

Under sdpa the attention output handed back to the model is computed from the same probabilities
(``softmax(z) @ v``, equal to the kernel's to float rounding; ``exact_outputs=True`` runs the kernel
instead); otherwise the real kernel runs. Each call is attributed to the
innermost module running it (temporary forward hooks); each such module is one ``layer``.

Definitions (Zhai et al. 2023 for entropy; Wortsman et al. 2023 for the logit):

* entropy of query row i: ``H_i = -sum_j p_ij ln p_ij`` over allowed keys (nats; padded or causally
  disallowed keys have p = 0);
* normalised entropy ``H_i / ln n_i``, n_i the number of allowed keys (``ln(i + 1)`` for causal rows;
  rows with one allowed key are left out of it);
* max attention logit: ``max_j q_i . k_j * scale`` over allowed keys (before the mask is added);
* sink mass ``p_i0``: the probability on the first key.

A query row counts if it is valid: in self-attention (equal query and key lengths) query i of example
b is valid iff key i is not padding (allowed for at least one query), or as given by the
``attention_mask`` of mapping inputs; fully masked rows never count. Per-head values are
token-weighted means over valid (example, query) rows, accumulated in float64. Reductions happen
inside the interception, block by block (at most ``query_chunk`` queries of one example, or of a few
examples when sequences are short; about 2 MB of logits on CPU, so that a block and its exp stay in
cache), so no layer's full attention tensor is kept: memory stays near a plain forward pass. Per row,
five passes over the block (max, shift, exp, sum, e * z') and two matmuls (q k^T, e v): on MiniLM at
8 x 512 tokens about 1.2x a plain sdpa forward (``benchmarks/attention.py``).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.overrides import TorchFunctionMode

from .registry import probe
from .results import provenance

_NEG = -1e30  # stands for "disallowed" in finite arithmetic (0 * _NEG is 0, not NaN)


def _block_elements(device) -> int:
    """Elements of one float32 (examples, heads, queries, keys) block. On CPU 2**19 (2 MB): the block
    and its exp stay in a core's L2 cache, and glibc serves it from the heap; blocks of 16 MB were
    fresh mmaps each time (page faults) and made the reduction 3x slower. Elsewhere 2**22."""
    return 1 << 19 if torch.device(device).type == "cpu" else 1 << 22


def _block(t, i, s, e, B, T):
    """Examples ``i`` (an index or a slice) and queries [s, e) of a (B|1, H|1, T|1, S) mask or bias,
    broadcast dims kept (the example dim dropped when ``i`` is an index)."""
    t = t[i] if t.shape[0] == B else (t[0] if isinstance(i, int) else t)
    return t[..., s:e, :] if t.shape[-2] == T and T > 1 else t


def _block_sums(z, blocked, v, rows, out, scale):
    """Row sums of one block of logits ``scale * z``: z ([g,] H, c, S) float32 (mask bias included,
    *overwritten*), ``scale`` > 0, ``blocked`` a bool mask of disallowed keys broadcastable to z, or None.
    Writes, per row, into ``rows`` (4, [g,] H, c) float32: m = max_j scale z_j, s = sum_j e_j,
    ez = sum_j e_j z'_j and e0 = e_0, with z'_j = scale z_j - m <= 0 and e_j = exp(z'_j); and
    softmax(scale z) @ v into ``out`` when v is given.

    One exp per element and no temporaries beyond e. Every z'_j <= 0, so ez sums terms of one sign
    and the entropy ln s - ez / s carries no error beyond the logits' own rounding (computing it from
    first moments, q . (e @ k), would cancel: 2e-5 nats at logits near 100). See :func:`_row_stats`. Few ops per block: each
    costs microseconds of Python on a block that takes about a millisecond."""
    m, s, ez, e0 = rows.unbind(0)
    if blocked is not None:
        z.masked_fill_(blocked, _NEG)
    mx = z.amax(-1, keepdim=True)  # max(scale z) = scale max(z) for scale > 0
    torch.mul(mx.squeeze(-1), scale, out=m)
    torch.add(mx.mul_(-scale), z, alpha=scale, out=z)  # z' = scale z - m in one pass
    e = torch.exp(z)
    torch.sum(e, -1, out=s)
    e0.copy_(e[..., 0])
    if v is not None:  # softmax @ v, before e is overwritten (matmul's own out= would go one matrix at a time)
        torch.div(e @ v, s.unsqueeze(-1), out=out)
    torch.sum(e.mul_(z), -1, out=ez)


def _row_stats(rows, n_allowed, valid_q, raw_max=None):
    """Per-row statistics from the (4, B, H, T) float32 row sums m, s, ez, e0 of :func:`_block_sums`;
    ``n_allowed`` (B|1, H|1, T|1) the number of allowed keys, ``valid_q`` (B, T) bool, ``raw_max`` the max
    logit before an additive bias if there was one. Returns dict of (B, H, T) float64 tensors (NaN where a
    row is invalid): entropy H = ln s - ez / s, normalised entropy H / ln n, max logit, sink mass e0 / s."""
    m, s, ez, e0 = rows.double().unbind(0)
    ent = torch.log(s) - ez / s
    n = n_allowed.double().expand(ent.shape)
    ok = (n > 0) & valid_q[:, None, :]
    nan = torch.full((), math.nan, dtype=torch.float64, device=ent.device)
    ent = torch.where(ok, ent.clamp_min(0), nan)
    return {"entropy": ent,
            "normalized_entropy": torch.where(ok & (n > 1), ent / torch.log(n.clamp_min(2)), nan),
            "max_logit": torch.where(ok, m if raw_max is None else raw_max.double(), nan),
            "sink_mass": torch.where(ok, e0 / s, nan)}


class _Capture(TorchFunctionMode):
    def __init__(self, model, query_mask, query_chunk, attention_modules, keep=None, exact_outputs=False):
        super().__init__()
        self.exact_outputs = exact_outputs
        self.query_mask = query_mask  # (B, T) bool or None
        self.chunk = int(query_chunk)
        self.layers: dict[str, list] = {}
        self.kinds: dict[str, str] = {}
        self.explicit = set(attention_modules or [])
        self.keep = keep  # (layer index, example) for an attention map, or None
        self.maps = {}
        self._mods = {n or "<model>": m for n, m in model.named_modules()}  # the root itself: "<model>", not ""
        self._names = {id(m): n for n, m in self._mods.items()}  # the model holds them: ids stay valid
        self._calls: dict[str, int] = {}

    # -- which module is running ------------------------------------------------------------------
    def _running(self):
        """Names of the model's modules whose code is on the Python call stack, innermost first, found
        from the frames' ``self`` when a kernel is intercepted (hooks on every module would tax every
        module call of the forward instead)."""
        f = sys._getframe(1)
        last = None
        while f is not None:
            co = f.f_code
            if "self" in co.co_varnames or "self" in co.co_freevars:
                name = self._names.get(id(f.f_locals.get("self")))  # by id: a module may be unhashable
                if name is not None and name != last:
                    yield name
                    last = name
            f = f.f_back

    def _layer(self, name):
        """One ``layer`` per call: a module that runs attention again in the same forward pass (shared
        weights, ALBERT-style) gets ``name#1``, ``name#2``, ..."""
        k = self._calls.get(name, 0)
        self._calls[name] = k + 1
        return name if k == 0 else f"{name}#{k}"

    def _current(self):
        return self._layer(next(self._running(), "<model>"))

    def _in_attention_module(self):
        """The innermost running module that computes attention with a softmax: named in
        ``attention_modules`` or of a class whose name contains "Attention"."""
        for n in self._running():
            if n in self.explicit or "attention" in type(self._mods[n]).__name__.lower():
                return self._layer(n)
        return None

    # -- interception --------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            out = self._sdpa(*args, **kwargs)
            return func(*args, **kwargs) if out is None else out
        if func is F.multi_head_attention_forward:
            return self._mha(func, args, kwargs)
        if func in (F.softmax, torch.softmax, torch.Tensor.softmax):
            x = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if isinstance(x, torch.Tensor) and x.dim() == 4 and dim in (-1, 3):
                owner = self._in_attention_module()
                if owner is not None:
                    allowed = (x > torch.finfo(x.dtype).min / 2) & torch.isfinite(x) | (x == math.inf)
                    self._record(owner, x.float(), allowed, "softmax")
        return func(*args, **kwargs)

    def _valid_queries(self, allowed_full, B, T, S):
        """(B, T) bool: valid query rows (see module docstring)."""
        if self.query_mask is not None and self.query_mask.shape == (B, T) and T == S:
            return self.query_mask.to(allowed_full.device)
        if T == S:  # self-attention: key i padding <=> query i padding
            key_used = allowed_full.any(dim=-2)  # (B|1, H|1, S): allowed for some query
            return key_used.all(dim=1).expand(B, S)
        return torch.ones(B, T, dtype=torch.bool, device=allowed_full.device)

    def _sdpa(self, q, k, v=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """Record the statistics; return the attention output computed from the same probabilities
        (or None to have the real kernel run: exact_outputs, dropout, fully masked rows)."""
        shape_q = q.shape
        if q.dim() != 4:
            q = q.reshape(-1, *q.shape[-3:]) if q.dim() > 4 else q[None]
            k = k.reshape(-1, *k.shape[-3:]) if k.dim() > 4 else k[None]
            v = None if v is None else (v.reshape(-1, *v.shape[-3:]) if v.dim() > 4 else v[None])
        B, H, T, d = q.shape
        S = k.shape[-2]
        if k.shape[1] != H:  # grouped-query attention
            k = k.repeat_interleave(H // k.shape[1], dim=1)
            v = None if v is None else v.repeat_interleave(H // v.shape[1], dim=1)
        scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
        bias, allowed = None, None
        if attn_mask is not None:
            m = attn_mask
            while m.dim() < 4:
                m = m[None]
            if m.dtype == torch.bool:
                allowed = m
            else:
                allowed = m > torch.finfo(m.dtype).min / 2
                bias = torch.where(allowed, m, torch.zeros((), dtype=m.dtype, device=m.device)).float()
                if not bool(bias.any()):
                    bias = None  # a pure padding mask: nothing to add to the logits
        if is_causal:
            causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
            allowed = causal[None, None] if allowed is None else allowed & causal
        if allowed is None:
            allowed = torch.ones(1, 1, T, S, dtype=torch.bool, device=q.device)
        fuse = (not self.exact_outputs and v is not None and not (dropout_p and dropout_p > 0)
                and bool(allowed.any(-1).all()) and q.dtype in (torch.float32, torch.float64))
        out = self._record(self._current(), None, allowed, "sdpa", q=q, k=k, scale=scale, bias=bias,
                           v=v if fuse else None)
        if out is None:
            return None
        return out.to(q.dtype).reshape(*shape_q[:-1], v.shape[-1])

    def _mha(self, func, args, kwargs):
        names = ["query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias",
                 "bias_k", "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
                 "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
                 "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal"]
        a = dict(zip(names, args))
        a.update(kwargs)
        want_w, avg = a.get("need_weights", True), a.get("average_attn_weights", True)
        a["need_weights"], a["average_attn_weights"] = True, False
        out, w = func(**a)  # w: (B, H, T, S), or (H, T, S) for unbatched inputs
        if w is not None:
            w4 = w if w.dim() == 4 else w[None]
            B, H, T, S = w4.shape
            allowed = torch.ones(B, 1, T, S, dtype=torch.bool, device=w4.device)
            kpm, am = a.get("key_padding_mask"), a.get("attn_mask")
            if kpm is not None:  # MHA semantics: True (or -inf) = not allowed
                bad = kpm if kpm.dtype == torch.bool else torch.isneginf(kpm)
                allowed = allowed & ~bad.reshape(-1, 1, 1, S)[:B] if bad.dim() > 1 else allowed & ~bad.reshape(1, 1, 1, S)
            if am is not None:
                bad = am if am.dtype == torch.bool else torch.isneginf(am)
                bad = bad.reshape(B, H, T, S) if bad.dim() == 3 else bad.reshape(1, 1, T, S)
                allowed = allowed & ~bad
            logits = torch.log(w4.float().clamp_min(1e-45))
            self._record(self._current(), logits, allowed, "multi_head_attention_forward", no_logit=True)
        if not want_w:
            return out, None
        return out, (w.mean(dim=-3) if avg and w is not None else w)

    # -- reduction ------------------------------------------------------------------------------------
    def _record(self, layer, logits, allowed, kind, q=None, k=None, scale=None, bias=None, no_logit=False, v=None):
        if q is not None:
            B, H, T, _ = q.shape
            S = k.shape[-2]
            dev = q.device
        else:
            B, H, T, S = logits.shape
            dev = logits.device
        valid = self._valid_queries(allowed, B, T, S)
        everything = bool(allowed.all())
        # blocks of (examples, heads, queries, keys): at most query_chunk queries and about _block_elements(dev)
        # elements; one example at a time (3-D views) unless one example's block is small
        budget = _block_elements(dev)
        c = max(1, min(self.chunk, T, budget // max(1, H * S)))
        g = max(1, min(B, budget // max(1, H * c * S)))
        if q is not None:
            fold = bias is None and scale > 0  # then the scale is applied in the shift pass: no scaled copy of q
            qs, kf, v1 = (q.float() if fold else q.float() * scale), k.float(), None if v is None else v.float()
            if g > 1:  # 4-D blocks: bmm would multiply strided views (HF's transposed q, k, v) a matrix at a time
                qs, kf, v1 = qs.contiguous(), kf.contiguous(), None if v1 is None else v1.contiguous()
            kT = kf.transpose(-1, -2)  # BLAS reads it transposed; per example, strided views need no copy
        z_scale = scale if q is not None and fold else 1.0
        rows = torch.empty(4, B, H, T, dtype=torch.float32, device=dev)  # m, s, ez, e0 per row
        raw_max = None if bias is None else torch.empty(B, H, T, dtype=torch.float32, device=dev)
        output = None  # in q's memory layout, as the kernels do (HF's transpose(1, 2).contiguous() is then free)
        if v is not None:
            output = (torch.empty_like(q, dtype=torch.float32) if v.shape[-1] == q.shape[-1] else
                      torch.empty(B, H, T, v.shape[-1], dtype=torch.float32, device=dev))
        blocked = None if everything else ~allowed
        for b0 in range(0, B, g):
            i = b0 if g == 1 else slice(b0, min(B, b0 + g))
            rows_i, out_i = rows[:, i], None if output is None else output[i]
            v_i = None if output is None else v1[i]
            if q is not None:
                q_i, k_i = qs[i], kT[i]
            for s in range(0, T, c):
                e = min(T, s + c)
                bl = None if blocked is None else _block(blocked, i, s, e, B, T)
                if q is not None:
                    z = q_i[..., s:e, :] @ k_i
                    if bias is not None:
                        zm = z if bl is None else z.masked_fill(bl, -math.inf)
                        torch.amax(zm, -1, out=raw_max[i][..., s:e])  # the max logit is taken before the bias
                        z.add_(_block(bias, i, s, e, B, T))
                else:
                    z = logits[i][..., s:e, :].clone()
                _block_sums(z, bl, v_i, rows_i[..., s:e], None if out_i is None else out_i[..., s:e, :], z_scale)
        n_allowed = allowed.sum(-1) if not everything else torch.full((1, 1, 1), S, device=dev)
        stats = _row_stats(rows, n_allowed, valid, raw_max)
        if no_logit:
            stats["max_logit"].fill_(math.nan)
        index = list(self.layers).index(layer) if layer in self.layers else len(self.layers)
        if self.keep is not None and self.keep == (index, self.keep[1]) and self.keep[1] < B:
            for s in range(0, T, c):  # only the requested layer's map of one example is kept
                self.maps.setdefault(layer, []).append(self._probs(q, k, scale, bias, logits, allowed, s, min(T, s + c)))
        self.layers.setdefault(layer, []).append({key: val.cpu() for key, val in stats.items()})  # (B, H, T)
        self.kinds[layer] = kind
        return output

    def _probs(self, q, k, scale, bias, logits, allowed, s, e):
        """Probabilities of queries [s, e) of the kept example: (H, e - s, S) on the CPU."""
        b = self.keep[1]
        B, T = (q if q is not None else logits).shape[0], (q if q is not None else logits).shape[2]
        if q is not None:
            z = (q[b, :, s:e].float() @ k[b].float().transpose(-1, -2)) * scale
            if bias is not None:
                z = z + _block(bias, b, s, e, B, T)
        else:
            z = logits[b, :, s:e]
        z = z.masked_fill(~_block(allowed, b, s, e, B, T), _NEG)
        return torch.softmax(z, -1).cpu()


def _query_mask(inputs):
    if isinstance(inputs, Mapping) and isinstance(inputs.get("attention_mask"), torch.Tensor):
        m = inputs["attention_mask"]
        if m.dim() == 2:
            return m.bool()
    return None


def _call(model, inputs, kwargs):
    if isinstance(inputs, Mapping):
        return model(**inputs, **kwargs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs, **kwargs)
    return model(inputs, **kwargs)


def _to_device(x, device):
    from .data import to_device

    return to_device(x, device)


def _is_batches(inputs):
    from torch.utils.data import DataLoader

    return isinstance(inputs, DataLoader) or (isinstance(inputs, list) and len(inputs) > 0 and
                                              all(isinstance(b, (Mapping, torch.Tensor)) for b in inputs))


def _run(model, inputs, forward_kwargs, resolution, query_chunk, attention_modules, keep=None, mode="eval",
         exact_outputs=False):
    from .params import model_device_dtype
    from .state import set_mode

    if resolution not in ("head", "example", "query"):
        raise ValueError(f"resolution: expected 'head', 'example' or 'query', got {resolution!r}")
    if int(query_chunk) < 1:
        raise ValueError(f"query_chunk: the number of queries reduced at a time must be >= 1 (128 is typical), "
                         f"got {query_chunk}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    set_mode(model, mode)
    device, _ = model_device_dtype(model)
    batches = list(inputs) if _is_batches(inputs) else [inputs]
    if not batches:
        raise ValueError("inputs: empty; pass a tensor, a mapping of tensors, or a DataLoader of them")
    per_layer: dict[str, list] = {}
    kinds, order, maps = {}, [], {}
    n_ex = 0
    for bi, batch in enumerate(batches):
        if _is_batches(inputs) and isinstance(batch, (tuple, list)) and len(batch) == 2 and \
                isinstance(batch[1], torch.Tensor) and batch[1].dim() == 1:
            batch = batch[0]  # (inputs, labels) from a DataLoader: the labels are not needed
        batch = _to_device(batch, device)
        cap = _Capture(model, _query_mask(batch), query_chunk, attention_modules,
                       keep=None if keep is None or bi > 0 else keep, exact_outputs=exact_outputs or keep is not None)
        with torch.no_grad(), cap:
            _call(model, batch, forward_kwargs)
        for name, parts in cap.layers.items():
            if name not in per_layer:
                order.append(name)
                per_layer[name] = []
            per_layer[name].extend(parts)
        kinds.update(cap.kinds)
        maps.update(cap.maps)
        n_ex += next(iter(cap.layers.values()))[0]["entropy"].shape[0] if cap.layers else 0
    if not order:
        raise ValueError(
            "model: no attention was captured. workbench intercepts F.scaled_dot_product_attention, "
            "F.multi_head_attention_forward and softmax inside modules whose class name contains 'Attention'. "
            "If the model has attention under another name, pass attention_modules=['<module name>', ...] naming "
            "the modules whose softmax computes the attention probabilities; if it calls a kernel that cannot be "
            "intercepted (flash-attn, xformers), load it with attn_implementation='eager' (HuggingFace) or "
            "TIMM_FUSED_ATTN=0 (timm)."
        )
    return order, per_layer, kinds, maps


def _stack(order, per_layer):
    """Concatenate calls per layer along examples: (L, B, H, T) arrays padded with NaN."""
    rows = {}
    for key in ("entropy", "normalized_entropy", "max_logit", "sink_mass"):
        mats = []
        for name in order:
            parts = per_layer[name]
            T = max(p[key].shape[-1] for p in parts)
            H = max(p[key].shape[1] for p in parts)
            padded = [p[key] if p[key].shape[-1] == T else
                      torch.nn.functional.pad(p[key], (0, T - p[key].shape[-1], 0, 0), value=math.nan) for p in parts]
            padded = [torch.cat([p, torch.full((p.shape[0], H - p.shape[1], T), math.nan, dtype=p.dtype)], 1)
                      if p.shape[1] < H else p for p in padded]
            mats.append(torch.cat(padded, dim=0))
        Tm = max(m.shape[-1] for m in mats)
        Hm = max(m.shape[1] for m in mats)
        mats = [m if m.shape[1:] == (Hm, Tm) else
                torch.nn.functional.pad(m, (0, Tm - m.shape[-1], 0, Hm - m.shape[1]), value=math.nan) for m in mats]
        rows[key] = torch.stack(mats).numpy()
    return rows


def _reduce(arr, how, axis):
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", RuntimeWarning)
        if how == "max":
            return np.nanmax(arr, axis=axis)
        return np.nanmean(arr, axis=axis)


def _dataset(order, per_layer, kinds, resolution):
    rows = _stack(order, per_layer)
    L, B, H, T = rows["entropy"].shape
    coords = {"layer": np.arange(L), "head": np.arange(H), "module": ("layer", np.array(order, dtype=object).astype(str))}
    how = {"entropy": "mean", "normalized_entropy": "mean", "max_logit": "max", "sink_mass": "mean"}
    meta = {
        "entropy": ("attention entropy", "nats"),
        "normalized_entropy": ("attention entropy / ln(number of allowed keys)", "1"),
        "max_logit": ("maximum attention logit q.k*scale", "1"),
        "sink_mass": ("attention probability on the first key", "1"),
    }
    data = {}
    for key, arr in rows.items():
        if resolution == "head":  # token-weighted over (example, query)
            v = _reduce(arr.transpose(0, 2, 1, 3).reshape(L, H, B * T), how[key], -1)
            dims = ("layer", "head")
        elif resolution == "example":
            v = _reduce(arr, how[key], -1).transpose(0, 2, 1)  # (L, H, B)
            dims = ("layer", "head", "example")
        elif resolution == "query":
            v = arr.transpose(0, 2, 1, 3)  # (L, H, B, T)
            dims = ("layer", "head", "example", "query")
        else:
            raise ValueError(f"resolution: expected 'head', 'example' or 'query', got {resolution!r}")
        data[key] = (dims, v, {"long_name": meta[key][0], "units": meta[key][1]})
    n_rows = np.isfinite(rows["entropy"]).transpose(0, 2, 1, 3).reshape(L, H, -1).sum(-1)
    data["n_rows"] = (("layer", "head"), n_rows.astype(np.int64), {"long_name": "valid query rows averaged"})
    ds = xr.Dataset(data, coords=coords)
    if resolution != "head":
        ds = ds.assign_coords(example=np.arange(B))
    if resolution == "query":
        ds = ds.assign_coords(query=np.arange(T))
    ds.attrs["capture"] = ",".join(sorted(set(kinds.values())))
    return ds


def _case():
    from .testing import hostile_transformer

    m, x, mask = hostile_transformer()
    return (m, x), dict(src_key_padding_mask=mask)


@probe("attention.attention_stats", case=_case)
def attention_stats(model: nn.Module, inputs, *, resolution: str = "head", query_chunk: int = 128,
                    attention_modules=None, mode: str = "eval", exact_outputs: bool = False,
                    **forward_kwargs) -> xr.Dataset:
    """Entropy, normalised entropy, max attention logit and sink mass per (layer, head) in one forward
    pass (see the module docstring for the definitions and masking rules).

    ``inputs``: a mapping (passed as keyword arguments, e.g. a tokenizer's output with
    ``attention_mask``), a tensor or tuple (passed positionally), or a DataLoader / list of such
    batches. ``forward_kwargs`` go to the forward call (``src_key_padding_mask``, ``mask``, ``is_causal``...).
    ``resolution``: ``"head"`` (token-weighted mean over valid rows), ``"example"`` or ``"query"``.
    ``exact_outputs``: under sdpa the attention output is by default computed from the probabilities the
    probe already has (``softmax(z) @ v``, equal to the kernel's to float rounding), which halves the
    attention work; ``True`` runs the model's own kernel as well.
    """
    order, per_layer, kinds, _ = _run(model, inputs, forward_kwargs, resolution, query_chunk, attention_modules,
                                      mode=mode, exact_outputs=exact_outputs)
    ds = _dataset(order, per_layer, kinds, resolution)
    ds.attrs.update(provenance("attention.attention_stats", dict(resolution=resolution, mode=mode,
                                                                 forward_kwargs=sorted(forward_kwargs)), model))
    return ds


def _case_entropy():
    from .testing import hostile_transformer

    m, x, mask = hostile_transformer()
    return (m, x), dict(src_key_padding_mask=mask, normalized=True)


@probe("attention.entropy", case=_case_entropy)
def entropy(model: nn.Module, inputs, *, normalized: bool = False, resolution: str = "head", query_chunk: int = 128,
            attention_modules=None, mode: str = "eval", exact_outputs: bool = False, **forward_kwargs) -> xr.DataArray:
    """Attention entropy in nats, ``-sum_j p_ij ln p_ij`` over allowed keys, averaged over valid
    (example, query) rows per (layer, head) (token-weighted); ``normalized=True`` divides each row by
    ``ln`` of its number of allowed keys. See :func:`attention_stats` for the arguments."""
    order, per_layer, kinds, _ = _run(model, inputs, forward_kwargs, resolution, query_chunk, attention_modules,
                                      mode=mode, exact_outputs=exact_outputs)
    ds = _dataset(order, per_layer, kinds, resolution)
    da = ds["normalized_entropy" if normalized else "entropy"].copy()
    da.attrs.update(provenance("attention.entropy", dict(normalized=normalized, resolution=resolution, mode=mode,
                                                         forward_kwargs=sorted(forward_kwargs)), model))
    da.attrs["capture"] = ds.attrs["capture"]
    return da


def _case_map():
    from .testing import hostile_transformer

    m, x, mask = hostile_transformer()
    return (m, x, 1), dict(example=1, src_key_padding_mask=mask)


@probe("attention.attention_map", case=_case_map)
def attention_map(model: nn.Module, inputs, layer: int, example: int = 0, *, attention_modules=None,
                  **forward_kwargs) -> xr.DataArray:
    """Full attention probabilities of one example at one layer, over (head, query, key)."""
    order, per_layer, kinds, maps = _run(model, inputs, forward_kwargs, "head", 128, attention_modules,
                                         keep=(layer, example))
    if not 0 <= layer < len(order):
        raise ValueError(f"layer: the model has {len(order)} attention layers (0..{len(order) - 1}), got {layer}")
    if order[layer] not in maps:
        raise ValueError(f"example: the first batch of inputs has no example {example}; pass an index below its size")
    p = torch.cat(maps[order[layer]], dim=-2).numpy()
    da = xr.DataArray(p, dims=("head", "query", "key"), name="attention",
                      attrs={"long_name": f"attention probabilities, {order[layer]}", "units": "1",
                             "module": order[layer], "example": int(example)})
    da.attrs.update(provenance("attention.attention_map", dict(layer=layer, example=example,
                                                              forward_kwargs=sorted(forward_kwargs)), model))
    return da


# -- detectors ---------------------------------------------------------------------------------

def detect_collapse(stats, threshold: float = 0.1) -> xr.DataArray:
    """Entropy collapse: heads whose mean normalised entropy is below ``threshold`` (default 0.1:
    the head puts nearly all its mass on one key; Zhai et al. 2023)."""
    ne = stats["normalized_entropy"] if isinstance(stats, xr.Dataset) else stats
    out = (ne < threshold).rename("collapsed")
    out.attrs = {"long_name": "entropy collapse", "threshold": float(threshold),
                 "reason": f"mean normalised entropy H / ln(n_keys) < {threshold}: attention concentrates on one key"}
    return out


def detect_overload(stats, threshold: float = 0.9, early_fraction: float = 1 / 3) -> xr.DataArray:
    """Entropic overload: heads in the first ``early_fraction`` of layers whose mean normalised
    entropy exceeds ``threshold`` (default 0.9: nearly uniform attention; Jha & Reagen 2025)."""
    ne = stats["normalized_entropy"] if isinstance(stats, xr.Dataset) else stats
    n_early = max(1, int(math.ceil(ne.sizes["layer"] * early_fraction)))
    early = xr.DataArray(np.arange(ne.sizes["layer"]) < n_early, dims="layer", coords={"layer": ne.layer})
    out = ((ne > threshold) & early).rename("overloaded")
    out.attrs = {"long_name": "entropic overload", "threshold": float(threshold), "early_layers": int(n_early),
                 "reason": f"mean normalised entropy > {threshold} in the first {n_early} layer(s): near-uniform attention"}
    return out


# -- from the weights alone --------------------------------------------------------------------

def _qk_weights(model):
    """[(module name, W_Q (H, d_h, D), W_K (H, d_h, D))] for recognised attention modules."""
    out = []
    for name, m in model.named_modules():
        q = k = None
        H = None
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            D = m.embed_dim
            q, k, H = m.in_proj_weight[:D], m.in_proj_weight[D:2 * D], m.num_heads
        else:
            for qa, ka in (("query", "key"), ("q", "k"), ("q_proj", "k_proj")):
                qm, km = getattr(m, qa, None), getattr(m, ka, None)
                if isinstance(qm, nn.Linear) and isinstance(km, nn.Linear):
                    q, k = _eff_weight(qm), _eff_weight(km)
                    H = getattr(m, "num_attention_heads", None) or getattr(m, "heads", None) or \
                        getattr(m, "num_heads", None)
                    break
        if q is not None and H:
            d_h = q.shape[0] // H
            out.append((name, q.detach().reshape(H, d_h, -1), k.detach().reshape(H, d_h, -1)))
    return out


def _eff_weight(lin):
    if hasattr(lin, "effective_weight"):
        was = lin.training
        lin.eval()
        try:
            return lin.effective_weight()
        finally:
            lin.train(was)
    return lin.weight


def qk_spectral_norms(model: nn.Module) -> xr.DataArray:
    """sigma_h = ||W_Q^h^T W_K^h||_2 / sqrt(d_h) per (layer, head): the largest attention logit a pair of
    unit-norm inputs can produce (Zhai et al. 2023 bound attention entropy from below by a function of
    it). Recognises nn.MultiheadAttention and modules with query/key, q/k or q_proj/k_proj Linears."""
    from .state import preserve

    with preserve(model), torch.no_grad():
        ws = _qk_weights(model)
        if not ws:
            raise ValueError("model: no attention module with recognisable query/key projections "
                             "(nn.MultiheadAttention, or Linear attributes query/key, q/k, q_proj/k_proj)")
        H = max(w[1].shape[0] for w in ws)
        arr = np.full((len(ws), H), np.nan)
        for i, (_, wq, wk) in enumerate(ws):
            d_h = wq.shape[1]
            for h in range(wq.shape[0]):
                arr[i, h] = float(torch.linalg.matrix_norm(wq[h].double().T @ wk[h].double(), ord=2)) / math.sqrt(d_h)
    return xr.DataArray(arr, dims=("layer", "head"), name="qk_spectral_norm",
                        coords={"layer": np.arange(len(ws)), "head": np.arange(H),
                                "module": ("layer", [w[0] for w in ws])},
                        attrs={"long_name": "||W_Q^T W_K||_2 / sqrt(d_h)", "units": "1"})


def entropy_lower_bound(sigma, n_keys, *, constraint: str = "norm"):
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

    LayerNorm's learned gain makes real inputs non-unit, so for a trained model read it as a trend."""
    if constraint not in ("norm", "box"):
        raise ValueError(f"constraint: expected 'norm' (||logits||_2 <= sigma, Zhai et al.) or 'box' "
                         f"(|logit| <= sigma), got {constraint!r}")
    s = np.asarray(sigma, dtype=float)
    T = np.asarray(n_keys, dtype=float)
    if np.any(T < 1):
        raise ValueError("n_keys: the number of keys must be at least 1")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise ValueError(f"sigma: expected a finite spectral norm >= 0 (qk_spectral_norms), got {sigma}")
    gap = 2 * s if constraint == "box" else s * np.sqrt(T / np.maximum(T - 1, 1))
    r = (T - 1) * np.exp(-gap)
    return np.log1p(r) + gap * r / (1 + r)


# -- across checkpoints ----------------------------------------------------------------------

def over_checkpoints(models, inputs, *, losses=None, dim: str = "checkpoint", progress: bool = True,
                     **kwargs) -> xr.Dataset:
    """:func:`attention_stats` for each model of a list / dict (checkpoints of a run), stacked along
    ``dim`` ("checkpoint" or "step"), with ``losses`` (e.g. the training loss) alongside."""
    from tqdm.auto import tqdm

    items = list(models.items()) if isinstance(models, dict) else list(enumerate(models))
    if not items:
        raise ValueError("models: empty; pass a list or dict of models (the checkpoints of a run)")
    parts = [attention_stats(m, inputs, **kwargs) for _, m in tqdm(items, desc="attention over checkpoints",
                                                                    disable=not progress, leave=False)]
    ds = xr.concat(parts, dim=dim, combine_attrs="drop_conflicts").assign_coords({dim: [k for k, _ in items]})
    if losses is not None:
        ds["loss"] = (dim, np.asarray(list(losses), float), {"long_name": "training loss"})
    return ds
