"""The raise-to-core step: dialect ops and decomposed patterns become core ops.

The frontend that imported the model does the raising (``refold.ir.dialects``); this pass types
values first (ONNX patterns check ranks and axes) and reports what stayed, with a reason each.
The PassManager runs it before any pass that ``requires`` core ops.
"""
from __future__ import annotations

import numpy as np

from refold.ir.dialects import raiser_for
from refold.ir.graph import Graph, Model, Node
from refold.passes.base import RAISED, Pass, PassResult, Reason
from refold.passes.fold_constants import fold_node, replace_with_constants

# Ops that carry a value computed from weights' shapes and dtypes on to the operand it becomes.
_STATIC_CHAIN = frozenset({"Cast", "CastLike", "Concat", "ConstantOfShape", "Expand", "Gather", "Reshape",
                           "Slice", "Squeeze", "Unsqueeze", "Add", "Sub", "Mul", "Div", "Tile", "Range"})
_STATIC_BYTES = 1 << 16  # biases and shape vectors; folding weights is fold-constants' job


def resolve_static_values(model: Model) -> int:
    """Values computed from constants' shapes and the input's dtype alone become constants.

    The dynamo exporter writes a conv without bias as ``Conv(x, W, Expand(CastLike(0, x), Shape(W)))``:
    the bias is a constant of the model, but no node of it has only constant inputs (CastLike reads
    x, for its dtype). Made a constant, it lets fuse-conv-bn fold and prune cut that conv.
    ``Shape(W)`` of a constant, ``CastLike(c, x)`` of a typed x and Constant nodes the importer kept
    as nodes (they carry metadata) seed the resolution; ops of ``_STATIC_CHAIN`` whose constant
    inputs include a resolved value follow (64 KiB cap)."""
    count = 0
    for g in list(model.graph.all_graphs()):
        resolved: set[int] = set()
        for node in g:
            arrays = _static_outputs(g, node, resolved, model.opset_imports)
            if arrays is not None:
                resolved.update(id(v) for v in replace_with_constants(g, node, arrays, "resolve-static"))
                count += 1
    return count


def _static_outputs(g: Graph, node: Node, resolved: set[int], opsets: dict[str, int]):
    if node.dialect != "onnx" or node.subgraphs() or any(g.is_output(v) for v in node.outputs):
        return None
    ins = [v for v in node.inputs if v is not None]
    if node.op == "Constant" and not ins and node.domain in ("", "ai.onnx"):
        res = fold_node(node, opsets, _STATIC_BYTES, max_growth=0)
        return None if isinstance(res, str) else res
    if not ins or ins[0].const is None:
        return None
    if node.op == "CastLike" and len(ins) == 2 and ins[1].dtype is not None:
        return [ins[0].const.numpy().astype(ins[1].dtype.numpy())]  # CastLike(c, x) = Cast(c, to=dtype(x))
    if node.op == "Shape":  # Shape(W) of a constant, sliced by start / end (opset 15)
        shape = list(ins[0].const.shape)
        start, end = node.attrs.get("start", 0), node.attrs.get("end")
        return [np.array(shape[start:end], dtype=np.int64)]
    if node.op == "Transpose" and _weight_relayout(node):  # MatMul(x, Transpose(W)): torch's Linear
        perm = node.attrs.get("perm")
        return [np.ascontiguousarray(np.transpose(ins[0].const.numpy(), perm))]
    if node.op not in _STATIC_CHAIN or not all(v.const is not None for v in ins):
        return None
    if not any(id(v) in resolved for v in ins):
        return None
    res = fold_node(node, opsets, _STATIC_BYTES, max_growth=0)
    return None if isinstance(res, str) else res


class RaiseToCore(Pass):
    name = "raise-to-core"
    description = "map ONNX / ATen ops and decomposed patterns (LayerNorm, GELU, SiLU, HardSwish) to core ops"
    ensures = frozenset({RAISED})

    def call(self, model: Model) -> PassResult:
        if model.source == "onnx":
            from refold.runtime.shapes import infer_shapes

            try:
                infer_shapes(model)  # patterns check ranks and axes
            except Exception:  # untyped values only make fewer patterns match
                pass
        static = resolve_static_values(model) if model.source == "onnx" else 0
        result = raiser_for(model)(model)
        not_raised = {node: Reason(why, "not-raised") for node, why in result.not_raised.items()}
        for rule, nodes in result.patterns.skipped.items():
            for node, why in nodes.items():
                not_raised.setdefault(node, Reason(f"{rule}: {why}", "pattern-rejected"))
        model.meta["refold.not_raised"] = dict(not_raised)
        return PassResult(model, bool(result.changed or static),
                          {"raised": result.raised, "static_values": static, "patterns": result.patterns.total,
                           "rewrites": result.changed, "by_rule": dict(result.patterns.applied),
                           "not_raised": not_raised})


def _weight_relayout(node: Node) -> bool:
    """A Transpose of a weight that only it reads, feeding only MatMul / Gemm operands: storing
    the transposed weight costs no byte more and gives those ops a constant operand (the dynamo
    exporter writes every Linear so when not optimizing)."""
    w, y = node.inputs[0], node.outputs[0]
    return (w is not None and w.const is not None and len(w.users) == 1 and bool(y.users)
            and all(u.is_op("MatMul", "") or u.is_op("Gemm", "") for u in y.users))
