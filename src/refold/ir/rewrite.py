"""Declarative rewrite rules and a fixed-point driver.

A rule is a pattern written with the same builder syntax as the graph it matches, an optional
``why_not`` that returns the reason it does not apply (or None), and a ``rewrite`` that returns
the new values for the root's outputs, or None for "no match"::

    x, w, b = Var("x"), Const("w"), Const("b")
    Rule("add-zero", op.Add(x, Const("zero")), rewrite=..., why_not=...)

Matching is structural first (memoised per pattern node and value, so nested commutative ops do not
explode), then binds variables; a repeated variable must bind the same value.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from refold.errors import PassFailedError
from refold.ir.graph import Graph, Node, Value
from refold.ir.tensor import Tensor

COMMUTATIVE = {("onnx", "Add"), ("onnx", "Mul"), ("core", "add"), ("core", "mul"),
               ("onnx", "Max"), ("onnx", "Min"), ("onnx", "Sum")}


class Pattern:
    """Base of pattern terms."""


@dataclasses.dataclass(eq=False)
class Var(Pattern):
    """Matches any value (``None`` for an omitted optional input only if ``optional``)."""

    name: str
    optional: bool = False


@dataclasses.dataclass(eq=False)
class Const(Var):
    """Matches a value with a constant payload."""


@dataclasses.dataclass(eq=False)
class OpPattern(Pattern):
    op: str
    domain: str
    inputs: tuple
    attrs: dict
    name: str | None = None
    output: int = 0
    commutative: bool = False
    partial_inputs: bool = False  # extra trailing inputs on the node are allowed


class _OpBuilder:
    """``op.Conv(x, w)`` / ``op.core.conv(x, w)`` build OpPatterns; ``_name`` binds the node."""

    def __init__(self, domain: str = "onnx"):
        self._domain = domain

    def __getattr__(self, name: str):
        if name[0].islower() and self._domain == "onnx" and name in ("core", "aten", "com_microsoft"):
            return _OpBuilder(name.replace("_", "."))

        def make(*inputs, _name: str | None = None, _output: int = 0, _partial: bool = False,
                 **attrs) -> OpPattern:
            comm = (self._domain, name) in COMMUTATIVE and len(inputs) == 2
            return OpPattern(name, self._domain, tuple(inputs), attrs, _name, _output, comm, _partial)

        return make


op = _OpBuilder()


@dataclasses.dataclass
class Match:
    """What a pattern bound: ``m["x"]`` is a Value, ``m.node("bn")`` a Node."""

    root: Node
    values: dict[str, Value | None]
    nodes: dict[str, Node]
    matched: list[Node]

    def __getitem__(self, name: str) -> Value | None:
        return self.values[name]

    def get(self, name: str) -> Value | None:
        return self.values.get(name)

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def const(self, name: str) -> np.ndarray:
        v = self.values[name]
        return v.const.numpy()


def _dialect(domain: str) -> str:
    return "onnx" if domain in ("", "ai.onnx") else domain


class Matcher:
    def __init__(self, pattern: OpPattern):
        self.pattern = pattern
        self._memo: dict[tuple[int, int], bool] = {}
        self.calls = 0

    def structural(self, p: Pattern, v: Value | None) -> bool:
        """Could ``v`` match ``p`` ignoring variable equalities? Memoised."""
        self.calls += 1
        if isinstance(p, Var):
            if v is None:
                return p.optional
            return not isinstance(p, Const) or v.const is not None
        if v is None or v.producer is None:
            return False
        key = (id(p), id(v))
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        n = v.producer
        ok = (n.op == p.op and n.dialect == _dialect(p.domain) and v.index == p.output
              and _attrs_ok(n, p.attrs) and self._arity_ok(p, n))
        if ok:
            ins = n.inputs
            if p.commutative:
                ok = ((self.structural(p.inputs[0], ins[0]) and self.structural(p.inputs[1], ins[1]))
                      or (self.structural(p.inputs[0], ins[1]) and self.structural(p.inputs[1], ins[0])))
            else:
                ok = all(self.structural(pi, ins[i] if i < len(ins) else None)
                         for i, pi in enumerate(p.inputs))
        self._memo[key] = ok
        return ok

    @staticmethod
    def _arity_ok(p: OpPattern, n: Node) -> bool:
        if p.partial_inputs:
            return len(n.inputs) >= sum(1 for x in p.inputs if not (isinstance(x, Var) and x.optional))
        trailing = n.inputs[len(p.inputs):]
        return all(t is None for t in trailing)

    def bind(self, p: Pattern, v: Value | None, env: dict, nodes: dict, seen: list) -> Iterator[None]:
        """Yield once per consistent binding (backtracking over commutative orders)."""
        if isinstance(p, Var):
            if p.name in env:
                if env[p.name] is v:
                    yield
                return
            env[p.name] = v
            yield
            del env[p.name]
            return
        if not self.structural(p, v):
            return
        n = v.producer
        added = False
        if p.name is not None:
            if p.name in nodes and nodes[p.name] is not n:
                return
            added = p.name not in nodes
            nodes[p.name] = n
        seen.append(n)
        ins = list(n.inputs)
        orders = [ins]
        if p.commutative:
            swapped = [ins[1], ins[0]]
            if (self.structural(p.inputs[0], ins[1]) and self.structural(p.inputs[1], ins[0])
                    and not (self.structural(p.inputs[0], ins[0])
                             and self.structural(p.inputs[1], ins[1]))):
                orders = [swapped]
            elif self.structural(p.inputs[0], ins[1]) and self.structural(p.inputs[1], ins[0]):
                orders = [ins, swapped]
        for order in orders:
            yield from self._bind_all(p.inputs, order, 0, env, nodes, seen)
        seen.pop()
        if added:
            del nodes[p.name]

    def _bind_all(self, ps, vs, i, env, nodes, seen):
        if i == len(ps):
            yield
            return
        for _ in self.bind(ps[i], vs[i] if i < len(vs) else None, env, nodes, seen):
            yield from self._bind_all(ps, vs, i + 1, env, nodes, seen)

    def match(self, node: Node) -> Match | None:
        p = self.pattern
        if node.op != p.op or node.dialect != _dialect(p.domain) or len(node.outputs) <= p.output:
            return None
        root_value = node.outputs[p.output]
        for _ in self.bind(p, root_value, env := {}, nodes := {}, seen := []):
            return Match(node, dict(env), dict(nodes), list(dict.fromkeys(seen)))
        return None


def _attrs_ok(node: Node, want: dict) -> bool:
    for k, expected in want.items():
        got = node.attrs.get(k)
        if callable(expected):
            if not expected(got):
                return False
        elif got != expected:
            return False
    return True


class _NodeMaker:
    """``b.op.core.conv(x, w, strides=[1, 1])`` / ``b.op.Conv(x, w)``: replacements are written in
    the pattern syntax (``op.core.conv(x, w)``), and create nodes. ``_outputs=n`` for several
    outputs, ``_name=`` for a node name. ``b.op("core.conv", x, w)`` still works."""

    def __init__(self, builder: "Builder", domain: str = "onnx"):
        self._builder, self._domain = builder, domain

    def __getattr__(self, name: str):
        if self._domain == "onnx" and name in ("core", "aten", "com_microsoft"):
            return _NodeMaker(self._builder, name.replace("_", "."))
        domain = "" if self._domain == "onnx" else self._domain

        def make(*inputs, _outputs: int = 1, _name: str | None = None, **attrs):
            return self._builder.make_node(name, *inputs, domain=domain, num_outputs=_outputs,
                                           name=_name, **attrs)

        return make

    def __call__(self, op: str, *inputs, **kwargs):
        return self._builder.make_node(op, *inputs, **kwargs)


class Builder:
    """Creates nodes and constants for a rewrite, inserted before ``anchor``; tracks what it made.

    >>> # rewrite=lambda b, m: b.op.core.mul(m["x"], b.const(np.float32(2)))   # x+x -> x*2
    """

    def __init__(self, graph: Graph, anchor: Node | None):
        self.graph = graph
        self.anchor = anchor
        self.created: list[Node] = []
        self.consts: list[Value] = []
        self.reason: str | None = None  # a rewrite that returns None may say why here
        self.op = _NodeMaker(self)

    def make_node(self, op: str, *inputs: Value | None, domain: str = "", num_outputs: int = 1,
                  name: str | None = None, **attrs) -> Value | list[Value]:
        if "." in op:
            domain, op = op.split(".", 1)
            domain = "" if domain == "onnx" else domain
        node = Node(op, list(inputs), attrs, domain=domain, num_outputs=num_outputs,
                    name=name or self.graph.unique_name(op))
        if self.anchor is not None:
            self.graph.insert_before(self.anchor, node)
        else:
            self.graph.append(node)
        self.created.append(node)
        if domain == "core":
            _infer_core_types(node)
        return node.outputs[0] if num_outputs == 1 else list(node.outputs)

    def const(self, array: np.ndarray | Tensor, prefix: str = "const") -> Value:
        v = self.graph.add_const(array if isinstance(array, Tensor) else Tensor.from_array(np.asarray(array)),
                                 prefix=prefix)
        self.consts.append(v)
        return v

    def rollback(self) -> None:
        for n in reversed(self.created):
            self.graph.remove(n, force=True)
        for v in self.consts:
            if not v._uses:
                self.graph.remove_const(v)
        self.created, self.consts = [], []


def _infer_core_types(node: Node) -> None:
    """Give a new core node's outputs their types where the inputs' are known.

    The registry infers with torch meta tensors. Graphs from ONNX do not import torch for this
    (3 s here); the infer-shapes pass types them with onnx's inference when needed.
    """
    import sys

    if "torch" not in sys.modules:
        return
    from refold.errors import UnsupportedError
    from refold.ir.ops import infer_types

    try:
        types = infer_types(node)
    except UnsupportedError:
        return
    for v, (dtype, shape) in zip(node.outputs, types or []):
        v.dtype, v.shape = dtype, shape


@dataclasses.dataclass(eq=False)
class Rule:
    """``# algebra`` belongs in the docstring of ``rewrite``; see module docs."""

    name: str
    pattern: OpPattern
    rewrite: Callable[[Builder, Match], list[Value] | Value | None]
    why_not: Callable[[Match], str | None] | None = None


@dataclasses.dataclass
class RewriteStats:
    applied: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.applied.values())


def apply_rules(graph: Graph, rules: list[Rule], *, max_rounds: int = 50,
                stats: RewriteStats | None = None) -> RewriteStats:
    """Apply ``rules`` to a fixed point, subgraphs included; raise if it does not converge."""
    stats = stats or RewriteStats()
    matchers = [(r, Matcher(r.pattern)) for r in rules]
    for g in list(graph.all_graphs()):
        _fixed_point(g, matchers, max_rounds, stats)
    return stats


def _fixed_point(graph: Graph, matchers, max_rounds: int, stats: RewriteStats) -> None:
    for round_ in range(max_rounds):
        fired: dict[str, int] = {}
        for _, m in matchers:
            m._memo.clear()
        for node in graph:
            if node.graph is not graph:
                continue
            for rule, matcher in matchers:
                m = matcher.match(node)
                if m is None:
                    continue
                if rule.why_not is not None:
                    reason = rule.why_not(m)
                    if reason:
                        stats.skipped.setdefault(rule.name, {})[node.name or node.outputs[0].name] = reason
                        continue
                b = Builder(graph, node)
                new = rule.rewrite(b, m)
                if new is None:
                    b.rollback()
                    if b.reason:
                        stats.skipped.setdefault(rule.name, {})[node.name or node.outputs[0].name] = b.reason
                    continue
                _commit(graph, rule, m, b, [new] if isinstance(new, Value) else list(new))
                for mm in matchers:
                    mm[1]._memo.clear()
                stats.applied[rule.name] = stats.applied.get(rule.name, 0) + 1
                fired[rule.name] = fired.get(rule.name, 0) + 1
                break
        if not fired:
            return
    worst = max(fired, key=fired.get)
    raise PassFailedError(f"graph '{graph.name}': rewrite rules did not converge after {max_rounds} "
                          f"rounds; rule '{worst}' keeps firing ({fired[worst]} times in the last round)")


def _commit(graph: Graph, rule: Rule, m: Match, b: Builder, new: list[Value]) -> None:
    root = m.root
    if len(new) != len(root.outputs):
        raise PassFailedError(f"rule '{rule.name}' returned {len(new)} values for {root.label()} "
                              f"with {len(root.outputs)} outputs")
    sources = [n.name or n.outputs[0].name for n in m.matched]
    for n in b.created:
        n.meta["provenance"] = {"rule": rule.name, "sources": sources}
    for old, nv in zip(root.outputs, new):
        if nv is not None and nv is not old:
            if nv.dtype is None:
                nv.dtype = old.dtype
            if nv.shape is None:
                nv.shape = old.shape
            graph.substitute(old, nv)
    remove_dead(graph, m.matched)


def remove_dead(graph: Graph, nodes: list[Node]) -> None:
    """Remove those of ``nodes`` (and constants they alone read) that nothing uses any more."""
    outs = {id(o) for o in graph.outputs}
    changed = True
    while changed:
        changed = False
        for n in nodes:
            if n.graph is graph and not any(v._uses or id(v) in outs for v in n.outputs):
                ins = [v for v in n.inputs if v is not None]
                graph.remove(n)
                for v in ins:
                    graph.release_const(v)
                changed = True
