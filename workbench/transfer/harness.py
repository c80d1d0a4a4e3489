"""The ground-truth harness: how well a model really transfers to a labelled target task, by a linear
probe on its frozen features and by fine-tuning the whole network with a fresh head."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr
from sklearn.linear_model import LogisticRegression
from torch import nn

from ..capture import chunks
from ..data import as_data
from ..params import forward, model_device_dtype
from ..registry import Tags, probe
from ..state import modes
from ..testing import hostile_data, hostile_model
from .features import features
from .validation import as_array, class_labels

__all__ = ["linear_probe_accuracy", "finetune_accuracy"]


def _accuracy(acc: float, what: str) -> xr.DataArray:
    return xr.DataArray(float(acc), name="accuracy", attrs={"long_name": f"{what} test accuracy", "units": "1"})


def _split(train: Any, test: Any, ctx) -> tuple:
    """The two (inputs, labels) pairs, recorded in probe_params by size and fingerprint (not by value)."""
    for name, pair in (("train", train), ("test", test)):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"{name}: expected an (inputs, labels) pair, got {type(pair).__name__}")
        y = torch.as_tensor(class_labels(pair[1], len(pair[1]), f"{name} labels", min_classes=1)[0])
        d = as_data((pair[0], y))
        ctx.record(**{name: {"n_samples": d.n, "fingerprint": d.fingerprint()}})
    return train[0], train[1], test[0], test[1]


def _case():
    x, y = hostile_data(0, 60)
    return (hostile_model(0), (x[:40], y[:40]), (x[40:], y[40:])), {}


def _finetune_case():
    x, y = hostile_data(0, 60)
    return (hostile_model(0), (x[:40], y[:40]), (x[40:], y[40:])), dict(epochs=2, batch_size=16)


@probe("transfer.linear_probe_accuracy", tags=Tags(inputs="pair", uses=("seed", "device")), case=_case)
def linear_probe_accuracy(
    model: nn.Module, train: tuple, test: tuple, *, layer: str | None = None, pool: str = "mean", C: float = 1.0, ctx
) -> xr.DataArray:
    """Test accuracy of multinomial logistic regression (L2, ``C``, lbfgs; ``random_state=seed``) on
    frozen, standardised (train mean and std) :func:`~workbench.transfer.features` of ``layer``
    (default the penultimate), trained on ``train`` = (inputs, labels), scored on ``test``.
    Returns a 0-d DataArray ``accuracy``.

    >>> from workbench.testing import tiny_classifier
    >>> m, _, (x, y) = tiny_classifier(60)
    >>> acc = linear_probe_accuracy(m, (x[:40], y[:40]), (x[40:], y[40:]))
    >>> acc.name, acc.dims, 0 <= float(acc) <= 1
    ('accuracy', (), True)
    """
    xtr, ytr, xte, yte = _split(train, test, ctx)
    kw = dict(
        layers=None if layer is None else [layer], pool=pool, progress=False, cancel=ctx.cancel, device=ctx.device
    )
    ftr = features(model, chunks(xtr), **kw)
    fte = features(model, chunks(xte), **kw)
    ftr, fte = ftr[list(ftr.data_vars)[0]].values, fte[list(fte.data_vars)[0]].values
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-8
    clf = LogisticRegression(C=C, max_iter=3000, random_state=ctx.seed)
    clf.fit((ftr - mu) / sd, as_array(ytr, "labels"))
    return _accuracy(clf.score((fte - mu) / sd, as_array(yte, "labels")), "linear-probe")


def _fresh_head(model: nn.Module, head: str, n_classes: int) -> tuple[str, nn.Linear]:
    try:
        old = model.get_submodule(head)
    except AttributeError:
        old = None
    if not isinstance(old, nn.Linear):
        raise ValueError(
            f"head: the model has no nn.Linear module {head!r} to replace; name its classifier (e.g. head='classifier')"
        )
    device, dtype = model_device_dtype(model)
    return head, nn.Linear(old.in_features, n_classes).to(device=device, dtype=dtype)  # init from the seeded RNG


def _trainable_copy(model: nn.Module, head: str, new: nn.Linear) -> tuple[dict, list]:
    """Detached copies of every parameter and buffer of ``model`` (tied names share one copy) with the
    ``head`` module's replaced by ``new``'s, and the tensors to train in ``model.parameters()`` order
    (the new head's where the old head's were)."""
    prefix = head + "."
    copies = {id(p): p.detach().clone().requires_grad_(True) for p in model.parameters()}
    tensors = {n: copies[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if not n.startswith(prefix)}
    tensors.update(
        {n: b.detach().clone() for n, b in model.named_buffers(remove_duplicate=False) if not n.startswith(prefix)}
    )  # train-mode BatchNorm updates these copies
    tensors.update({prefix + n: p for n, p in new.named_parameters()})
    trainable: list = []
    for n, p in model.named_parameters():
        if not n.startswith(prefix):
            trainable.append(copies[id(p)])
        elif not any(t is new.weight for t in trainable):
            trainable += list(new.parameters())
    return tensors, trainable


@probe(
    "transfer.finetune_accuracy",
    tags=Tags(inputs="pair", stochastic=True, uses=("seed", "device")),
    case=_finetune_case,
)
def finetune_accuracy(
    model: nn.Module,
    train: tuple,
    test: tuple,
    *,
    epochs: int = 8,
    lr: float = 3e-3,
    batch_size: int = 32,
    head: str = "head",
    ctx,
) -> xr.DataArray:
    """Test accuracy after fine-tuning: the ``head`` module (an ``nn.Linear``) is replaced by a fresh
    Linear for the target classes (initialised from ``seed``), and every parameter is trained with Adam
    (``lr``, ``batch_size``, ``epochs``, data order from ``seed``) in train mode on ``train`` =
    (inputs, labels); accuracy on ``test`` in eval mode. The model's own tensors are never written:
    training runs on copies through ``torch.func.functional_call``. Returns a 0-d DataArray ``accuracy``.

    >>> from workbench.testing import tiny_classifier
    >>> m, _, (x, y) = tiny_classifier(60)
    >>> acc = finetune_accuracy(m, (x[:40], y[:40]), (x[40:], y[40:]), head="2", epochs=2, seed=1)
    >>> acc.name, acc.dims, float(acc) == float(finetune_accuracy(m, (x[:40], y[:40]), (x[40:], y[40:]),
    ...                                                          head="2", epochs=2, seed=1))
    ('accuracy', (), True)
    """
    xtr, ytr, xte, yte = _split(train, test, ctx)
    device = ctx.device or model_device_dtype(model)[0]
    classes = np.unique(as_array(ytr, "labels"))
    ytr = torch.as_tensor(class_labels(ytr, len(ytr))[0], device=device)
    yte = torch.as_tensor(np.searchsorted(classes, as_array(yte, "labels")), device=device)
    xtr, xte = torch.as_tensor(xtr).to(device), torch.as_tensor(xte).to(device)
    tensors, trainable = _trainable_copy(model, *_fresh_head(model, head, len(classes)))
    opt = torch.optim.Adam(trainable, lr=lr)
    lf = nn.CrossEntropyLoss()
    steps = -(-len(ytr) // batch_size)
    with modes(model, "train"), ctx.bar(epochs * steps, "fine-tuning") as bar:
        for _ in range(epochs):
            perm = torch.randperm(len(ytr), generator=ctx.generator).to(device)
            for i in range(0, len(ytr), batch_size):
                idx = perm[i : i + batch_size]
                loss = lf(forward(model, tensors, xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                bar.update()
    with modes(model, "eval"), torch.no_grad():
        acc = (forward(model, tensors, xte).argmax(1) == yte).float().mean()
    ctx.record(n_classes=len(classes))
    return _accuracy(acc, "fine-tuned")
