"""Dead-code elimination: drop nodes and constants nothing reads (subgraphs included)."""
from __future__ import annotations

from refold.ir.graph import Graph, Model
from refold.passes.base import Pass, PassResult


def eliminate_dead_code(g: Graph) -> tuple[int, int]:
    """Remove unused nodes (reverse order, so chains go in one sweep) and unused constants."""
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
        if not v._uses and id(v) not in outs and id(v) not in inputs:
            g.remove_const(v)
            consts += 1
    return nodes, consts


class DeadCodeElimination(Pass):
    name = "dce"
    description = "remove nodes and constants whose results nothing reads (subgraphs too)"

    def call(self, model: Model) -> PassResult:
        nodes, consts = eliminate_dead_code(model.graph)
        return PassResult(model, bool(nodes or consts), {"removed_nodes": nodes, "removed_consts": consts})
