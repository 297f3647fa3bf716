"""Constant folding: evaluate nodes whose inputs are all constant, within an output-size cap.

Core ops run their reference implementation; ONNX ops run in onnx's reference evaluator. Before
evaluating, the output size is inferred (onnx shape inference with data propagation) and a node
whose output would exceed the cap, or whose size cannot be known, is left alone and reported.
"""
from __future__ import annotations

import math

import numpy as np
import onnx

from refold.ir.graph import CORE, Graph, Model, Node
from refold.ir.tensor import Tensor
from refold.passes.base import Pass, PassResult
from refold.passes.cse import NONDETERMINISTIC
from refold.passes.rewrite import remove_dead

DEFAULT_MAX_BYTES = 1 << 20


def _mini_model(node: Node, opsets: dict[str, int]) -> onnx.ModelProto:
    from refold.frontends.onnx_export import inline_tensor

    inits = [inline_tensor(v.name, v.const) for v in node.inputs if v is not None]
    n = onnx.helper.make_node(node.op, ["" if v is None else v.name for v in node.inputs],
                              [v.name if v.kind != "omitted" else "" for v in node.outputs],
                              domain=node.domain or None)
    from refold.frontends.onnx_export import _Exporter

    exp = _Exporter(Model(Graph()), lambda name, t: inline_tensor(name, t))
    for k, val in node.attrs.items():
        n.attribute.append(exp.attribute(k, val, node.attr_types.get(k), "", None))
    outs = [onnx.ValueInfoProto(name=v.name) for v in node.outputs if v.kind != "omitted"]
    g = onnx.helper.make_graph([n], "fold", [], outs, initializer=inits)
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                    for d, v in opsets.items()])


def _inferred_bytes(mini: onnx.ModelProto) -> int | None:
    try:
        inf = onnx.shape_inference.infer_shapes(mini, data_prop=True)
    except Exception:
        return None
    total = 0
    for o in inf.graph.output:
        tt = o.type.tensor_type
        if not tt.elem_type or not tt.HasField("shape"):
            return None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if any(d is None or d < 0 for d in dims):
            return None
        total += math.prod(dims) * max(1, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize)
    return total


def _input_bytes(node: Node) -> int:
    return sum(v.const.nbytes for v in node.inputs if v is not None)


def fold_node(node: Node, opsets: dict[str, int], max_bytes: int) -> list[np.ndarray] | str:
    """The outputs of a node with constant inputs, or the reason it is not folded."""
    if _input_bytes(node) > 4 * max_bytes:
        return "inputs over the size cap"
    if node.domain == CORE:
        import torch

        from refold.ir.ops import evaluate

        ins = [None if v is None else v.const.torch() for v in node.inputs]
        with torch.no_grad():
            outs = evaluate(node.op, ins, node.attrs, len(node.outputs))
        arrays = [o.numpy() for o in outs]
        if sum(a.nbytes for a in arrays) > max_bytes:
            return f"output over the {max_bytes}-byte cap"
        return arrays
    mini = _mini_model(node, opsets)
    size = _inferred_bytes(mini)
    if size is None:
        return "output size cannot be inferred"
    if size > max_bytes:
        return f"output would be {size} bytes, over the {max_bytes}-byte cap"
    from onnx.reference import ReferenceEvaluator

    try:
        outs = ReferenceEvaluator(mini).run(None, {})
    except Exception as e:
        return f"evaluation failed: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
    return [np.asarray(o) for o in outs]


def _foldable(node: Node) -> bool:
    # Parameters and buffers are model state (trainable, or mutated in place): never folded away.
    return (node.dialect in ("onnx", "core") and node.op not in NONDETERMINISTIC
            and not node.meta.get("side_effect")
            and all(v is None or v.kind in ("const", "input") for v in node.inputs)
            and node.op not in ("Identity",) and not node.subgraphs() and bool(node.inputs)
            and all(v is None or v.const is not None for v in node.inputs)
            and any(v is not None for v in node.inputs))


def fold_graph(g: Graph, opsets: dict[str, int], max_bytes: int, skipped: dict[str, str]) -> int:
    folded = 0
    for node in g:
        for sub in node.subgraphs():
            folded += fold_graph(sub, opsets, max_bytes, skipped)
        if not _foldable(node):
            continue
        if any(g.is_output(v) for v in node.outputs):
            continue  # a graph output stays computed by a node (folding would need an Identity)
        res = fold_node(node, opsets, max_bytes)
        if isinstance(res, str):
            skipped[node.name or node.outputs[0].name] = f"{node.op}: {res}"
            continue
        for old, arr in zip(node.outputs, res):
            if old.kind == "omitted":
                continue
            if old.dtype is not None and arr.dtype != old.dtype.numpy() and old.dtype.itemsize_bits >= 8:
                arr = arr.astype(old.dtype.numpy())
            name = old.name
            old.name = g.unique_name(name + "_unfolded")
            new = g.add_const(Tensor.from_array(arr), name)
            new.meta["provenance"] = {"rule": "fold-constants", "sources": [node.name or name]}
            g.substitute(old, new)
        if not any(v._uses for v in node.outputs):
            remove_dead(g, [node])
            folded += 1
    return folded


class FoldConstants(Pass):
    name = "fold-constants"
    description = "evaluate nodes whose inputs are all constant (output size capped, 1 MiB default)"

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = max_bytes

    def call(self, model: Model) -> PassResult:
        skipped: dict[str, str] = {}
        n = fold_graph(model.graph, model.opset_imports, self.max_bytes, skipped)
        return PassResult(model, n > 0, {"folded": n, "rewrites": n, "not_folded": skipped})
