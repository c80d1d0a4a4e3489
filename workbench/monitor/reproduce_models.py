"""Models and tasks of the reproductions (:mod:`workbench.monitor.reproduce`): a tiny causal transformer with
switches for qk-LayerNorm and sigmaReparam, an MLP in standard or maximal-update parametrisation, and a
synthetic next-token task whose ideal attention is diffuse (so that an entropy collapse is a pathology,
not the solution)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..validate import choice, count


def topic_sequences(
    n: int, *, length: int = 16, vocab: int = 16, topics: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of a topic-mixture next-token task: each sequence draws a topic ``k`` (uniform over
    ``topics``) and then ``length + 1`` tokens i.i.d. from the topic's distribution ``p_k`` over ``vocab``
    tokens (``p_k = softmax(2.5 g_k)``, ``g_k`` standard normal from a fixed generator, the same for every ``seed``).
    The Bayes predictor of the next token is the posterior mixture given the counts of the tokens seen so
    far, which a transformer computes by *averaging* over the context: its ideal attention is diffuse.
    ``inputs`` are tokens ``0..length-1`` (int64, shape (n, length)), ``targets`` tokens ``1..length``.

    >>> x, y = topic_sequences(3, length=5, seed=1)
    >>> tuple(x.shape), bool((x[:, 1:] == y[:, :-1]).all()), int(x.max()) < 16
    ((3, 5), True, True)
    """
    n, length, vocab, topics = (
        count("n", n),
        count("length", length),
        count("vocab", vocab, lo=2),
        count("topics", topics),
    )
    g = torch.Generator().manual_seed(12345)
    table = torch.softmax(2.5 * torch.randn(topics, vocab, generator=g), -1)
    gs = torch.Generator().manual_seed(int(seed))
    k = torch.randint(topics, (n,), generator=gs)
    seq = torch.multinomial(table[k], length + 1, replacement=True, generator=gs)
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``logits`` (batch, time, vocab) against ``targets`` (batch, time)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared output log-normaliser ``mean(log Z^2)``, ``log Z = logsumexp(logits)`` (the z-loss of
    PaLM, Chowdhery et al. 2022; used at weight 1e-4 by Wortsman et al. 2023)."""
    return torch.logsumexp(logits, -1).pow(2).mean()


class CausalSelfAttention(nn.Module):
    """Causal multi-head attention through ``F.scaled_dot_product_attention`` (so workbench's attention capture
    sees it), optionally with LayerNorm on queries and keys per head (qk-LayerNorm, Dehghani et al. 2023)."""

    def __init__(self, d: int, heads: int, linear=nn.Linear, qk_norm: bool = False):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (linear(d, d) for _ in range(4))
        self.q_norm = nn.LayerNorm(d // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(d // heads) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(z):
            return z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k = self.q_norm(split(self.q(x))), self.k_norm(split(self.k(x)))
        o = F.scaled_dot_product_attention(q, k, split(self.v(x)), is_causal=True)
        return self.out(o.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, d, heads, linear, qk_norm):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, heads, linear, qk_norm)
        self.mlp = nn.Sequential(linear(d, 2 * d), nn.GELU(), linear(2 * d, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """A pre-LN causal transformer language model: token and position embeddings, ``depth`` blocks of
    ``heads``-head attention (width ``d``) and a 2x MLP, a final LayerNorm and an untied output layer.
    ``qk_norm``: LayerNorm on queries and keys; ``sigma_reparam``: every linear map inside the blocks is
    :class:`workbench.zoo.models.SigmaReparamLinear` (Zhai et al. 2023).

    >>> m = TinyLM(vocab=16, d=16, heads=2, depth=1, length=8)
    >>> x, _ = topic_sequences(2, length=8)
    >>> tuple(m(x).shape)
    (2, 8, 16)
    """

    def __init__(
        self,
        vocab: int = 16,
        d: int = 32,
        heads: int = 4,
        depth: int = 2,
        length: int = 16,
        *,
        qk_norm: bool = False,
        sigma_reparam: bool = False,
    ):
        super().__init__()
        d, heads = count("d", d), count("heads", heads)
        if d % heads:
            raise ValueError(f"d: expected a multiple of heads={heads}, got {d}")
        linear = nn.Linear
        if sigma_reparam:
            from ..zoo.models import SigmaReparamLinear as linear
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, length, d) * 0.02)
        self.blocks = nn.ModuleList([_Block(d, heads, linear, qk_norm) for _ in range(count("depth", depth))])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x) + self.pos[:, : x.shape[1]]
        for blk in self.blocks:
            z = blk(z)
        return self.head(self.norm(z))


class ScaledLinear(nn.Module):
    """``y = multiplier * x W^T`` without bias, ``W ~ N(0, std^2)``: the abc-parametrisation's layer."""

    def __init__(self, d_in: int, d_out: int, multiplier: float, std: float):
        super().__init__()
        self.multiplier = float(multiplier)
        self.weight = nn.Parameter(torch.randn(d_out, d_in) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.multiplier * F.linear(x, self.weight)


class WidthMLP(nn.Module):
    """A bias-free MLP ``d_in -> width -> width -> n_classes`` (ReLU) in the standard (``"sp"``) or the
    maximal-update (``"mup"``) parametrisation for SGD (Yang & Hu 2021, abc form with a global learning rate).

    SP: every weight ``N(0, 1/fan_in)``, multiplier 1. muP with base width ``n0`` (equal to SP at ``n = n0``):
    input layer multiplier ``sqrt(n/n0)`` with weights ``N(0, n0/(n d_in))`` (effective learning rate ``x n/n0``),
    hidden layer as SP, output layer multiplier ``sqrt(n0/n)`` with weights ``N(0, 1/n)`` (the output weights
    shrink as ``1/n``, effective learning rate ``x n0/n``). The Hessian in these parameters is the one that
    gradient descent with one learning rate sees, so ``lambda_max`` compares with ``2/lr`` in both.

    >>> sp, mup = WidthMLP(width=64, parametrisation="sp"), WidthMLP(width=64, parametrisation="mup", base_width=64)
    >>> [m.multiplier for m in mup.layers], [m.multiplier for m in sp.layers]
    ([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
    """

    def __init__(
        self, d_in: int = 64, width: int = 64, n_classes: int = 10, *, parametrisation: str = "sp", base_width: int = 32
    ):
        super().__init__()
        choice("parametrisation", parametrisation, ("sp", "mup"))
        n, n0 = count("width", width), count("base_width", base_width)
        if parametrisation == "sp":
            spec = [(d_in, n, 1.0, d_in**-0.5), (n, n, 1.0, n**-0.5), (n, n_classes, 1.0, n**-0.5)]
        else:
            r = n / n0
            spec = [
                (d_in, n, math.sqrt(r), (d_in * r) ** -0.5),
                (n, n, 1.0, n**-0.5),
                (n, n_classes, 1.0 / math.sqrt(r), n**-0.5),
            ]
        self.layers = nn.ModuleList([ScaledLinear(*s) for s in spec])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x
