"""Transfer zoo and its ground truth: source models, target tasks, and a fine-tuning /
linear-probe harness that measures how well each source transfers to each target.

Ground truth for (source, target):
  * ``linear_probe_acc``: multinomial logistic regression (L2, C=1, lbfgs) on the source model's
    frozen penultimate features (``model.features``), trained on the target's train split,
    accuracy on its test split;
  * ``finetune_acc``: the whole source network with a fresh head, trained with Adam (lr 3e-3,
    batch 32, fixed number of epochs, seeded) on the target's train split; test accuracy.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .datasets import digits

# target tasks: name -> digits() keyword arguments
TARGETS = {
    "digits-5to9": dict(classes=[5, 6, 7, 8, 9]),
    "flipped-5to9": dict(classes=[5, 6, 7, 8, 9], transform="flip"),
    "noisy-all": dict(transform="noise"),
}


def target_data(target: str, split: str = "train"):
    if target not in TARGETS:
        raise ValueError(f"target: expected one of {sorted(TARGETS)}, got {target!r}")
    return digits(split, **TARGETS[target])


@torch.no_grad()
def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features (the output of ``model.features``), eval mode."""
    was = model.training
    model.eval()
    try:
        if x.dim() == 2 and model.__class__.__name__ == "SmallCNN":
            x = x.reshape(-1, 1, 8, 8)
        return model.features(x).flatten(1)
    finally:
        model.train(was)


def linear_probe_accuracy(model: nn.Module, target: str, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression

    xtr, ytr = target_data(target, "train")
    xte, yte = target_data(target, "test")
    ftr, fte = features(model, xtr).numpy(), features(model, xte).numpy()
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-8
    clf = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    clf.fit((ftr - mu) / sd, ytr.numpy())
    return float(clf.score((fte - mu) / sd, yte.numpy()))


def finetune_accuracy(model: nn.Module, target: str, epochs: int = 8, lr: float = 3e-3, seed: int = 0) -> float:
    import copy

    xtr, ytr = target_data(target, "train")
    xte, yte = target_data(target, "test")
    n_classes = int(ytr.max()) + 1
    torch.manual_seed(seed)
    m = copy.deepcopy(model)
    m.head = nn.Linear(m.head.in_features, n_classes)
    for p in m.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    lf = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    m.train()
    for _ in range(epochs):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), 32):
            idx = perm[i:i + 32]
            loss = lf(m(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        return float((m(xte).argmax(1) == yte).float().mean())


def ground_truth(models: dict, targets=None, seed: int = 0) -> dict:
    """{(source, target): (linear_probe_acc, finetune_acc)} for the given source models."""
    targets = list(TARGETS) if targets is None else list(targets)
    out = {}
    for s, m in models.items():
        for t in targets:
            out[(s, t)] = (linear_probe_accuracy(m, t, seed), finetune_accuracy(m, t, seed=seed))
    return out


_ = np
