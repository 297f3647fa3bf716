"""Lower core ops to ATen calls in an FX graph (used by the GraphModule exporter)."""
from __future__ import annotations

import torch
import torch.fx as fx

from refold.errors import UnsupportedError
from refold.ir.graph import Node

aten = torch.ops.aten


def _const_ints(v) -> list[int]:
    if v.const is None:
        raise UnsupportedError(f"'{v.name}' must be constant to lower to ATen")
    return [int(x) for x in v.const.numpy().reshape(-1)]


def _norm_shape(node: Node) -> list[int]:
    x, scale = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    axis = node.attrs.get("axis", -1)
    if scale is not None and scale.shape is not None and axis < 0 and len(scale.shape) == -axis:
        return list(scale.shape)
    if x.shape is not None and all(isinstance(d, int) for d in x.shape[axis:]):
        return list(x.shape[axis:])
    raise UnsupportedError(f"{node.label()}: normalized shape unknown")


def lower_core_node(g: fx.Graph, node: Node, ins: list) -> fx.Node:
    """Emit ATen calls computing ``node``; returns the FX node holding its output(s)."""
    a = node.attrs
    op = node.op
    arg = lambda i: ins[i] if i < len(ins) else None  # noqa: E731
    call = g.call_function
    if op in ("conv", "conv_transpose"):
        k = len(node.inputs[1].shape) - 2
        pads = list(a.get("pads") or [0] * 2 * k)
        x = arg(0)
        if pads[:k] != pads[k:]:
            if op == "conv_transpose":
                raise UnsupportedError(f"{node.label()}: asymmetric pads on a transposed conv")
            torch_pads = [p for i in reversed(range(k)) for p in (pads[i], pads[i + k])]
            x, pads = call(aten.constant_pad_nd.default, (x, torch_pads, 0.0)), [0] * 2 * k
        return call(aten.convolution.default, (
            x, arg(1), arg(2), a.get("strides") or [1] * k, pads[:k], a.get("dilations") or [1] * k,
            op == "conv_transpose", a.get("output_padding") or [0] * k, a.get("group", 1)))
    if op == "batch_norm":
        return call(aten.batch_norm.default, (arg(0), arg(1), arg(2), arg(3), arg(4), False, 0.0,
                                              a.get("epsilon", 1e-5), False))
    if op == "layer_norm":
        return call(aten.layer_norm.default, (arg(0), _norm_shape(node), arg(1), arg(2), a.get("epsilon", 1e-5)))
    if op == "rms_norm":
        if node.meta.get("lower_to") == "layer_norm":
            # layernorm-to-rmsnorm made the input zero-mean, so LayerNorm's fused kernel computes this
            # RMSNorm (to rounding); on CPU aten.rms_norm, which decomposes into pow/mean/rsqrt/mul,
            # measured 1.4-3x slower (benchmarks/layernorm_rmsnorm.py)
            return call(aten.layer_norm.default, (arg(0), _norm_shape(node), arg(1), None, a.get("epsilon", 1e-5)))
        return call(aten.rms_norm.default, (arg(0), _norm_shape(node), arg(1), a.get("epsilon", 1e-5)))
    if op == "crms_norm":
        # [x, -s] / sqrt((sum x^2 + s^2) / d + eps) * scale,  s = sum x
        x = arg(0)
        s = call(aten.sum.dim_IntList, (x, [-1], True))
        if node.meta.get("lower_to") == "rms_norm":  # = rms_norm([x, -s]) * scale: the RMSNorm op asked for
            full = call(aten.cat.default, ([x, call(aten.neg.default, (s,))], -1))
            d = list(node.inputs[1].shape) if arg(1) is not None else [node.inputs[0].shape[-1] + 1]
            return call(aten.rms_norm.default, (full, d, arg(1), a.get("epsilon", 1e-5)))
        sq = call(aten.sum.dim_IntList, (call(aten.mul.Tensor, (x, x)), [-1], True))
        ms = call(aten.div.Tensor, (call(aten.add.Tensor, (sq, call(aten.mul.Tensor, (s, s)))),
                                    node.inputs[0].shape[-1] + 1))
        rms = call(aten.sqrt.default, (call(aten.add.Tensor, (ms, a.get("epsilon", 1e-5))),))
        y = call(aten.div.Tensor, (call(aten.cat.default, ([x, call(aten.neg.default, (s,))], -1)), rms))
        return call(aten.mul.Tensor, (y, arg(1))) if arg(1) is not None else y
    if op == "linear":
        return call(aten.linear.default, (arg(0), arg(1), arg(2)))
    if op == "gemm":
        A = call(aten.t.default, (arg(0),)) if a.get("transA") else arg(0)
        B = call(aten.t.default, (arg(1),)) if a.get("transB") else arg(1)
        if arg(2) is None:
            y = call(aten.mm.default, (A, B))
            return call(aten.mul.Tensor, (y, a.get("alpha", 1.0))) if a.get("alpha", 1.0) != 1.0 else y
        return call(aten.addmm.default, (arg(2), A, B), {"beta": a.get("beta", 1.0), "alpha": a.get("alpha", 1.0)})
    if op == "matmul":
        return call(aten.matmul.default, (arg(0), arg(1)))
    if op in ("add", "sub", "mul"):
        return call(getattr(aten, op).Tensor, (arg(0), arg(1)))
    if op == "div":
        dt = node.inputs[0].dtype
        if dt is not None and not dt.is_float:
            return call(aten.div.Tensor_mode, (arg(0), arg(1)), {"rounding_mode": "trunc"})
        return call(aten.div.Tensor, (arg(0), arg(1)))
    if op in ("relu", "sigmoid", "tanh", "silu", "hardswish", "sqrt"):
        return call(getattr(aten, op).default, (arg(0),))
    if op == "gelu":
        return call(aten.gelu.default, (arg(0),), {"approximate": a.get("approximate", "none")})
    if op == "reshape":
        shape = _const_ints(node.inputs[1])
        if not a.get("allowzero"):
            x = node.inputs[0]
            if 0 in shape and (x.shape is None or not all(isinstance(d, int) for d in x.shape)):
                raise UnsupportedError(f"{node.label()}: reshape with 0 (copy dim) needs a static input")
            shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
        return call(aten.reshape.default, (arg(0), shape))
    if op == "transpose":
        perm = a.get("perm") or list(reversed(range(len(node.inputs[0].shape))))
        return call(aten.permute.default, (arg(0), perm))
    if op == "flatten":
        x = node.inputs[0]
        ax = a.get("axis", 1) % (len(x.shape) + 1) if x.shape is not None else None
        if ax is None:
            raise UnsupportedError(f"{node.label()}: flatten needs the input rank")
        lead = call(aten.flatten.using_ints, (arg(0), 0, ax - 1)) if ax > 0 else call(aten.unsqueeze.default, (arg(0), 0))
        return call(aten.flatten.using_ints, (lead, 1, -1)) if ax < len(x.shape) else call(aten.unsqueeze.default, (lead, -1))
    if op == "concat":
        return call(aten.cat.default, (list(ins), a["axis"]))
    if op == "split":
        if arg(1) is not None:
            sizes = _const_ints(node.inputs[1])
        else:
            n, parts = node.inputs[0].shape[a.get("axis", 0)], len(node.outputs)
            size = -(-n // parts)
            sizes = [min(size, n - i * size) for i in range(parts)]
        return call(aten.split_with_sizes.default, (arg(0), sizes, a.get("axis", 0)))
    if op == "slice":
        starts, ends = _const_ints(node.inputs[1]), _const_ints(node.inputs[2])
        axes = _const_ints(node.inputs[3]) if arg(3) is not None else list(range(len(starts)))
        steps = _const_ints(node.inputs[4]) if arg(4) is not None else [1] * len(starts)
        y = arg(0)
        for s, e, ax, st in zip(starts, ends, axes, steps):
            if st < 0:
                raise UnsupportedError(f"{node.label()}: negative slice steps have no ATen slice")
            y = call(aten.slice.Tensor, (y, ax, s, e, st))
        return y
    if op == "reduce_mean":
        axes = a.get("axes")
        return call(aten.mean.dim, (arg(0), list(axes) if axes else None, bool(a.get("keepdims", 1))))
    if op in ("quantize_linear", "dequantize_linear"):
        return _qdq(g, node, ins)
    raise UnsupportedError(f"{node.label()}: no ATen lowering for core.{op}")


def _qdq(g: fx.Graph, node: Node, ins: list) -> fx.Node:
    """core Q/DQ as PT2E's ``quantized_decomposed`` ops: per tensor, per channel on ``axis``, or
    (dequantize) in blocks along ``axis``. int4 is held in int8 with quant range [-8, 7]."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed)

    qd = torch.ops.quantized_decomposed
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    quant = node.op == "quantize_linear"
    typed = zp if zp is not None else (None if quant else node.inputs[0])  # DQ: x's type without a zero point
    if typed is None or typed.dtype is None:
        raise UnsupportedError(f"{node.label()}: Q/DQ without a typed zero point")
    dtype = typed.dtype.torch()
    qmin, qmax = typed.dtype.int_range()
    x_rank = len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    axis = node.attrs.get("axis", 1)
    axis = axis % x_rank if x_rank else axis
    if node.attrs.get("block_size"):
        if quant:
            raise UnsupportedError(f"{node.label()}: blocked quantize_linear has no ATen lowering")
        return _dequantize_blocked(g, node, ins, axis, qmin, qmax, dtype)
    scale = node.inputs[1]
    per_channel = scale.shape is not None and len(scale.shape) == 1 and scale.shape[0] > 1
    if per_channel and (zp is not None or not quant):  # DQ: no zero point is zero point 0
        fn = qd.quantize_per_channel.default if quant else qd.dequantize_per_channel.default
        zps = ins[2] if zp is not None else None
        return g.call_function(fn, (ins[0], ins[1], zps, axis, qmin, qmax, dtype))
    if zp is None:
        raise UnsupportedError(f"{node.label()}: per-tensor Q/DQ without a typed zero point")
    fn = qd.quantize_per_tensor.tensor if quant else qd.dequantize_per_tensor.tensor
    return g.call_function(fn, (ins[0], ins[1], ins[2], qmin, qmax, dtype))


def _dequantize_blocked(g: fx.Graph, node: Node, ins: list, axis: int, qmin: int, qmax: int,
                        dtype) -> fx.Node:
    """Blocked DQ: a 2-D weight whose blocks divide the axis is PT2E's groupwise
    ``dequantize_per_channel_group`` (groups run along the last dim: axis 0 is dequantized
    transposed); anything else is written out, each scale repeated over its block."""
    call = g.call_function
    x, scale = node.inputs[0], node.inputs[1]
    block = node.attrs["block_size"]
    zp = ins[2] if len(ins) > 2 else None
    out_dtype = scale.dtype.torch() if scale.dtype is not None else torch.float32
    shape = x.shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise UnsupportedError(f"{node.label()}: blocked dequantize needs a static input shape")
    if len(shape) == 2 and shape[axis] % block == 0:
        # w[r, c] = (q[r, c] - zp[r, c // block]) * s[r, c // block], groups along the last dim
        t = (lambda v: call(aten.t.default, (v,))) if axis == 0 else (lambda v: v)
        y = call(torch.ops.quantized_decomposed.dequantize_per_channel_group.default,
                 (t(ins[0]), t(ins[1]), None if zp is None else t(zp), qmin, qmax, dtype, block, out_dtype))
        return t(y)

    def spread(v):  # [.., ceil(n / block), ..] -> [.., n, ..]
        rep = call(aten.repeat_interleave.self_int, (v, block, axis))
        return call(aten.slice.Tensor, (rep, axis, 0, shape[axis]))

    q = call(aten._to_copy.default, (ins[0],), {"dtype": torch.float32})
    if zp is not None:
        q = call(aten.sub.Tensor, (q, call(aten._to_copy.default, (spread(zp),), {"dtype": torch.float32})))
    y = call(aten.mul.Tensor, (q, spread(ins[1])))
    return call(aten._to_copy.default, (y,), {"dtype": out_dtype})


__all__ = ["lower_core_node"]
