"""Permutation groups of a model, found from its module graph (torch.fx).

Hidden units can be reordered without changing the function: permuting the output rows of a layer and
the input columns of every layer that reads them. :func:`permutation_groups` traces the model with
``torch.fx``, runs one example through it for the shapes, and follows every weight axis through the
graph: which axes must share one permutation. Residual additions tie the streams they add (one
permutation along a residual path), BatchNorm and LayerNorm carry their input's permutation, a flatten
after a convolution spreads a channel over ``H * W`` consecutive features, and attention splits its
width into heads: heads are permuted as blocks (shared by q, k, v and the output projection) and the
dimensions within a head separately for the q/k and the v/o pair. Inputs and outputs stay fixed; an
axis added to or mixed with anything that cannot be permuted is pinned. An operation whose effect on the
units is unknown is a ``ValueError`` naming the module (Ainsworth et al. 2023, "Git Re-Basin", sec. 2).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..data import input_batches
from ..state import modes, run_shielded
from .fxrules import apply_rule

__all__ = ["Entry", "Group", "PermutationSpec", "permutation_groups", "example_input", "trace"]


@dataclass(frozen=True)
class Entry:
    """One axis of a parameter or buffer that a permutation acts on: ``name`` (its ``state_dict`` key),
    ``axis``, the slice ``[offset, offset + size * factor)`` of that axis, and ``factor``: each unit spans
    ``factor`` consecutive indices (a conv channel flattened into a Linear's input)."""

    name: str
    axis: int
    offset: int = 0
    factor: int = 1


@dataclass
class Group:
    """A permutation group: ``size`` units, the axes it acts on, ``heads`` (attention: heads of
    ``size / heads`` units permuted as blocks, shared by the groups of ``head_group``) and ``points``,
    the module outputs that carry these units, as ``(module name, axis, factor, shape without the batch)``
    (activation matching)."""

    name: str
    size: int
    entries: list[Entry] = field(default_factory=list)
    heads: int | None = None
    head_group: str | None = None
    heads_pinned: bool = False
    points: list[tuple] = field(default_factory=list)


@dataclass
class PermutationSpec:
    """The permutation groups of a model (:func:`permutation_groups`): ``groups`` by name, ``head_groups``
    (a name -> the groups that share one head permutation) and ``by_param`` (a state_dict key -> its
    ``(group, entry)`` pairs)."""

    groups: dict[str, Group]
    head_groups: dict[str, list[str]]
    by_param: dict[str, list[tuple[str, Entry]]]

    def table(self):
        """One row per group: size, heads, and the parameter axes it permutes (a pandas DataFrame)."""
        import pandas as pd

        rows = [
            dict(group=g.name, size=g.size, heads=g.heads, head_group=g.head_group,
                 axes=", ".join(f"{e.name}[{e.axis}]" for e in g.entries))
            for g in self.groups.values()
        ]  # fmt: skip
        return pd.DataFrame(rows).set_index("group") if rows else pd.DataFrame()


class _Space:
    def __init__(self, size: int, name: str):
        self.size, self.name = size, name
        self.entries: list[Entry] = []
        self.points: list[tuple] = []
        self.heads: int | None = None
        self.hg: int | None = None
        self.pinned = False
        self.from_param = False  # made for a parameter read directly (get_attr): a module's name is preferred


class _Builder:
    """Union-find over unit spaces (``full``/``within`` labels) and head groups (``head`` labels)."""

    def __init__(self):
        self.spaces: list[_Space] = []
        self.parent: list[int] = []
        self.hg_parent: list[int] = []
        self.hg_pinned: list[bool] = []
        self.where = ""

    def new(self, size: int, name: str, entries=()) -> tuple:
        """A new unit space of ``size`` units whose axes are ``entries``, ``(name, axis[, offset])``; its label."""
        self.spaces.append(_Space(size, name))
        self.parent.append(len(self.parent))
        self.spaces[-1].entries.extend(Entry(*e) for e in entries)
        return ("full", len(self.spaces) - 1, 1)

    def point(self, label, module: str, axis: int, shape: tuple) -> None:
        """The output of ``module`` (of ``shape``) carries the units of ``label`` on ``axis`` (activation matching)."""
        if label is not None and label[0] == "full" and shape is not None:
            self.spaces[self.find(label[1])].points.append((module, axis, label[2], tuple(shape[1:])))

    def add(self, label, name: str, axis: int, offset: int = 0) -> None:
        """The axis ``axis`` of the parameter ``name`` carries the units of ``label`` (None: nothing)."""
        if label is None:
            return
        if label[0] != "full":
            self.fail(f"{name} reads {_kind(label)} as its input")
        self.spaces[self.find(label[1])].entries.append(Entry(name, axis, offset, label[2]))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def hfind(self, i: int) -> int:
        while self.hg_parent[i] != i:
            i = self.hg_parent[i]
        return i

    def head_group(self, s: int, heads: int) -> int:
        sp = self.spaces[self.find(s)]
        if sp.heads is not None and sp.heads != heads:
            self.fail(f"units split into {heads} heads here and {sp.heads} heads elsewhere")
        sp.heads = heads
        if sp.hg is None:
            self.hg_parent.append(len(self.hg_parent))
            self.hg_pinned.append(False)
            sp.hg = len(self.hg_parent) - 1
        return self.hfind(sp.hg)

    def hunion(self, a: int, b: int) -> int:
        a, b = self.hfind(a), self.hfind(b)
        if a != b:
            self.hg_parent[b] = a
            self.hg_pinned[a] = self.hg_pinned[a] or self.hg_pinned[b]
        return a

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if a > b:
            a, b = b, a
        sa, sb = self.spaces[a], self.spaces[b]
        if sa.size != sb.size:
            self.fail(f"two unit spaces of sizes {sa.size} and {sb.size} meet")
        if sa.heads is not None and sb.heads is not None and sa.heads != sb.heads:
            self.fail(f"attention with {sa.heads} and {sb.heads} heads shares units")
        self.parent[b] = a
        sa.entries += sb.entries
        sa.points += sb.points
        sa.pinned = sa.pinned or sb.pinned
        if sa.from_param and not sb.from_param:
            sa.name, sa.from_param = sb.name, False
        sa.heads = sa.heads if sa.heads is not None else sb.heads
        if sa.hg is not None and sb.hg is not None:
            sa.hg = self.hunion(sa.hg, sb.hg)
        elif sa.hg is None:
            sa.hg = sb.hg
        return a

    def unite(self, la, lb):
        """The union of two axis labels (None: an axis that is not permuted)."""
        if la is None or lb is None:
            return la if lb is None else lb
        if la[0] != lb[0] or (la[0] == "full" and la[2] != lb[2]):
            self.fail(f"an axis is both {_kind(la)} and {_kind(lb)}")
        if la[0] == "head":
            return ("head", self.hunion(la[1], lb[1]))
        return (la[0], self.union(la[1], lb[1])) + la[2:]

    def pin(self, label) -> None:
        if label is None:
            return
        if label[0] == "head":
            self.hg_pinned[self.hfind(label[1])] = True
        else:
            self.spaces[self.find(label[1])].pinned = True

    def fail(self, why: str):
        raise ValueError(f"model: cannot find the permutation symmetry at {self.where}: {why}")


def _kind(label) -> str:
    return {"full": "a unit axis", "head": "a head axis", "within": "a within-head axis"}[label[0]]


def example_input(data, n: int = 2) -> torch.Tensor:
    """The first ``n`` inputs of ``data`` (any form :mod:`workbench.data` takes), for tracing shapes."""
    batch = next(iter(input_batches(data, what="data")))
    if not isinstance(batch, torch.Tensor):
        raise TypeError(
            f"data: weight-space alignment traces the model on one tensor input; got a batch of "
            f"{type(batch).__name__} (pass (inputs, targets) tensor pairs)"
        )
    return batch[:n]


@contextlib.contextmanager
def _fx_patches_undone(model: nn.Module):
    """torch.fx patches ``nn.Module.__call__`` / ``__getattr__`` and functions in the forward's globals while it
    traces; a Ctrl-C landing while it reverts them would leave every later module call traced (``NameError:
    module is not installed as a submodule``). Whatever is still patched on the way out is put back, shielded."""
    saved = {k: nn.Module.__dict__[k] for k in ("__call__", "__getattr__") if k in nn.Module.__dict__}
    g = getattr(type(model).forward, "__globals__", {})
    before = dict(g)

    def undo():
        for k, v in saved.items():
            if nn.Module.__dict__.get(k) is not v:
                setattr(nn.Module, k, v)
        for k in [k for k, v in g.items() if getattr(v, "__fx_already_patched", False)]:
            if k in before:
                g[k] = before[k]
            else:
                del g[k]

    try:
        yield
    finally:
        run_shielded(undo)


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """``torch.fx.symbolic_trace``; a forward that branches on shapes (``if x.dim() == 2``) is traced again
    with meta tensors of the example's shape (``torch.fx.experimental.meta_tracer``)."""
    with _fx_patches_undone(model):
        return _trace(model, example)


def _trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # torch.fx raises many kinds (TraceError, TypeError, ...): one clear error
        try:
            import inspect
            import warnings

            from torch.fx.experimental import meta_tracer

            first = next(iter(inspect.signature(model.forward).parameters))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm = meta_tracer.symbolic_trace(model, meta_args={first: example.to("meta")})
        except Exception:
            raise ValueError(
                f"model: torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {e}); weight-space "
                "alignment needs a forward without data-dependent control flow"
            ) from e
    try:
        with torch.no_grad(), modes(model, "eval"):
            ShapeProp(gm).propagate(example)
    except Exception as e:  # the traced graph does not run (a traced shape read gone wrong): one clear error
        if not isinstance(e.__cause__ or e, TypeError):
            raise  # the model's own error (or a planted one) goes on as it was
        raise ValueError(
            f"model: the torch.fx graph of {type(model).__name__} does not run on the example ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}); build constant tensors from the input (torch.zeros_like(x)) rather "
            "than from its shape, or pass inputs the model takes"
        ) from e
    return gm


def _shape(node):
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    names = [k for k in stack]
    owner = f"module {names[-1]!r}" if names else "the top-level module"
    what = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{owner} ({node.op} {what})"


def permutation_groups(model: nn.Module, example: Any) -> PermutationSpec:
    """The permutation groups of ``model``: which weight axes share one permutation of hidden units.

    ``example``: an input batch the model takes (or data, of which the first inputs are used), run once
    through the traced graph for the shapes (eval mode, no gradients; the model is not changed).

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> spec = permutation_groups(m, torch.zeros(2, 4))
    >>> [(g.name, g.size, [f"{e.name}[{e.axis}]" for e in g.entries]) for g in spec.groups.values()]
    [('0', 8, ['0.weight[0]', '0.bias[0]', '2.weight[1]'])]
    """
    if not isinstance(example, torch.Tensor):
        example = example_input(example)
    gm = trace(model, example)
    b = _Builder()
    state: dict = {}
    for node in gm.graph.nodes:
        b.where = _module_of(node)
        if node.op == "output":
            for lab in _flat_labels(node.args, state):
                b.pin(lab)
            continue
        state[node] = apply_rule(b, gm, node, state)
        _check_rank(b, node, state[node])
    return _finish(b, gm)


def _flat_labels(obj, state):
    if isinstance(obj, fx.Node):
        s = state.get(obj)
        out = []
        _collect(s, out)
        return out
    if isinstance(obj, (list, tuple)):
        return [x for o in obj for x in _flat_labels(o, state)]
    if isinstance(obj, dict):
        return [x for o in obj.values() for x in _flat_labels(o, state)]
    return []


def _collect(s, out):
    if isinstance(s, list):  # a tuple output: one label tuple per element
        for x in s:
            _collect(x, out)
    elif isinstance(s, tuple):
        out.extend(s)


def _check_rank(b, node, labels):
    shape = _shape(node)
    if shape is not None and isinstance(labels, tuple) and len(labels) != len(shape):
        b.fail(f"internal: {len(labels)} labels for a tensor of shape {list(shape)}")


def _finish(b: _Builder, gm) -> PermutationSpec:
    groups: dict[str, Group] = {}
    hg_members: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    used: set[str] = set()
    for i in range(len(b.spaces)):
        r = b.find(i)
        sp = b.spaces[r]
        if r != i or sp.pinned or sp.size < 2 or not sp.entries:
            continue
        name = sp.name
        while name in used:
            name += "'"
        used.add(name)
        names[r] = name
        g = Group(name, sp.size, list(dict.fromkeys(sp.entries)), sp.heads, points=list(dict.fromkeys(sp.points)))
        if sp.heads is not None and sp.heads > 1:
            h = b.hfind(sp.hg)
            g.heads_pinned = b.hg_pinned[h]
            hg_members.setdefault(h, []).append(name)
        else:
            g.heads = None
        groups[name] = g
    head_groups = {}
    for members in hg_members.values():
        hname = members[0] + ".heads"
        head_groups[hname] = members
        for m in members:
            groups[m].head_group = hname
    by_param: dict[str, list[tuple[str, Entry]]] = {}
    for g in groups.values():
        for e in g.entries:
            by_param.setdefault(e.name, []).append((g.name, e))
    return PermutationSpec(groups, head_groups, by_param)
