"""Activations of named modules, one pooled vector per example, read with forward (pre-)hooks.

The engine behind :func:`workbench.transfer.features` (and any probe that reads inside a model):
:func:`capture_batch` runs one forward pass with hooks on the named modules and returns what they
saw, pooled to ``(batch, dim)``; :func:`stream` does that for every input batch of ``data``. Hooks
exist only during the forward pass: they are removed before anything is returned, after an
exception and after ``KeyboardInterrupt``, so an abandoned stream leaves none behind.

Pooling of a module's tensor ``t`` (:func:`pooled`): ``(B, D)`` is kept; conv maps ``(B, C, H, W)``
are averaged (``mean``) or maxed (``max``) over space; token sequences ``(B, T, D)`` are reduced over
``T`` by ``mean`` (weighted by the batch's ``attention_mask`` when the inputs are a mapping that
holds one), ``cls`` (the first token), ``max`` or ``flatten``. Anything still above two dims is
flattened. This module knows no probe: it neither sets train/eval flags nor turns off autograd.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .data import call_model, input_batches

__all__ = ["POOLS", "default_layer", "check_layers", "pooled", "chunks", "capture_batch", "stream"]

POOLS = ("mean", "cls", "max", "flatten")


def default_layer(model: nn.Module) -> str:
    """The name of the model's last ``nn.Linear``: its *input* is the penultimate feature vector.

    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> default_layer(m)
    '2'
    """
    last = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = n
    if last is None:
        raise ValueError("layers: the model has no nn.Linear head; name the layers to read (layers=[...])")
    return last


def check_layers(model: nn.Module, layers: str | Sequence[str]) -> list[str]:
    """``layers`` as a list of module names of ``model``; a clear error for names it does not have.

    >>> check_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), "0")
    ['0']
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("layers: empty; name at least one module (e.g. layers=['encoder.layer.5'])")
    mods = dict(model.named_modules())
    missing = [l for l in layers if l not in mods]
    if missing:
        raise ValueError(f"layers: no module named {missing}; e.g. {[n for n in mods if n][:8]}")
    return layers


def pooled(t: torch.Tensor, pool: str = "mean", mask: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` reduced to one vector per example, ``(B, D)``, in its own dtype (see the module docstring).

    >>> t = torch.arange(12.).reshape(1, 3, 4)
    >>> pooled(t, "mean").tolist(), pooled(t, "cls").tolist()
    ([[4.0, 5.0, 6.0, 7.0]], [[0.0, 1.0, 2.0, 3.0]])
    >>> pooled(t, "mean", mask=torch.tensor([[1, 1, 0]])).tolist()
    [[2.0, 3.0, 4.0, 5.0]]
    """
    if pool not in POOLS:
        raise ValueError(f"pool: expected 'mean', 'cls', 'max' or 'flatten', got {pool!r}")
    if t.dim() == 1:
        return t[:, None]
    if t.dim() == 2:
        return t
    if t.dim() == 4 and pool in ("mean", "max"):  # conv maps (B, C, H, W)
        out = t.mean((2, 3)) if pool == "mean" else t.amax((2, 3))
    elif pool == "mean" and mask is not None and t.dim() == 3:
        w = mask[..., None].to(t.dtype)
        out = (t * w).sum(1) / w.sum(1).clamp_min(1)
    elif pool == "mean":
        out = t.mean(1)
    elif pool == "cls":
        out = t[:, 0]
    elif pool == "max":
        out = t.amax(1)
    else:
        out = t.flatten(1)
    return out.flatten(1) if out.dim() > 2 else out


def chunks(inputs: Any, size: int = 512) -> list:
    """One batch of inputs: a tensor as a list of batches of at most ``size`` examples, anything else
    (a mapping or tuple of tensors) as a list of that one batch.

    >>> [c.shape[0] for c in chunks(torch.zeros(5, 2), size=2)]
    [2, 2, 1]
    """
    if isinstance(inputs, torch.Tensor):
        return [inputs[i : i + size] for i in range(0, inputs.shape[0], size)]
    return [inputs]


def _keep_output(seen: dict, name: str, module, args, output) -> None:
    if isinstance(output, tuple):
        output = output[0]
    seen[name] = getattr(output, "last_hidden_state", output)


def _keep_input(seen: dict, name: str, module, args, kwargs) -> None:
    first = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    seen[name] = first


def capture_batch(
    model: nn.Module,
    inputs: Any,
    layers: Sequence[str],
    *,
    pool: str = "mean",
    input_of: bool = False,
    mask_key: str = "attention_mask",
    kwargs: Mapping | None = None,
) -> tuple[dict[str, torch.Tensor], Any]:
    """One forward pass ``call_model(model, inputs, kwargs)``; returns ``({layer: pooled (B, D)
    tensor}, model output)``. ``input_of=True`` reads each module's (first) input instead of its
    output; an output tuple gives its first item, a HuggingFace output its ``last_hidden_state``.
    A module that runs twice gives its last call.

    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    >>> acts, out = capture_batch(m, torch.ones(5, 4), ["0", "1"], input_of=True)
    >>> acts["0"].shape, acts["1"].shape, out.shape
    (torch.Size([5, 4]), torch.Size([5, 3]), torch.Size([5, 2]))
    """
    if pool not in POOLS:
        raise ValueError(f"pool: expected 'mean', 'cls', 'max' or 'flatten', got {pool!r}")
    mods = dict(model.named_modules())
    layers = check_layers(model, layers)
    seen: dict[str, Any] = {}
    handles = []
    try:
        for name in layers:
            if input_of:
                handles.append(
                    mods[name].register_forward_pre_hook(functools.partial(_keep_input, seen, name), with_kwargs=True)
                )
            else:
                handles.append(mods[name].register_forward_hook(functools.partial(_keep_output, seen, name)))
        out = call_model(model, inputs, kwargs)
    finally:
        for h in handles:
            h.remove()
    lost = [l for l in layers if not isinstance(seen.get(l), torch.Tensor)]
    if lost:
        raise ValueError(
            f"layers: {lost} did not {'receive' if input_of else 'return'} a tensor in the model's "
            "forward (never called?); name modules that the forward runs"
        )
    mask = inputs.get(mask_key) if isinstance(inputs, Mapping) else None
    return {l: pooled(seen[l], pool, mask) for l in layers}, out


def stream(
    model: nn.Module,
    data: Any,
    layers: Sequence[str],
    *,
    pool: str = "mean",
    input_of: bool = False,
    mask_key: str = "attention_mask",
    device: torch.device | str | None = None,
) -> Iterator[tuple[dict[str, torch.Tensor], Any]]:
    """:func:`capture_batch` over every input batch of ``data`` (see
    :func:`workbench.data.input_batches`: one batch, an ``(inputs, labels)`` pair whose labels are
    dropped, or a DataLoader / list of batches), moved to ``device``; yields ``(activations, output)``.

    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    >>> [a["0"].shape[0] for a, _ in stream(m, [torch.ones(2, 4), torch.ones(3, 4)], ["0"])]
    [2, 3]
    """
    for batch in input_batches(data, device, what="data"):
        yield capture_batch(model, batch, layers, pool=pool, input_of=input_of, mask_key=mask_key)
