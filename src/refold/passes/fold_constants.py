"""Constant folding: evaluate nodes whose inputs are all constant, within an output-size cap.

Core ops run their reference implementation; ONNX ops run in onnx's reference evaluator. Before
evaluating, the output size is inferred (onnx shape inference with data propagation) and a node
whose output would exceed the cap, or whose size cannot be known, is left alone and reported.
"""
from __future__ import annotations

import numpy as np

from refold.ir.graph import CORE, Graph, Model, Node
from refold.ir.rewrite import remove_dead
from refold.ir.tensor import Tensor
from refold.passes.base import Option, Pass, PassResult, Reason
from refold.passes.cse import NONDETERMINISTIC
from refold.runtime.reference import (
    evaluate_onnx_node,
    inferred_output_bytes,
    node_model,
)

DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_GROWTH = 2.0
SMALL_BYTES = 4096  # outputs this small always fold: shape vectors, scalars, small tables


def _input_bytes(node: Node) -> int:
    return sum(v.const.nbytes for v in node.inputs if v is not None)


def _grows(out_bytes: int, node: Node, max_growth: float) -> str | None:
    """Why folding would grow the file (ConstantOfShape / Expand / Tile / Range turning a few bytes
    into a dense tensor), or None."""
    in_bytes = _input_bytes(node)
    if max_growth <= 0 or out_bytes <= SMALL_BYTES or out_bytes <= max_growth * in_bytes:
        return None
    return (f"would store {out_bytes} bytes in place of {in_bytes} (over {max_growth:g}x; "
            f"max_growth=0 folds anyway)")


def fold_node(node: Node, opsets: dict[str, int], max_bytes: int,
              max_growth: float = DEFAULT_MAX_GROWTH) -> list[np.ndarray] | str:
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
        size = sum(a.nbytes for a in arrays)
        if size > max_bytes:
            return f"output over the {max_bytes}-byte cap"
        return _grows(size, node, max_growth) or arrays
    mini = node_model(node, opsets)
    size = inferred_output_bytes(mini)
    if size is None:
        return "output size cannot be inferred"
    if size > max_bytes:
        return f"output would be {size} bytes, over the {max_bytes}-byte cap"
    grows = _grows(size, node, max_growth)
    if grows:
        return grows
    try:
        return evaluate_onnx_node(mini)
    except Exception as e:
        return f"evaluation failed: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"


def _foldable(node: Node) -> bool:
    # Parameters and buffers are model state (trainable, or mutated in place): never folded away.
    return (node.dialect in ("onnx", "core") and node.op not in NONDETERMINISTIC
            and not node.meta.get("side_effect")
            and all(v is None or v.kind in ("const", "input") for v in node.inputs)
            and node.op not in ("Identity",) and not node.subgraphs() and bool(node.inputs)
            and all(v is None or v.const is not None for v in node.inputs)
            and any(v is not None for v in node.inputs))


def fold_graph(g: Graph, opsets: dict[str, int], max_bytes: int, skipped: dict[str, str],
               max_growth: float = DEFAULT_MAX_GROWTH) -> int:
    folded = 0
    for node in g:
        for sub in node.subgraphs():
            folded += fold_graph(sub, opsets, max_bytes, skipped, max_growth)
        if not _foldable(node):
            continue
        if any(g.is_output(v) for v in node.outputs):
            continue  # a graph output stays computed by a node (folding would need an Identity)
        res = fold_node(node, opsets, max_bytes, max_growth)
        if isinstance(res, str):
            skipped[node.name or node.outputs[0].name] = Reason(f"{node.op}: {res}", "not-evaluated")
            continue
        folded += bool(replace_with_constants(g, node, res, "fold-constants"))
    return folded


def replace_with_constants(g: Graph, node: Node, arrays: list[np.ndarray], rule: str) -> list:
    """Every reader of ``node``'s outputs reads ``arrays`` instead (constants under the outputs'
    names); the node goes when nothing reads it. The new constants, in output order."""
    made = []
    for old, arr in zip(node.outputs, arrays):
        if old.kind == "omitted":
            continue
        if old.dtype is not None and arr.dtype != old.dtype.numpy() and old.dtype.itemsize_bits >= 8:
            arr = arr.astype(old.dtype.numpy())
        name = old.name
        old.name = g.unique_name(name + "_unfolded")
        new = g.add_const(Tensor.from_array(arr), name)
        new.meta["provenance"] = {"rule": rule, "sources": [node.name or name]}
        g.substitute(old, new)
        made.append(new)
    if not any(v.users for v in node.outputs):
        remove_dead(g, [node])
    return made


class FoldConstants(Pass):
    name = "fold-constants"
    description = "evaluate nodes whose inputs are all constant (output size capped, 1 MiB default)"

    options = (
        Option("max_bytes", int, DEFAULT_MAX_BYTES, "largest folded output, in bytes"),
        Option("max_growth", float, DEFAULT_MAX_GROWTH, "fold only where the output is at most this "
               f"many times the bytes of the constants it replaces (outputs under {SMALL_BYTES} bytes "
               "always fold); 0 folds regardless"),
    )

    def call(self, model: Model) -> PassResult:
        skipped: dict[str, str] = {}
        n = fold_graph(model.graph, model.opset_imports, self.max_bytes, skipped, self.max_growth)
        return PassResult(model, n > 0, {"folded": n, "rewrites": n, "not_folded": skipped})
