"""raise_to_core for torch.export graphs: ATen ops to core ops.

Each converter reads the ATen call's argument structure and returns ``(core op, inputs, attrs)`` or
the reason it cannot be raised exactly. Ops outside this table stay as ATen and round-trip untouched.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from refold.frontends.torch.importer import ATEN, TensorArg
from refold.ir.dialects import RaiseResult
from refold.ir.graph import CORE, Graph, Model, Node
from refold.ir.rewrite import Builder, Match, Rule, Var, apply_rules, op


class _Call:
    """An ATen node's arguments by schema name, with tensors resolved to Values."""

    def __init__(self, node: Node):
        self.node = node
        packet = getattr(torch.ops.aten, node.op)
        self.schema = getattr(packet, node.overload or "default")._schema
        args, kwargs = node.attrs["args"], node.attrs["kwargs"]
        self.values = {}
        for i, a in enumerate(self.schema.arguments):
            if i < len(args):
                self.values[a.name] = args[i]
            elif a.name in kwargs:
                self.values[a.name] = kwargs[a.name]
            elif a.has_default_value():
                self.values[a.name] = a.default_value
            else:
                self.values[a.name] = None

    def __getitem__(self, name: str):
        v = self.values[name]
        if isinstance(v, TensorArg):
            return self.node.inputs[v.index]
        if isinstance(v, (list, tuple)) and any(isinstance(x, TensorArg) for x in v):
            return [self.node.inputs[x.index] if isinstance(x, TensorArg) else x for x in v]
        return v

    def is_tensor(self, name: str) -> bool:
        return isinstance(self.values[name], TensorArg)


def _ints(v, n: int) -> list[int] | None:
    if isinstance(v, int):
        return [v] * n
    if isinstance(v, (list, tuple)) and all(isinstance(x, int) for x in v):
        return list(v) * (n if len(v) == 1 and n > 1 else 1)
    return None


def _unused_extra_outputs(node: Node) -> str | None:
    used = [v.name for v in node.outputs[1:] if v._uses or any(v is o for o in node.graph.outputs)]
    return f"extra outputs {used} are in use" if used else None


def _conv(c: _Call):
    w = c["weight"]
    if w.shape is None:
        return "weight rank unknown"
    k = len(w.shape) - 2
    transposed = c.values.get("transposed", c.node.op.startswith("conv_transpose"))
    strides, dil = _ints(c["stride"], k), _ints(c["dilation"], k)
    padding = c["padding"]
    if isinstance(padding, str):
        if padding == "valid":
            pads = [0] * k
        elif padding == "same" and strides == [1] * k and all(isinstance(d, int) for d in w.shape[2:]):
            # torch pads d*(k-1) in total per dim, the odd one at the end
            totals = [d * (kk - 1) for d, kk in zip(dil, w.shape[2:])]
            return "conv", [c["input"], w, c["bias"] if c.is_tensor("bias") else None], dict(
                strides=strides, pads=[t // 2 for t in totals] + [t - t // 2 for t in totals],
                dilations=dil, group=c["groups"])
        else:
            return f"padding='{padding}' with strides {strides}"
    else:
        pads = _ints(padding, k)
    if None in (strides, pads, dil):
        return "symbolic stride, padding or dilation"
    bias = c["bias"] if c.is_tensor("bias") else None
    attrs = dict(strides=strides, pads=pads + pads, dilations=dil, group=c["groups"])
    if transposed:
        attrs["output_padding"] = _ints(c["output_padding"], k)
        return "conv_transpose", [c["input"], w, bias], attrs
    return "conv", [c["input"], w, bias], attrs


def _batch_norm(c: _Call):
    if c.node.op == "batch_norm" and c["training"]:
        return "training=True (uses batch statistics)"
    why = _unused_extra_outputs(c.node)
    if why:
        return why
    if not c.is_tensor("weight") or not c.is_tensor("bias"):
        return "no affine weight/bias"
    if not c.is_tensor("running_mean"):
        return "no running statistics"
    return "batch_norm", [c["input"], c["weight"], c["bias"], c["running_mean"], c["running_var"]], \
        dict(epsilon=float(c["eps"]))


def _layer_norm(c: _Call):
    why = _unused_extra_outputs(c.node)
    if why:
        return why
    shape = _ints(c["normalized_shape"], 1)
    if shape is None:
        return "symbolic normalized_shape"
    w = c["weight"] if c.is_tensor("weight") else None
    b = c["bias"] if c.is_tensor("bias") else None
    ins = [c["input"], w, b]
    if w is None and b is not None:
        return "bias without weight"
    return "layer_norm", ins, dict(axis=-len(shape), epsilon=float(c["eps"]))


def _rms_norm(c: _Call):
    shape = _ints(c["normalized_shape"], 1)
    if shape is None:
        return "symbolic normalized_shape"
    x = c["input"]
    eps = c["eps"]
    if eps is None:
        if x.dtype is None:
            return "eps=None and the input type is unknown"
        eps = float(torch.finfo(x.dtype.torch()).eps)
    w = c["weight"] if c.is_tensor("weight") else None
    return "rms_norm", [x, w], dict(axis=-len(shape), epsilon=float(eps))


def _binary(core: str):
    def f(c: _Call):
        names = [a.name for a in c.schema.arguments]
        if not (c.is_tensor(names[0]) and c.is_tensor(names[1])):
            return "a scalar operand"
        if c.values.get("alpha", 1) != 1:
            return "alpha != 1"
        if c.values.get("rounding_mode") is not None:
            return "rounding_mode"
        a, b = c[names[0]], c[names[1]]
        if a.dtype is not None and b.dtype is not None and a.dtype != b.dtype:
            return "mixed input types"
        return core, [a, b], {}
    return f


def _unary(core: str, **fixed):
    return lambda c: (core, [c[c.schema.arguments[0].name]], dict(fixed))


def _gelu(c: _Call):
    return "gelu", [c["self"]], dict(approximate=c["approximate"])


def _addmm(c: _Call):
    return "gemm", [c["mat1"], c["mat2"], c["self"]], dict(alpha=float(c["alpha"]), beta=float(c["beta"]),
                                                          transA=0, transB=0)


def _reshape(c: _Call, g: Graph):
    shape = _ints(c["size"] if "size" in c.values else c["shape"], 1)
    if shape is None:
        return "symbolic target shape"
    return "reshape", [c["self"], g.add_const(np.array(shape, np.int64), prefix="shape")], dict(allowzero=1)


def _permute(c: _Call):
    return "transpose", [c["self"]], dict(perm=list(c["dims"]))


def _cat(c: _Call):
    return "concat", list(c["tensors"]), dict(axis=int(c["dim"]))


def _split(c: _Call, g: Graph):
    x, dim = c["self"], int(c["dim"])
    if c.node.op == "split_with_sizes":
        sizes = _ints(c["split_sizes"], 1)
    else:
        if x.shape is None or not isinstance(x.shape[dim], int) or not isinstance(c["split_size"], int):
            return "split needs a static dim size"
        n, s = x.shape[dim], c["split_size"]
        sizes = [min(s, n - i) for i in range(0, n, s)]
    if sizes is None or len(sizes) != len(c.node.outputs):
        return "split sizes unknown"
    return "split", [x, g.add_const(np.array(sizes, np.int64), prefix="split_sizes")], dict(axis=dim)


def _slice(c: _Call, g: Graph):
    start, end, step = c["start"], c["end"], c["step"]
    if not all(isinstance(v, int) or v is None for v in (start, end)) or not isinstance(step, int):
        return "symbolic bounds"
    big = np.iinfo(np.int64).max
    consts = [np.array([0 if start is None else start], np.int64),
              np.array([big if end is None else min(end, big)], np.int64),
              np.array([int(c["dim"])], np.int64), np.array([step], np.int64)]
    return "slice", [c["self"]] + [g.add_const(a, prefix="slice") for a in consts], {}


def _mean(c: _Call):
    if c.values.get("dtype") is not None:
        return "dtype argument"
    dims = c["dim"]
    return "reduce_mean", [c["self"]], dict(axes=list(dims) if dims else None, keepdims=int(bool(c["keepdim"])))


RAISE: dict[str, Callable] = {
    "conv1d": _conv, "conv2d": _conv, "conv3d": _conv, "convolution": _conv,
    "conv_transpose1d": _conv, "conv_transpose2d": _conv, "conv_transpose3d": _conv,
    "batch_norm": _batch_norm, "_native_batch_norm_legit_no_training": _batch_norm,
    "layer_norm": _layer_norm, "native_layer_norm": _layer_norm, "rms_norm": _rms_norm,
    "linear": lambda c: ("linear", [c["input"], c["weight"], c["bias"] if c.is_tensor("bias") else None], {}),
    "addmm": _addmm, "mm": _binary("matmul"), "matmul": _binary("matmul"), "bmm": _binary("matmul"),
    "add": _binary("add"), "sub": _binary("sub"), "mul": _binary("mul"), "div": _binary("div"),
    "relu": _unary("relu"), "sigmoid": _unary("sigmoid"), "tanh": _unary("tanh"), "silu": _unary("silu"),
    "hardswish": _unary("hardswish"), "sqrt": _unary("sqrt"), "gelu": _gelu, "permute": _permute, "cat": _cat, "mean": _mean,
}
NEEDS_GRAPH = {"view": _reshape, "reshape": _reshape, "_unsafe_view": _reshape, "split": _split,
               "split_with_sizes": _split, "slice": _slice}


def _trim(inputs: list) -> list:
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs


def raise_nodes(graph: Graph, skipped: dict[str, str]) -> int:
    count = 0
    for node in graph:
        if node.domain != ATEN or node.meta.get("side_effect"):
            continue
        fn = RAISE.get(node.op)
        fn_g = NEEDS_GRAPH.get(node.op)
        if fn is None and fn_g is None:
            continue
        c = _Call(node)
        raised = fn(c) if fn is not None else fn_g(c, graph)
        if isinstance(raised, str):
            skipped[node.name] = f"aten.{node.op}: {raised}"
            continue
        op, inputs, attrs = raised
        extra = node.outputs[1:] if op in ("batch_norm", "layer_norm") else []
        new = graph.replace_op(node, op, _trim(list(inputs)), attrs, domain=CORE,
                               meta={"raised_from": node.qualified_op})
        for v in extra:  # unused statistics outputs of native_* ops
            new.outputs.remove(v)
        new.meta.pop("torch.returns_sequence", None)
        count += 1
    return count


def _scalar_arg(i: int, pred):
    """Attribute check on an ATen node's argument ``i`` (a Python scalar, not a tensor)."""
    return lambda args: len(args) > i and not isinstance(args[i], TensorArg) and pred(args[i])


def _rms_rules() -> list[Rule]:
    x = Var("x")
    sq = op.aten.pow(x, args=_scalar_arg(1, lambda e: e == 2))
    mean = op.core.reduce_mean(sq, _name="mean")
    add = op.aten.add(mean, _name="add_eps", args=_scalar_arg(1, lambda e: isinstance(e, float) and e >= 0))
    pattern = op.core.mul(x, op.aten.rsqrt(add))

    def why_not(m: Match) -> str | None:
        mean_node = m.node("mean")
        axes = mean_node.attrs.get("axes")
        if mean_node.attrs.get("keepdims") != 1 or not axes:
            return "mean without keepdim or axes"
        rank = m["x"].rank
        neg = sorted(a - rank if a >= 0 and rank is not None else a for a in axes)
        if neg != list(range(-len(neg), 0)):
            return f"axes {axes} are not the trailing dims"
        return None

    def rewrite(b: Builder, m: Match):
        # x * rsqrt(mean(x^2, trailing axes) + eps)  ==>  rms_norm(x, eps)
        axes = m.node("mean").attrs["axes"]
        rank = m["x"].rank
        first = min(a - rank if a >= 0 and rank is not None else a for a in axes)
        eps = float(m.node("add_eps").attrs["args"][1])
        return b.op.core.rms_norm(m["x"], axis=first, epsilon=eps)

    return [Rule("rms-norm-decomposed", pattern, rewrite, why_not)]


def raise_to_core(model: Model) -> RaiseResult:
    """Raise a torch-sourced model in place: ATen ops with a core equivalent, written-out RMSNorm."""
    skipped: dict[str, str] = {}
    n = raise_nodes(model.graph, skipped)
    stats = apply_rules(model.graph, _rms_rules())
    return RaiseResult(n, stats, skipped)
