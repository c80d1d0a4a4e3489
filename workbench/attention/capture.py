"""Capture of attention during one forward pass, under any attention kernel, without changing the model.

A :class:`torch.overrides.TorchFunctionMode` (:class:`Capture`) is active during the forward pass and
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
instead); otherwise the real kernel runs. Each call is attributed to the innermost module of the model
running it (found from the Python frames); each such module is one ``layer``, and a module that runs
attention twice in one pass (shared weights) is two layers, ``name`` and ``name#1``. Every call is
reduced at once, block by block (:mod:`workbench.attention.reduction`), to per-row statistics.

A query row counts if it is valid: in self-attention (equal query and key lengths) query i of example
b is valid iff key i is not padding (allowed for at least one query), or as given by the
``attention_mask`` of mapping inputs; fully masked rows never count.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..state import run_shielded
from .reduction import BlockLayout, Call, nonfinite_rows, probabilities, reduce_rows, row_stats

_MHA_ARGS = (
    "query",
    "key",
    "value",
    "embed_dim_to_check",
    "num_heads",
    "in_proj_weight",
    "in_proj_bias",
    "bias_k",
    "bias_v",
    "add_zero_attn",
    "dropout_p",
    "out_proj_weight",
    "out_proj_bias",
    "training",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "use_separate_proj_weight",
    "q_proj_weight",
    "k_proj_weight",
    "v_proj_weight",
    "static_k",
    "static_v",
    "average_attn_weights",
    "is_causal",
)


class Capture(TorchFunctionMode):
    """Per-row attention statistics of every attention call in the forward passes run inside it.

    ``query_mask`` (B, T) bool marks valid query rows (or None: derived from the key mask);
    ``query_chunk`` bounds the queries per block; ``attention_modules`` names modules whose 4-D softmax
    is attention; ``keep=(layer index, example)`` also keeps that layer's probabilities of one example
    in ``maps``; ``check`` is called at every intercepted call (a cancellation point). After the pass,
    ``layers`` maps each layer name to a list of dicts of (B, H, T) float64 CPU tensors (``entropy``,
    ``normalized_entropy``, ``max_logit``, ``sink_mass``), and ``kinds`` to the path that captured it.

    >>> import torch
    >>> mha = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    >>> cap = Capture(mha, None, 128, None)
    >>> with torch.no_grad(), cap:
    ...     _ = mha(*[torch.randn(2, 5, 8)] * 3)
    >>> list(cap.layers), cap.kinds, tuple(cap.layers["<model>"][0]["entropy"].shape)
    (['<model>'], {'<model>': 'multi_head_attention_forward'}, (2, 2, 5))
    """

    #: marks workbench's own mode: one found around a probe call was left by an interrupt and is dropped
    workbench_owned = True
    _pushed = False

    # push and pop shielded from Ctrl-C (and idempotent): an interrupt between the push and the ``with`` block,
    # or inside the exit before the pop, would leave the capture intercepting every later torch call
    def __enter__(self):
        def push():
            if not self._pushed:
                torch._C._push_on_torch_function_stack(self)
                self._pushed = True

        try:
            run_shielded(push)  # a Ctrl-C held during the push is raised at its end ...
        except BaseException:
            run_shielded(self._pop)  # ... when no with block will call __exit__: pop here, then pass it on
            raise
        return self

    def _pop(self):
        if self._pushed:
            torch._C._pop_torch_function_stack()
            self._pushed = False

    def __exit__(self, exc_type, exc_val, exc_tb):
        run_shielded(self._pop)

    def __init__(
        self,
        model: nn.Module,
        query_mask: torch.Tensor | None,
        query_chunk: int,
        attention_modules: Iterable[str] | None,
        keep: tuple[int, int] | None = None,
        exact_outputs: bool = False,
        check: Callable[[], None] | None = None,
    ):
        super().__init__()
        self.exact_outputs = exact_outputs
        self.query_mask = query_mask  # (B, T) bool or None
        self.chunk = int(query_chunk)
        self.layers: dict[str, list] = {}
        self.kinds: dict[str, str] = {}
        self.explicit = set(attention_modules or [])
        self.keep = keep  # (layer index, example) for an attention map, or None
        self.maps: dict[str, list] = {}
        self.check = check
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
                    self._record(owner, Call(allowed, logits=x.float()), "softmax")
        return func(*args, **kwargs)

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
        allowed, bias = _sdpa_mask(attn_mask)
        if is_causal:
            causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
            allowed = causal[None, None] if allowed is None else allowed & causal
        if allowed is None:
            allowed = torch.ones(1, 1, T, S, dtype=torch.bool, device=q.device)
        fuse = (
            not self.exact_outputs
            and v is not None
            and not (dropout_p and dropout_p > 0)
            and bool(allowed.any(-1).all())
            and q.dtype in (torch.float32, torch.float64)
        )
        call = Call(allowed, q=q, k=k, scale=scale, bias=bias, v=v if fuse else None)
        out = self._record(self._current(), call, "sdpa")
        if out is None:
            return None
        return out.to(q.dtype).reshape(*shape_q[:-1], v.shape[-1])

    def _mha(self, func, args, kwargs):
        a = dict(zip(_MHA_ARGS, args))
        a.update(kwargs)
        want_w, avg = a.get("need_weights", True), a.get("average_attn_weights", True)
        a["need_weights"], a["average_attn_weights"] = True, False
        out, w = func(**a)  # w: (B, H, T, S), or (H, T, S) for unbatched inputs
        if w is not None:
            w4 = w if w.dim() == 4 else w[None]
            allowed = _mha_allowed(w4.shape, w4.device, a.get("key_padding_mask"), a.get("attn_mask"))
            logits = torch.log(w4.float().clamp_min(1e-45))
            self._record(self._current(), Call(allowed, logits=logits), "multi_head_attention_forward", no_logit=True)
        if not want_w:
            return out, None
        return out, (w.mean(dim=-3) if avg and w is not None else w)

    # -- reduction ------------------------------------------------------------------------------------
    def _valid_queries(self, allowed, B, T, S):
        """(B, T) bool: valid query rows (see the module docstring)."""
        if self.query_mask is not None and self.query_mask.shape == (B, T) and T == S:
            return self.query_mask.to(allowed.device)
        if T == S:  # self-attention: key i padding <=> query i padding
            key_used = allowed.any(dim=-2)  # (B|1, H|1, S): allowed for some query
            return key_used.all(dim=1).expand(B, S)
        return torch.ones(B, T, dtype=torch.bool, device=allowed.device)

    def _record(self, layer: str, call: Call, kind: str, no_logit: bool = False):
        """Reduce one call to per-row statistics of ``layer``; returns the attention output when the call
        carried v (the probe computed it), else None."""
        if self.check is not None:
            self.check()
        B, H, T, S = call.shape
        valid = self._valid_queries(call.allowed, B, T, S)
        layout = BlockLayout.of(B, H, T, S, self.chunk, call.device)
        sums = reduce_rows(call, layout)
        bad = nonfinite_rows(sums.rows, call.n_allowed(), valid)
        if bad:
            raise ValueError(
                f"model: the attention logits of {layer!r} are NaN or inf in {bad} valid query rows; the model's "
                "weights or activations are not finite there (or overflow), so no statistic would be meaningful"
            )
        stats = row_stats(sums.rows, call.n_allowed(), valid, sums.raw_max)
        if no_logit:
            stats["max_logit"].fill_(math.nan)
        self._keep_map(layer, call, layout)
        self.layers.setdefault(layer, []).append({key: val.cpu() for key, val in stats.items()})  # (B, H, T)
        self.kinds[layer] = kind
        return sums.output

    def _keep_map(self, layer, call, layout):
        """Keep the probabilities of the requested layer's example (only that one: a map of every layer
        would be the full attention tensor), block by block."""
        if self.keep is None:
            return
        index = list(self.layers).index(layer) if layer in self.layers else len(self.layers)
        want, example = self.keep
        if index == want and example < layout.B:
            for s, e in layout.query_ranges():
                self.maps.setdefault(layer, []).append(probabilities(call, example, s, e))


def _sdpa_mask(attn_mask):
    """(allowed, bias) of an sdpa ``attn_mask``: bool masks are ``allowed``; float masks allow the
    entries above half the dtype's minimum, and their finite part is an additive bias (None when it is
    all zero: a pure padding mask)."""
    if attn_mask is None:
        return None, None
    m = attn_mask
    while m.dim() < 4:
        m = m[None]
    if m.dtype == torch.bool:
        return m, None
    allowed = m > torch.finfo(m.dtype).min / 2
    bias = torch.where(allowed, m, torch.zeros((), dtype=m.dtype, device=m.device)).float()
    return allowed, (bias if bool(bias.any()) else None)


def _mha_allowed(shape, device, key_padding_mask, attn_mask):
    """(B, 1|H, T, S) allowed keys of ``F.multi_head_attention_forward``'s masks (True or -inf: not allowed)."""
    B, H, T, S = shape
    allowed = torch.ones(B, 1, T, S, dtype=torch.bool, device=device)
    if key_padding_mask is not None:
        bad = key_padding_mask if key_padding_mask.dtype == torch.bool else torch.isneginf(key_padding_mask)
        allowed = allowed & ~bad.reshape(-1, 1, 1, S)[:B] if bad.dim() > 1 else allowed & ~bad.reshape(1, 1, 1, S)
    if attn_mask is not None:
        bad = attn_mask if attn_mask.dtype == torch.bool else torch.isneginf(attn_mask)
        bad = bad.reshape(B, H, T, S) if bad.dim() == 3 else bad.reshape(1, 1, T, S)
        allowed = allowed & ~bad
    return allowed
