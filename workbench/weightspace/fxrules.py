"""How each torch.fx node moves the unit axes of its inputs (the rules behind
:func:`~workbench.weightspace.graph.permutation_groups`).

A tensor carries one label per axis: ``None`` (not permuted: batch, tokens, space, inputs, outputs),
``("full", space, factor)`` (units of a space, each over ``factor`` consecutive indices),
``("head", head_group)`` or ``("within", space)`` (a width split into heads). A rule returns the labels of
the node's output (a list for a tuple output, None for a non-tensor) and records, through the builder,
which parameter axes carry which space and which spaces must be one (:meth:`unite`) or fixed (:meth:`pin`).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from .fxshapes import batch, cat, getitem, matmul, merge, multi, permute, reduce, reshape

ELEMENTWISE = {
    "relu", "relu_", "gelu", "silu", "tanh", "sigmoid", "dropout", "softmax", "log_softmax", "exp", "sqrt",
    "rsqrt", "abs", "neg", "leaky_relu", "elu", "hardtanh", "relu6", "mish", "hardswish", "softplus", "erf",
    "clamp", "clip", "contiguous", "clone", "detach", "float", "double", "half", "to", "type", "type_as",
    "cpu", "cuda", "pos", "normalize", "square", "log", "reciprocal", "sign", "requires_grad_",
}  # fmt: skip
BINARY = {
    "add", "sub", "mul", "truediv", "div", "pow", "where", "maximum", "minimum", "masked_fill", "iadd", "isub",
    "imul", "itruediv", "add_", "mul_", "sub_", "div_", "masked_fill_", "rsub",
}  # fmt: skip
REDUCTIONS = {"mean", "sum", "amax", "amin", "var", "std", "logsumexp", "norm", "max", "min", "prod"}
RESHAPES = {"reshape", "view", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
BROADCASTS = {"expand", "expand_as", "broadcast_to"}
POOLS = {
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d", "_max_pool1d", "_max_pool2d",
    "_adaptive_max_pool1d", "_adaptive_max_pool2d", "boolean_dispatch",
}  # fmt: skip
ELEMENTWISE_MODULES = (
    nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Hardtanh, nn.ReLU6,
    nn.Mish, nn.Hardswish, nn.Identity, nn.Softmax, nn.LogSoftmax, nn.modules.dropout._DropoutNd,
)  # fmt: skip
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip


def shape_of(node):
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(tm.shape) if tm is not None and hasattr(tm, "shape") else None


def _tensors(obj) -> list:
    if isinstance(obj, fx.Node):
        return [obj] if shape_of(obj) is not None or multi(obj) else []
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def apply_rule(b, gm: fx.GraphModule, node: fx.Node, state: dict):
    """The labels of ``node``'s output (see the module docstring)."""
    out_shape = shape_of(node)
    if node.op == "placeholder":
        return None if out_shape is None else (None,) * len(out_shape)
    if node.op == "get_attr":
        t = _fetch(gm, node.target)
        if not isinstance(t, torch.Tensor):
            return None
        labels = tuple(b.new(n, node.target, [(node.target, ax)]) if n > 1 else None for ax, n in enumerate(t.shape))
        for lab in labels:
            if lab is not None:
                b.spaces[lab[1]].from_param = True
        return labels
    lab = {n: state.get(n) for n in _tensors(list(node.args) + list(node.kwargs.values()))}
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        out = _module(b, mod, node, lab, out_shape)
        first = out[0] if isinstance(out, list) else out
        shape = shape_of_meta(node.meta["tensor_meta"][0]) if multi(node) else out_shape
        for ax, l in enumerate(first or ()):
            b.point(l, node.target, ax, shape)
        return out
    if out_shape is None and "tensor_meta" not in node.meta:
        return None  # a non-tensor (a size, a dtype)
    return _function(b, node, _name(node), lab, out_shape)


def _fetch(gm, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _unlabelled(b, node, lab, out_shape, what: str):
    """An operation the rules do not know: fine when no input carries units, else the clear error."""
    if all(l is None or all(x is None for x in _flat(l)) for l in lab.values()):
        if multi(node):
            metas = [shape_of_meta(m) for m in node.meta["tensor_meta"]]
            return [None if m is None else (None,) * len(m) for m in metas]
        return None if out_shape is None else (None,) * len(out_shape)
    b.fail(
        f"{what} is not supported (its effect on permuted units is unknown); supported: Linear, Conv, "
        "BatchNorm, LayerNorm, GroupNorm(1 or C groups), Embedding, MultiheadAttention, elementwise "
        "activations, pooling, reshapes, residual additions, matmul and scaled_dot_product_attention"
    )


def shape_of_meta(m):
    return tuple(m.shape) if m is not None and hasattr(m, "shape") else None


def _flat(l):
    if isinstance(l, list):
        return [x for e in l for x in _flat(e)]
    return list(l) if isinstance(l, tuple) else []


def _broadcast(b, args, lab, rank: int) -> tuple:
    out = []
    for i in range(rank):
        items = []
        for a in args:
            sa = shape_of(a)
            j = i - (rank - len(sa))
            if j >= 0 and sa[j] > 1:
                items.append(lab[a][j])
        out.append(merge(b, items))
    return tuple(out)


def _module(b, mod, node, lab, out_shape):
    name = node.target
    x = node.args[0] if node.args else next(iter(node.kwargs.values()))
    lx = lab.get(x)
    if isinstance(mod, nn.MultiheadAttention):
        return _mha(b, mod, node, lab)
    if lx is None:
        return _unlabelled(b, node, lab, out_shape, f"module {name!r} ({type(mod).__name__}) on a non-tensor")
    p = name + "."
    if isinstance(mod, nn.Linear):
        b.add(lx[-1], p + "weight", 1)
        out = b.new(mod.out_features, name, [(p + "weight", 0)] + ([(p + "bias", 0)] if mod.bias is not None else []))
        return lx[:-1] + (out,)
    if isinstance(mod, nn.modules.conv._ConvNd):
        if any(l is not None for l in lx[2:]):
            b.fail("a convolution over permuted spatial axes")
        bias = [(p + "bias", 0)] if mod.bias is not None else []
        if mod.groups == 1 and not mod.transposed:
            b.add(lx[1], p + "weight", 1)
            out = b.new(mod.out_channels, name, [(p + "weight", 0)] + bias)
        elif mod.groups == 1:
            b.add(lx[1], p + "weight", 0)
            out = b.new(mod.out_channels, name, [(p + "weight", 1)] + bias)
        elif mod.groups == mod.in_channels == mod.out_channels:  # depthwise: channels keep their identity
            out = lx[1]
            for e in [(p + "weight", 0)] + bias:
                b.add(out, *e)
        else:
            b.fail(f"module {name!r}: grouped convolution ({mod.groups} groups) is not supported")
        return (lx[0], out) + (None,) * (len(out_shape) - 2)
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        for k in ("weight", "bias", "running_mean", "running_var"):
            if getattr(mod, k, None) is not None:
                b.add(lx[1], p + k, 0)
        return lx
    if isinstance(mod, nn.GroupNorm):
        if mod.num_groups not in (1, mod.num_channels):
            b.fail(f"module {name!r}: GroupNorm with {mod.num_groups} groups ties channels within groups")
        if mod.affine:
            b.add(lx[1], p + "weight", 0)
            b.add(lx[1], p + "bias", 0)
        return lx
    if isinstance(mod, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
        k = len(mod.normalized_shape)
        if k != 1 and any(l is not None for l in lx[-k:]):
            b.fail(f"module {name!r}: a norm over {k} axes that carry units")
        for key in ("weight", "bias"):
            if k == 1 and getattr(mod, key, None) is not None:
                b.add(lx[-1], p + key, 0)
        return lx
    if isinstance(mod, nn.Embedding):
        return lx + (b.new(mod.embedding_dim, name, [(p + "weight", 1)]),)
    if isinstance(mod, ELEMENTWISE_MODULES):
        return lx
    if isinstance(mod, POOL_MODULES):
        if any(l is not None for l in lx[2:]):
            b.fail(f"module {name!r}: pooling over axes that carry units")
        return tuple(lx[:2]) + (None,) * (len(out_shape) - 2)
    if isinstance(mod, (nn.Flatten, nn.Unflatten)):
        return reshape(b, lx, shape_of(x), out_shape)
    return _unlabelled(b, node, lab, out_shape, f"module {name!r} ({type(mod).__name__})")


def _mha(b, mod: nn.MultiheadAttention, node, lab):
    name = node.target
    if not mod._qkv_same_embed_dim or mod.bias_k is not None or mod.add_zero_attn:
        b.fail(f"module {name!r}: MultiheadAttention with kdim/vdim, bias_k or add_zero_attn is not supported")
    args = list(node.args) + [node.kwargs.get(k) for k in ("query", "key", "value") if k in node.kwargs]
    q, k, v = (lab[a] for a in args[:3])
    p, e, h = name + ".", mod.embed_dim, mod.num_heads
    lin = b.unite(b.unite(q[-1], k[-1]), v[-1])
    b.add(lin, p + "in_proj_weight", 1)
    has_bias = mod.in_proj_bias is not None
    qk = b.new(e, p + "qk", [(p + "in_proj_weight", 0, 0), (p + "in_proj_weight", 0, e)]
               + ([(p + "in_proj_bias", 0, 0), (p + "in_proj_bias", 0, e)] if has_bias else []))  # fmt: skip
    vo = b.new(e, p + "vo", [(p + "in_proj_weight", 0, 2 * e), (p + "out_proj.weight", 1)]
               + ([(p + "in_proj_bias", 0, 2 * e)] if has_bias else []))  # fmt: skip
    b.hunion(b.head_group(qk[1], h), b.head_group(vo[1], h))
    out_bias = [(p + "out_proj.bias", 0)] if mod.out_proj.bias is not None else []
    out = b.new(e, p + "out_proj", [(p + "out_proj.weight", 0)] + out_bias)
    metas = node.meta.get("tensor_meta")
    weights = shape_of_meta(metas[1]) if multi(node) and len(metas) > 1 else None
    return [q[:-1] + (out,), None if weights is None else (None,) * len(weights)]


def _function(b, node, fn: str, lab, out_shape):
    args = node.args
    t0 = args[0] if args else None
    l0 = lab.get(t0)
    fn = fn.strip("_") if fn.startswith("__") else fn
    if fn == "getitem":
        return getitem(b, node, state_of=lab, src=t0, idx=args[1], out_shape=out_shape)
    if out_shape is None:
        return _unlabelled(b, node, lab, out_shape, f"{fn} returning a non-tensor")
    rank = len(out_shape)
    if fn in ELEMENTWISE and l0 is not None and len(l0) == rank:
        return _broadcast(b, list(lab), lab, rank)
    if fn in BINARY or fn in BROADCASTS:
        return _broadcast(b, [a for a in lab if fn not in BROADCASTS or a is t0], lab, rank)
    if fn in RESHAPES:
        return reshape(b, l0, shape_of(t0), out_shape)
    if fn in ("transpose", "swapaxes", "swapdims", "t", "permute", "movedim"):
        return permute(b, node, fn, l0)
    if fn in REDUCTIONS or fn == "argmax":
        return reduce(b, node, fn, l0, shape_of(t0), out_shape)
    if fn in POOLS:
        if any(l is not None for l in l0[2:]):
            b.fail("pooling over axes that carry units")
        return tuple(l0[:2]) + (None,) * (rank - 2)
    if fn in ("cat", "concat", "concatenate", "stack"):
        return cat(b, node, fn, lab, rank)
    if fn in ("matmul", "bmm"):
        return matmul(b, lab[args[0]], lab[args[1]], shape_of(args[0]), shape_of(args[1]))
    if fn == "linear":
        w = node.kwargs.get("weight", args[1] if len(args) > 1 else None)
        bias = node.kwargs.get("bias", args[2] if len(args) > 2 else None)
        lw = lab[w]
        merge(b, [l0[-1], lw[1]])
        o = lw[0] if bias is None else merge(b, [lw[0], lab[bias][0]])
        return l0[:-1] + (o,)
    if fn == "scaled_dot_product_attention":
        q, k, v = args[:3]
        lq, lk, lv = lab[q], lab[k], lab[v]
        merge(b, [lq[-1], lk[-1]])
        merge(b, [lk[-2], lv[-2]])
        pairs = [(lab[t][:-2], shape_of(t)[:-2]) for t in (q, k, v)]
        return batch(b, pairs, rank - 2) + (lq[-2], lv[-1])
    if fn == "layer_norm":
        for extra in args[2:4]:
            if isinstance(extra, fx.Node):
                merge(b, [l0[-1], lab[extra][0]])
        return l0
    return _unlabelled(b, node, lab, out_shape, f"the operation {fn!r}")
