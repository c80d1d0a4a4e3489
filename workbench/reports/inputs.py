"""What a report notebook reads: a model (zoo name, MiniLM, or a state_dict file with a builder),
named data, and the zoo models it is compared with (its *family*)."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from .. import zoo
from ..zoo import transfer as zoo_transfer
from .runner import ReportError


def load_model(
    model: str = "mlp-sgd-small-s0", checkpoint: str = "", builder: str = "", checkpoint_index: int = -1
) -> nn.Module:
    """A zoo model by name (``checkpoint_index`` picks one of its saved checkpoints; -1 the final model),
    ``"minilm"``, or ``checkpoint`` (a state_dict file, read with ``torch.load(weights_only=True)``)
    loaded into the module that ``builder`` (``"package.module:function"``) returns.

    >>> load_model("no-such-model")
    Traceback (most recent call last):
    ...
    ValueError: name: no zoo model 'no-such-model'; available: ...
    """
    if checkpoint:
        if not builder:
            raise ReportError("builder: a checkpoint file needs builder='package.module:function' returning the model")
        mod, _, fn = builder.partition(":")
        m = getattr(importlib.import_module(mod), fn)()
        m.load_state_dict(torch.load(checkpoint, weights_only=True, map_location="cpu"))
        return m.eval()
    if model == "minilm":
        return zoo.minilm()[0]
    if checkpoint_index is None or checkpoint_index == -1:
        return zoo.load(model)
    return zoo.load(model, checkpoint=int(checkpoint_index))


def load_data(data: str = "digits-train", n_samples: int = 0, image: bool = False) -> tuple:
    """Named data: ``digits-train``, ``digits-test``, ``digits-all``, or a transfer target
    ``target:<name>:<split>``; the first ``n_samples`` (0 = all).

    >>> x, y = load_data("digits-test", 5)
    >>> tuple(x.shape), tuple(y.shape)
    ((5, 64), (5,))
    """
    if data.startswith("target:"):
        _, t, split = data.split(":")
        x, y = zoo_transfer.target_data(t, split)
    else:
        split = data.removeprefix("digits-")
        if split not in ("train", "test", "all"):
            raise ReportError(
                f"data: expected digits-train, digits-test, digits-all or target:<name>:<split>, got {data!r}"
            )
        x, y = zoo.data(split, image=image)
    if n_samples:
        x, y = x[:n_samples], y[:n_samples]
    return x, y


def family(model: str, checkpoint: str = "") -> list[str]:
    """The zoo models a report compares ``model`` with: those of the same group and architecture
    (the seeds and optimisers of ``mlp-*``, of ``cnn-*``, the three ``vit-*`` runs, the ``src-*``
    sources), ``model`` included; ``[]`` when it is not a zoo model (MiniLM, a checkpoint file).

    >>> family("vit-normal")
    ['vit-normal', 'vit-high-lr', 'vit-sigma-reparam']
    >>> len(family("mlp-sam-s0")), family("minilm")
    (9, [])
    """
    spec = zoo.CATALOG.get(model)
    if checkpoint or spec is None:
        return []
    return [n for n in zoo.names(spec["group"]) if zoo.CATALOG[n]["arch"] == spec["arch"]]


def family_label(model: str, checkpoint: str = "") -> str:
    """How a report names the family of ``model`` (``"the 9 mlp-* zoo models"``).

    >>> family_label("mlp-sam-s0"), family_label("minilm")
    ('the 9 mlp-* zoo models', 'no zoo reference (not a zoo model)')
    """
    names = family(model, checkpoint)
    if not names:
        return "no zoo reference (not a zoo model)"
    prefix = names[0].split("-")[0]
    return f"the {len(names)} {prefix}-* zoo models"


def family_models(model: str, checkpoint: str = "") -> dict[str, nn.Module]:
    """The *other* models of the family of ``model`` (final weights), loaded: name -> model."""
    return {n: zoo.load(n) for n in family(model, checkpoint) if n != model}
