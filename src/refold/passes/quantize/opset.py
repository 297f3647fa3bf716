"""Raising an ONNX model's opset so the Q/DQ it needs exist: per-channel QuantizeLinear (13),
16-bit activations (21).

Core nodes are written out for whatever opset the model ends up with, so only nodes still in the
ONNX dialect matter. An op whose newer versions only added types keeps its meaning; a few moved an
attribute into an input, and are rewritten here:

    Squeeze/Unsqueeze(x, axes=a)     (< 13)  ==>  Squeeze/Unsqueeze(x, const a)
    ReduceMax/Min/Prod/...(x, axes=a) (< 18) ==>  ReduceMax/Min/Prod/...(x, const a)
    Split(x, split=s)                 (< 13) ==>  Split(x, const s)
    Split(x) into k outputs           (< 18) ==>  Split(x, num_outputs=k)
    Dropout(x, ratio=r)               (< 12) ==>  Dropout(x, const r)  (its mask unread: its type changed)

Anything else whose meaning changes between the two opsets blocks the raise, and is named.
"""
from __future__ import annotations

import numpy as np

from refold.ir.graph import Model, Node

# Ops whose versions from the given one up to opset 21 only added types or attributes whose
# default keeps the old meaning (Reshape's allowzero, BatchNormalization's training_mode, Shape's
# start/end, Cast's saturate for float8, Resize's antialias, Pad's axes).
_SAME_SINCE = {op: 1 for op in (
    "Abs", "Add", "Cast", "Ceil", "Concat", "Constant", "Div", "Elu", "Equal", "Erf", "Exp", "Expand",
    "Flatten", "Floor", "Gather", "GlobalAveragePool", "GlobalMaxPool", "Greater", "HardSigmoid",
    "Identity", "LeakyRelu", "Less", "Log", "MatMul", "MaxPool", "AveragePool", "Mul", "Neg", "Not",
    "Pow", "Reciprocal", "Relu", "Shape", "Sigmoid", "Sign", "Size", "Sqrt", "Sub", "Tanh", "Tile",
    "Transpose", "Where", "Gemm", "Conv", "ConvTranspose", "Reshape", "Slice", "Clip", "Range",
    "Max", "Min", "Sum", "Mean", "If", "Loop", "And", "Or", "Xor", "GreaterOrEqual", "LessOrEqual",
    "Mod", "Einsum", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "NonZero",
    "TopK", "ArgMax", "ArgMin", "PRelu", "Softplus", "Softsign", "HardSwish", "Round", "Sin", "Cos",
    "InstanceNormalization", "LRN", "DepthToSpace", "SpaceToDepth", "OneHot")}
_SAME_SINCE.update({"Reshape": 5, "Slice": 10, "Clip": 11, "TopK": 10, "MaxPool": 8, "AveragePool": 7,
                    "BatchNormalization": 9, "ConstantOfShape": 9, "Resize": 11, "Pad": 11,
                    "CumSum": 11, "Squeeze": 13, "Unsqueeze": 13, "Trilu": 14, "LSTM": 7, "GRU": 7,
                    "RNN": 7, "Split": 18, "ReduceSum": 13, "ReduceMean": 18, "ReduceMax": 18, "ReduceMin": 18,
                    "ReduceProd": 18, "ReduceL1": 18, "ReduceL2": 18, "ReduceLogSum": 18,
                    "ReduceLogSumExp": 18, "ReduceSumSquare": 18})
_LAST_AXIS_SAME = {"Softmax", "LogSoftmax", "Hardmax"}  # before 13: over flattened trailing dims
_AXES_TO_INPUT = {"Squeeze": 13, "Unsqueeze": 13, "ReduceSum": 13, **{op: 18 for op in (
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare")}}


def _version(op: str, opset: int) -> int | None:
    import onnx

    try:
        return onnx.defs.get_schema(op, opset, "").since_version
    except Exception:
        return None


def _adaptable(n: Node, have: int, target: int) -> bool:
    """``n`` can be rewritten for ``target`` (an attribute that became an input)."""
    moved = _AXES_TO_INPUT.get(n.op)
    if moved is not None and have < moved <= target:
        return len(n.inputs) == 1  # axes still an attribute (or absent)
    if n.op == "Dropout" and have < 12 <= target:
        return len(n.inputs) == 1 and all(not o.users for o in n.outputs[1:])
    if n.op == "Split" and (have < 13 <= target or have < 18 <= target):
        return have >= 13 or len(n.inputs) == 1  # the split sizes still an attribute (or absent)
    return False


def blockers(model: Model, target: int) -> list[str]:
    """ONNX ops whose meaning changes between the model's opset and ``target`` (and that are not
    rewritten here), sorted. Empty: the model's opset can be raised to ``target``."""
    have = model.opset
    if have >= target:
        return []
    out = []
    for n in model.graph.all_nodes():
        if n.dialect != "onnx" or n.domain not in ("", "ai.onnx"):
            continue
        a, b = _version(n.op, have), _version(n.op, target)
        if a is None or b is None:
            out.append(n.op)
            continue
        if a == b or a >= _SAME_SINCE.get(n.op, 10**9) or _adaptable(n, have, target):
            continue
        if n.op in _LAST_AXIS_SAME:
            rank = n.inputs[0].rank
            axis = n.attrs.get("axis", 1)
            if rank is not None and axis % rank == rank - 1:
                continue
        out.append(n.op)
    return sorted(set(out))


def raise_opset(model: Model, target: int) -> None:
    """Set the default-domain opset to ``target``, rewriting the nodes ``_adaptable`` names.
    Call only when ``blockers(model, target)`` is empty."""
    have = model.opset
    for g in list(model.graph.all_graphs()):
        for n in list(g):
            if n.dialect != "onnx" or n.domain not in ("", "ai.onnx") or not _adaptable(n, have, target):
                continue
            if n.op == "Split":  # Split(x, split=s) -> Split(x, const s); Split(x) -> Split(x, num_outputs=k)
                sizes = n.attrs.pop("split", None)
                if sizes is not None:
                    n.set_input(1, g.add_const(np.asarray(list(sizes), np.int64), prefix=f"{n.name or n.op}_split"))
                elif target >= 18 and (len(n.inputs) < 2 or n.inputs[1] is None):
                    n.attrs["num_outputs"] = len(n.outputs)
                continue
            if n.op == "Dropout":  # Dropout(x, ratio=r) -> Dropout(x, r); is_test (< 7) is gone
                n.attrs.pop("is_test", None)
                ratio = n.attrs.pop("ratio", None)
                if ratio is not None:
                    n.set_input(1, g.add_const(np.asarray(ratio, np.float32), prefix=f"{n.name or n.op}_ratio"))
                continue
            axes = n.attrs.pop("axes", None)
            if axes is not None:  # Squeeze(x, axes=a) -> Squeeze(x, a): the same axes, as an input
                n.set_input(1, g.add_const(np.asarray(list(axes), np.int64), prefix=f"{n.name or n.op}_axes"))
    model.opset_imports["" if "" in model.opset_imports else "ai.onnx"] = target
