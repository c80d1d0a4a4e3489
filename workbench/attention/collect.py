"""The forward passes of the attention probes: one per batch of inputs, under :class:`~.capture.Capture`,
in the requested train/eval mode and without gradients, collected per layer (:class:`Captured`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data import call_model, to_device
from ..params import model_device_dtype
from ..state import modes
from .capture import Capture

RESOLUTIONS = ("head", "example", "query")
NO_ATTENTION = (
    "model: no attention was captured. workbench intercepts F.scaled_dot_product_attention, "
    "F.multi_head_attention_forward and softmax inside modules whose class name contains 'Attention'. "
    "If the model has attention under another name, pass attention_modules=['<module name>', ...] naming "
    "the modules whose softmax computes the attention probabilities; if it calls a kernel that cannot be "
    "intercepted (flash-attn, xformers), load it with attn_implementation='eager' (HuggingFace) or "
    "TIMM_FUSED_ATTN=0 (timm)."
)


def check_arguments(model: nn.Module, resolution: str = "head", query_chunk: int = 128) -> None:
    """Clear errors for a bad ``model``, ``resolution`` or ``query_chunk``, before any forward pass.

    >>> check_arguments(nn.Linear(2, 2), resolution="token")
    Traceback (most recent call last):
    ValueError: resolution: expected 'head', 'example' or 'query', got 'token'
    """
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution: expected 'head', 'example' or 'query', got {resolution!r}")
    if int(query_chunk) < 1:
        raise ValueError(
            f"query_chunk: the number of queries reduced at a time must be >= 1 (128 is typical), got {query_chunk}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")


def query_mask(inputs: Any) -> torch.Tensor | None:
    """The (B, T) bool valid-query mask of mapping inputs with a 2-D ``attention_mask``, else None.

    >>> query_mask({"input_ids": torch.zeros(1, 3), "attention_mask": torch.tensor([[1, 1, 0]])})
    tensor([[ True,  True, False]])
    """
    if isinstance(inputs, Mapping) and isinstance(inputs.get("attention_mask"), torch.Tensor):
        m = inputs["attention_mask"]
        if m.dim() == 2:
            return m.bool()
    return None


@dataclass
class Captured:
    """Statistics of every batch: ``order`` the layer names in call order, ``per_layer`` a list of
    dicts of (B, H, T) tensors per layer and batch, ``kinds`` the capture path per layer, ``maps`` the
    kept probabilities (query blocks of (H, c, S)) of one layer."""

    order: list[str] = field(default_factory=list)
    per_layer: dict[str, list] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    maps: dict[str, list] = field(default_factory=dict)

    def add(self, cap: Capture) -> None:
        for name, parts in cap.layers.items():
            if name not in self.per_layer:
                self.order.append(name)
                self.per_layer[name] = []
            self.per_layer[name].extend(parts)
        self.kinds.update(cap.kinds)
        self.maps.update(cap.maps)


def capture_batches(
    model: nn.Module,
    batches: Sequence,
    forward_kwargs: Mapping | None = None,
    *,
    query_chunk: int = 128,
    attention_modules: Sequence[str] | None = None,
    mode: str = "eval",
    keep: tuple[int, int] | None = None,
    exact_outputs: bool = False,
    check: Callable[[], None] | None = None,
    on_batch: Callable[[], None] | None = None,
) -> Captured:
    """One forward pass per batch of inputs (:func:`workbench.data.input_batches`) under :class:`Capture`,
    in ``mode``, without gradients; ``keep=(layer, example)`` keeps one map of the first batch.

    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
    >>> class Self(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.att = mha
    ...     def forward(self, x):
    ...         return self.att(x, x, x)[0]
    >>> cap = capture_batches(Self(), [torch.randn(2, 5, 8), torch.randn(3, 5, 8)])
    >>> cap.order, [p["entropy"].shape[0] for p in cap.per_layer["att"]]
    (['att'], [2, 3])
    """
    device, _ = model_device_dtype(model)
    captured = Captured()
    with modes(model, mode):
        for bi, batch in enumerate(batches):
            batch = to_device(batch, device)
            cap = Capture(
                model,
                query_mask(batch),
                query_chunk,
                attention_modules,
                keep=None if keep is None or bi > 0 else keep,
                exact_outputs=exact_outputs or keep is not None,
                check=check,
            )
            with torch.no_grad(), cap:
                call_model(model, batch, forward_kwargs)
            captured.add(cap)
            if on_batch is not None:
                on_batch()
    if not captured.order:
        raise ValueError(NO_ATTENTION)
    return captured
