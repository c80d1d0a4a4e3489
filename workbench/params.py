"""Parameter space of a model and functional evaluation of its loss.

:class:`ParamSpace` names the parameters a probe acts on (all trainable ones by default, or a
subset chosen by parameter/module names or a regex), flattens them to one vector in
``model.parameters()`` order (row-major), and evaluates the loss at any point ``theta`` of that
space with ``torch.func.functional_call``: the module's own tensors are never written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call


def model_device_dtype(model: nn.Module):
    for p in model.parameters():
        return p.device, p.dtype
    for b in model.buffers():
        return b.device, None
    return torch.device("cpu"), None


def check_model(model, arg: str = "model") -> nn.Module:
    """``model`` if it is an ``nn.Module`` with parameters of one floating dtype, else a clear error: probes
    over the parameters evaluate one flat vector, in one dtype.

    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1).double())
    >>> try:
    ...     check_model(m)
    ... except ValueError as e:
    ...     print(str(e)[:72])
    model: its parameters mix dtypes (float32: 0.weight, 0.bias; float64: 1.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"{arg}: expected a torch.nn.Module, got {type(model).__name__}")
    if not any(True for _ in model.parameters()):
        raise ValueError(f"{arg}: the model has no parameters; probes need a model with at least one parameter")
    dtypes: dict[torch.dtype, list[str]] = {}
    for n, p in model.named_parameters():
        if p.is_floating_point():
            dtypes.setdefault(p.dtype, []).append(n)
    if len(dtypes) > 1:
        mix = "; ".join(f"{str(d).removeprefix('torch.')}: {', '.join(ns[:3])}" for d, ns in dtypes.items())
        raise ValueError(
            f"{arg}: its parameters mix dtypes ({mix}); probes over the parameters evaluate them as one vector "
            "in one dtype: cast the model first (model.float() or model.double())"
        )
    return model


def select_parameters(model: nn.Module, params=None) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs chosen by ``params`` (see :class:`ParamSpace`), in
    ``model.parameters()`` order.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    >>> [n for n, _ in select_parameters(m, "bias")], [n for n, _ in select_parameters(m, ["1"])]
    (['0.bias', '1.bias'], ['1.weight', '1.bias'])
    """
    named = list(model.named_parameters())
    if params is None:
        return [(n, p) for n, p in named if p.requires_grad] or named
    if isinstance(params, str):
        rx = re.compile(params)
        chosen = [(n, p) for n, p in named if rx.search(n)]
        if not chosen:
            raise ValueError(
                f"params: the regex {params!r} matches no parameter; names look like {[n for n, _ in named[:4]]}"
            )
        return chosen
    if not isinstance(params, Sequence):
        raise TypeError("params: expected None, a regex string or a list of parameter/module names")

    def under(n, w):
        return n == w or n.startswith(w + ".")

    wanted = list(params)
    missing = [w for w in wanted if not any(under(n, w) for n, _ in named)]
    if missing:
        modules = sorted({n.rsplit(".", 1)[0] for n, _ in named if "." in n})
        raise ValueError(f"params: no parameter or module named {missing}; available modules: {modules[:10]}")
    return [(n, p) for n, p in named if any(under(n, w) for w in wanted)]


def tied_aliases(model: nn.Module, names: list[str]) -> dict[str, list[str]]:
    """For each chosen name whose Parameter is shared (tied weights), the other names it goes by: every alias
    gets the same value, so ``functional_call`` can run with ``tie_weights=False`` (no untie map per call)."""
    by_id: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(n)
    ids = {n: id(p) for n, p in model.named_parameters(remove_duplicate=False)}
    return {n: [a for a in by_id[ids[n]] if a != n] for n in names if len(by_id[ids[n]]) > 1}


class ParamSpace:
    """The flattened space of (a subset of) a model's parameters.

    Parameters
    ----------
    model : nn.Module
    params : None, str or sequence of str
        ``None``: every parameter with ``requires_grad=True`` (all parameters if none does).
        A string is a regex matched (``re.search``) against full parameter names; a sequence of
        strings selects parameter names exactly or every parameter under a module name.
    """

    def __init__(self, model: nn.Module, params=None, arg: str = "model"):
        check_model(model, arg)
        self.model = model
        chosen = select_parameters(model, params)
        self.names = [n for n, _ in chosen]
        self.aliases = tied_aliases(model, self.names)
        self.shapes = [tuple(p.shape) for _, p in chosen]
        self.numels = [p.numel() for _, p in chosen]
        self.numel = sum(self.numels)
        self.device, self.dtype = chosen[0][1].device, chosen[0][1].dtype
        # values frozen at construction: the point theta_0 every probe is centred on
        self.theta0 = self.flatten([p.detach() for _, p in chosen]).clone()
        if not bool(torch.isfinite(self.theta0).all()):
            bad = [n for n, p in chosen if not bool(torch.isfinite(p.detach()).all())]
            raise ValueError(
                f"{arg}: the parameters {bad[:5]} contain NaN or inf values; a probe around them is undefined "
                "(load a checkpoint from before the divergence)"
            )

    def __len__(self):
        return self.numel

    # -- conversions -------------------------------------------------------
    def flatten(self, tensors) -> torch.Tensor:
        """A list (in ``names`` order) or dict by name of tensors -> one flat vector."""
        if isinstance(tensors, Mapping):
            missing = [n for n in self.names if n not in tensors]
            if missing:
                raise ValueError(f"direction: missing entries for parameters {missing[:5]}")
            tensors = [tensors[n] for n in self.names]
        tensors = list(tensors)
        if len(tensors) != len(self.names):
            raise ValueError(
                f"direction: got {len(tensors)} tensors but the parameter space has {len(self.names)} "
                "parameters; give one tensor per parameter in model.parameters() order, or a dict by name"
            )
        for n, s, t in zip(self.names, self.shapes, tensors):
            if tuple(t.shape) != s:
                raise ValueError(f"direction: tensor for {n!r} has shape {tuple(t.shape)}, expected {s}")
        return torch.cat([t.reshape(-1).to(self.device, self.dtype) for t in tensors])

    def unflatten(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        if vec.shape[-1] != self.numel:
            raise ValueError(
                f"direction: a flat vector must have {self.numel} entries (one per parameter in the chosen "
                f"space), got {vec.shape[-1]}; build it with ParamSpace(model, params).flatten(...)"
            )
        out, i = {}, 0
        lead = vec.shape[:-1]
        for n, s, k in zip(self.names, self.shapes, self.numels):
            out[n] = vec[..., i : i + k].reshape(*lead, *s)
            i += k
        for n, al in self.aliases.items():
            for a in al:
                out[a] = out[n]
        return out

    # -- functional evaluation ----------------------------------------------
    def base_tensors(self, fresh_buffers: bool = False) -> dict[str, torch.Tensor]:
        """All parameters and buffers of the model by name (detached, aliases included)."""
        d = {n: p.detach() for n, p in self.model.named_parameters(remove_duplicate=False)}
        for n, b in self.model.named_buffers(remove_duplicate=False):
            # train-mode BatchNorm writes running stats into the buffers it is given: hand it copies
            d[n] = b.detach().clone() if fresh_buffers else b.detach()
        return d

    def fresh_buffers(self) -> dict[str, torch.Tensor]:
        """Copies of the buffers (train-mode BatchNorm updates the buffers it is given in place)."""
        return {n: b.detach().clone() for n, b in self.model.named_buffers(remove_duplicate=False)}


def forward(model, tensors, inputs):
    """``model(inputs)`` with ``tensors`` (a partial dict by name, aliases of tied weights included)
    swapped in for the module's own; tensors not given are the module's own, untouched."""
    kw = dict(strict=False, tie_weights=False)
    if isinstance(inputs, Mapping):
        return functional_call(model, tensors, args=(), kwargs=dict(inputs), **kw)
    if isinstance(inputs, tuple):
        return functional_call(model, tensors, inputs, **kw)
    return functional_call(model, tensors, (inputs,), **kw)


#: losses that take class indices as targets (int64 in torch)
CLASS_INDEX_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss)


def class_index_loss(loss_fn) -> bool:
    """True for losses whose targets are class indices (``nn.CrossEntropyLoss``, ``nn.NLLLoss``, ...).

    >>> class_index_loss(torch.nn.CrossEntropyLoss()), class_index_loss(torch.nn.MSELoss())
    (True, False)
    """
    return isinstance(loss_fn, CLASS_INDEX_LOSSES) or loss_fn in (
        torch.nn.functional.cross_entropy,
        torch.nn.functional.nll_loss,
    )


def class_targets(targets, loss_fn):
    """Class labels as the int64 a class-index loss takes, where that is unambiguous: int32 / int16 /
    uint8 labels, and 1-D float labels with integer values (2-D float targets are class probabilities and
    stay); float labels with fractions are an error. Anything else is returned as it is.

    >>> class_targets(torch.tensor([0.0, 2.0]), torch.nn.CrossEntropyLoss())
    tensor([0, 2])
    """
    if not isinstance(targets, torch.Tensor) or targets.dtype == torch.int64 or not class_index_loss(loss_fn):
        return targets
    if targets.is_floating_point():
        if targets.dim() != 1:
            return targets
        if not bool((targets == targets.round()).all()):
            raise ValueError(
                f"data: the targets are {str(targets.dtype).removeprefix('torch.')} with fractional values, but "
                f"{type(loss_fn).__name__} takes class indices; pass integer labels 0..C-1"
            )
        return targets.long()
    if targets.dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        return targets.long()
    return targets


def check_targets(outputs, targets, loss_fn=None) -> None:
    """Clear errors for class labels of the wrong shape or out of range (before torch's cryptic ones)."""
    if not isinstance(targets, torch.Tensor) or not isinstance(outputs, torch.Tensor):
        return
    integer = targets.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)
    if integer and class_index_loss(loss_fn) and outputs.dim() >= 2:
        want = (outputs.shape[0], *outputs.shape[2:])
        if tuple(targets.shape) != want:
            raise ValueError(
                f"data: the targets have shape {tuple(targets.shape)}, but {type(loss_fn).__name__} on outputs of "
                f"shape {tuple(outputs.shape)} needs one class label per sample, shape {want} (e.g. y.squeeze(1))"
            )
    if integer and outputs.dim() >= 2:
        c = outputs.shape[1] if outputs.dim() > 2 else outputs.shape[-1]
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= c):
            ignore = getattr(loss_fn, "ignore_index", None)
            bad = targets[(targets < 0) | (targets >= c)]
            if ignore is not None and bool((bad == ignore).all()):
                return
            raise ValueError(
                f"data: class labels must lie in 0..{c - 1} for a model with {c} outputs; found labels "
                f"{sorted(set(bad.unique().tolist()))[:5]}. Remap the labels to 0..C-1 (or widen the output layer)"
            )
