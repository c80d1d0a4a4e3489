"""Block-wise reduction of attention logits to per-row statistics, without keeping the attention tensor.

An intercepted attention call (:class:`Call`) is reduced in blocks of (examples, heads, queries, keys):
at most ``query_chunk`` queries of one example, or of a few examples when sequences are short, and about
:func:`block_elements` elements, so that a block and its exp stay in cache and memory stays near a plain
forward pass (:class:`BlockLayout`). Per block and row, :func:`block_sums` makes five passes (max,
shift, exp, sum, e * z') after the q k^T matmul, and one more matmul (e v) when it also produces the
attention output. :func:`row_stats` turns the row sums into entropy, normalised entropy, max logit and
sink mass; :func:`probabilities` recomputes the softmax of a few rows (the map one keeps).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

#: stands for "disallowed" in finite arithmetic (0 * NEG is 0, not NaN)
NEG = -1e30


def block_elements(device: torch.device | str) -> int:
    """Elements of one float32 (examples, heads, queries, keys) block: 2**19 (2 MB) on CPU, so that a
    block and its exp stay in a core's L2 cache and come from the heap rather than fresh mmaps; 2**22
    elsewhere.

    >>> block_elements("cpu")
    524288
    """
    return 1 << 19 if torch.device(device).type == "cpu" else 1 << 22


def block_of(t: torch.Tensor, i: int | slice, s: int, e: int, B: int, T: int) -> torch.Tensor:
    """Examples ``i`` (an index or a slice) and queries [s, e) of a (B|1, H|1, T|1, S) mask or bias,
    broadcast dims kept (the example dim dropped when ``i`` is an index).

    >>> block_of(torch.zeros(2, 1, 5, 5), 1, 0, 3, B=2, T=5).shape
    torch.Size([1, 3, 5])
    >>> block_of(torch.zeros(1, 1, 1, 5), slice(0, 2), 0, 3, B=2, T=5).shape  # broadcast dims stay 1
    torch.Size([1, 1, 1, 5])
    """
    t = t[i] if t.shape[0] == B else (t[0] if isinstance(i, int) else t)
    return t[..., s:e, :] if t.shape[-2] == T and T > 1 else t


@dataclass
class Call:
    """One intercepted attention call: either ``q`` (B, H, T, d) and ``k`` (B, H, S, d) with ``scale``,
    an additive float ``bias`` (B|1, H|1, T|1, S) or None and, when the probe computes the attention
    output itself, ``v`` (B, H, S, d_v); or the ``logits`` (B, H, T, S) float32 themselves (softmax input,
    or log-probabilities). ``allowed`` (B|1, H|1, T|1, S) bool marks the keys each query may attend to.

    >>> c = Call(torch.ones(1, 1, 1, 4, dtype=torch.bool), logits=torch.zeros(2, 3, 5, 4))
    >>> c.shape, c.everything
    ((2, 3, 5, 4), True)
    """

    allowed: torch.Tensor
    logits: torch.Tensor | None = None
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    scale: float = 1.0
    bias: torch.Tensor | None = None
    v: torch.Tensor | None = None

    def __post_init__(self):
        self.everything = bool(self.allowed.all())  # no key is masked anywhere

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, H, T, S): examples, heads, queries, keys."""
        if self.q is not None:
            B, H, T, _ = self.q.shape
            return B, H, T, self.k.shape[-2]
        return tuple(self.logits.shape)

    @property
    def device(self) -> torch.device:
        return (self.q if self.q is not None else self.logits).device

    def n_allowed(self) -> torch.Tensor:
        """(B|1, H|1, T|1) number of allowed keys per row."""
        if self.everything:
            return torch.full((1, 1, 1), self.shape[-1], device=self.device)
        return self.allowed.sum(-1)


@dataclass(frozen=True)
class BlockLayout:
    """How a (B, H, T, S) call is cut into blocks: ``examples`` examples (1: one example at a time,
    3-D views) by ``queries`` queries, at most ``query_chunk`` queries and about :func:`block_elements`
    elements per block.

    >>> lay = BlockLayout.of(B=8, H=12, T=512, S=512, query_chunk=128, device="cpu")
    >>> lay.queries, lay.examples, len(list(lay.query_ranges()))
    (85, 1, 7)
    """

    B: int
    T: int
    queries: int
    examples: int

    @classmethod
    def of(cls, B: int, H: int, T: int, S: int, query_chunk: int, device: torch.device | str) -> BlockLayout:
        budget = block_elements(device)
        c = max(1, min(query_chunk, T, budget // max(1, H * S)))
        g = max(1, min(B, budget // max(1, H * c * S)))
        return cls(B, T, c, g)

    def example_blocks(self) -> Iterator[int | slice]:
        """An example index (one example per block) or a slice of examples."""
        g = self.examples
        for b0 in range(0, self.B, g):
            yield b0 if g == 1 else slice(b0, min(self.B, b0 + g))

    def query_ranges(self) -> Iterator[tuple[int, int]]:
        """[s, e) query ranges."""
        for s in range(0, self.T, self.queries):
            yield s, min(self.T, s + self.queries)


def block_sums(
    z: torch.Tensor,
    blocked: torch.Tensor | None,
    v: torch.Tensor | None,
    rows: torch.Tensor,
    out: torch.Tensor | None,
    scale: float,
) -> None:
    """Row sums of one block of logits ``scale * z``: z ([g,] H, c, S) float32 (mask bias included,
    *overwritten*), ``scale`` > 0, ``blocked`` a bool mask of disallowed keys broadcastable to z, or None.
    Writes, per row, into ``rows`` (4, [g,] H, c) float32: m = max_j scale z_j, s = sum_j e_j,
    ez = sum_j e_j z'_j and e0 = e_0, with z'_j = scale z_j - m <= 0 and e_j = exp(z'_j); and
    softmax(scale z) @ v into ``out`` when v is given.

    One exp per element and no temporaries beyond e. Every z'_j <= 0, so ez sums terms of one sign
    and the entropy ln s - ez / s carries no error beyond the logits' own rounding (computing it from
    first moments, q . (e @ k), would cancel: 2e-5 nats at logits near 100). See :func:`row_stats`. Few
    ops per block: each costs microseconds of Python on a block that takes about a millisecond.

    >>> rows = torch.empty(4, 1, 2)
    >>> block_sums(torch.zeros(1, 2, 4), None, None, rows, None, 1.0)  # uniform rows over 4 keys
    >>> rows[:, 0, 0].tolist()  # m, s, ez, e0
    [0.0, 4.0, 0.0, 1.0]
    """
    m, s, ez, e0 = rows.unbind(0)
    if blocked is not None:
        z.masked_fill_(blocked, NEG)
    mx = z.amax(-1, keepdim=True)  # max(scale z) = scale max(z) for scale > 0
    torch.mul(mx.squeeze(-1), scale, out=m)
    torch.add(mx.mul_(-scale), z, alpha=scale, out=z)  # z' = scale z - m in one pass
    e = torch.exp(z)
    torch.sum(e, -1, out=s)
    e0.copy_(e[..., 0])
    if v is not None:  # softmax @ v, before e is overwritten (matmul's own out= would go one matrix at a time)
        torch.div(e @ v, s.unsqueeze(-1), out=out)
    torch.sum(e.mul_(z), -1, out=ez)


@dataclass
class RowSums:
    """What :func:`reduce_rows` produces: ``rows`` (4, B, H, T) float32 (m, s, ez, e0 of
    :func:`block_sums`), ``raw_max`` (B, H, T) the max logit before an additive bias (None without one)
    and ``output`` the attention output softmax(z) @ v in q's memory layout (None unless v was given)."""

    rows: torch.Tensor
    raw_max: torch.Tensor | None
    output: torch.Tensor | None

    @classmethod
    def allocate(cls, call: Call) -> RowSums:
        B, H, T, _ = call.shape
        dev = call.device
        rows = torch.empty(4, B, H, T, dtype=torch.float32, device=dev)  # m, s, ez, e0 per row
        raw_max = None if call.bias is None else torch.empty(B, H, T, dtype=torch.float32, device=dev)
        output = None  # in q's memory layout, as the kernels do (HF's transpose(1, 2).contiguous() is then free)
        if call.v is not None:
            output = (
                torch.empty_like(call.q, dtype=torch.float32)
                if call.v.shape[-1] == call.q.shape[-1]
                else torch.empty(B, H, T, call.v.shape[-1], dtype=torch.float32, device=dev)
            )
        return cls(rows, raw_max, output)


@dataclass
class Operands:
    """The float32 operands of the blocked matmuls: ``q`` (times the scale unless the scale is folded
    into :func:`block_sums`' shift pass, possible without a bias), ``kT`` (k transposed), ``v``, and
    ``scale``, the scale left for the shift pass (1 when q carries it). All None for a logits call."""

    q: torch.Tensor | None
    kT: torch.Tensor | None
    v: torch.Tensor | None
    scale: float

    @classmethod
    def of(cls, call: Call, layout: BlockLayout) -> Operands:
        if call.q is None:
            return cls(None, None, None, 1.0)
        fold = call.bias is None and call.scale > 0
        qs = call.q.float() if fold else call.q.float() * call.scale
        kf, v = call.k.float(), None if call.v is None else call.v.float()
        if layout.examples > 1:  # 4-D blocks: bmm would multiply strided views (HF's transposed q, k, v) one
            qs, kf, v = qs.contiguous(), kf.contiguous(), None if v is None else v.contiguous()  # matrix at a time
        # BLAS reads k transposed; per example, strided views need no copy
        return cls(qs, kf.transpose(-1, -2), v, call.scale if fold else 1.0)


def _block_logits(call, q_i, k_i, i, s, e, blocked, raw_max, B, T):
    """Writable float32 logits of examples ``i``, queries [s, e): ``q k^T`` plus the bias (the max logit
    taken before the bias, into ``raw_max``), or a copy of the call's logits."""
    if q_i is None:
        return call.logits[i][..., s:e, :].clone()
    z = q_i[..., s:e, :] @ k_i
    if call.bias is not None:
        zm = z if blocked is None else z.masked_fill(blocked, -math.inf)
        torch.amax(zm, -1, out=raw_max[i][..., s:e])  # the max logit is taken before the bias
        z.add_(block_of(call.bias, i, s, e, B, T))
    return z


def reduce_rows(call: Call, layout: BlockLayout) -> RowSums:
    """Reduce ``call`` block by block (``layout``) to its :class:`RowSums`.

    With q and k, each block's logits are ``q_b k_b^T`` (times ``scale``, applied in the shift pass
    when there is no bias) plus the bias; the max logit is then taken before the bias is added.

    >>> q = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    >>> call = Call(torch.ones(1, 1, 1, 5, dtype=torch.bool), q=q, k=q, scale=0.5)
    >>> sums = reduce_rows(call, BlockLayout.of(2, 3, 5, 5, query_chunk=2, device="cpu"))
    >>> z = (q @ q.transpose(-1, -2)) * 0.5
    >>> torch.allclose(sums.rows[0], z.amax(-1)), torch.allclose(sums.rows[1], (z - z.amax(-1, True)).exp().sum(-1))
    (True, True)
    """
    B, _, T, _ = call.shape
    ops = Operands.of(call, layout)
    sums = RowSums.allocate(call)
    blocked = None if call.everything else ~call.allowed
    q_i = k_i = None
    for i in layout.example_blocks():
        rows_i, out_i = sums.rows[:, i], None if sums.output is None else sums.output[i]
        v_i = None if sums.output is None else ops.v[i]
        if ops.q is not None:
            q_i, k_i = ops.q[i], ops.kT[i]
        for s, e in layout.query_ranges():
            bl = None if blocked is None else block_of(blocked, i, s, e, B, T)
            z = _block_logits(call, q_i, k_i, i, s, e, bl, sums.raw_max, B, T)
            block_sums(z, bl, v_i, rows_i[..., s:e], None if out_i is None else out_i[..., s:e, :], ops.scale)
    return sums


def row_stats(
    rows: torch.Tensor, n_allowed: torch.Tensor, valid_q: torch.Tensor, raw_max: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-row statistics from the (4, B, H, T) float32 row sums m, s, ez, e0 of :func:`block_sums`;
    ``n_allowed`` (B|1, H|1, T|1) the number of allowed keys, ``valid_q`` (B, T) bool, ``raw_max`` the max
    logit before an additive bias if there was one. Returns a dict of (B, H, T) float64 tensors (NaN where
    a row is invalid): entropy ``H = ln s - ez / s`` (Zhai et al. 2023), normalised entropy ``H / ln n``
    (rows with one allowed key left out), max logit (Wortsman et al. 2023) and sink mass ``e0 / s``.

    >>> rows = torch.tensor([0.0, 4.0, 0.0, 1.0]).reshape(4, 1, 1, 1)  # a uniform row over 4 keys
    >>> st = row_stats(rows, torch.full((1, 1, 1), 4), torch.ones(1, 1, dtype=torch.bool))
    >>> round(float(st["entropy"]), 4), float(st["normalized_entropy"]), float(st["sink_mass"])
    (1.3863, 1.0, 0.25)
    """
    m, s, ez, e0 = rows.double().unbind(0)
    ent = torch.log(s) - ez / s
    n = n_allowed.double().expand(ent.shape)
    ok = (n > 0) & valid_q[:, None, :]
    nan = torch.full((), math.nan, dtype=torch.float64, device=ent.device)
    ent = torch.where(ok, ent.clamp_min(0), nan)
    return {
        "entropy": ent,
        "normalized_entropy": torch.where(ok & (n > 1), ent / torch.log(n.clamp_min(2)), nan),
        "max_logit": torch.where(ok, m if raw_max is None else raw_max.double(), nan),
        "sink_mass": torch.where(ok, e0 / s, nan),
    }


def probabilities(call: Call, b: int, s: int, e: int) -> torch.Tensor:
    """Attention probabilities of queries [s, e) of example ``b``: (H, e - s, S) on the CPU,
    ``softmax(scale q k^T + bias)`` (or of the logits) over the allowed keys.

    >>> call = Call(torch.ones(1, 1, 1, 3, dtype=torch.bool), logits=torch.zeros(1, 2, 4, 3))
    >>> probabilities(call, 0, 0, 2).shape, probabilities(call, 0, 0, 2)[0, 0]
    (torch.Size([2, 2, 3]), tensor([0.3333, 0.3333, 0.3333]))
    """
    B, _, T, _ = call.shape
    if call.q is not None:
        z = (call.q[b, :, s:e].float() @ call.k[b].float().transpose(-1, -2)) * call.scale
        if call.bias is not None:
            z = z + block_of(call.bias, b, s, e, B, T)
    else:
        z = call.logits[b, :, s:e]
    z = z.masked_fill(~block_of(call.allowed, b, s, e, B, T), NEG)
    return torch.softmax(z, -1).cpu()


def nonfinite_rows(rows: torch.Tensor, n_allowed: torch.Tensor, valid_q: torch.Tensor) -> int:
    """The number of valid rows (a valid query with at least one allowed key) whose row sums are NaN or inf:
    non-finite attention logits, which the statistics must not silently drop.

    >>> rows = torch.full((4, 1, 1, 2), float("nan"))
    >>> nonfinite_rows(rows, torch.full((1, 1, 1), 3), torch.ones(1, 2, dtype=torch.bool))
    2
    """
    ok = (n_allowed > 0) & valid_q[:, None, :]
    bad = ~torch.isfinite(rows[:3]).all(0)  # m, s, ez
    return int((bad & ok).sum())
