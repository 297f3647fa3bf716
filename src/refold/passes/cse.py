"""Common-subexpression elimination: one node per (op, inputs, attributes); one copy of each small
constant. Random ops, ops of unknown domains and nodes with subgraphs are left alone."""
from __future__ import annotations

from typing import Any

from refold.ir.graph import Graph, Model, Node, Value
from refold.ir.tensor import Tensor
from refold.passes.base import Pass, PassResult

NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                    "Multinomial", "Bernoulli", "Dropout"}
KNOWN_DOMAINS = {"onnx", "core", "com.microsoft", "aten"}
CONST_DEDUP_MAX_BYTES = 4096


def _hashable(v: Any):
    if isinstance(v, (list, tuple)):
        return (type(v).__name__,) + tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return ("dict",) + tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, Tensor):
        if v.nbytes > CONST_DEDUP_MAX_BYTES:
            raise TypeError("large tensor attribute")
        return ("tensor", int(v.dtype), v.shape, v.numpy().tobytes())
    if hasattr(v, "DESCRIPTOR"):
        raise TypeError("proto attribute")
    if isinstance(v, float) and v != v:
        raise TypeError("nan")
    hash(v)  # anything else must be hashable as it is (ints, strings, torch dtypes, TensorArg)
    return v


def _node_key(n: Node):
    if (n.op in NONDETERMINISTIC or n.dialect not in KNOWN_DOMAINS or n.subgraphs() or not n.outputs
            or n.meta.get("side_effect")):
        return None
    if any(v.kind == "omitted" for v in n.outputs):
        return None
    try:
        attrs = tuple(sorted((k, _hashable(v)) for k, v in n.attrs.items()))
    except TypeError:
        return None
    return (n.dialect, n.op, n.overload, tuple(id(v) if v is not None else None for v in n.inputs),
            attrs, len(n.outputs))


def _const_key(v: Value):
    t = v.const
    if t is None or t.nbytes > CONST_DEDUP_MAX_BYTES or v.kind != "const":
        return None
    return (int(t.dtype), t.shape, t.numpy().tobytes())


def eliminate_common_subexpressions(g: Graph) -> tuple[int, int]:
    merged_nodes = merged_consts = 0
    outs = {id(v) for v in g.outputs}
    canon: dict[Any, Value] = {}
    for v in list(g.initializers.values()):
        key = _const_key(v)
        if key is None or id(v) in outs:
            continue
        first = canon.setdefault(key, v)
        if first is not v:
            v.replace_all_uses_with(first)
            g.remove_const(v)
            merged_consts += 1
    seen: dict[Any, Node] = {}
    for n in g:
        for sub in n.subgraphs():
            a, b = eliminate_common_subexpressions(sub)
            merged_nodes, merged_consts = merged_nodes + a, merged_consts + b
        key = _node_key(n)
        if key is None:
            continue
        first = seen.setdefault(key, n)
        if first is n:
            continue
        for old, new in zip(n.outputs, first.outputs):
            g.substitute(old, new)
        if not any(v._uses or g.is_output(v) for v in n.outputs):
            g.remove(n)
            merged_nodes += 1
    return merged_nodes, merged_consts


class CommonSubexpressionElimination(Pass):
    name = "cse"
    description = "merge nodes computing the same op on the same inputs, and duplicate small constants"

    def call(self, model: Model) -> PassResult:
        nodes, consts = eliminate_common_subexpressions(model.graph)
        return PassResult(model, bool(nodes or consts), {"merged_nodes": nodes, "merged_consts": consts})
