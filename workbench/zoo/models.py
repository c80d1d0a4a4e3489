"""Architectures of the demo zoo: an MLP, a small CNN with BatchNorm, and a tiny vision
transformer (optionally with sigmaReparam, Zhai et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """64 -> width -> width -> n_classes with ReLU (8,970 parameters at width 64)."""

    def __init__(self, d_in=64, width=64, n_classes=10, depth=2):
        super().__init__()
        layers, d = [], d_in
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x):
        return self.head(self.features(x.flatten(1)))


class SmallCNN(nn.Module):
    """conv(1->8)+BN+ReLU, conv(8->16)+ReLU, 2x2 max-pool, linear(256->n_classes)."""

    def __init__(self, n_classes=10, channels=8):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * c * 16, n_classes)

    def forward(self, x):
        if x.dim() == 2:
            x = x.reshape(-1, 1, 8, 8)
        return self.head(self.features(x))


class SigmaReparamLinear(nn.Linear):
    """sigmaReparam (Zhai et al. 2023, eq. 2): W_hat = (gamma / sigma(W)) W.

    sigma(W) is the spectral norm, estimated by one power-iteration step per training forward
    (the vector ``u`` is a buffer); gamma is a learnable scalar initialised to 1.
    """

    def __init__(self, d_in, d_out, bias=True):
        super().__init__(d_in, d_out, bias)
        self.gamma = nn.Parameter(torch.ones(()))
        self.register_buffer("u", F.normalize(torch.randn(d_out), dim=0))

    def effective_weight(self):
        w = self.weight
        u = self.u
        if self.training:
            with torch.no_grad():
                v = F.normalize(w.t() @ u, dim=0)
                u = F.normalize(w @ v, dim=0)
                self.u.copy_(u)
        v = F.normalize(w.t() @ u, dim=0).detach()
        sigma = torch.dot(u.detach(), w @ v)
        return self.gamma * w / sigma

    def forward(self, x):
        return F.linear(x, self.effective_weight(), self.bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (interceptable)."""

    def __init__(self, d, heads, linear=nn.Linear):
        super().__init__()
        self.heads = heads
        self.q = linear(d, d)
        self.k = linear(d, d)
        self.v = linear(d, d)
        self.out = linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads

        def split(z):
            return z.reshape(b, t, h, d // h).transpose(1, 2)

        o = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(o.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, heads, mlp, linear=nn.Linear):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, heads, linear)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(linear(d, mlp), nn.GELU(), linear(mlp, d))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """A vision transformer on 8x8 digits: 2x2 patches -> 16 tokens + [CLS], pre-LN blocks."""

    def __init__(self, d=32, depth=2, heads=4, mlp=64, n_classes=10, patch=2, sigma_reparam=False):
        super().__init__()
        linear = SigmaReparamLinear if sigma_reparam else nn.Linear
        self.patch = patch
        n_tok = (8 // patch) ** 2
        self.embed = linear(patch * patch, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, n_tok + 1, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads, mlp, linear) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, n_classes)

    def tokens(self, x):
        if x.dim() == 2:
            x = x.reshape(-1, 1, 8, 8)
        p = self.patch
        b = x.shape[0]
        x = x.unfold(2, p, p).unfold(3, p, p).reshape(b, -1, p * p)
        return torch.cat([self.cls.expand(b, -1, -1), self.embed(x)], dim=1) + self.pos

    def forward(self, x):
        z = self.tokens(x)
        for blk in self.blocks:
            z = blk(z)
        return self.head(self.norm(z)[:, 0])


ARCHS = {"mlp": MLP, "cnn": SmallCNN, "vit": TinyViT}


def build(arch: str, **kwargs) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {sorted(ARCHS)}, got {arch!r}")
    return ARCHS[arch](**kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
