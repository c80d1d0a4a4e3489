"""What a report notebook reads: a model (any spec of :func:`workbench.loading.load_model`: a zoo name, MiniLM,
a Hugging Face directory, a state dict with a builder, a Lightning or TorchScript file), named data, and the zoo
models it is compared with (its *family*)."""

from __future__ import annotations

from torch import nn

from .. import loading, zoo
from ..zoo import transfer as zoo_transfer
from .runner import ReportError


def load_model(
    model: str = "mlp-sgd-small-s0",
    checkpoint: str = "",
    builder: str = "",
    checkpoint_index: int = -1,
    device: str | None = None,
    module_class: str = "",
) -> nn.Module:
    """The report's model, in eval mode on ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``; ``None`` or ``""``: the
    CPU): ``checkpoint`` when given (a ``.safetensors`` / ``.pt`` state dict for ``builder``
    (``"package.module:function"``), a Lightning ``.ckpt`` for ``module_class`` (``"package.module:Class"``) or
    ``builder``, a TorchScript file), else ``model``: a zoo name (``checkpoint_index`` picks one of its saved
    checkpoints; -1 the final model), ``"minilm"``, or a local Hugging Face directory (``"hf:<dir>"`` too).
    Loaded by :func:`workbench.loading.load_model`: ``weights_only``, offline.

    >>> load_model("no-such-model")
    Traceback (most recent call last):
    ...
    ValueError: model: no zoo model 'no-such-model' and no such file; expected a demo-zoo model name, ...
    >>> load_model("mlp-sgd-small-s0", checkpoint_index=0, device="cpu").training
    False
    """
    arg, spec = ("checkpoint", checkpoint) if checkpoint else ("model", model)
    try:
        if not checkpoint and checkpoint_index is not None and checkpoint_index != -1:
            if loading.describe_spec(model) != "zoo":
                raise ReportError(
                    f"checkpoint_index: only a zoo model has saved checkpoints; {model!r} is not one (leave it at -1)"
                )
            spec = zoo.load(model, checkpoint=int(checkpoint_index))
        return loading.load_model(
            spec, device=device or None, builder=builder or None, module_class=module_class or None
        )
    except (ValueError, FileNotFoundError) as e:
        msg = str(e)
        if not msg.startswith("spec:"):
            raise
        raise type(e)(arg + msg.removeprefix("spec")) from None


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
