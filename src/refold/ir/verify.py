"""The IR verifier: SSA, topological order, scoping, use lists, core-op schemas and types."""
from __future__ import annotations

from refold.errors import InvalidModelError
from refold.ir.graph import CORE, Graph, Node, Value


class VerifyError(InvalidModelError):
    pass


def verify(graph: Graph, *, max_problems: int = 5) -> None:
    """Raise VerifyError listing up to ``max_problems`` problems; return None if the IR is sound."""
    problems = list(problems_in(graph, max_problems))
    if problems:
        more = "" if len(problems) < max_problems else " (and maybe more)"
        raise VerifyError("; ".join(problems) + more)


def problems_in(graph: Graph, limit: int = 5):
    seen_names: dict[str, Value] = {}
    count = 0
    for p in _check_graph(graph, {}, seen_names):
        yield p
        count += 1
        if count >= limit:
            return


def _check_graph(g: Graph, outer: dict[int, Value], names: dict[str, Value]):
    """``names``: the names visible here (this graph's and its enclosing graphs', as ONNX scopes
    them); sibling subgraphs (an If's two branches, two Loop bodies) may reuse a name."""
    scope: dict[int, Value] = dict(outer)
    names = dict(names)
    local: list[Value] = []

    def define(v: Value, what: str):
        if v.kind == "omitted":
            return
        if v.name:
            other = names.get(v.name)
            if other is not None and other is not v:
                yield f"graph '{g.name}': name '{v.name}' is used by two values ({what})"
            names[v.name] = v
            local.append(v)
        scope[id(v)] = v

    for v in g.inputs:
        yield from define(v, "input")
    for name, v in g.initializers.items():
        if v.name != name:
            yield f"graph '{g.name}': constant registered as '{name}' is named '{v.name}'"
        if v.const is None and v.kind not in ("sparse_const", "submodule"):
            yield f"graph '{g.name}': constant '{name}' has no payload"
        if id(v) not in scope:
            yield from define(v, "constant")
    for v in g.meta.get("onnx.sparse_initializers", []):
        yield from define(v, "sparse constant")
    count = 0
    n = g._head
    prev = None
    while n is not None:
        count += 1
        if n.graph is not g:
            yield f"{n.label()} is linked into graph '{g.name}' but says it belongs elsewhere"
        if n._prev is not prev:
            yield f"graph '{g.name}': broken node links at {n.label()}"
        for i, v in enumerate(n.inputs):
            if v is None:
                continue
            if id(v) not in scope:
                where = "later in the graph" if v.producer is not None and v.producer.graph is g else \
                    "nowhere in scope"
                yield f"{n.label()} reads '{v.name}', which is defined {where}"
            if (n, i) not in v._uses:
                yield f"{n.label()} input {i} '{v.name}' is missing from that value's use list"
        for i, v in enumerate(n.outputs):
            if v.producer is not n or v.index != i:
                yield f"{n.label()} output {i} '{v.name}' names a different producer"
        if n.domain == CORE:
            yield from _check_core(n)
        for sub in n.subgraphs():
            if sub.parent is not n:
                yield f"{n.label()}: subgraph '{sub.name}' has the wrong parent"
            yield from _check_graph(sub, scope, names)
        for v in n.outputs:
            yield from define(v, f"output of {n.label()}")
        prev, n = n, n._next
    if count != len(g):
        yield f"graph '{g.name}': node count {len(g)} disagrees with the list ({count})"
    for v in g.outputs:
        if id(v) not in scope:
            yield f"graph '{g.name}': output '{v.name}' is not defined in the graph"
    for v in local:
        name = v.name
        for node, i in v._uses:
            if node.graph is None:
                yield f"value '{name}' lists a use by removed {node.label()}"
            elif i >= len(node.inputs) or node.inputs[i] is not v:
                yield f"value '{name}' lists a stale use by {node.label()} input {i}"


def _check_core(n: Node):
    from refold.ir.ops import CORE_OPS

    schema = CORE_OPS.get(n.op)
    if schema is None:
        yield f"{n.label()}: core.{n.op} is not a core op"
        return
    if not schema.arity_ok(len(n.inputs)):
        yield f"{n.label()}: core.{n.op} takes {schema.inputs}, got {len(n.inputs)} inputs"
    try:
        schema.resolve_attrs(n.attrs, f"{n.label()}: ")
    except Exception as e:
        yield str(e)
    if n.op in ("add", "sub", "mul", "div", "matmul", "concat"):
        dts = {v.dtype for v in n.inputs if v is not None and v.dtype is not None}
        if len(dts) > 1:
            yield f"{n.label()}: core.{n.op} mixes input types {sorted(d.name for d in dts)}"
