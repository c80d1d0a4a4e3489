"""Hostile models for the probe contract checks: hostile models that expose state leaks.

A *hostile* model is in train mode (one submodule left in eval), has BatchNorm with non-trivial
running statistics, dropout, a frozen layer (``requires_grad=False``) and stale ``.grad`` on some
parameters, all of which a careless probe would change.
"""

from __future__ import annotations

import torch
from torch import nn


class HostileNet(nn.Module):
    def __init__(self, d_in=8, hidden=16, n_classes=3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.drop = nn.Dropout(0.3)
        self.frozen = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.fc1(x)))
        h = torch.tanh(self.frozen(self.drop(h)))
        return self.head(h)


def _init(make, seed):
    """``make()`` with its default initialisation drawn from ``seed``, leaving the global RNG alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def hostile_model(seed: int = 0) -> nn.Module:
    """A :class:`HostileNet` in train mode with one module in eval, moved BatchNorm statistics, a frozen
    layer and stale ``.grad``."""
    g = torch.Generator().manual_seed(seed)
    m = _init(HostileNet, seed)
    m.train()
    with torch.no_grad():
        for _ in range(3):  # move the BN running stats away from their defaults
            m(torch.randn(32, 8, generator=g) * 2 + 1)
        nn.init.zeros_(m.bn.bias)  # an all-zero 1-D parameter (crashes some normalisers)
    m.frozen.requires_grad_(False)
    m.drop.eval()  # mixed flags: restored per module, not by a blanket model.train()
    m.fc1.weight.grad = torch.randn(m.fc1.weight.shape, generator=g)  # stale grad
    m.head.bias.grad = torch.zeros(3)
    return m


def hostile_data(seed: int = 0, n: int = 40):
    """``n`` samples of 8 features and 3 classes for :func:`hostile_model`."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def hostile_case(seed: int = 0):
    """``(model, loss_fn, data)`` for a probe of the pair kind."""
    return hostile_model(seed), nn.CrossEntropyLoss(), hostile_data(seed)


class Trap:
    """Forward hook that raises ``exc`` on the ``at``-th call of the module (planted failures)."""

    def __init__(self, module: nn.Module, exc: BaseException, at: int = 1):
        self.exc, self.at, self.calls = exc, at, 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, inputs, output):
        self.calls += 1
        if self.calls >= self.at:
            raise self.exc

    def remove(self):
        self.handle.remove()


class HostileTransformer(nn.Module):
    """A torch-native encoder with dropout, a frozen layer and a stale .grad, in train mode."""

    def __init__(self, d=16, heads=4, layers=2):
        super().__init__()
        self.embed = nn.Linear(6, d)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(d, 3)

    def forward(self, x, src_key_padding_mask=None):
        h = self.encoder(self.drop(self.embed(x)), src_key_padding_mask=src_key_padding_mask)
        return self.head(h[:, 0])


def hostile_transformer(seed: int = 0):
    """``(model, x, padding_mask)``: a :class:`HostileTransformer` and 3 sequences of 7 tokens, two padded."""
    m = _init(HostileTransformer, seed)
    m.train()
    m.encoder.layers[0].requires_grad_(False)
    m.drop.eval()
    m.head.weight.grad = torch.ones_like(m.head.weight)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(3, 7, 6, generator=g)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, 5:] = True  # padded positions
    mask[2, 3:] = True
    return m, x, mask


def tiny_classifier(n: int = 40, seed: int = 0):
    """(model, loss_fn, (x, y)): a 4-8-3 tanh MLP in eval mode and n random samples of 3 classes."""
    m = _init(lambda: nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), seed).eval()
    g = torch.Generator().manual_seed(seed)
    return m, nn.CrossEntropyLoss(), (torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
