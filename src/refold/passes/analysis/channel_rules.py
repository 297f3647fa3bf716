"""The channel rules of each op: which channels of its inputs, outputs and weights it couples
(``passes/analysis/channels.py`` builds the groups from them). A rule links channel i of one
tensor axis with channel j of another, or returns why the op blocks pruning there.

    conv:          y[:, o] ~ W[o] ~ b[o];   x[:, i] ~ W[:, i]  (depthwise: x[:, i] ~ y[:, i*m .. i*m+m-1])
    linear:        y[..., o] ~ W[o] ~ b[o]; x[..., i] ~ W[:, i]
    elementwise:   x[c] ~ y[c] (broadcast axes of size 1 excepted)
    concat:        x_k[c] ~ y[offset_k + c]
    flatten:       x[:, c] ~ y[:, c*HW .. c*HW + HW - 1]
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refold.ir.graph import CORE, Node, Value

ChannelGraph = Any  # the builder in channels.py, which imports these rules (so not imported here)

_UNARY = {
    CORE: {"relu", "sigmoid", "sqrt", "tanh", "silu", "hardswish", "gelu"},
    "onnx": {"Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Softplus",
             "Clip", "Erf", "Exp", "Abs", "Neg", "Sqrt", "Identity", "Dropout", "Cast", "Floor", "Ceil",
             "Round", "Reciprocal", "Mish", "Gelu", "Celu", "ThresholdedRelu"},
    "aten": {"relu", "relu_", "sigmoid", "tanh", "hardtanh", "hardtanh_", "hardswish", "hardswish_",
             "hardsigmoid", "silu", "silu_", "gelu", "dropout", "clone", "contiguous", "alias", "detach",
             "leaky_relu", "elu", "clamp", "clamp_min", "neg", "abs", "exp", "sqrt", "rsqrt", "erf",
             "_to_copy", "to", "mish"},
}
_BINARY = {
    CORE: {"add", "sub", "mul", "div"},
    "onnx": {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Where", "Equal", "Less", "Greater", "PRelu"},
    "aten": {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "maximum", "minimum", "where", "pow"},
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


def couple(cg: ChannelGraph, n: Node, v: Value, axis: int) -> str | None:
    """Link the channels ``n`` couples with channel axis ``axis`` of ``v``; a string: why not."""
    ins, outs = n.inputs, n.outputs
    y = outs[0] if outs else None
    d = n.dialect
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
    if n.op in _UNARY.get(d, ()):
        if v is not ins[0] and v is not y:
            return None  # Clip's bounds, a dtype argument
        cg._identity(v, axis, y if v is ins[0] else ins[0], axis)
        return None
    if n.op in _BINARY.get(d, ()):
        return _broadcast(cg, n, v, axis)
    if n.op in _POOL.get(d, ()):
        if v is not ins[0] and v is not y:
            return "a resampling parameter"
        if axis > 1:
            return "resamples this axis"
        cg._identity(v, axis, y if v is ins[0] else ins[0], axis)
        return None
    if d == CORE and n.op == "transpose":
        perm = n.attrs.get("perm") or list(reversed(range(len(ins[0].shape))))
        if v is ins[0]:
            cg._identity(v, axis, y, list(perm).index(axis))
        else:
            cg._identity(v, axis, ins[0], perm[axis])
        return None
    if d == CORE and n.op == "concat":
        return _concat(cg, n, v, axis)
    if d == CORE and n.op == "split":
        return _split(cg, n, v, axis, n.attrs.get("axis", 0))
    if d == "aten" and n.op in ("chunk", "split", "split_with_sizes", "unsafe_split", "unsafe_chunk"):
        args = n.attrs.get("args") or []
        dim = args[2] if len(args) > 2 else (n.attrs.get("kwargs") or {}).get("dim", 0)
        if v is not ins[0] and v not in outs or not isinstance(dim, int):
            return "a split along a computed axis"
        return _split(cg, n, v, axis, dim)
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
            if pads is None or len(ins) > 3 and ins[3] is not None:
                return "a pad with computed amounts or axes"
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
    if d == CORE and n.op == "slice":
        return _slice(cg, n, v, axis)
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
    if d == "onnx" and n.op == "Softmax" or d == "aten" and n.op in ("softmax", "_softmax", "log_softmax"):
        rank = len(ins[0].shape)
        sm = (n.attrs.get("axis", -1) if d == "onnx" else (n.attrs.get("args") or [None, -1])[1]) % rank
        if axis == sm:
            return "softmax over these channels"
        cg._identity(v, axis, y if v is ins[0] else ins[0], axis)
        return None
    if d == "onnx" and n.op == "Shape" or d == "aten" and n.op in ("sym_size", "size"):
        return "its width feeds a shape computation"
    if n.op in ("quantize_linear", "dequantize_linear", "QuantizeLinear", "DequantizeLinear"):
        return "already quantized"
    return f"{n.qualified_op} has no channel rule"


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


def _broadcast(cg: ChannelGraph, n: Node, v: Value, axis: int) -> str | None:
    y = n.outputs[0]
    ry = len(y.shape)
    members = [u for u in n.inputs if u is not None and u.shape is not None] + [y]
    pos = axis + ry - len(v.shape)  # right-aligned position in the output
    if pos < 0:
        return None
    for u in members:
        if u is v:
            continue
        ax = pos - (ry - len(u.shape))
        if ax >= 0:
            cg._identity(v, axis, u, ax)
    return None


def _concat(cg: ChannelGraph, n: Node, v: Value, axis: int) -> str | None:
    y = n.outputs[0]
    cat = n.attrs["axis"] % len(y.shape)
    if axis != cat:
        for u in [*n.inputs, y]:
            if u is not v and u is not None:
                cg._identity(v, axis, u, axis)
        return None
    offsets, off = [], 0
    for u in n.inputs:
        offsets.append(off)
        size = u.shape[cat]
        if not isinstance(size, int):
            return "concat of inputs without static sizes"
        off += size
    if v is y:
        for u, o in zip(n.inputs, offsets):
            cg._link(y, cat, u, cat, ((o + i, i) for i in range(u.shape[cat])))
    else:  # every place v appears: cat([x, x]) ties x's channel c to both copies
        for u, o in zip(n.inputs, offsets):
            if u is v:
                cg._link(v, cat, y, cat, ((i, o + i) for i in range(u.shape[cat])))
    return None


def _split(cg: ChannelGraph, n: Node, v: Value, axis: int, split_axis: int) -> str | None:
    """Pieces by sizes (a constant: its entries shrink with the pieces), or equal pieces (chunk,
    num_outputs): channel j of every piece together, so the pieces stay equal."""
    x = n.inputs[0]
    ax = split_axis % len(x.shape)
    if axis != ax:
        for u in [x, *n.outputs]:
            if u is not v:
                cg._identity(v, axis, u, axis)
        return None
    sizes_v = n.inputs[1] if n.domain == CORE and len(n.inputs) > 1 else None
    sizes = [o.shape[ax] for o in n.outputs]
    if not all(isinstance(d, int) for d in sizes):
        return "a split into pieces without static sizes"
    by_sizes = sizes_v is not None
    if n.dialect == "onnx" and len(n.inputs) > 1 and n.inputs[1] is not None:
        return "an ONNX Split by sizes (not raised)"
    if not by_sizes and len(set(sizes)) > 1:
        return "an equal split with a smaller last piece"
    off = 0
    for j, o in enumerate(n.outputs):
        size = sizes[j]
        if v is x:
            cg._link(x, ax, o, ax, ((off + i, i) for i in range(size)))
        elif v is o:
            cg._link(o, ax, x, ax, ((i, off + i) for i in range(size)))
        if by_sizes:
            if sizes_v.const is None:
                return "a split by computed sizes"
            cg.shape_members[(o.name, ax)].append((sizes_v.name, j, 1))
        elif j:  # equal pieces: channel i of piece j with channel i of the first
            cg._link(x, ax, x, ax, ((off + i, i) for i in range(size))) if cg._track(x, ax) else None
        off += size
    return None


def _slice(cg: ChannelGraph, n: Node, v: Value, axis: int) -> str | None:
    x, y = n.inputs[0], n.outputs[0]
    starts, ends = _const_ints(n.inputs[1]), _const_ints(n.inputs[2])
    axes = _const_ints(n.inputs[3]) if len(n.inputs) > 3 and n.inputs[3] is not None else None
    steps = _const_ints(n.inputs[4]) if len(n.inputs) > 4 and n.inputs[4] is not None else None
    if starts is None or ends is None:
        return "a slice with computed bounds"
    rank = len(x.shape)
    axes = [a % rank for a in (axes or range(len(starts)))]
    steps = steps or [1] * len(starts)
    if axis not in axes:
        cg._identity(v, axis, y if v is x else x, axis)
        return None
    k = axes.index(axis)
    size = x.shape[axis]
    idx = list(range(size))[slice(starts[k], ends[k], steps[k])]
    if v is x:
        cg._link(x, axis, y, axis, ((i, j) for j, i in enumerate(idx)))
    else:
        cg._link(y, axis, x, axis, ((j, i) for j, i in enumerate(idx)))
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


def _reshape(cg: ChannelGraph, n: Node, v: Value, axis: int) -> str | None:
    """Keep an axis (same size after the same leading product), or merge it with the axes after
    it into one (channel c -> features c*inner .. c*inner+inner-1); splitting it is refused."""
    x, y = n.inputs[0], n.outputs[0]
    sx, sy = x.shape, y.shape
    if any(not isinstance(d, int) for d in (*sx, *sy)):  # a symbolic batch or image size: as run
        sx, sy = cg.concrete(x) or sx, cg.concrete(y) or sy
    common = 0  # leading dims both sides share (a symbolic batch): kept as they are
    while common < min(len(sx), len(sy)) and sx[common] == sy[common] and common < axis:
        common += 1
    if axis < common:
        cg._identity(v, axis, y if v is x else x, axis)
        return None
    if any(not isinstance(d, int) for d in (*sx[common:], *sy[common:])):
        return "reshape of a tensor without static shape"
    src, dst = (sx, sy) if v is x else (sy, sx)
    src, dst, axis = src[common:], dst[common:], axis - common
    lead = int(np.prod(src[:axis], dtype=np.int64))
    # the destination axis that starts at the same flat offset
    acc, b = 1, 0
    while b < len(dst) and acc < lead:
        acc *= dst[b]
        b += 1
    while b < len(dst) and dst[b] == 1 and src[axis] != 1:  # unit axes in between: [C] -> [1, C, 1, 1]
        b += 1
    if acc != lead or b >= len(dst):
        return "reshape splits these channels into several axes"
    if dst[b] == src[axis]:
        if n.op == "reshape":
            _shape_member(cg, n, common + (b if v is x else axis), 1, v, common + axis)
        cg._identity(v, common + axis, y if v is x else x, common + b)
        return None
    # x's axis and everything after it become one axis of y (flatten into a linear)
    if v is x and dst[b] == int(np.prod(src[axis:], dtype=np.int64)):
        inner = dst[b] // src[axis]
        if n.op == "reshape":
            _shape_member(cg, n, common + b, inner, x, common + axis)
        cg._link(x, common + axis, y, common + b, ((c, c * inner + r) for c in range(src[axis]) for r in range(inner)))
        return None
    if v is y and src[axis] == int(np.prod(dst[b:], dtype=np.int64)) and src[axis] % dst[b] == 0:
        inner = src[axis] // dst[b]
        if n.op == "reshape":
            _shape_member(cg, n, common + axis, inner, x, common + b)
        cg._link(y, common + axis, x, common + b, ((c * inner + r, c) for c in range(dst[b]) for r in range(inner)))
        return None
    return "reshape splits these channels into several axes"


def _shape_member(cg: ChannelGraph, n: Node, out_axis: int, inner: int, v: Value, axis: int) -> None:  # noqa: D401
    """A reshape whose target spells the width at ``out_axis`` as a literal: a shape constant to
    shrink with the group (-1 and 0 follow by themselves)."""
    target = n.inputs[1]
    values = _const_ints(target)
    if values is None:
        cg._block(v, axis, f"{n.label()}: the reshape target is computed", "shape")
        return
    if out_axis < len(values) and values[out_axis] not in (-1, 0):
        cg.shape_members[(v.name, axis % len(v.shape))].append((target.name, out_axis, inner))
