"""The channel rules of each op: which channels of its inputs, outputs and weights it couples
(``passes/analysis/channels.py`` builds the groups from them). A rule links channel i of one
tensor axis with channel j of another, or returns why the op blocks pruning there.

    conv:          y[:, o] ~ W[o] ~ b[o];   x[:, i] ~ W[:, i]  (depthwise: x[:, i] ~ y[:, i*m .. i*m+m-1])
    linear:        y[..., o] ~ W[o] ~ b[o]; x[..., i] ~ W[:, i]
    elementwise:   x[c] ~ y[c] (broadcast axes of size 1 excepted)
    flatten:       x[:, c] ~ y[:, c*HW .. c*HW + HW - 1]
    reshape_as:    y[.., c] ~ other[.., c]

Concat, split, chunk and slice are in ``channel_pieces.py``; Shape and the computations it feeds
in ``channel_shapes.py``; attention matmuls in ``channel_attention.py``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refold.ir.graph import CORE, Node, Value
from refold.passes.analysis import channel_pieces as pieces
from refold.passes.analysis.channel_attention import attention_matmul, axes_of, sdpa
from refold.passes.analysis.channel_shapes import computed_pads, shape_rule, target_entry

ChannelGraph = Any  # the builder in channels.py, which imports these rules (so not imported here)

_UNARY = {
    CORE: {"relu", "sigmoid", "sqrt", "tanh", "silu", "hardswish", "gelu"},
    "onnx": {"Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Softplus",
             "Clip", "Erf", "Exp", "Abs", "Neg", "Sqrt", "Identity", "Dropout", "Cast", "Floor", "Ceil",
             "Round", "Reciprocal", "Mish", "Gelu", "Celu", "ThresholdedRelu", "IsNaN", "IsInf", "Not",
             "Sign", "Softsign", "Log", "Sin", "Cos", "CastLike"},
    "aten": {"relu", "relu_", "sigmoid", "tanh", "hardtanh", "hardtanh_", "hardswish", "hardswish_",
             "hardsigmoid", "silu", "silu_", "gelu", "dropout", "clone", "contiguous", "alias", "detach",
             "leaky_relu", "elu", "clamp", "clamp_min", "neg", "abs", "exp", "sqrt", "rsqrt", "erf",
             "_to_copy", "to", "mish", "dropout_", "feature_dropout", "alpha_dropout", "_assert_tensor_metadata",
             "isnan", "isinf", "logical_not", "sign", "log", "sin", "cos", "reciprocal"},
}
_BINARY = {
    CORE: {"add", "sub", "mul", "div"},
    "onnx": {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "PRelu",
             "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "Sum", "Mean"},
    "aten": {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "maximum", "minimum", "where", "pow",
             "eq", "lt", "gt", "le", "ge", "logical_and", "logical_or", "remainder", "rsub"},
}
_POOL = {  # batch and channel axes kept; spatial ones resampled
    "onnx": {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "Resize", "Upsample"},
    "aten": {"max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d", "max_pool1d",
             "avg_pool1d", "adaptive_avg_pool1d", "upsample_nearest2d", "upsample_bilinear2d"},
}
_NORMS = ("layer_norm", "rms_norm", "crms_norm")



def seed_axis(n: Node) -> int | None:
    """The output-channel axis of an op with constant weights (where groups start)."""
    if n.domain != CORE or not n.outputs or n.outputs[0].shape is None:
        return None
    w = n.inputs[1] if len(n.inputs) > 1 else None
    if w is None or w.const is None:
        return None
    if n.op in ("conv", "conv_transpose"):
        return 1
    if n.op in ("linear", "gemm", "matmul"):
        return -1
    return None


def _const_ints(v: Value | None) -> list[int] | None:
    if v is None or v.const is None:
        return None
    return [int(x) for x in np.asarray(v.const.numpy()).reshape(-1)]


def couple(cg: ChannelGraph, n: Node, v: Value, axis) -> str | None:
    """Link the channels ``n`` couples with channel axis ``axis`` of ``v`` (an int, or a tuple of
    axes holding one flat channel index); a string: why not."""
    ins, outs = n.inputs, n.outputs
    y = outs[0] if outs else None
    d = n.dialect
    why = _axiswise(cg, n, v, axis)
    if why != _NOT_AXISWISE:
        return why
    if d == CORE and n.op == "concat":
        return pieces.concat(cg, n, v, axis)
    if d == CORE and n.op == "split":
        return pieces.split(cg, n, v, axis, n.attrs.get("axis", 0))
    if d == "aten" and n.op in ("chunk", "split", "split_with_sizes", "unsafe_split", "unsafe_chunk"):
        args = n.attrs.get("args") or []
        dim = args[2] if len(args) > 2 else (n.attrs.get("kwargs") or {}).get("dim", 0)
        if v is not ins[0] and v not in outs or not isinstance(dim, int):
            return "a split along a computed axis"
        return pieces.split(cg, n, v, axis, dim)
    if d == CORE and n.op == "slice":
        return pieces.slice_(cg, n, v, axis)
    if d == "onnx" and n.op == "Shape":
        return shape_rule(cg, n, v, axis)
    if isinstance(axis, tuple):
        return f"{n.qualified_op}: no rule for channels spread over several axes (attention heads)"
    if d == CORE and n.op == "conv":
        return _conv(cg, n, v, axis)
    if d == CORE and n.op == "conv_transpose":
        x, w, b = ins[0], ins[1], ins[2] if len(ins) > 2 else None
        if n.attrs.get("group", 1) != 1:
            return "grouped transposed convolution"
        if v is x and axis == 1 or v is w and axis == 0:
            cg._identity(v, axis, w if v is x else x, 0 if v is x else 1)
        elif v is y and axis == 1 or v is w and axis == 1 or v is b:
            for other, ax in ((w, 1), (y, 1), (b, 0)):
                if other is not v:
                    cg._identity(v, axis, other, ax)
        elif v in (x, y) and axis == 0:
            cg._identity(v, 0, y if v is x else x, 0)
        else:
            return f"axis {axis} of '{v.name}' is mixed by the convolution"
        return None
    if d == CORE and n.op == "batch_norm":
        x = ins[0]
        if axis == 1 and v in (x, y) or v in ins[1:]:
            for other, ax in ((x, 1), (y, 1), *((p, 0) for p in ins[1:])):
                if other is not v:
                    cg._identity(v, axis, other, ax)
        else:
            cg._identity(v, axis, y if v is x else x, axis)
        return None
    if d == CORE and n.op in _NORMS:
        x = ins[0]
        start = n.attrs.get("axis", -1) % len(x.shape)
        if v in ins[1:] or axis >= start:
            return "normalises over these channels (removing one changes every other)"
        cg._identity(v, axis, y if v is x else x, axis)
        return None
    if d == CORE and n.op in ("linear", "gemm", "matmul"):
        return _dense(cg, n, v, axis)
    if n.op in _POOL.get(d, ()):
        if v is not ins[0] and v is not y:
            return "a resampling parameter"
        if axis > 1:
            return "resamples this axis"
        cg._identity(v, axis, y if v is ins[0] else ins[0], axis)
        return None
    if d == CORE and n.op in ("reshape", "flatten") or d == "aten" and n.op == "flatten":
        if v is not ins[0] and v is not y:
            return None  # the target shape: followed through _shape_member
        return _reshape(cg, n, v, axis)
    if d == "onnx" and n.op == "Pad" or d == "aten" and n.op in ("pad", "constant_pad_nd"):
        if v is not ins[0] and v is not y:
            return None
        rank = len(ins[0].shape)
        if d == "onnx":
            pads = n.attrs.get("pads") or _const_ints(ins[1] if len(ins) > 1 else None)
            if pads is None and len(ins) > 1:  # computed from constants (and widths elsewhere)
                pads = computed_pads(cg, ins[1], ins[0], axis)
            if pads is None or len(ins) > 3 and ins[3] is not None:
                return f"a pad with computed amounts or axes ({ins[1].name if len(ins) > 1 else '?'})"
            padded = {a for a in range(rank) if pads[a] or pads[a + rank]}
        else:
            args = n.attrs.get("args") or []
            pads = list(args[1]) if len(args) > 1 and isinstance(args[1], (list, tuple)) else None
            if pads is None or not all(isinstance(p, int) for p in pads):
                return "a pad with computed amounts"
            padded = {rank - 1 - i // 2 for i, p in enumerate(pads) if p}
        if axis in padded:
            return "pads these channels"
        cg._identity(v, axis, y if v is ins[0] else ins[0], axis)
        return None
    if d == "aten" and n.op in ("mean", "sum", "amax"):
        args = n.attrs.get("args") or []
        dims = args[1] if len(args) > 1 else None
        keep = bool(args[2]) if len(args) > 2 else bool((n.attrs.get("kwargs") or {}).get("keepdim", False))
        rank = len(ins[0].shape)
        if not isinstance(dims, (list, tuple)) or not all(isinstance(a, int) for a in dims):
            return "a reduction over computed axes"
        axes = sorted(a % rank for a in dims)
        if v is ins[0]:
            if axis in axes:
                return "reduces over these channels"
            cg._identity(v, axis, y, axis if keep else axis - sum(a < axis for a in axes))
        else:
            src = axis if keep else [a for a in range(rank) if a not in axes][axis]
            if src not in axes:
                cg._identity(v, axis, ins[0], src)
        return None
    if d == CORE and n.op == "reduce_mean" or d == "onnx" and n.op in ("ReduceMean", "ReduceSum", "ReduceMax"):
        axes = n.attrs.get("axes")
        if axes is None and len(ins) > 1:
            axes = _const_ints(ins[1])
        rank = len(ins[0].shape)
        axes = sorted(a % rank for a in (axes if axes else range(rank)))
        keep = n.attrs.get("keepdims", 1)
        if v is ins[0]:
            if axis in axes:
                return "reduces over these channels"
            cg._identity(v, axis, y, axis if keep else axis - sum(a < axis for a in axes))
        elif v is y:
            src = axis if keep else [a for a in range(rank) if a not in axes][axis]
            if src in axes:
                return None
            cg._identity(v, axis, ins[0], src)
        return None
    if d == "onnx" and n.op in ("Squeeze", "Unsqueeze"):
        return _squeeze(cg, n, v, axis)
    if d == "aten" and n.op in ("sym_size", "size"):
        dim = (n.attrs.get("args") or [None, None])[1] if len(n.attrs.get("args") or ()) > 1 else None
        if isinstance(dim, int) and dim % len(v.shape) not in axes_of(axis):
            return None  # reads another axis (the batch, the image size)
        return "its width feeds a shape computation"
    if n.op in ("quantize_linear", "dequantize_linear", "QuantizeLinear", "DequantizeLinear"):
        return "already quantized"
    return f"{n.qualified_op} has no channel rule"


_NOT_AXISWISE = "not axis-wise"
_VIEWS = {CORE: {"reshape", "flatten"}, "aten": {"view", "_unsafe_view", "reshape", "flatten", "reshape_as", "view_as"}}


def _axiswise(cg: ChannelGraph, n: Node, v: Value, axis) -> str | None:
    """The rules that move axes around without mixing channels, for plain and multi-axis tracks:
    elementwise ops and broadcasts, transposes, views, matmuls and attention."""
    ins, outs, d = n.inputs, n.outputs, n.dialect
    y = outs[0] if outs else None
    comps = axes_of(axis)
    if n.op in _UNARY.get(d, ()):
        if v is not ins[0] and v is not y:
            return None  # Clip's bounds, a dtype argument
        cg.project(v, axis, y if v is ins[0] else ins[0], list(comps))
        return None
    if n.op in _BINARY.get(d, ()):
        ry = len(y.shape)
        for u in [*ins, y]:
            if u is None or u is v or u.shape is None:
                continue
            shift = (ry - len(u.shape)) - (ry - len(v.shape))  # right-aligned
            cg.project(v, axis, u, [c - shift if c - shift >= 0 else None for c in comps])
        return None
    if d == CORE and n.op == "transpose" or d == "aten" and n.op in ("transpose", "permute", "t"):
        rank = len(ins[0].shape)
        if d == CORE:
            perm = list(n.attrs.get("perm") or reversed(range(rank)))
        else:
            args = n.attrs.get("args") or []
            if n.op == "permute":
                perm = [a % rank for a in args[1]] if len(args) > 1 else None
            else:
                d0, d1 = (args[1], args[2]) if n.op == "transpose" and len(args) > 2 else (0, 1)
                perm = list(range(rank))
                if not (isinstance(d0, int) and isinstance(d1, int)):
                    return "a transpose of computed axes"
                perm[d0 % rank], perm[d1 % rank] = perm[d1 % rank], perm[d0 % rank]
            if perm is None:
                return "a permute of computed axes"
        if v is ins[0]:
            cg.project(v, axis, y, [perm.index(c) for c in comps])
        else:
            cg.project(v, axis, ins[0], [perm[c] for c in comps])
        return None
    if d == "onnx" and n.op == "Softmax" or d == "aten" and n.op in ("softmax", "_softmax", "log_softmax"):
        rank = len(ins[0].shape)
        sm = (n.attrs.get("axis", -1) if d == "onnx" else (n.attrs.get("args") or [None, -1])[1]) % rank
        if sm in comps:
            return "softmax over these channels"
        cg.project(v, axis, y if v is ins[0] else ins[0], list(comps))
        return None
    if n.op in _VIEWS.get(d, ()) and (isinstance(axis, tuple) or d == "aten" and n.op != "flatten"):
        if n.op in ("reshape_as", "view_as") and v is ins[1]:  # y has other's shape: y[.., c] ~ other[.., c]
            cg.project(v, axis, y, list(comps))
            return None
        if v is not ins[0] and v is not y:
            return None
        return _reshape(cg, n, v, axis)
    if d == CORE and n.op == "matmul" and (isinstance(axis, tuple) or all(u.const is None for u in ins[:2])):
        return attention_matmul(cg, n, v, axis)
    if d == "aten" and n.op == "scaled_dot_product_attention":
        return sdpa(cg, n, v, axis)
    if d == "aten" and n.op in ("unsqueeze", "squeeze") and v in (ins[0], y):
        args = n.attrs.get("args") or []
        dim = args[1] if len(args) > 1 else None
        if not isinstance(dim, int):
            return "an unsqueeze of a computed axis"
        big = y if n.op == "unsqueeze" else ins[0]  # the side with the unit axis
        dim %= len(big.shape)
        up = lambda c: c + 1 if c >= dim else c  # noqa: E731
        down = lambda c: None if c == dim else (c - 1 if c > dim else c)  # noqa: E731
        if (v is ins[0]) == (n.op == "unsqueeze"):  # from the side without the unit axis
            cg.project(v, axis, y if v is ins[0] else ins[0], [up(c) for c in comps])
        else:
            cg.project(v, axis, y if v is ins[0] else ins[0], [down(c) for c in comps])
        return None
    if d == "aten" and n.op == "expand" and v in (ins[0], y):
        args = n.attrs.get("args") or []
        sizes = list(args[1]) if len(args) > 1 and isinstance(args[1], (list, tuple)) else None
        if sizes is None:
            return "an expand to computed sizes"
        shift = len(y.shape) - len(ins[0].shape)
        if v is ins[0]:
            to = [c + shift for c in comps]
            cg.project(v, axis, y, to)
        else:
            to = [c - shift if c - shift >= 0 else None for c in comps]
            cg.project(v, axis, ins[0], to)
        for c in (to if v is ins[0] else comps):  # the expand's size list spells the width there
            if c is not None and isinstance(sizes[c], int) and sizes[c] != -1:
                cg.shape_members[(y.name, c)].append((f"args:{n.name}", c, 1, 1))
            elif c is not None and not isinstance(sizes[c], int):
                return "an expand whose size there is computed"
        return None
    return _NOT_AXISWISE


def _conv(cg: ChannelGraph, n: Node, v: Value, axis: int) -> str | None:
    x, w = n.inputs[0], n.inputs[1]
    b = n.inputs[2] if len(n.inputs) > 2 else None
    y = n.outputs[0]
    g = int(n.attrs.get("group", 1))
    cout, cig = w.shape[0], w.shape[1]
    cog = cout // g
    if v in (x, y) and axis == 0:
        cg._identity(v, 0, y if v is x else x, 0)
        return None
    if v is x and axis == 1 or v is w and axis == 1:
        if g == 1:
            cg._identity(v, axis, w if v is x else x, 1)
        elif cig == 1:  # depthwise: input channel i feeds output channels i*m .. i*m+m-1
            if v is x:
                cg._link(x, 1, y, 1, ((i, i * cog + j) for i in range(g) for j in range(cog)))
            else:
                return "the kernel axis of a depthwise weight"
        else:  # grouped: column j of the weight serves input channel k*cig + j of every group k
            if v is x:
                cg._link(x, 1, w, 1, ((k * cig + j, j) for k in range(g) for j in range(cig)))
            else:
                cg._link(w, 1, x, 1, ((j, k * cig + j) for k in range(g) for j in range(cig)))
        return None
    if v is y and axis == 1 or v is w and axis == 0 or v is b:
        for other, ax in ((w, 0), (y, 1), (b, 0)):
            if other is not v and other is not None:
                cg._identity(v, axis if v is not b else 0, other, ax)
        if g > 1 and cig == 1:  # depthwise: the output channel's input channel
            src = v if v is y else y
            cg._link(src, 1, x, 1, ((i * cog + j, i) for i in range(g) for j in range(cog)))
        elif g > 1:  # grouped: output j of every group together, so the groups stay equal
            src = v if v is y else y
            cg._link(src, 1, src, 1, ((k * cog + j, j) for k in range(g) for j in range(cog)))
        return None
    return f"axis {axis} of '{v.name}' is mixed by the convolution"


def _dense(cg: ChannelGraph, n: Node, v: Value, axis: int) -> str | None:
    """linear (W [out, in]), gemm (B [K, N] or [N, K] with transB), matmul ([..., M, K] x [..., K, N])."""
    a, bm = n.inputs[0], n.inputs[1]
    c = n.inputs[2] if len(n.inputs) > 2 else None
    y = n.outputs[0]
    if n.op == "gemm" and n.attrs.get("transA", 0):
        return "gemm with transA"
    ra, rb, ry = len(a.shape), len(bm.shape), len(y.shape)
    if ra < 2 or rb < 2:
        return "a matrix-vector product"
    if n.op == "linear":
        k_axis, n_axis = 1, 0
    elif n.op == "gemm":
        k_axis, n_axis = (1, 0) if n.attrs.get("transB", 0) else (0, 1)
    else:
        k_axis, n_axis = rb - 2, rb - 1
    pos = {"a": a, "b": bm, "y": y}
    if v is a and axis == ra - 1 or v is bm and axis == k_axis:  # the contracted dim
        cg._identity(v, axis, bm if v is a else a, k_axis if v is a else ra - 1)
        return None
    if v is y and axis == ry - 1 or v is bm and axis == n_axis or v is c:
        for other, ax in ((bm, n_axis), (y, ry - 1), (c, -1)):
            if other is not None and other is not v and other.shape:
                cg._identity(v, axis if v is not c else len(c.shape) - 1, other, ax)
        return None
    if n.op in ("linear", "gemm") and v is bm:
        return None
    # the rows (M) and batch axes of a / y; for matmul also b's batch axes, right-aligned
    if v is a:
        cg._identity(a, axis, y, axis + ry - ra)
    elif v is y:
        if axis - (ry - ra) >= 0:
            cg._identity(y, axis, a, axis - (ry - ra))
        if n.op == "matmul" and axis < ry - 2 and axis - (ry - rb) >= 0:
            cg._identity(y, axis, bm, axis - (ry - rb))
    elif v is bm and n.op == "matmul" and axis < rb - 2:
        cg._identity(bm, axis, y, axis + ry - rb)
    del pos
    return None


def _squeeze(cg: ChannelGraph, n: Node, v: Value, axis: int) -> str | None:
    x, y = n.inputs[0], n.outputs[0]
    axes = n.attrs.get("axes") or _const_ints(n.inputs[1] if len(n.inputs) > 1 else None)
    if axes is None:
        return "squeeze without axes"
    if n.op == "Squeeze":
        axes = sorted(a % len(x.shape) for a in axes)
        kept = [a for a in range(len(x.shape)) if a not in axes]
        if v is x:
            if axis in axes:
                return None
            cg._identity(x, axis, y, kept.index(axis))
        else:
            cg._identity(y, axis, x, kept[axis])
        return None
    axes = sorted(a % len(y.shape) for a in axes)
    kept = [a for a in range(len(y.shape)) if a not in axes]
    if v is x:
        cg._identity(x, axis, y, kept[axis])
    elif axis not in axes:
        cg._identity(y, axis, x, kept.index(axis))
    return None


def _as_run(cg: ChannelGraph, u: Value) -> tuple | None:
    shape = u.shape
    if any(not isinstance(d, int) for d in shape):  # a symbolic batch or image size: as run
        shape = cg.concrete(u) or shape
    return tuple(shape) if all(isinstance(d, int) for d in shape) else None


def _reshape(cg: ChannelGraph, n: Node, v: Value, axis) -> str | None:
    """A view keeps the channels' flat extent: the axes covering the same span of the flat index
    on the other side carry them (an axis kept, split into heads, or heads merged back), or one
    axis merges with the axes after it into one (channel c -> features c*inner .. c*inner+inner-1,
    a flatten into a linear). Target literals spelling the width shrink with the group."""
    x, y = n.inputs[0], n.outputs[0]
    comps = axes_of(axis)
    if list(comps) != list(range(comps[0], comps[0] + len(comps))):
        return "a view of channels on axes that are not next to each other"
    sx, sy = _as_run(cg, x), _as_run(cg, y)
    if sx is None or sy is None:
        return "reshape of a tensor without static shape"
    src, dst = (sx, sy) if v is x else (sy, sx)
    c0, c1 = comps[0], comps[-1]
    lead = int(np.prod(src[:c0], dtype=np.int64))
    span = int(np.prod(src[c0:c1 + 1], dtype=np.int64))
    acc, b0 = 1, 0
    while b0 < len(dst) and acc < lead:
        acc *= dst[b0]
        b0 += 1
    while b0 < len(dst) and dst[b0] == 1 and span != 1:  # unit axes in between: [C] -> [1, C, 1, 1]
        b0 += 1
    if acc != lead or b0 >= len(dst):
        return "reshape splits these channels into several axes"
    b1, covered = b0, 1
    while b1 < len(dst) and covered < span:
        covered *= dst[b1]
        b1 += 1
    other = y if v is x else x
    if isinstance(axis, tuple):
        if covered != span:
            return "reshape mixes these channels with other axes"
        target = tuple(range(b0, b1))
        cg._identity(v, axis, other, target if len(target) > 1 else target[0])
        return None
    ypos = b0 if v is x else axis  # the target literal at y's axis counts y's channels there
    if covered == span and b1 - b0 == 1:  # the axis kept
        cg._identity(v, axis, other, b0)
        _shape_member(cg, n, ypos, 1, y, ypos)
        return None
    # One axis and the next few as one axis on the other side: a flatten into a linear (channel c
    # -> features c*inner .. c*inner + inner - 1), heads merged back ([B, T, H, dh] -> [B, T, D]),
    # or split out ([B, T, D] -> [B, T, H, dh]: feature i -> head i // dh), key/value heads
    # repeated for grouped-query attention ([B, Hk, r, S, dh] -> [B, Hk*r, S, dh]).
    merged = _merged(src, axis, dst[b0])
    if merged is not None:  # src's axis (and some after it) make dst's axis b0
        inner = dst[b0] // src[axis]
        cg._link(v, axis, other, b0, ((c, c * inner + r) for c in range(src[axis]) for r in range(inner)))
        _shape_member(cg, n, ypos, 1, y, ypos)
        return None
    split = _merged(dst, b0, src[axis])
    if split is not None:  # dst's axis b0 (and some after it) make src's axis
        inner = src[axis] // dst[b0]
        cg._link(v, axis, other, b0, ((c * inner + r, c) for c in range(dst[b0]) for r in range(inner)))
        _shape_member(cg, n, ypos, 1, y, ypos)
        return None
    return "reshape splits these channels into several axes"


def _merged(shape, axis: int, size: int) -> int | None:
    """How many axes from ``axis`` on multiply to ``size`` (at least one more than the axis)."""
    acc = 1
    for k in range(axis, len(shape)):
        acc *= shape[k]
        if acc == size:
            return k - axis + 1 if k > axis else None
        if acc > size:
            return None
    return None


def _shape_member(cg: ChannelGraph, n: Node, out_axis: int, inner: int, v: Value, axis, den: int = 1) -> None:
    """A view whose target spells the width at ``out_axis`` as a literal (a shape constant, or a
    torch view's size list): it shrinks with the group by inner / den per channel (-1 and 0
    follow by themselves; a symbolic size is the batch's, never a channel axis)."""
    if n.dialect == "aten":
        if n.op == "flatten":
            return
        if n.op in ("reshape_as", "view_as"):  # the target is the other tensor's shape: its axis follows
            cg._identity(n.outputs[0], out_axis, n.inputs[1], out_axis)
            return
        args = n.attrs.get("args") or []
        values = list(args[1]) if len(args) > 1 and isinstance(args[1], (list, tuple)) else None
        target = f"args:{n.name}"
    else:
        if n.op != "reshape":
            return
        values = _const_ints(n.inputs[1])
        target = n.inputs[1].name
        if values is None:  # computed at run time: from a width it follows; from constants they shrink
            got = target_entry(cg, n.inputs[1], out_axis)
            if isinstance(got, str):
                cg._block(v, axis, f"{n.label()}: {got}", "shape")
            elif got[0] == "width":
                cg._identity(n.outputs[0], out_axis, got[1], got[2])
            elif got[0] == "literal":
                cg.shape_members[(v.name, cg._norm(v, axis))].append((got[1], got[2], inner, den))
            return
    if values is None or out_axis >= len(values):
        cg._block(v, axis, f"{n.label()}: the reshape target is computed (fold-constants first may settle it)",
                  "shape")
        return
    literal = values[out_axis]
    if not isinstance(literal, int):
        cg._block(v, axis, f"{n.label()}: the size at {out_axis} is computed", "shape")
        return
    if literal not in (-1, 0):
        cg.shape_members[(v.name, cg._norm(v, axis))].append((target, out_axis, inner, den))
