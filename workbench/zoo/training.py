"""Seeded training runs of the demo zoo, with checkpoints along the way.

Optimisers: SGD with momentum (small or large batch), SAM (Foret et al. 2021: ascend to
theta + rho g/|g|, take the gradient there, step from theta), and Adam.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .datasets import digits
from .models import build


def _full_loss(model, x, y, lf):
    model.eval()
    with torch.no_grad():
        out = model(x)
        loss = float(lf(out, y))
        acc = float((out.argmax(1) == y).float().mean())
    model.train()
    return loss, acc


def sam_step(model, opt, lf, xb, yb, rho: float) -> float:
    """One SAM step (Foret et al. 2021): the gradient at ``theta + rho g / |g|``, applied at ``theta``; returns
    the loss at ``theta`` (before the step)."""
    loss = lf(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    gnorm = torch.sqrt(sum((p.grad**2).sum() for p in params))
    eps = []
    with torch.no_grad():
        for p in params:
            e = rho * p.grad / (gnorm + 1e-12)
            p.add_(e)
            eps.append(e)
    opt.zero_grad(set_to_none=True)
    lf(model(xb), yb).backward()
    with torch.no_grad():
        for p, e in zip(params, eps):
            p.sub_(e)
    opt.step()
    return float(loss.detach())


def train(
    arch,
    arch_kwargs=None,
    optimizer="sgd",
    lr=0.05,
    momentum=0.9,
    batch_size=32,
    epochs=30,
    seed=0,
    rho=0.05,
    target_loss=None,
    n_checkpoints=10,
    data=None,
    test_data=None,
    weight_decay=0.0,
    grad_clip=None,
    progress=None,
):
    """Train one model; returns a dict of plain types and tensors (loadable with weights_only=True).

    Stops early once the full training loss is <= ``target_loss`` (checked every epoch), so runs
    trained different ways end at comparable training loss. The initialisation is drawn from torch's
    global RNG seeded with ``seed`` inside :func:`torch.random.fork_rng`: the caller's RNG is untouched.
    """
    settings = dict(locals())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _train(**settings)


def _train(
    arch, arch_kwargs, optimizer, lr, momentum, batch_size, epochs, seed, rho, target_loss, n_checkpoints, data,
    test_data, weight_decay, grad_clip, progress,
):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    model = build(arch, **(arch_kwargs or {}))
    x, y = data if data is not None else digits("train")
    xt, yt = digits("test") if data is None else (test_data if test_data is not None else (None, None))
    lf = nn.CrossEntropyLoss()
    if optimizer in ("sgd", "sam"):
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer: expected 'sgd', 'sam' or 'adam', got {optimizer!r}")
    n = len(y)
    bs = min(batch_size, n)
    # a state at the end of every epoch; thinned to n_checkpoints+1 evenly spaced ones at the end
    # (runs stop early at target_loss, so the final step is not known in advance)
    checkpoints, step_loss, epoch_log = [], [], []

    def save_ck(step, epoch):
        loss, acc = _full_loss(model, x, y, lf)
        checkpoints.append(
            {
                "step": step,
                "epoch": epoch,
                "train_loss": loss,
                "train_acc": acc,
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
        )

    model.train()
    step = 0
    save_ck(0, 0)
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            xb, yb = x[idx], y[idx]
            if optimizer == "sam":
                loss = sam_step(model, opt, lf, xb, yb, rho)
            else:
                loss = lf(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
                loss = float(loss.detach())
            step += 1
            step_loss.append(loss)
        save_ck(step, epoch)
        tl, ta = checkpoints[-1]["train_loss"], checkpoints[-1]["train_acc"]
        rec = {"epoch": epoch, "train_loss": tl, "train_acc": ta}
        if xt is not None:
            rec["test_loss"], rec["test_acc"] = _full_loss(model, xt, yt, lf)
        epoch_log.append(rec)
        if progress is not None:
            progress.set_postfix_str(f"epoch {epoch} loss {tl:.3g}", refresh=False)
        if target_loss is not None and tl <= target_loss:
            break
        if not math.isfinite(tl):
            break
    if len(checkpoints) > n_checkpoints + 1:
        keep = np.unique(np.linspace(0, len(checkpoints) - 1, n_checkpoints + 1).round().astype(int))
        checkpoints = [checkpoints[i] for i in keep]
    model.eval()
    return {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "checkpoints": checkpoints,
        "step_loss": torch.tensor(step_loss, dtype=torch.float64),
        "epochs": epoch_log,
        "steps": step,
    }
