"""The ground-truth harness: how well a model really transfers to a labelled target task, by a linear
probe on its frozen features and by fine-tuning the whole network with a fresh head."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import xarray as xr
from sklearn.linear_model import LogisticRegression
from torch import nn

from ..capture import chunks, default_layer
from ..data import as_data
from ..params import check_model, forward, model_device_dtype
from ..registry import Tags, probe
from ..state import modes
from ..testing import hostile_data, hostile_model
from ..validate import EXPLAINED, call_error, count, describe, positive
from .features import features
from .validation import as_argument, class_labels, labelled

__all__ = ["linear_probe_accuracy", "finetune_accuracy"]


def _accuracy(acc: float, what: str) -> xr.DataArray:
    return xr.DataArray(float(acc), name="accuracy", attrs={"long_name": f"{what} test accuracy", "units": "1"})


def _split(model: nn.Module, train: Any, test: Any, ctx) -> tuple:
    """The train and test inputs (one tensor each, on the model's device and dtype) and labels (any values;
    training needs two classes at least), recorded in probe_params by size and fingerprint (not by value)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    device, dtype = model_device_dtype(model)
    out = []
    for name, data in (("train", train), ("test", test)):
        x, raw = labelled(data, name, ctx.device or device, dtype)
        y = torch.as_tensor(class_labels(raw, len(x), f"{name} labels", min_classes=2 if name == "train" else 1)[0])
        ctx.record(**{name: {"n_samples": len(x), "fingerprint": as_data((x, y)).fingerprint()}})
        out += [x, raw]
    return tuple(out)


def _test_index(classes: np.ndarray, yte: np.ndarray) -> np.ndarray:
    """Test labels as indices of the training classes; labels unseen in training get -1 (counted wrong, with a
    warning saying how many)."""
    try:
        idx = np.clip(np.searchsorted(classes, yte), 0, len(classes) - 1)
        seen = classes[idx] == yte
    except TypeError:
        raise TypeError(
            f"test labels: of another type ({yte.dtype}) than the training labels ({classes.dtype})"
        ) from None
    if not seen.all():
        warnings.warn(
            f"test labels: {int((~seen).sum())} of {len(yte)} test samples have labels unseen in training (e.g. "
            f"{yte[~seen][0]!r}); no trained classifier can predict them: they are counted as errors",
            RuntimeWarning,
            stacklevel=4,
        )
    return np.where(seen, idx, -1)


def _explained(run, x, arg):
    try:
        return run()
    except EXPLAINED as e:
        err = call_error(e, arg, f"the model's forward failed on inputs {describe(x)}", "Pass inputs it takes.")
        if err is None:
            raise
        raise err from e


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
    (default the penultimate), trained on ``train`` = (inputs, labels), scored on ``test`` (test labels
    unseen in training are counted wrong, with a RuntimeWarning).
    Returns a 0-d DataArray ``accuracy``.

    >>> from workbench.testing import tiny_classifier
    >>> m, _, (x, y) = tiny_classifier(60)
    >>> acc = linear_probe_accuracy(m, (x[:40], y[:40]), (x[40:], y[40:]))
    >>> acc.name, acc.dims, 0 <= float(acc) <= 1
    ('accuracy', (), True)
    """
    if layer is not None and not isinstance(layer, str):
        raise TypeError(f"layer: expected a module name or None, got {type(layer).__name__} {layer!r}")
    if layer is not None and layer not in dict(model.named_modules()):
        raise ValueError(f"layer: no module named {layer!r}; e.g. {[n for n, _ in model.named_modules() if n][:8]}")
    C = positive("C", C)
    if layer is None and isinstance(model, nn.Module):
        try:
            default_layer(model)
        except ValueError:
            raise ValueError("layer: the model has no nn.Linear head to read the input of; name a layer") from None
    xtr, ytr, xte, yte = _split(model, train, test, ctx)
    kw = dict(
        layers=None if layer is None else [layer], pool=pool, progress=False, cancel=ctx.cancel, device=ctx.device
    )
    ftr = as_argument(lambda: features(model, chunks(xtr), **kw), "train")
    fte = as_argument(lambda: features(model, chunks(xte), **kw), "test")
    ftr, fte = ftr[list(ftr.data_vars)[0]].values, fte[list(fte.data_vars)[0]].values
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-8
    clf = LogisticRegression(C=C, max_iter=3000, random_state=ctx.seed)
    classes = np.unique(ytr)
    clf.fit((ftr - mu) / sd, np.searchsorted(classes, ytr))
    pred = clf.predict((fte - mu) / sd)
    return _accuracy(float(np.mean(pred == _test_index(classes, yte))), "linear-probe")


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
    training runs on copies through ``torch.func.functional_call``. Test labels are matched to the training
    classes by value; labels unseen in training are counted wrong (with a RuntimeWarning). Returns a 0-d
    DataArray ``accuracy``.

    >>> from workbench.testing import tiny_classifier
    >>> m, _, (x, y) = tiny_classifier(60)
    >>> acc = finetune_accuracy(m, (x[:40], y[:40]), (x[40:], y[40:]), head="2", epochs=2, seed=1)
    >>> acc.name, acc.dims, float(acc) == float(finetune_accuracy(m, (x[:40], y[:40]), (x[40:], y[40:]),
    ...                                                          head="2", epochs=2, seed=1))
    ('accuracy', (), True)
    """
    epochs, lr, batch_size = count("epochs", epochs), positive("lr", lr), count("batch_size", batch_size, hi=None)
    check_model(model)
    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise ValueError(f"model: the parameters {bad[:5]} contain NaN or inf values; nothing can be fine-tuned")
    xtr, ytr, xte, yte = _split(model, train, test, ctx)
    device = xtr.device
    classes = np.unique(ytr)
    ytr = torch.as_tensor(np.searchsorted(classes, ytr), device=device)
    yte = torch.as_tensor(_test_index(classes, yte), device=device)
    # the head's init and train-mode dropout draw from the global RNG: seeded here, so that reading the data
    # (a DataLoader draws a seed from it per pass) cannot change them
    torch.default_generator.manual_seed(ctx.seed)
    tensors, trainable = _trainable_copy(model, *_fresh_head(model, head, len(classes)))
    opt = torch.optim.Adam(trainable, lr=lr)
    lf = nn.CrossEntropyLoss()
    steps = -(-len(ytr) // batch_size)
    with modes(model, "train"), ctx.bar(epochs * steps, "fine-tuning") as bar:
        for e in range(epochs):
            perm = torch.randperm(len(ytr), generator=ctx.generator).to(device)
            for i in range(0, len(ytr), batch_size):
                idx = perm[i : i + batch_size]
                loss = _explained(lambda idx=idx: lf(forward(model, tensors, xtr[idx]), ytr[idx]), xtr, "train")
                if not bool(torch.isfinite(loss)):
                    raise ValueError(
                        f"lr: the fine-tuning loss is {float(loss)} at epoch {e}, step {i // batch_size}: training "
                        f"diverged (or the model overflows); lower lr (now {lr:g})"
                    )
                opt.zero_grad()
                loss.backward()
                try:
                    opt.step()
                except EXPLAINED as e:  # e.g. lr too large for Adam's float arithmetic
                    err = call_error(e, "lr", f"Adam's update with lr={lr:g} failed", "Lower lr.")
                    if err is None:
                        raise
                    raise err from e
                bar.update()
    with modes(model, "eval"), torch.no_grad():
        acc = (_explained(lambda: forward(model, tensors, xte), xte, "test").argmax(1) == yte).float().mean()
    ctx.record(n_classes=len(classes))
    return _accuracy(acc, "fine-tuned")
