"""Value, Node and Graph: SSA values with one producer and an ordered use list.

Use lists change only through ``Node`` methods (``set_input``, ``replace_input``) and
``Value.replace_all_uses_with``; passes never edit a node's inputs behind the IR's back.

>>> g = Graph("g")
>>> x = g.add_input("x", DType.FLOAT, (1, 4))
>>> y = g.append(Node("Relu", [x])).outputs[0]
>>> g.outputs.append(y)
>>> [u[0].op for u in x.uses()], y.producer.op
(['Relu'], 'Relu')
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any, Iterable, Iterator, Sequence

from refold.errors import InvalidModelError
from refold.ir.dtypes import DType
from refold.ir.tensor import Tensor

Dim = "int | str | None"  # int: static, str: symbolic, None: unknown

ONNX_DOMAINS = ("", "ai.onnx")
CORE = "core"


class Value:
    """An SSA value: produced by one node output, a graph input, or a constant."""

    __slots__ = ("name", "dtype", "shape", "producer", "index", "_uses", "const", "kind", "meta")

    def __init__(self, name: str = "", dtype: DType | None = None, shape: tuple | None = None,
                 *, const: Tensor | None = None, kind: str = "intermediate"):
        self.name = name
        self.dtype = DType(dtype) if dtype is not None else None
        self.shape = tuple(shape) if shape is not None else None
        self.producer: Node | None = None
        self.index = 0
        self._uses: dict[tuple[Node, int], None] = {}
        self.const = const
        self.kind = kind
        self.meta: dict[str, Any] = {}
        if const is not None:
            self.dtype = const.dtype if dtype is None else self.dtype
            self.shape = const.shape if shape is None else self.shape

    def uses(self) -> list[tuple["Node", int]]:
        """(node, input index) pairs that read this value, in the order they were made."""
        return list(self._uses)

    @property
    def users(self) -> list["Node"]:
        return list(dict.fromkeys(n for n, _ in self._uses))

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def replace_all_uses_with(self, new: "Value") -> None:
        """Point every node input that reads ``self`` at ``new`` (graph outputs: see Graph.substitute)."""
        for node, i in self.uses():
            node.set_input(i, new)

    def type_str(self) -> str:
        if self.dtype is None:
            return "?"
        if self.shape is None:
            return f"{self.dtype.short}[?]"
        return f"{self.dtype.short}[{','.join('?' if d is None else str(d) for d in self.shape)}]"

    def __repr__(self) -> str:
        return f"Value(%{self.name}: {self.type_str()})"


class Node:
    """One operation. ``op`` in ``domain`` (``""`` is ONNX, ``"core"`` is refold's core dialect).

    ``inputs`` holds Values or ``None`` for an omitted optional input; ``outputs`` are created with
    the node. ``attrs`` maps names to Python values (a ``Graph`` for subgraphs); ``meta`` holds
    provenance and anything a frontend wants to carry (doc strings, stack traces).
    """

    __slots__ = ("op", "domain", "name", "_inputs", "outputs", "attrs", "attr_types", "meta",
                 "graph", "_prev", "_next", "overload")

    def __init__(self, op: str, inputs: Sequence[Value | None] = (), attrs: dict | None = None, *,
                 domain: str = "", name: str = "", num_outputs: int = 1,
                 outputs: Sequence[Value | str] | None = None, meta: dict | None = None,
                 overload: str = ""):
        self.op = op
        self.domain = domain
        self.overload = overload
        self.name = name
        self._inputs: list[Value | None] = []
        self.attrs: dict[str, Any] = dict(attrs) if attrs else {}
        self.attr_types: dict[str, int] = {}
        self.meta: dict[str, Any] = dict(meta) if meta else {}
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        for v in inputs:
            self._append_input(v)
        if outputs is None:
            outputs = [""] * num_outputs
        self.outputs: list[Value] = []
        for i, o in enumerate(outputs):
            v = o if isinstance(o, Value) else Value(o)
            if v.producer is not None:
                raise ValueError(f"{v.name} already has a producer")
            v.producer, v.index = self, i
            self.outputs.append(v)
        if self.attrs:
            for g in self.subgraphs():
                g.parent = self

    # -- inputs ---------------------------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    def _append_input(self, v: Value | None) -> None:
        i = len(self._inputs)
        self._inputs.append(v)
        if v is not None:
            v._uses[(self, i)] = None

    def set_input(self, i: int, v: Value | None) -> None:
        """Replace input ``i``, keeping both values' use lists right."""
        if i == len(self._inputs):
            self._append_input(v)
            return
        old = self._inputs[i]
        if old is v:
            return
        if old is not None:
            del old._uses[(self, i)]
        self._inputs[i] = v
        if v is not None:
            v._uses[(self, i)] = None

    def replace_input(self, old: Value, new: Value | None) -> None:
        for i, v in enumerate(self._inputs):
            if v is old:
                self.set_input(i, new)

    def drop_inputs(self) -> None:
        """Unlink every input (used when a node leaves the graph)."""
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.pop((self, i), None)
        self._inputs = []

    # -- identity -------------------------------------------------------------------------------
    @property
    def dialect(self) -> str:
        return "onnx" if self.domain in ONNX_DOMAINS else self.domain

    @property
    def qualified_op(self) -> str:
        return f"{self.dialect}.{self.op}" + (f".{self.overload}" if self.overload else "")

    def is_op(self, op: str, domain: str | None = None) -> bool:
        if self.op != op:
            return False
        if domain is None:
            return True
        return self.dialect == ("onnx" if domain in ONNX_DOMAINS else domain)

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"{self.label()}: has {len(self.outputs)} outputs, not 1")
        return self.outputs[0]

    def subgraphs(self) -> list["Graph"]:
        out = []
        for v in self.attrs.values():
            if isinstance(v, Graph):
                out.append(v)
            elif isinstance(v, list) and v and isinstance(v[0], Graph):
                out.extend(v)
        return out

    def label(self) -> str:
        """How errors name this node: its name if it has one, else op and first output."""
        if self.name:
            return f"node '{self.name}' ({self.op})"
        first = self.outputs[0].name if self.outputs else "?"
        return f"{self.op} node producing '{first}'"

    def __repr__(self) -> str:
        return f"Node({self.qualified_op}, name={self.name!r})"


def const_ints(v: "Value | None") -> list[int] | None:
    """The integers a constant holds, flattened; None when ``v`` is absent or not constant."""
    if v is None or v.const is None:
        return None
    return [int(x) for x in v.const.numpy().reshape(-1)]


class Graph:
    """Inputs, constants, topologically ordered nodes and outputs; subgraphs hang off nodes.

    The node order is a doubly linked list, so inserting or removing is O(1) at any point.
    """

    def __init__(self, name: str = "", *, parent: Node | None = None):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.parent = parent
        self.meta: dict[str, Any] = {}
        self.doc_string = ""
        self._head: Node | None = None
        self._tail: Node | None = None
        self._len = 0
        self._names: set[str] | None = set()
        self._counter = itertools.count()

    # -- scope ---------------------------------------------------------------------------------
    @property
    def root(self) -> "Graph":
        g = self
        while g.parent is not None and g.parent.graph is not None:
            g = g.parent.graph
        return g

    # Node and Value creation are the hot path of importing large graphs: keep them lean.

    def unique_name(self, prefix: str) -> str:
        """A value or node name not used anywhere in the model (subgraphs included)."""
        root = self.root
        names = root._names
        while True:
            name = f"{prefix}__{next(root._counter)}"
            if name not in names:
                names.add(name)
                return name

    def claim_name(self, name: str) -> None:
        self.root._names.add(name)

    # -- construction --------------------------------------------------------------------------
    def add_input(self, name: str, dtype: DType | None = None, shape: tuple | None = None) -> Value:
        v = Value(name, dtype, shape, kind="input")
        self.claim_name(name)
        self.inputs.append(v)
        return v

    def add_const(self, tensor: Tensor | Any, name: str | None = None, *, prefix: str = "const",
                  kind: str = "const") -> Value:
        """Register a constant value owned by this graph; a fresh unique name unless given."""
        if not isinstance(tensor, Tensor):
            import numpy as np

            tensor = Tensor.from_array(np.asarray(tensor))
        if name is None:
            name = self.unique_name(prefix)
        elif name in self.initializers:
            raise InvalidModelError(f"constant '{name}' defined twice in graph '{self.name}'")
        self.claim_name(name)
        v = Value(name, const=tensor, kind=kind)
        self.initializers[name] = v
        return v

    def is_output(self, v: Value) -> bool:
        return any(o is v for o in self.outputs)

    def release_const(self, v: Value) -> bool:
        """Drop a plain constant (not a parameter, buffer or input) that nothing reads any more."""
        if v.kind == "const" and not v._uses and self.initializers.get(v.name) is v and not self.is_output(v):
            self.remove_const(v)
            return True
        return False

    def remove_const(self, v: Value) -> None:
        if v._uses:
            raise ValueError(f"constant '{v.name}' still has users")
        self.initializers.pop(v.name, None)

    def _name_outputs(self, node: Node) -> None:
        names = self.root._names
        for v in node.outputs:
            if v.kind == "omitted":
                continue
            if not v.name:
                v.name = self.unique_name(node.op.lower())
            else:
                names.add(v.name)

    def _link(self, node: Node, prev: Node | None, nxt: Node | None) -> None:
        if node.graph is not None:
            raise ValueError(f"{node.label()} already belongs to a graph")
        node.graph = self
        node._prev, node._next = prev, nxt
        if prev is None:
            self._head = node
        else:
            prev._next = node
        if nxt is None:
            self._tail = node
        else:
            nxt._prev = node
        self._len += 1
        self._name_outputs(node)
        if not node.attrs:
            return
        root = self.root
        for g in node.subgraphs():
            g.parent = node
            for sg in g.all_graphs():
                if sg._names is not root._names:
                    root._names |= sg._names
                    sg._names, sg._counter = root._names, root._counter

    def append(self, node: Node) -> Node:
        self._link(node, self._tail, None)
        return node

    def insert_before(self, anchor: Node, nodes: Node | Iterable[Node]) -> None:
        for n in ([nodes] if isinstance(nodes, Node) else list(nodes)):
            self._link(n, anchor._prev, anchor)

    def insert_after(self, anchor: Node, nodes: Node | Iterable[Node]) -> None:
        for n in reversed([nodes] if isinstance(nodes, Node) else list(nodes)):
            self._link(n, anchor, anchor._next)

    def remove(self, node: Node, *, force: bool = False) -> None:
        """Unlink ``node``; its outputs must be unused unless ``force``."""
        if node.graph is not self:
            raise ValueError(f"{node.label()} is not in graph '{self.name}'")
        if not force:
            outs = {id(o) for o in self.outputs}
            for v in node.outputs:
                if v._uses or id(v) in outs:
                    raise ValueError(f"cannot remove {node.label()}: output '{v.name}' is still used")
        node.drop_inputs()
        if node._prev is None:
            self._head = node._next
        else:
            node._prev._next = node._next
        if node._next is None:
            self._tail = node._prev
        else:
            node._next._prev = node._prev
        node._prev = node._next = None
        node.graph = None
        self._len -= 1

    # -- traversal -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        """Nodes in order; a snapshot, so the graph may change during the loop."""
        return iter(self.nodes)

    @property
    def nodes(self) -> list[Node]:
        out, n = [], self._head
        while n is not None:
            out.append(n)
            n = n._next
        return out

    def __len__(self) -> int:
        return self._len

    def all_nodes(self) -> Iterator[Node]:
        """Every node here and in nested subgraphs, depth first, in order."""
        for n in self.nodes:
            yield n
            for g in n.subgraphs():
                yield from g.all_nodes()

    def all_graphs(self) -> Iterator["Graph"]:
        yield self
        for n in self.nodes:
            for g in n.subgraphs():
                yield from g.all_graphs()

    # -- surgery -------------------------------------------------------------------------------
    def substitute(self, old: Value, new: Value) -> None:
        """Make everything that reads ``old`` read ``new``, graph outputs included.

        A graph output keeps its name: when ``old`` is an output, ``new`` takes over the name if
        it is a fresh intermediate, otherwise an Identity carries the value under the old name.
        """
        old.replace_all_uses_with(new)
        if not self.is_output(old):
            return
        fresh = (new.producer is not None and new.producer.graph is self and new.kind ==
                 "intermediate" and not self.is_output(new))
        if fresh:
            old_name = old.name
            old.name = self.unique_name(old_name + "_replaced")
            new.name = old_name
            new.meta.setdefault("renamed_to_output", True)
            for i, o in enumerate(self.outputs):
                if o is old:
                    self.outputs[i] = new
            return
        old_name = old.name
        old.name = self.unique_name(old_name + "_replaced")
        ident = Node("Identity", [new], outputs=[Value(old_name, new.dtype, new.shape)],
                     name=self.unique_name("Identity"))
        if new.producer is not None and new.producer.graph is self:
            self.insert_after(new.producer, ident)
        else:
            if self._head is None:
                self.append(ident)
            else:
                self.insert_before(self._head, ident)
        for i, o in enumerate(self.outputs):
            if o is old:
                self.outputs[i] = ident.outputs[0]

    def replace_op(self, node: Node, op: str, inputs: Sequence[Value | None], attrs: dict, *,
                   domain: str = "", meta: dict | None = None) -> Node:
        """Swap ``node`` for a new node that takes over its output Values (names, types, uses)."""
        new = Node(op, inputs, attrs, domain=domain, name=node.name, outputs=[],
                   meta={**node.meta, **(meta or {})})
        new.outputs = node.outputs
        for v in new.outputs:
            v.producer = new
        node.outputs = []
        self.insert_before(node, new)
        self.remove(node, force=True)
        return new

    def sort(self) -> bool:
        """Topologically sort nodes, keeping the current order where it is already valid.

        Returns True if the order changed. A cycle raises, naming the nodes in it.
        """
        nodes = self.nodes
        pos = {n: i for i, n in enumerate(nodes)}
        indeg = {n: 0 for n in nodes}
        succ: dict[Node, list[Node]] = {n: [] for n in nodes}
        for n in nodes:
            for dep in _node_deps(n, self):
                if dep in pos and dep is not n:
                    indeg[n] += 1
                    succ[dep].append(n)
                elif dep is n:
                    raise InvalidModelError(f"graph '{self.name}': {n.label()} reads its own output")
        heap = [pos[n] for n in nodes if indeg[n] == 0]
        heapq.heapify(heap)
        order = []
        while heap:
            n = nodes[heapq.heappop(heap)]
            order.append(n)
            for s in succ[n]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    heapq.heappush(heap, pos[s])
        if len(order) != len(nodes):
            import networkx as nx

            rest = [n for n in nodes if indeg[n] > 0]
            dg = nx.DiGraph()
            for n in rest:
                for s in succ[n]:
                    dg.add_edge(pos[n], pos[s])
            cyc = [nodes[a] for a, _ in nx.find_cycle(dg)]
            names = " -> ".join(n.name or n.outputs[0].name for n in cyc)
            raise InvalidModelError(f"graph '{self.name}' has a cycle: {names}")
        if order == nodes:
            return False
        self._head = self._tail = None
        for n in order:
            n._prev = n._next = None
        for n in order:
            n._prev = self._tail
            if self._tail is None:
                self._head = n
            else:
                self._tail._next = n
            self._tail = n
        return True

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {self._len} nodes)"


def _node_deps(node: Node, graph: Graph) -> Iterator[Node]:
    """Producers (in ``graph``) of the values a node reads, including reads from its subgraphs."""
    for v in node.inputs:
        if v is not None and v.producer is not None:
            yield _hoist(v.producer, graph)
    for g in node.subgraphs():
        for sub in g.all_nodes():
            for v in sub.inputs:
                if v is not None and v.producer is not None:
                    p = _hoist(v.producer, graph)
                    if p is not None and p is not node:  # not a value made inside the subgraph
                        yield p


def _hoist(node: Node, graph: Graph) -> Node | None:
    """The ancestor of ``node`` that lives directly in ``graph`` (None if outside it)."""
    while node is not None and node.graph is not graph:
        g = node.graph
        node = g.parent if g is not None else None
    return node


class Model:
    """A graph plus what the file around it carries (opsets, metadata, functions)."""

    def __init__(self, graph: Graph, *, opset_imports: dict[str, int] | None = None,
                 ir_version: int = 10, source: str = "onnx"):
        self.graph = graph
        self.opset_imports: dict[str, int] = dict(opset_imports or {"": 18})
        self.ir_version = ir_version
        self.producer_name = "refold"
        self.producer_version = ""
        self.domain = ""
        self.model_version = 0
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.functions: list[Any] = []  # FunctionProtos, kept verbatim
        self.extra: dict[str, Any] = {}  # proto fields refold does not model, kept verbatim
        self.source = source
        self.base_dir: str | None = None
        self.meta: dict[str, Any] = {}

    @property
    def opset(self) -> int:
        return self.opset_imports.get("", self.opset_imports.get("ai.onnx", 0))

    def parameter_count(self) -> int:
        return sum(v.const.numel for g in self.graph.all_graphs() for v in g.initializers.values()
                   if v.const is not None and v.dtype is not None and v.dtype.is_float)

    def weight_bytes(self) -> int:
        """Bytes of every constant, subgraphs included (what an engine must hold)."""
        return sum(v.const.nbytes for g in self.graph.all_graphs() for v in g.initializers.values()
                   if v.const is not None)

    def __repr__(self) -> str:
        return f"Model({self.graph.name!r}, opset={self.opset_imports}, {len(self.graph)} nodes)"
