"""Dead-code elimination: drop nodes and constants nothing reads (subgraphs included)."""
from __future__ import annotations

from refold.ir.graph import Graph, Model
from refold.passes.base import Pass, PassResult


def eliminate_dead_code(g: Graph, *, legacy_inputs: bool = False) -> tuple[int, int]:
    """Remove unused nodes (reverse order, so chains go in one sweep) and unused constants.

    ``legacy_inputs``: below IR version 4 every initializer must also be listed as a graph input,
    so such an input is a constant, not part of the interface: unused, it goes too (ONNX Runtime
    would drop it anyway, with a warning per initializer)."""
    nodes = consts = 0
    outs = {id(v) for v in g.outputs}
    n = g._tail
    while n is not None:
        prev = n._prev
        live = any(v._uses or id(v) in outs for v in n.outputs)
        # A node with no outputs at all can only be there for an effect: keep it.
        if not live and n.outputs and not n.meta.get("side_effect"):
            g.remove(n)
            nodes += 1
        else:
            for sub in n.subgraphs():
                a, b = eliminate_dead_code(sub)
                nodes, consts = nodes + a, consts + b
        n = prev
    inputs = {id(v) for v in g.inputs}
    for name, v in list(g.initializers.items()):
        if v._uses or id(v) in outs:
            continue
        if id(v) in inputs:
            if not legacy_inputs:
                continue
            g.inputs.remove(v)
        g.remove_const(v)
        consts += 1
    return nodes, consts


class DeadCodeElimination(Pass):
    name = "dce"
    description = "remove nodes and constants whose results nothing reads (subgraphs too)"

    def call(self, model: Model) -> PassResult:
        nodes, consts = eliminate_dead_code(model.graph, legacy_inputs=model.ir_version < 4)
        return PassResult(model, bool(nodes or consts), {"removed_nodes": nodes, "removed_consts": consts})
