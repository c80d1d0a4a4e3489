"""The outputs (logits) of a model over input batches, for the output-based probes of this package."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..capture import check_layers
from ..data import call_model
from ..validate import EXPLAINED, call_error, describe, name_list

__all__ = ["logits_of", "padding_mask", "check_model", "named_layers", "forward_error"]


def check_model(name: str, model: Any) -> nn.Module:
    """``model`` if it is an ``nn.Module`` with parameters, else a clear error naming ``name``.

    >>> check_model("model", torch.nn.Linear(2, 2)).out_features
    2
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name}: expected a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters(), None) is None:
        raise ValueError(f"{name}: the module has no parameters; pass a trained model")
    return model


def named_layers(model: nn.Module, names: Any, arg: str) -> list[str]:
    """``names`` (one or a list of module names) checked against ``model``; errors name ``arg``.

    >>> named_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), "0", "layers_a")
    ['0']
    """
    names = name_list(arg, names, min_size=1)
    try:
        return check_layers(model, names)
    except ValueError as e:
        raise ValueError(f"{arg}: {str(e).partition(': ')[2]}") from None


def forward_error(e: BaseException, name: str, batch: Any) -> BaseException | None:
    """A clear error naming ``data`` for a forward pass of ``name`` that failed on ``batch`` because the
    inputs do not fit the model (torch's message kept), or None (the error passes unchanged)."""
    return call_error(e, "data", f"{name}'s forward failed on inputs {describe(batch)}", "Pass inputs it takes.")


def logits_of(model: nn.Module, batch: Any, name: str = "model") -> torch.Tensor:
    """The model's output on one input batch as a tensor: the output itself, its ``logits`` attribute or
    entry (Hugging Face), or the first item of a tuple; float64 on the CPU. A forward failure that says the
    inputs do not fit is a clear error naming ``data``; non-finite outputs are an error naming the model.

    >>> logits_of(torch.nn.Linear(3, 2), torch.ones(4, 3)).shape
    torch.Size([4, 2])
    """
    try:
        out = call_model(model, batch)
    except EXPLAINED as e:
        err = forward_error(e, name, batch)
        if err is None:
            raise
        raise err from e
    if isinstance(out, Mapping) and "logits" in out:
        out = out["logits"]
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[-1] < 2:
        raise ValueError(
            f"{name}: expected class scores (batch, classes) or (batch, positions, vocabulary) as output, got "
            f"{describe(out)}"
        )
    out = out.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name}: its outputs contain NaN or inf (non-finite weights or activations)")
    return out


def padding_mask(batch: Any, shape: tuple, mask_key: str = "attention_mask") -> torch.Tensor | None:
    """The ``(batch, positions)`` boolean mask of real (non-padding) positions: the batch's ``mask_key``
    entry when the inputs are a mapping that holds one and the outputs are ``(batch, positions, vocab)``.

    >>> padding_mask({"attention_mask": torch.tensor([[1, 0]])}, (1, 2, 5)).tolist()
    [[True, False]]
    """
    if len(shape) != 3 or not isinstance(batch, Mapping) or mask_key not in batch:
        return None
    m = torch.as_tensor(batch[mask_key]).to("cpu")
    if tuple(m.shape) != tuple(shape[:2]):
        raise ValueError(f"mask_key: the {mask_key!r} entry has shape {tuple(m.shape)}, the outputs {tuple(shape)}")
    return m != 0
