"""Run a graph node by node: the jaxpr-interpreter shape, with one evaluator per dialect.

``env`` maps each Value to its runtime value; constants are read lazily, once; each node's
evaluator gets its inputs and returns its outputs. The torch and reference runners differ only in
their evaluators and in how values are converted at the edges.
"""
from __future__ import annotations

from typing import Any, Callable

from refold.errors import UnsupportedError
from refold.ir.graph import Graph, Node, Value

# evaluator(node, inputs) -> outputs, one per node output (None for an omitted one)
Evaluator = Callable[[Node, list], list]


def interpret(graph: Graph, feeds: dict[str, Any], evaluate: Evaluator, const: Callable[[Value], Any],
              capture: list[str]) -> dict[str, Any]:
    """Outputs of ``graph`` (and the values named in ``capture``) for ``feeds``, by name.

    Values no later node reads are released as soon as their last reader ran, unless they are
    outputs or captured, so peak memory is the graph's live set, not the sum of all activations.
    """
    env: dict[int, Any] = {}
    keep = {id(v) for v in graph.outputs}
    wanted = set(capture)
    remaining: dict[int, int] = {}
    for v in graph.inputs:
        if v.const is None:
            env[id(v)] = feeds[v.name]
    for node in graph:
        for v in node.inputs:
            if v is not None:
                remaining[id(v)] = remaining.get(id(v), 0) + 1
    out: dict[str, Any] = {}
    for node in graph:
        ins = []
        for v in node.inputs:
            if v is None:
                ins.append(None)
            elif id(v) in env:
                ins.append(env[id(v)])
            elif v.const is not None:
                ins.append(const(v))
            elif v.kind == "submodule":  # a higher-order op's body (an autocast region): the module
                ins.append(v.meta["torch.module"])
            else:
                raise UnsupportedError(f"{node.label()}: reads '{v.name}', which nothing computed")
        try:
            results = evaluate(node, ins)
        except NotImplementedError as e:
            raise UnsupportedError(f"{node.label()}: {node.qualified_op} cannot run here: {e}") from None
        if len(results) < len(node.outputs):
            results = list(results) + [None] * (len(node.outputs) - len(results))
        for o, r in zip(node.outputs, results):
            if o.kind == "omitted":
                continue
            env[id(o)] = r
            if o.name in wanted:
                out[o.name] = r
        for v in node.inputs:  # free what nobody reads again
            if v is not None and id(v) in env and id(v) not in keep and v.name not in wanted:
                remaining[id(v)] -= 1
                if remaining[id(v)] == 0 and v.producer is not None:
                    del env[id(v)]
    for v in graph.outputs:
        if id(v) in env:
            out[v.name] = env[id(v)]
        elif v.const is not None:
            out[v.name] = const(v)
        else:
            out[v.name] = feeds[v.name]
    for name in wanted - set(out):  # a captured graph input
        if name in feeds:
            out[name] = feeds[name]
    return out
