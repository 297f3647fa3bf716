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
import numpy as np

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
    heads: bool = False  # its channels pass through attention: each unit is a head (or a KV group)

    @property
    def prunable(self) -> bool:
        return self.why_not is None

    def to_dict(self) -> dict:
        return {"index": self.index, "channels": self.units, "sources": self.sources,
                "params": [[k, a] for k, a in self.params], "prunable": self.prunable,
                "why_not": None if self.why_not is None else str(self.why_not),
                "why_not_code": None if self.why_not is None else self.why_not.code, "heads": self.heads}

    def describe(self) -> str:
        state = ("prunable" if self.prunable else f"not prunable: {self.why_not}") + ("; attention heads" if self.heads else "")
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
        # (target, position, channels per unit's channel, divisor[, (lo, hi): count only those channels])
        self.shape_members: dict[Track, list[tuple]] = defaultdict(list)
        self._values = {}
        for v in self.graph.inputs:
            self._values[v.name] = v
        for v in self.graph.initializers.values():
            self._values[v.name] = v
        for n in self.graph:
            for o in n.outputs:
                self._values[o.name] = o
        self._queue: list[tuple[Value, int]] = []
        self._tracks_of: dict[str, list] = defaultdict(list)
        self.attention: set = set()  # tracks that pass through attention (a group of them is heads)
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
    # A tracked axis is an int, or a tuple of axes whose channels are one flat index (row-major in
    # the tuple's order): the hidden size split into (heads, head_dim) is (2, 3) of [B, T, H, dh].
    @staticmethod
    def _norm(v: Value, axis) -> int | tuple | None:
        rank = len(v.shape) if v.shape is not None else None
        if rank is None:
            return None
        axes = axis if isinstance(axis, tuple) else (axis,)
        if any(not -rank <= a < rank for a in axes):
            return None
        axes = tuple(a % rank for a in axes)
        return axes[0] if len(axes) == 1 else axes

    def dims(self, v: Value, axis) -> list[int] | None:
        """The sizes of the components of a tracked axis (symbolic ones as run), or None."""
        out = []
        for a in (axis if isinstance(axis, tuple) else (axis,)):
            size = v.shape[a]
            if not isinstance(size, int) and a > 0:  # a symbolic size a flatten made: as run
                size = (self.concrete(v) or (None,) * len(v.shape))[a]
            if not isinstance(size, int) or size < 0:
                return None
            out.append(size)
        return out

    def _track(self, v: Value | None, axis) -> bool:
        if v is None:
            return False
        axis = self._norm(v, axis)
        if axis is None:
            return False
        key = (v.name, axis)
        if key in self.sizes:
            return bool(self.sizes[key])
        dims = self.dims(v, axis)
        if dims is None:
            self.sizes[key] = 0
            self.blocked[key] = Reason(f"'{v.name}' axis {axis} has no static size", "unknown-size")
            return False
        self.sizes[key] = int(np.prod(dims, dtype=np.int64))
        self.g.add_nodes_from((v.name, axis, i) for i in range(self.sizes[key]))
        for other in self._tracks_of[v.name]:
            self._overlap(v, axis, other)
        self._tracks_of[v.name].append(axis)
        self._queue.append((v, axis))
        return True

    def _overlap(self, v: Value, a, b) -> None:
        """Two tracks of one tensor sharing an axis: elements that agree on it are one channel
        (head h of [B, H, T, dh] tracked as (1,) and as (1, 3))."""
        ca, cb = (a if isinstance(a, tuple) else (a,)), (b if isinstance(b, tuple) else (b,))
        shared = [c for c in ca if c in cb]
        if not shared:
            return
        da, db = self.dims(v, a), self.dims(v, b)
        for src, dst, cs, cd, ds, dd in ((a, b, ca, cb, da, db), (b, a, cb, ca, db, da)):
            idx = np.unravel_index(np.arange(int(np.prod(ds))), ds)
            target = [idx[cs.index(c)] if c in cs else np.zeros_like(idx[0]) for c in cd]
            flat = np.ravel_multi_index(target, dd)
            self.g.add_edges_from(((v.name, src, int(i)), (v.name, dst, int(j))) for i, j in enumerate(flat))

    def _block(self, v: Value, axis, why: str, code: str) -> None:
        self.blocked.setdefault((v.name, self._norm(v, axis)), Reason(why, code))

    def _link(self, a: Value, axis_a, b: Value | None, axis_b, pairs) -> None:
        """Couple channel i of (a, axis_a) with channel j of (b, axis_b) for each (i, j)."""
        if b is None:
            return
        if not self._track(b, axis_b):  # coupled with something that cannot be followed
            self._block(a, axis_a, f"coupled with axis {axis_b} of '{b.name}', which has no known size",
                        "unknown-size")
            return
        axis_a, axis_b = self._norm(a, axis_a), self._norm(b, axis_b)
        self.g.add_edges_from(((a.name, axis_a, int(i)), (b.name, axis_b, int(j))) for i, j in pairs)

    def _identity(self, a: Value, axis_a, b: Value | None, axis_b) -> None:
        if b is None or b.shape is None or self._norm(b, axis_b) is None:
            return
        n = self.sizes.get((a.name, self._norm(a, axis_a)))
        if not n:
            return
        dims = self.dims(b, self._norm(b, axis_b))
        if dims is None:
            self._block(a, axis_a, f"meets axis {axis_b} of '{b.name}', of unknown size", "unknown-size")
            return
        if int(np.prod(dims)) != n:
            return  # broadcast (size 1) or a mismatch: not coupled
        self._link(a, axis_a, b, axis_b, ((i, i) for i in range(n)))

    def project(self, a: Value, axis_a, b: Value | None, to: list) -> None:
        """Link (a, axis_a) to ``b`` component by component: ``to[k]`` is the axis of b that
        component k of a's axis lands on, or None where b has no such axis (a matmul's contracted
        dim seen from its output) or broadcasts it (size 1): elements differing only there meet
        in one channel of b."""
        if b is None or b.shape is None:
            return
        da = self.dims(a, axis_a)
        if da is None:
            return
        keep = []
        for k, ax in enumerate(to):
            if ax is None:
                continue
            if not -len(b.shape) <= ax < len(b.shape):
                continue
            size = (self.dims(b, ax % len(b.shape)) or [None])[0]
            if size == 1 and da[k] != 1:
                continue  # broadcast
            if size != da[k]:
                self._block(a, axis_a, f"meets axis {ax} of '{b.name}' with another size", "size-mismatch")
                return
            keep.append((k, ax % len(b.shape)))
        if not keep:
            return
        idx = np.unravel_index(np.arange(int(np.prod(da))), da)
        db = [da[k] for k, _ in keep]
        flat = np.ravel_multi_index([idx[k] for k, _ in keep], db)
        self._link(a, axis_a, b, tuple(ax for _, ax in keep), enumerate(flat.tolist()))

    def _expand(self, v: Value, axis) -> None:
        if self.graph.is_output(v):
            self._block(v, axis, f"'{v.name}' is a graph output", "graph-output")
        if v.kind == "input" and v.const is None:
            self._block(v, axis, f"'{v.name}' is a graph input", "graph-input")
        p = v.producer
        if p is not None:
            self._rule(p, v, axis)
        for n, _ in list(v.uses()):
            self._rule(n, v, axis)

    def _rule(self, n: Node, v: Value, axis) -> None:
        if n.op == "_assert_tensor_metadata":  # checks dtype / device, not sizes (those would refuse)
            kw = n.attrs.get("kwargs") or {}
            why = "asserts the tensor's size" if kw.get("size") is not None else None
        elif any(u is not None and u.shape is None and not _symbolic_scalar(u) for u in (*n.inputs, *n.outputs)):
            why = "a tensor of it has no known shape"
        else:
            why = couple(self, n, v, self._norm(v, axis))
        if why is not None:
            self._block(v, axis, f"{n.label()}: {why}", "no-rule")

    def concrete(self, v: Value) -> tuple | None:
        """``v``'s shape on the example inputs (a torch model's own, else probe inputs): what a
        symbolic dim is where a mapping needs numbers (a flatten into a linear)."""
        if self._concrete is None:
            from refold.runtime.torch_runner import example_shapes

            self._concrete = example_shapes(self.model)  # {} where no run is possible
        return self._concrete.get(v.name)

    # -- groups --------------------------------------------------------------------------------
    def _groups(self) -> list[Group]:
        by_key: dict[tuple, list[set]] = defaultdict(list)
        for comp in nx.connected_components(self.g):
            key = tuple(sorted({(name, axis) for name, axis, _ in comp}, key=_track_order))
            by_key[key].append(comp)
        groups = []
        for key, comps in sorted(by_key.items(), key=lambda kv: [_track_order(t) for t in kv[0]]):
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
                for target, pos, inner, den, *span in self.shape_members.get(k, ()):
                    if (target, pos) in seen:  # a reshape records its target from both sides
                        continue
                    seen.add((target, pos))
                    lo, hi = span[0] if span else (0, self.sizes[k])  # a slice bound counts the channels below it
                    per_unit = [inner * sum(1 for n2, a2, i in c if (n2, a2) == k and lo <= i < hi) for c in comps]
                    if any(x % den for x in per_unit) and why is None:
                        why = Reason(f"would remove part of a head: '{target}' spells the size at {pos} in whole "
                                     f"rows of {den}, and a unit holds part of one", "partial-head")
                    shapes.append((target, pos, [x // den for x in per_unit]))
            groups.append(Group(len(groups), len(comps), params, acts, sources, shapes, why,
                                heads=any(k in self.attention for k in key)))
        return groups


def _track_order(track: tuple) -> tuple:
    """Deterministic order of (name, axis) tracks, an axis an int or a tuple of ints."""
    name, axis = track
    return (name, axis if isinstance(axis, tuple) else (axis,))


def _symbolic_scalar(v: Value) -> bool:
    """A size torch.export computes at run time (``sym_size``, and Python arithmetic on such
    sizes: ``(h - 1) // 4 + 1``): an argument, not a tensor."""
    p = v.producer
    if p is None:
        return False
    if p.op in ("sym_size", "sym_numel", "sym_stride"):
        return True
    return p.domain == "torch.fn" and all(u is None or _symbolic_scalar(u) for u in p.inputs)
