"""raise_to_core for ONNX: map ONNX ops, and decomposed patterns, to core ops.

A node that cannot be raised exactly stays as it is, and the reason is recorded; exporting a raised
graph lowers the core ops back to the model's opset (lower.py).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from refold.ir.dialects import RaiseResult
from refold.ir.graph import CORE, Graph, Model, Node
from refold.ir.graph import const_ints as _const_ints
from refold.ir.rewrite import Builder, Const, Match, Rule, Var, apply_rules, op

Raised = "tuple[str, list, dict] | str"  # (core op, inputs, attrs), or why not


def _spatial_rank(node: Node) -> int | None:
    w = node.inputs[1]
    if w is not None and w.shape is not None:
        return len(w.shape) - 2
    ks = node.attrs.get("kernel_shape")
    return len(ks) if ks else None


def _auto_pads(node: Node, k: int, strides, dilations, kernel) -> list[int] | str:
    mode = node.attrs.get("auto_pad", b"NOTSET")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode in ("NOTSET", ""):
        return list(node.attrs.get("pads") or [0] * (2 * k))
    if mode == "VALID":
        return [0] * (2 * k)
    x = node.inputs[0]
    if kernel is None:
        return f"auto_pad={mode} needs the kernel shape"
    unit = all(s == 1 for s in strides)  # with stride 1 the padding does not depend on the input size
    if not unit and (x.shape is None or any(not isinstance(d, int) for d in x.shape[2:])):
        return f"auto_pad={mode} with strides {strides} needs static spatial input dims"
    begins, ends = [], []
    for i in range(k):
        s, d, kk = strides[i], dilations[i], kernel[i]
        if unit:
            total = (kk - 1) * d
        else:
            n = x.shape[2 + i]
            total = max((math.ceil(n / s) - 1) * s + (kk - 1) * d + 1 - n, 0)
        small = total // 2
        begins.append(small if mode == "SAME_UPPER" else total - small)
        ends.append(total - begins[-1])
    return begins + ends


def _conv(node: Node, opset: int):
    k = _spatial_rank(node)
    if k is None:
        return "weight rank unknown"
    w = node.inputs[1]
    kernel = node.attrs.get("kernel_shape") or (list(w.shape[2:]) if w.shape else None)
    if kernel is not None and w.shape is not None and all(isinstance(d, int) for d in w.shape[2:]) \
            and list(w.shape[2:]) != list(kernel):
        return f"kernel_shape {kernel} disagrees with weight {list(w.shape)}"
    strides = list(node.attrs.get("strides") or [1] * k)
    dil = list(node.attrs.get("dilations") or [1] * k)
    pads = _auto_pads(node, k, strides, dil, kernel)
    if isinstance(pads, str):
        return pads
    return "conv", list(node.inputs), dict(strides=strides, pads=pads, dilations=dil,
                                           group=node.attrs.get("group", 1))


def _conv_transpose(node: Node, opset: int):
    k = _spatial_rank(node)
    if k is None:
        return "weight rank unknown"
    if node.attrs.get("output_shape"):
        return "output_shape attribute (pads depend on it)"
    mode = node.attrs.get("auto_pad", b"NOTSET")
    if mode not in (b"NOTSET", "NOTSET", b"VALID", "VALID", b"", ""):
        return f"auto_pad={mode!r}"
    pads = list(node.attrs.get("pads") or [0] * (2 * k))
    if pads[:k] != pads[k:]:
        return f"asymmetric pads {pads}"
    return "conv_transpose", list(node.inputs), dict(
        strides=list(node.attrs.get("strides") or [1] * k), pads=pads,
        dilations=list(node.attrs.get("dilations") or [1] * k), group=node.attrs.get("group", 1),
        output_padding=list(node.attrs.get("output_padding") or [0] * k))


def _used_outputs(node: Node, first: int = 1) -> list[str]:
    return [v.name for v in node.outputs[first:]
            if v.kind != "omitted" and (v._uses or (node.graph is not None and node.graph.is_output(v)))]


def _batch_norm(node: Node, opset: int):
    if node.attrs.get("training_mode", 0):
        return "training_mode=1 (uses batch statistics)"
    if node.attrs.get("spatial", 1) != 1:
        return "spatial=0 (per-activation statistics)"
    if opset < 7 and node.attrs.get("is_test", 0) == 0:
        return "is_test=0 (training)"
    used = _used_outputs(node)
    if used:
        return f"optional outputs {used} are in use"
    return "batch_norm", list(node.inputs[:5]), dict(epsilon=node.attrs.get("epsilon", 1e-5))


def _norm(core: str, n_inputs: int):
    """LayerNormalization / RMSNormalization / SimplifiedLayerNormalization: same rules."""
    def f(node: Node, opset: int):
        used = _used_outputs(node)
        if used:
            return f"optional outputs {used} are in use"
        if node.attrs.get("stash_type", 1) != 1:
            return "stash_type is not float32"
        return core, list(node.inputs[:n_inputs]), dict(axis=node.attrs.get("axis", -1),
                                                        epsilon=node.attrs.get("epsilon", 1e-5))
    return f


def _same_dtype(node: Node):
    a, b = node.inputs[0], node.inputs[1]
    if a is not None and b is not None and a.dtype is not None and b.dtype is not None and a.dtype != b.dtype:
        return f"mixed input types {a.dtype.name} and {b.dtype.name}"
    return None


def _binary(core: str):
    def f(node: Node, opset: int):
        if opset < 7 and node.attrs.get("broadcast") is not None:
            return "legacy broadcast attribute"
        why = _same_dtype(node)
        return why or (core, list(node.inputs), {})
    return f


def _unary(core: str, **fixed):
    def f(node: Node, opset: int):
        return core, list(node.inputs), dict(fixed)
    return f


def _gelu(node: Node, opset: int):
    a = node.attrs.get("approximate", b"none")
    return "gelu", list(node.inputs), dict(approximate=a.decode() if isinstance(a, bytes) else a)


def _gemm(node: Node, opset: int):
    a = node.attrs
    return "gemm", list(node.inputs), dict(alpha=a.get("alpha", 1.0), beta=a.get("beta", 1.0),
                                           transA=a.get("transA", 0), transB=a.get("transB", 0))


def _reshape(node: Node, opset: int):
    if opset < 5:
        return "Reshape-1 takes shape as an attribute"
    return "reshape", list(node.inputs), dict(allowzero=node.attrs.get("allowzero", 0))


def _concat(node: Node, opset: int):
    if "axis" not in node.attrs:
        return "no axis"
    return "concat", list(node.inputs), dict(axis=node.attrs["axis"])


def _split(node: Node, opset: int):
    axis = node.attrs.get("axis", 0)
    if opset < 13:
        sizes = node.attrs.get("split")
        if sizes:
            b = Builder(node.graph, node)
            return "split", [node.inputs[0], b.const(np.array(sizes, np.int64), "split_sizes")], dict(axis=axis)
        return "split", [node.inputs[0]], dict(axis=axis)
    attrs = dict(axis=axis)
    if node.attrs.get("num_outputs"):
        attrs["num_outputs"] = node.attrs["num_outputs"]
    return "split", list(node.inputs[:2]), attrs


def _slice(node: Node, opset: int):
    if opset >= 10:
        return "slice", list(node.inputs), {}
    b = Builder(node.graph, node)
    ins = [node.inputs[0]] + [b.const(np.array(node.attrs[k], np.int64), k) for k in ("starts", "ends")]
    if node.attrs.get("axes") is not None:
        ins.append(b.const(np.array(node.attrs["axes"], np.int64), "axes"))
    return "slice", ins, {}


def _reduce_mean(node: Node, opset: int):
    keep = node.attrs.get("keepdims", 1)
    if opset >= 18:
        axes_v = node.inputs[1] if len(node.inputs) > 1 else None
        if axes_v is not None and axes_v.const is None:
            return "axes input is not constant"
        axes = _const_ints(axes_v) if axes_v is not None else []
        if not axes and node.attrs.get("noop_with_empty_axes", 0):
            return "noop_with_empty_axes=1"
    else:
        axes = list(node.attrs.get("axes") or [])
    return "reduce_mean", [node.inputs[0]], dict(axes=axes or None, keepdims=keep)


def _qdq(core: str):
    def f(node: Node, opset: int):
        attrs = dict(axis=node.attrs.get("axis", 1))
        if node.attrs.get("block_size", 0):  # opset 21: one scale per block along axis
            attrs["block_size"] = node.attrs["block_size"]
        if node.attrs.get("output_dtype", 0):
            return "output_dtype attribute"
        if node.attrs.get("saturate", 1) != 1:
            return "saturate=0"
        if node.attrs.get("precision", 0):
            return "precision attribute"
        return core, list(node.inputs), attrs
    return f


RAISE: dict[tuple[str, str], Callable[[Node, int], object]] = {
    ("onnx", "Conv"): _conv, ("onnx", "ConvTranspose"): _conv_transpose,
    ("onnx", "BatchNormalization"): _batch_norm, ("onnx", "LayerNormalization"): _norm("layer_norm", 3),
    ("onnx", "RMSNormalization"): _norm("rms_norm", 2),
    ("com.microsoft", "SimplifiedLayerNormalization"): _norm("rms_norm", 2),
    ("onnx", "SimplifiedLayerNormalization"): _norm("rms_norm", 2),  # ORT registers it here too
    ("onnx", "Gemm"): _gemm, ("onnx", "MatMul"): _binary("matmul"),
    ("onnx", "Add"): _binary("add"), ("onnx", "Sub"): _binary("sub"), ("onnx", "Mul"): _binary("mul"),
    ("onnx", "Div"): _binary("div"), ("onnx", "Relu"): _unary("relu"), ("onnx", "Gelu"): _gelu,
    ("onnx", "Sigmoid"): _unary("sigmoid"), ("onnx", "Sqrt"): _unary("sqrt"), ("onnx", "Tanh"): _unary("tanh"),
    ("onnx", "HardSwish"): _unary("hardswish"), ("onnx", "Reshape"): _reshape,
    ("onnx", "Transpose"): lambda n, o: ("transpose", list(n.inputs), dict(perm=n.attrs.get("perm"))),
    ("onnx", "Flatten"): lambda n, o: ("flatten", list(n.inputs), dict(axis=n.attrs.get("axis", 1))),
    ("onnx", "Concat"): _concat, ("onnx", "Split"): _split, ("onnx", "Slice"): _slice,
    ("onnx", "ReduceMean"): _reduce_mean, ("onnx", "QuantizeLinear"): _qdq("quantize_linear"),
    ("onnx", "DequantizeLinear"): _qdq("dequantize_linear"),
}


def raise_nodes(graph: Graph, opsets: dict[str, int], skipped: dict[str, str]) -> int:
    """Replace every ONNX node that has an exact core equivalent; returns how many."""
    count = 0
    for g in list(graph.all_graphs()):
        for node in g:
            key = (node.dialect, node.op)
            fn = RAISE.get(key)
            if fn is None:
                continue
            opset = opsets.get(node.domain, opsets.get("ai.onnx" if node.domain == "" else node.domain, 1))
            raised = fn(node, opset)
            if isinstance(raised, str):
                skipped[node.name or node.outputs[0].name] = f"{node.op}: {raised}"
                continue
            core_op, inputs, attrs = raised
            g.replace_op(node, core_op, inputs, attrs, domain=CORE,
                         meta={"raised_from": node.qualified_op})
            count += 1
    return count


# -- decomposed patterns ---------------------------------------------------------------------

def _scalar(m: Match, name: str) -> float | None:
    v = m.get(name)
    if v is None or v.const is None or v.const.numel != 1:
        return None
    return float(np.asarray(v.const.numpy()).reshape(-1)[0])


def _close(a: float | None, b: float, tol: float = 1e-4) -> bool:
    return a is not None and abs(a - b) <= tol * max(1.0, abs(b))


def _trailing_axes(axes: list[int] | None, rank: int | None) -> list[int] | None:
    """Axes as negative indices if they are the trailing dims (e.g. [-2, -1]); else None."""
    if not axes:
        return None
    if any(a >= 0 for a in axes):
        if rank is None:
            return None
        axes = [a - rank for a in axes]
    neg = sorted(set(axes))
    return neg if neg == list(range(-len(neg), 0)) else None


def _ln_axes_why_not(m: Match) -> str | None:
    mean1, mean2 = m.node("mean1"), m.node("mean2")
    x = m["x"]
    if mean1.attrs.get("keepdims") != 1 or mean2.attrs.get("keepdims") != 1:
        return "keepdims=0 in a ReduceMean"
    a1 = _trailing_axes(mean1.attrs.get("axes"), x.rank)
    a2 = _trailing_axes(mean2.attrs.get("axes"), x.rank)
    if a1 is None or a2 is None:
        return (f"axes {mean1.attrs.get('axes')} / {mean2.attrs.get('axes')} are not provably the "
                f"trailing dims (input rank {x.rank})")
    if a1 != a2:
        return f"the two ReduceMeans reduce different axes {a1} and {a2}"
    if m.get("two") is not None and _scalar(m, "two") != 2.0:
        return "Pow exponent is not 2"
    eps = _scalar(m, "eps")
    if eps is None or eps < 0:
        return "epsilon is not a non-negative constant scalar"
    return None


def _ln_rewrite(b: Builder, m: Match):
    # (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps)  ==>  layer_norm(x, axis=-k, eps)
    axes = _trailing_axes(m.node("mean1").attrs["axes"], m["x"].rank)
    return b.op.core.layer_norm(m["x"], axis=axes[0], epsilon=_scalar(m, "eps"))


def _ln_rules() -> list[Rule]:
    x = Var("x")
    mean1 = op.core.reduce_mean(x, _name="mean1")
    d = op.core.sub(x, mean1, _name="sub")
    rules = []
    for sq_name, sq in (("pow", op.Pow(d, Const("two"))), ("mul", op.core.mul(d, d))):
        var = op.core.reduce_mean(sq, _name="mean2")
        std = op.core.sqrt(op.core.add(var, Const("eps")))
        rules.append(Rule(f"layer-norm-decomposed-{sq_name}", op.core.div(d, std), _ln_rewrite,
                          _ln_axes_why_not))
    return rules


def _gelu_rewrite(b: Builder, m: Match):
    # x * 0.5 * (1 + erf(x / sqrt(2)))  ==>  gelu(x)
    return b.op.core.gelu(m["x"], approximate="none")


def _gelu_why_not(m: Match) -> str | None:
    if not _close(_scalar(m, "c_sqrt2"), math.sqrt(2.0)) and not _close(_scalar(m, "c_sqrt2"), 1.4142):
        return "divisor is not sqrt(2)"
    if not _close(_scalar(m, "one"), 1.0) or not _close(_scalar(m, "half"), 0.5):
        return "constants are not 1 and 0.5"
    return None


def _gelu_rules() -> list[Rule]:
    x = Var("x")
    inner = op.core.add(op.Erf(op.core.div(x, Const("c_sqrt2"))), Const("one"))
    return [
        Rule("gelu-erf-a", op.core.mul(op.core.mul(x, inner), Const("half")), _gelu_rewrite, _gelu_why_not),
        Rule("gelu-erf-b", op.core.mul(op.core.mul(x, Const("half")), inner), _gelu_rewrite, _gelu_why_not),
    ]


def _silu_rule() -> Rule:
    x = Var("x")
    # x * sigmoid(x)  ==>  silu(x)
    return Rule("silu", op.core.mul(x, op.core.sigmoid(x)), lambda b, m: b.op.core.silu(m["x"]))


def _hardswish_rule() -> Rule:
    x = Var("x")

    def why_not(m: Match) -> str | None:
        n = m.node("hs")
        if not (_close(n.attrs.get("alpha", 0.2), 1 / 6) and _close(n.attrs.get("beta", 0.5), 0.5)):
            return "HardSigmoid is not relu6(x+3)/6"
        return None

    # x * hard_sigmoid(x; 1/6, 1/2)  ==>  hardswish(x)
    return Rule("hardswish", op.core.mul(x, op.HardSigmoid(x, _name="hs")),
                lambda b, m: b.op.core.hardswish(m["x"]), why_not)


def _hardswish_clip_rule() -> Rule:
    x = Var("x")

    def why_not(m: Match) -> str | None:
        vals = [_scalar(m, k) for k in ("three", "lo", "hi", "six")]
        if not (_close(vals[0], 3.0) and _close(vals[1], 0.0) and _close(vals[2], 6.0) and _close(vals[3], 6.0)):
            return f"constants {vals} are not 3, 0, 6, 6"
        return None

    # x * clip(x + 3, 0, 6) / 6  ==>  hardswish(x)
    clip = op.Clip(op.core.add(x, Const("three")), Const("lo"), Const("hi"))
    return Rule("hardswish-clip", op.core.div(op.core.mul(x, clip), Const("six")),
                lambda b, m: b.op.core.hardswish(m["x"]), why_not)


def pattern_rules() -> list[Rule]:
    return _ln_rules() + _gelu_rules() + [_silu_rule(), _hardswish_rule(), _hardswish_clip_rule()]


def forward_constant_identities(graph: Graph) -> int:
    """Identity(constant) -> the constant itself, for every reader (exporters wrap weights so)."""
    count = 0
    for g in list(graph.all_graphs()):
        outs = {id(v) for v in g.outputs}
        for node in g:
            if node.is_op("Identity", "") and node.inputs and node.inputs[0] is not None \
                    and node.inputs[0].const is not None and id(node.outputs[0]) not in outs:
                node.outputs[0].replace_all_uses_with(node.inputs[0])
                g.remove(node)
                count += 1
    return count


def raise_to_core(model: Model) -> RaiseResult:
    """Raise a model in place: 1:1 ops, then decomposed patterns; reasons for nodes left."""
    skipped: dict[str, str] = {}
    n = forward_constant_identities(model.graph)
    n += raise_nodes(model.graph, model.opset_imports, skipped)
    stats = apply_rules(model.graph, pattern_rules())
    return RaiseResult(n, stats, skipped)
