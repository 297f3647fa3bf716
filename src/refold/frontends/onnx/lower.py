"""Lower core ops to ONNX NodeProtos for the model's opset (used by the exporter)."""
from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from refold.errors import UnsupportedError
from refold.ir.graph import Node, Value


class _Emit:
    def __init__(self, node: Node, exporter):
        self.node = node
        self.exporter = exporter
        self.opset = exporter.model.opset
        self.protos: list[onnx.NodeProto] = []
        self.graph = node.graph

    def name(self, hint: str) -> str:
        return self.graph.unique_name(f"{self.node.name or self.node.op}_{hint}")

    def __call__(self, op_type: str, inputs: list[str], outputs: list[str] | None = None,
                 domain: str = "", **attrs) -> str:
        outs = outputs or [self.name(op_type.lower())]
        name = self.node.name if outputs is not None and self.node.name else self.name(op_type)
        n = helper.make_node(op_type, inputs, outs, name=name, domain=domain or None,
                             **{k: v for k, v in attrs.items() if v is not None})
        self.protos.append(n)
        return outs[0]

    def const(self, arr: np.ndarray, hint: str) -> str:
        out = self.name(hint)
        t = numpy_helper.from_array(np.asarray(arr), out + "_value")
        self.protos.append(helper.make_node("Constant", [], [out], value=t, name=out + "_node"))
        return out


def _names(vs) -> list[str]:
    return ["" if v is None else v.name for v in vs]


def _trim(names: list[str]) -> list[str]:
    while names and names[-1] == "":
        names.pop()
    return names


def _reduce_mean(e: _Emit, x: str, axes: list[int] | None, keepdims: int, out: list[str] | None = None) -> str:
    if axes is None:
        return e("ReduceMean", [x], out, keepdims=keepdims)
    if e.opset >= 18:
        return e("ReduceMean", [x, e.const(np.array(axes, np.int64), "axes")], out, keepdims=keepdims)
    return e("ReduceMean", [x], out, axes=list(axes), keepdims=keepdims)


def _norm_axes(x: Value, axis: int) -> list[int]:
    if axis < 0:
        return list(range(axis, 0))
    if x.rank is None:
        raise UnsupportedError(f"core norm with axis={axis} on an input of unknown rank")
    return list(range(axis - x.rank, 0))


def _scalar_like(e: _Emit, v: Value, value: float, hint: str) -> str:
    dt = v.dtype.numpy() if v.dtype is not None else np.float32
    return e.const(np.array(value, dtype=dt), hint)


def _layer_norm(e: _Emit, n: Node, outs: list[str]) -> None:
    x, scale, bias = (list(n.inputs) + [None, None])[:3]
    axis, eps = n.attrs.get("axis", -1), n.attrs.get("epsilon", 1e-5)
    if e.opset >= 17 and scale is not None:
        e("LayerNormalization", _trim(_names([x, scale, bias])), outs, axis=axis, epsilon=eps)
        return
    axes = _norm_axes(x, axis)
    mean = _reduce_mean(e, x.name, axes, 1)
    d = e("Sub", [x.name, mean])
    var = _reduce_mean(e, e("Mul", [d, d]), axes, 1)
    std = e("Sqrt", [e("Add", [var, _scalar_like(e, x, eps, "eps")])])
    y = e("Div", [d, std], outs if scale is None and bias is None else None)
    if scale is not None:
        y = e("Mul", [y, scale.name], outs if bias is None else None)
    if bias is not None:
        e("Add", [y, bias.name], outs)


def _rms_norm(e: _Emit, n: Node, outs: list[str]) -> None:
    x, scale = (list(n.inputs) + [None])[:2]
    axis, eps = n.attrs.get("axis", -1), n.attrs.get("epsilon", 1e-5)
    if e.opset >= 23 and scale is not None:
        e("RMSNormalization", [x.name, scale.name], outs, axis=axis, epsilon=eps)
        return
    if n.meta.get("lower_to") == "ort" and scale is not None:
        # ONNX Runtime registers this contrib op in the default domain (not com.microsoft)
        e("SimplifiedLayerNormalization", [x.name, scale.name], outs, axis=axis, epsilon=eps)
        return
    # Written Pow -> ReduceMean -> Add -> Sqrt -> Div -> Mul, the pattern ONNX Runtime fuses into its
    # SimplifiedLayerNormalization kernel (with x*x in place of Pow it is not fused, and the five ops
    # cost more than the LayerNormalization they replace: benchmarks/layernorm_rmsnorm.py). A
    # lower_to="layer_norm" hint (torch's choice, on a zero-mean stream) is not followed here: ORT's
    # RMS kernels are faster than its LayerNormalization.
    axes = _norm_axes(x, axis)
    ms = _reduce_mean(e, e("Pow", [x.name, _scalar_like(e, x, 2.0, "two")]), axes, 1)
    rms = e("Sqrt", [e("Add", [ms, _scalar_like(e, x, eps, "eps")])])
    y = e("Div", [x.name, rms], outs if scale is None else None)
    if scale is not None:
        e("Mul", [y, scale.name], outs)


def _reduce_sum_last(e: _Emit, x: str) -> str:
    if e.opset >= 13:
        return e("ReduceSum", [x, e.const(np.array([-1], np.int64), "axes")], keepdims=1)
    return e("ReduceSum", [x], axes=[-1], keepdims=1)


def _crms_norm(e: _Emit, n: Node, outs: list[str]) -> None:
    # y = [x, -s] / sqrt((sum x^2 + s^2) / d + eps) * scale,  s = sum x,  d = n + 1
    x, scale = (list(n.inputs) + [None])[:2]
    if n.meta.get("lower_to") == "rms_norm" and e.opset >= 23 and scale is not None:
        # = RMSNormalization([x, -s]) * scale: the RMSNorm op asked for (layernorm-to-rmsnorm:target=rms)
        full = e("Concat", [x.name, e("Neg", [_reduce_sum_last(e, x.name)])], axis=-1)
        e("RMSNormalization", [full, scale.name], outs, axis=-1, epsilon=n.attrs.get("epsilon", 1e-5))
        return
    if x.shape is None or not isinstance(x.shape[-1], int):
        raise UnsupportedError(f"{n.label()}: crms_norm needs a static last dim to lower to ONNX")
    s = _reduce_sum_last(e, x.name)
    sq = _reduce_sum_last(e, e("Mul", [x.name, x.name]))
    ms = e("Div", [e("Add", [sq, e("Mul", [s, s])]), _scalar_like(e, x, x.shape[-1] + 1, "d")])
    rms = e("Sqrt", [e("Add", [ms, _scalar_like(e, x, n.attrs.get("epsilon", 1e-5), "eps")])])
    full = e("Concat", [x.name, e("Neg", [s])], axis=-1)
    y = e("Div", [full, rms], outs if scale is None else None)
    if scale is not None:
        e("Mul", [y, scale.name], outs)


def _gelu(e: _Emit, n: Node, outs: list[str]) -> None:
    x = n.inputs[0]
    approx = n.attrs.get("approximate", "none")
    if e.opset >= 20:
        e("Gelu", [x.name], outs, approximate=approx)
        return
    half, one = _scalar_like(e, x, 0.5, "half"), _scalar_like(e, x, 1.0, "one")
    if approx == "tanh":
        c = _scalar_like(e, x, math.sqrt(2 / math.pi), "c")
        k = _scalar_like(e, x, 0.044715, "k")
        cube = e("Mul", [e("Mul", [x.name, x.name]), x.name])
        inner = e("Mul", [e("Add", [x.name, e("Mul", [cube, k])]), c])
        t = e("Tanh", [inner])
    else:
        t = e("Erf", [e("Div", [x.name, _scalar_like(e, x, math.sqrt(2.0), "sqrt2")])])
    e("Mul", [e("Mul", [x.name, half]), e("Add", [t, one])], outs)


def _linear(e: _Emit, n: Node, outs: list[str]) -> None:
    x, w, b = (list(n.inputs) + [None])[:3]
    if x.rank == 2:
        e("Gemm", _trim(_names([x, w, b])), outs, transB=1)
        return
    if w.const is not None:
        wt = e.const(np.ascontiguousarray(w.const.numpy().T), "weight_t")
    else:
        wt = e("Transpose", [w.name], perm=[1, 0])
    y = e("MatMul", [x.name, wt], outs if b is None else None)
    if b is not None:
        e("Add", [y, b.name], outs)


def _split(e: _Emit, n: Node, outs: list[str]) -> None:
    x = n.inputs[0]
    sizes = n.inputs[1] if len(n.inputs) > 1 else None
    axis = n.attrs.get("axis", 0)
    if sizes is None:
        if e.opset >= 18:
            e("Split", [x.name], outs, axis=axis, num_outputs=len(outs))
        else:
            e("Split", [x.name], outs, axis=axis)
        return
    if e.opset >= 13:
        e("Split", [x.name, sizes.name], outs, axis=axis)
        return
    if sizes.const is None:
        raise UnsupportedError(f"{n.label()}: split sizes must be constant below opset 13")
    e("Split", [x.name], outs, axis=axis, split=[int(s) for s in sizes.const.numpy().reshape(-1)])


def _slice(e: _Emit, n: Node, outs: list[str]) -> None:
    if e.opset >= 10:
        e("Slice", _trim(_names(n.inputs)), outs)
        return
    ins = list(n.inputs) + [None] * (5 - len(n.inputs))
    if ins[4] is not None or any(v is not None and v.const is None for v in ins[1:4]):
        raise UnsupportedError(f"{n.label()}: Slice below opset 10 needs constant starts/ends/axes "
                               f"and no steps")
    vals = {k: [int(i) for i in v.const.numpy().reshape(-1)] for k, v in
            zip(("starts", "ends", "axes"), ins[1:4]) if v is not None}
    e("Slice", [ins[0].name], outs, **vals)


def _same(op_type: str, attr_map: dict | None = None):
    def f(e: _Emit, n: Node, outs: list[str]) -> None:
        attrs = {attr_map.get(k, k) if attr_map else k: v for k, v in n.attrs.items()}
        e(op_type, _trim(_names(n.inputs)), outs, **attrs)
    return f


def _conv(op_type: str):
    def f(e: _Emit, n: Node, outs: list[str]) -> None:
        w = n.inputs[1]
        attrs = dict(n.attrs)
        if w.shape is not None and all(isinstance(d, int) for d in w.shape[2:]):
            attrs["kernel_shape"] = list(w.shape[2:])
        if op_type == "Conv":
            attrs.pop("output_padding", None)
        elif not any(attrs.get("output_padding") or []):
            attrs.pop("output_padding", None)
        e(op_type, _trim(_names(n.inputs)), outs, **attrs)
    return f


def _hardswish(e: _Emit, n: Node, outs: list[str]) -> None:
    if e.opset >= 14:
        e("HardSwish", [n.inputs[0].name], outs)
        return
    hs = e("HardSigmoid", [n.inputs[0].name], alpha=1 / 6, beta=0.5)
    e("Mul", [n.inputs[0].name, hs], outs)


def _silu(e: _Emit, n: Node, outs: list[str]) -> None:
    e("Mul", [n.inputs[0].name, e("Sigmoid", [n.inputs[0].name])], outs)


def _reshape(e: _Emit, n: Node, outs: list[str]) -> None:
    attrs = {"allowzero": 1} if n.attrs.get("allowzero") else {}
    e("Reshape", _names(n.inputs), outs, **attrs)


def _qdq(op_type: str):
    def f(e: _Emit, n: Node, outs: list[str]) -> None:
        axis, block = n.attrs.get("axis", 1), n.attrs.get("block_size", 0)
        int4 = any(v is not None and v.dtype is not None and v.dtype.is_int4 for v in n.inputs)
        if (block or int4) and e.opset < 21:
            what = f"blocked {op_type} (block_size={block})" if block else f"{op_type} of int4 / uint4"
            raise UnsupportedError(f"{n.label()}: {what} needs opset 21; the model is at {e.opset}")
        attrs = {"axis": axis} if e.opset >= 13 else {}
        if block:
            attrs["block_size"] = block
        e(op_type, _trim(_names(n.inputs)), outs, **attrs)
    return f


LOWER = {
    "conv": _conv("Conv"), "conv_transpose": _conv("ConvTranspose"),
    "batch_norm": _same("BatchNormalization"), "layer_norm": _layer_norm, "rms_norm": _rms_norm, "crms_norm": _crms_norm,
    "gemm": _same("Gemm"), "linear": _linear, "matmul": _same("MatMul"),
    "add": _same("Add"), "sub": _same("Sub"), "mul": _same("Mul"), "div": _same("Div"),
    "relu": _same("Relu"), "sigmoid": _same("Sigmoid"), "sqrt": _same("Sqrt"), "tanh": _same("Tanh"), "gelu": _gelu,
    "silu": _silu, "hardswish": _hardswish, "reshape": _reshape, "transpose": _same("Transpose"),
    "flatten": _same("Flatten"), "concat": _same("Concat"), "split": _split, "slice": _slice,
    "reduce_mean": lambda e, n, outs: _reduce_mean(e, n.inputs[0].name, n.attrs.get("axes"),
                                                   n.attrs.get("keepdims", 1), outs),
    "quantize_linear": _qdq("QuantizeLinear"), "dequantize_linear": _qdq("DequantizeLinear"),
}


def lower_core_node(node: Node, exporter) -> list[onnx.NodeProto]:
    """The ONNX nodes computing ``node`` at the model's opset; the last one writes its outputs."""
    fn = LOWER.get(node.op)
    if fn is None:
        raise UnsupportedError(f"{node.label()}: no ONNX lowering for core.{node.op}")
    e = _Emit(node, exporter)
    fn(e, node, [v.name for v in node.outputs])
    return e.protos
