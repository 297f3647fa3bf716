"""Channel dependency groups: which slices of which tensors must be pruned together (DepGraph),
and whether removing them leaves the rest of the model exact (OTO's zero-invariant groups).

Every channel of every tracked tensor axis is a vertex; an op links the channels it couples
(conv: output channel o with weight row o and bias o; the input channel i with weight column i;
batch norm, elementwise ops, residual adds: channel c with channel c; concat: input channel c
with output channel offset + c; flatten into a linear: channel c with features c*HW .. c*HW+HW-1).
A connected component is one prunable *unit*; units whose tensors are the same form a *group*
(a conv's output channels, with its BN and the next conv's input columns).

    conv1 (W1 [8,3,3,3]) -> bn1 -> relu -> conv2 (W2 [16,8,3,3])
    group: 8 units; unit c = {W1[c], b1[c], bn1.{scale,bias,mean,var}[c], W2[:, c]}

A group is prunable when zeroing its slices makes its channels dead ends: none reaches a graph
output or input, none is normalised or averaged over, none feeds an op refold cannot reason
about (the reason is kept per group). Zeroing such a group's slices and physically removing them
give the same outputs.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict

import networkx as nx

from refold.ir.graph import Model, Node, Value
from refold.passes.analysis.channel_rules import couple, seed_axis
from refold.passes.base import Reason

Track = tuple  # (value name, axis)

@dataclasses.dataclass
class Group:
    """Channels pruned together: ``units`` of them; ``params`` maps a constant's name to its axis
    and, per unit, the indices that go with it; ``shapes`` are shape constants spelling the width
    (value name, position, elements per unit)."""

    index: int
    units: int
    params: dict[tuple[str, int], list[list[int]]]
    activations: list[Track]
    sources: list[str]
    shapes: list[tuple[str, int, list[int]]]
    why_not: Reason | None = None

    @property
    def prunable(self) -> bool:
        return self.why_not is None

    def to_dict(self) -> dict:
        return {"index": self.index, "channels": self.units, "sources": self.sources,
                "params": [[k, a] for k, a in self.params], "prunable": self.prunable,
                "why_not": None if self.why_not is None else str(self.why_not),
                "why_not_code": None if self.why_not is None else self.why_not.code}

    def describe(self) -> str:
        state = "prunable" if self.prunable else f"not prunable: {self.why_not}"
        members = ", ".join(f"{k}[axis {a}]" for k, a in self.params)
        return f"group {self.index}: {self.units} channels of {', '.join(self.sources) or '?'}; {members}; {state}"


class ChannelGraph:
    """The dependency groups of a model already raised to core ops.

    >>> cg = ChannelGraph(model)                       # doctest: +SKIP
    >>> [g.describe() for g in cg.groups if g.prunable]  # doctest: +SKIP
    """

    def __init__(self, model: Model):
        self.model = model
        self.graph = model.graph
        self.g = nx.Graph()
        self.sizes: dict[Track, int] = {}
        self.blocked: dict[Track, Reason] = {}
        self.shape_members: dict[Track, list[tuple[str, int, int]]] = defaultdict(list)
        self._values = {}
        for v in self.graph.inputs:
            self._values[v.name] = v
        for v in self.graph.initializers.values():
            self._values[v.name] = v
        for n in self.graph:
            for o in n.outputs:
                self._values[o.name] = o
        self._queue: list[tuple[Value, int]] = []
        self._concrete: dict[str, tuple] | None = None
        for n in self.graph:
            seed = seed_axis(n)
            if seed is not None:
                self._track(n.outputs[0], seed)
        while self._queue:
            v, axis = self._queue.pop()
            self._expand(v, axis)
        self.groups = self._groups()

    # -- building ------------------------------------------------------------------------------
    def _track(self, v: Value | None, axis: int) -> bool:
        if v is None:
            return False
        rank = len(v.shape) if v.shape is not None else None
        if rank is None or not -rank <= axis < rank:
            return False
        axis %= rank
        key = (v.name, axis)
        if key in self.sizes:
            return True
        size = v.shape[axis]
        if not isinstance(size, int) and axis > 0:  # a symbolic size a flatten made: as run
            size = (self.concrete(v) or (None,) * rank)[axis]
        if not isinstance(size, int) or size < 0:
            self.sizes[key] = 0
            self.blocked[key] = Reason(f"'{v.name}' axis {axis} has no static size", "unknown-size")
            return False
        self.sizes[key] = size
        self.g.add_nodes_from((v.name, axis, i) for i in range(size))
        self._queue.append((v, axis))
        return True

    def _block(self, v: Value, axis: int, why: str, code: str) -> None:
        self.blocked.setdefault((v.name, axis % len(v.shape)), Reason(why, code))

    def _link(self, a: Value, axis_a: int, b: Value | None, axis_b: int, pairs) -> None:
        """Couple channel i of (a, axis_a) with channel j of (b, axis_b) for each (i, j)."""
        if b is None:
            return
        if not self._track(b, axis_b):  # coupled with something that cannot be followed
            self._block(a, axis_a, f"coupled with axis {axis_b} of '{b.name}', which has no known size",
                        "unknown-size")
            return
        axis_a %= len(a.shape)
        axis_b %= len(b.shape)
        self.g.add_edges_from(((a.name, axis_a, int(i)), (b.name, axis_b, int(j))) for i, j in pairs)

    def _identity(self, a: Value, axis_a: int, b: Value | None, axis_b: int) -> None:
        if b is None or b.shape is None:
            return
        n = self.sizes.get((a.name, axis_a % len(a.shape)))
        if not n:
            return
        size = b.shape[axis_b % len(b.shape)]
        if not isinstance(size, int) and axis_b % len(b.shape) > 0:
            size = (self.concrete(b) or (None,) * len(b.shape))[axis_b % len(b.shape)]
        if not isinstance(size, int):
            self._block(a, axis_a, f"meets axis {axis_b} of '{b.name}', of unknown size", "unknown-size")
            return
        if size != n:
            return  # broadcast (size 1) or a mismatch: not coupled
        self._link(a, axis_a, b, axis_b, ((i, i) for i in range(n)))

    def _expand(self, v: Value, axis: int) -> None:
        if self.graph.is_output(v):
            self._block(v, axis, f"'{v.name}' is a graph output", "graph-output")
        if v.kind == "input" and v.const is None:
            self._block(v, axis, f"'{v.name}' is a graph input", "graph-input")
        p = v.producer
        if p is not None:
            self._rule(p, v, axis)
        for n, _ in list(v.uses()):
            self._rule(n, v, axis)

    def _rule(self, n: Node, v: Value, axis: int) -> None:
        if any(u is not None and u.shape is None for u in (*n.inputs, *n.outputs)):
            why = "a tensor of it has no known shape"
        else:
            why = couple(self, n, v, axis % len(v.shape))
        if why is not None:
            self._block(v, axis, f"{n.label()}: {why}", "no-rule")

    def concrete(self, v: Value) -> tuple | None:
        """``v``'s shape on the example inputs (a torch model's own, else probe inputs): what a
        symbolic dim is where a mapping needs numbers (a flatten into a linear)."""
        if self._concrete is None:
            self._concrete = {}
            try:
                import torch

                from refold.runtime.torch_runner import TorchRunner

                feeds = self.model.meta.get("torch.example_inputs")
                if feeds is None:
                    from refold.runtime.probe import probe_dims, probe_inputs

                    feeds = probe_inputs(self.model, dims=probe_dims(self.model))
                names = [o.name for n in self.graph for o in n.outputs]
                with torch.no_grad():
                    got = TorchRunner(self.model).run(feeds, capture=names)
                self._concrete = {k: tuple(t.shape) for k, t in got.items() if hasattr(t, "shape")}
            except Exception:  # no run possible: the mapping stays unknown
                pass
        return self._concrete.get(v.name)

    # -- groups --------------------------------------------------------------------------------
    def _groups(self) -> list[Group]:
        by_key: dict[tuple, list[set]] = defaultdict(list)
        for comp in nx.connected_components(self.g):
            key = tuple(sorted({(name, axis) for name, axis, _ in comp}))
            by_key[key].append(comp)
        groups = []
        for key, comps in sorted(by_key.items()):
            comps.sort(key=lambda c: min(i for _, _, i in c))
            params, acts = {}, []
            for name, axis in key:
                v = self._values.get(name)
                if v is not None and v.const is not None:
                    params[(name, axis)] = [sorted(i for n2, a2, i in c if n2 == name and a2 == axis) for c in comps]
                else:
                    acts.append((name, axis))
            sources = sorted({self._values[name].producer.name or name for name, _ in acts
                              if self._values.get(name) is not None and self._values[name].producer is not None
                              and seed_axis(self._values[name].producer) is not None
                              and self._values[name].producer.outputs[0].name == name})
            why = next((self.blocked[k] for k in key if k in self.blocked), None)
            if why is None and not params:
                why = Reason("no weights to slice", "no-weights")
            shapes, seen = [], set()
            for k in key:
                for target, pos, inner in self.shape_members.get(k, ()):
                    if (target, pos) not in seen:  # a reshape records its target from both sides
                        seen.add((target, pos))
                        shapes.append((target, pos, [inner * sum(1 for n2, a2, _ in c if (n2, a2) == k)
                                                     for c in comps]))
            groups.append(Group(len(groups), len(comps), params, acts, sources, shapes, why))
        return groups
