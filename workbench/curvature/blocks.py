"""Parameter blocks for blockwise spectra: the diagonal blocks ``H_bb`` of a curvature matrix.

The block of parameters b of a curvature matrix C is ``C_bb``, the curvature of the loss as a function of
b alone (the other parameters fixed): its spectrum and trace are those of :mod:`workbench.curvature`'s
probes restricted with ``params=b``. ``tr C = sum_b tr C_bb`` for a partition; eigenvalues of the blocks
interlace nothing in general (PyHessian's and Sankar et al.'s layerwise spectra, 2021).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..params import select_parameters

#: the name of the whole-model entry returned alongside the blocks
WHOLE = "(all)"


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: its name up to the first integer component (``encoder.layer.3``,
    ``h.0``, ``0`` of a Sequential), else its module (``embeddings.word_embeddings``, ``pooler.dense``).

    >>> layer_of("encoder.layer.3.attention.self.query.weight"), layer_of("pooler.dense.bias"), layer_of("0.weight")
    ('encoder.layer.3', 'pooler.dense', '0')
    """
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or "(root)"


def module_of(name: str) -> str:
    """The module that owns a parameter (``(root)`` for the model's own)."""
    return name.rsplit(".", 1)[0] if "." in name else "(root)"


def parameter_blocks(model: nn.Module, blocks: Any, params: Any = None) -> dict[str, list[str]]:
    """The blocks as ``{block name: [parameter names]}``, in ``model.parameters()`` order, within the
    ``params`` selection.

    ``blocks``: ``"layer"`` (:func:`layer_of`: transformer layers, Sequential layers, other modules),
    ``"module"`` (every module owning parameters), or a mapping of block names to parameter selections
    (a regex or a list of parameter / module names, as ``params=`` takes).

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    >>> parameter_blocks(m, "layer")
    {'0': ['0.weight', '0.bias'], '2': ['2.weight', '2.bias']}
    >>> parameter_blocks(m, {"weights": "weight"})
    {'weights': ['0.weight', '2.weight']}
    """
    chosen = [n for n, _ in select_parameters(model, params)]
    if isinstance(blocks, str):
        if blocks not in ("layer", "module"):
            raise ValueError(
                f"blocks: expected 'layer', 'module' or a mapping of block names to parameter selections, "
                f"got {blocks!r}"
            )
        key = layer_of if blocks == "layer" else module_of
        out: dict[str, list[str]] = {}
        for n in chosen:
            out.setdefault(key(n), []).append(n)
        return out
    if not isinstance(blocks, Mapping) or not blocks:
        raise TypeError(
            "blocks: expected 'layer', 'module' or a non-empty mapping {block name: parameter regex or list of "
            f"names}}, got {type(blocks).__name__}"
        )
    out = {}
    for name, sel in blocks.items():
        if not isinstance(name, str) or name == WHOLE:
            raise ValueError(f"blocks: block names must be strings other than {WHOLE!r}, got {name!r}")
        if not isinstance(sel, str | Sequence):
            raise TypeError(f"blocks[{name!r}]: expected a regex or a list of parameter / module names")
        try:
            names = [n for n, _ in select_parameters(model, sel)]
        except (ValueError, TypeError) as e:
            raise ValueError(f"blocks[{name!r}]: {str(e).removeprefix('params: ')}") from None
        inside = [n for n in names if n in chosen]
        if not inside:
            raise ValueError(f"blocks[{name!r}]: selects no parameter within params={params!r}")
        out[name] = inside
    return out
