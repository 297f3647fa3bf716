"""The residual-stream analysis: which values feed a LayerNorm through the stream, who writes
them, and what must change so every write is zero-mean (LayerNorm -> RMSNorm), or d-1 wide
(CRMSNorm). A view derived from the IR; the layernorm-to-rmsnorm pass acts on its plans.

``ResidualStream(graph).plan(ln, plan)`` walks a LayerNorm's input back through additions and
layout ops to the writers and fills ``plan`` (a ``StreamPlan``), or returns why it cannot.
"""
from __future__ import annotations

import dataclasses


from refold.ir.graph import CORE, Graph, Node, Value, const_ints
from refold.passes.analysis.stream_width import WidthTracer

_PASSTHROUGH_ATEN = {"clone", "contiguous", "alias", "detach"}
_SHAPED = {"reshape", "onnx.Expand", "aten.expand", "aten.view", "aten.reshape"}  # layout ops whose shape argument spells the width


@dataclasses.dataclass
class StreamPlan:
    values: dict[int, Value] = dataclasses.field(default_factory=dict)    # contents that change
    width: int | None = None                                               # CRMSNorm: d
    shape_edits: list = dataclasses.field(default_factory=list)            # (node, input, position)
    arg_edits: list = dataclasses.field(default_factory=list)              # (aten node, position)
    edits: dict[tuple[int, int], tuple[Node, int, int]] = dataclasses.field(default_factory=dict)
    axes: dict[int, int] = dataclasses.field(default_factory=dict)        # value id -> stream axis
    layout: dict[int, tuple[Node, int]] = dataclasses.field(default_factory=dict)  # reshapes/expands
    derived: dict[int, tuple[Value, int]] = dataclasses.field(default_factory=dict)  # transposed consts

    def merge(self, other: "StreamPlan") -> None:
        self.values.update(other.values)
        self.edits.update(other.edits)
        self.axes.update(other.axes)
        self.layout.update(other.layout)
        self.derived.update(other.derived)
        self.shape_edits += other.shape_edits
        self.arg_edits += other.arg_edits


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def _arg(node: Node, i: int, default=None):
    args = node.attrs.get("args", ())
    return args[i] if len(args) > i else default


class ResidualStream:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.outputs = {id(v) for v in graph.outputs}

    def center(self, v: Value, axis: int, plan: StreamPlan, depth: int = 0) -> str | None:
        """Plan edits making ``v`` zero-mean along ``axis``; the reason if that is impossible."""
        if depth > 2000:
            return "the stream is too deep to analyse"
        if v.rank is None:
            return f"'{v.name}' has unknown rank"
        axis %= v.rank
        if id(v) in plan.values:
            return None
        p = v.producer
        if p is None:
            return f"'{v.name}' is a graph input written straight into the stream"
        plan.values[id(v)] = v
        plan.axes[id(v)] = axis
        op = p.op if p.domain == CORE else f"{p.dialect}.{p.op}"
        # x - mean(x, axis): zero-mean by construction, nothing to change upstream
        if op == "sub" and self._is_centering(p, axis):
            return None
        if op in ("add", "sub"):
            for i in (0, 1):
                why = self.center_input(p, i, v, axis, plan, depth)
                if why:
                    return why
            return None
        if op in ("linear", "gemm", "matmul", "conv"):
            return self.writer(p, v, axis, plan)
        if op == "aten.embedding" or (op == "onnx.Gather" and p.attrs.get("axis", 0) == 0):
            table = p.inputs[0]
            if table.const is None or table.rank != 2 or axis != v.rank - 1:
                return f"{p.label()} looks up a non-constant table or not along its last axis"
            return self.edit(plan, p, 0, 1)  # E - mean_d E: every looked-up row is zero-mean
        mapped = self.passthrough(p, v, axis)
        if isinstance(mapped, list) and op in _SHAPED:
            plan.layout[id(p)] = (p, axis)
        if isinstance(mapped, list):  # layout ops: axes already in each input's coordinates
            for i, ax in mapped:
                why = self.center_operand(p, i, ax, plan, depth) if ax is not None else None
                if why:
                    return why
            return None
        if mapped is not None:
            return mapped
        if op == "layer_norm":
            return (f"it reads the output of LayerNorm '{p.name}' (Post-LN): that output, scaled by "
                    f"its gain and shifted by its bias, is not zero-mean")
        return f"{p.label()} ({p.qualified_op}) writes to the stream and is not linear in constants"

    def center_input(self, p: Node, i: int, out: Value, axis: int, plan: StreamPlan, depth: int) -> str | None:
        x = p.inputs[i]
        if x.rank is None:
            return f"'{x.name}' has unknown rank"
        ax = axis - (out.rank - x.rank)  # broadcasting aligns trailing axes
        if ax < 0 or (x.shape is not None and x.shape[ax] == 1 and out.shape is not None and out.shape[axis] != 1):
            return f"{p.label()} adds '{x.name}', which is broadcast along the normalized axis"
        return self.center_operand(p, i, ax, plan, depth)

    def center_operand(self, p: Node, i: int, ax: int, plan: StreamPlan, depth: int) -> str | None:
        """Input ``i`` of ``p`` must become zero-mean along its axis ``ax``."""
        x = p.inputs[i]
        if x.const is not None:
            return self.edit(plan, p, i, ax)
        return self.center(x, ax, plan, depth + 1)

    def edit(self, plan: StreamPlan, node: Node, i: int, axis: int) -> str | None:
        """Recentre constant input ``i`` of ``node`` along ``axis``; a constant that reaches ``node``
        through a transpose read by nothing else (exports with folding off) is edited at its source."""
        v = node.inputs[i]
        if v.const is None:
            t = v.producer
            if (t is not None and t.domain == CORE and t.op == "transpose" and len(v.uses()) == 1
                    and t.inputs[0].const is not None):
                perm = t.attrs.get("perm") or list(reversed(range(v.rank)))
                plan.derived[id(v)] = (v, axis)
                node, i, axis = t, 0, perm[axis]
            else:
                return f"{node.label()} has a non-constant input '{v.name}'"
        plan.edits[(id(node), i)] = (node, i, axis)
        return None

    def writer(self, p: Node, v: Value, axis: int, plan: StreamPlan) -> str | None:
        last = axis == v.rank - 1
        w = p.inputs[1]
        has = lambda k: len(p.inputs) > k and p.inputs[k] is not None  # noqa: E731
        if p.op == "conv":
            if axis != 1:
                return f"{p.label()}: the normalized axis is not the conv's channel axis"
            # conv(x, W - mean_o W, b - mean b): every output pixel's channel vector is zero-mean
            return self.edit(plan, p, 1, 0) or (self.edit(plan, p, 2, 0) if has(2) else None)
        if not last:
            return f"{p.label()}: the normalized axis is not its output features"
        if p.op == "linear":
            # x (W - mean_out W)^T + (b - mean b)
            return self.edit(plan, p, 1, 0) or (self.edit(plan, p, 2, p.inputs[2].rank - 1) if has(2) else None)
        if p.op == "gemm":
            return (self.edit(plan, p, 1, 0 if p.attrs.get("transB", 0) else 1)
                    or (self.edit(plan, p, 2, p.inputs[2].rank - 1) if has(2) else None))
        if w.rank != 2:
            return f"{p.label()}: batched matmul weight"
        return self.edit(plan, p, 1, 1)

    def passthrough(self, p: Node, v: Value, axis: int):
        """[(input index, its axis)] for layout ops that keep the axis whole; a reason; or None."""
        op = p.op if p.domain == CORE else f"{p.dialect}.{p.op}"
        if op in ("onnx.Identity",) or (p.dialect == "aten" and p.op in _PASSTHROUGH_ATEN):
            return [(0, axis)]
        if op == "onnx.Cast":
            if v.dtype is not None and v.dtype.is_float and p.inputs[0].dtype is not None and p.inputs[0].dtype.is_float:
                return [(0, axis)]
            return f"{p.label()} casts the stream to a non-float type"
        if op in ("aten.dropout", "aten.to"):
            if op == "aten.dropout" and _arg(p, 2, True):
                return "dropout in training mode writes to the stream"
            return [(0, axis)]
        if op == "transpose":
            perm = p.attrs.get("perm") or list(reversed(range(v.rank)))
            return [(0, perm[axis])]
        if op == "aten.transpose":
            d0, d1 = (_arg(p, 1) % v.rank, _arg(p, 2) % v.rank)
            return [(0, d1 if axis == d0 else d0 if axis == d1 else axis)]
        if op in ("reshape", "aten.view", "aten.reshape", "aten.flatten", "flatten", "aten.unsqueeze"):
            ax = _map_reshape(p.inputs[0].shape, v.shape, axis)
            return [(0, ax)] if ax is not None else f"{p.label()} splits or merges the normalized axis"
        if op in ("concat", "aten.cat"):
            cat_axis = (p.attrs.get("axis") if op == "concat" else _arg(p, 1, 0)) % v.rank
            if cat_axis == axis:
                return f"{p.label()} concatenates along the normalized axis"
            return [(i, axis - (v.rank - x.rank)) for i, x in enumerate(p.inputs)]
        if op in ("aten.expand", "onnx.Expand"):
            x = p.inputs[0]
            ax = axis - (v.rank - x.rank)
            if ax >= 0 and x.shape is not None and x.shape[ax] == 1 and v.shape[axis] != 1:
                return f"{p.label()} broadcasts along the normalized axis"
            return [(0, ax if ax >= 0 else None)]
        if op == "slice":
            axes = const_ints(p.inputs[3]) if len(p.inputs) > 3 and p.inputs[3] is not None else \
                list(range(len(const_ints(p.inputs[1]) or [])))
            if axes is None or axis in [a % v.rank for a in axes]:
                return f"{p.label()} slices along the normalized axis (or by non-constant axes)"
            return [(0, axis)]
        if op == "aten.slice":
            if _arg(p, 1, 0) % v.rank == axis:
                return f"{p.label()} slices along the normalized axis"
            return [(0, axis)]
        return None

    @staticmethod
    def _is_centering(p: Node, axis: int) -> bool:
        m = p.inputs[1].producer
        return (m is not None and m.domain == CORE and m.op == "reduce_mean" and m.inputs[0] is p.inputs[0]
                and m.attrs.get("keepdims", 1) == 1 and p.inputs[0].rank is not None
                and [a % p.inputs[0].rank for a in (m.attrs.get("axes") or [])] == [axis])

    def readers_ok(self, plan: StreamPlan, allowed: dict[int, Value], converted: set[int] | None = None) -> str | None:
        """Recentring shifts each changed value by a per-position constant along the axis. Its
        readers must be the stream itself, shift-invariant (LayerNorm over that axis, shape-only
        reads), or additions whose outputs are read that way in turn. When compressing
        (``converted``: the LayerNorms that convert), every LayerNorm reader must convert too and
        nothing outside the stream may add to it."""
        seen: set[int] = set()
        for v in plan.values.values():
            why = self._shift_safe(v, allowed, seen, converted)
            if why:
                return why
        return None

    def compress_ok(self, ln: Node, plan: StreamPlan, axes: dict[int, int]) -> str | None:
        """Plan CRMSNorm's shape edits: every shape vector that spells the width says d-1."""
        d = ln.inputs[0].shape[-1] if ln.inputs[0].shape is not None else None
        if not isinstance(d, int) or d < 2:
            return f"CRMSNorm needs a static stream width, '{ln.inputs[0].name}' has {d}"
        tracer = WidthTracer(d, axes)
        plan.width, plan.shape_edits, plan.arg_edits = d, [], []
        for v in plan.values.values():
            why = tracer.width_reads_ok(v)
            if why:
                return why
        for node, axis in plan.layout.values():
            if node.domain == CORE or node.dialect == "onnx":  # reshape / Expand: shape is input 1
                r = tracer.dim_edits(node.inputs[1], axis, node, 1)
                if isinstance(r, str):
                    return r
                plan.shape_edits += r
            else:  # aten.expand / view / reshape: sizes are args[1]
                size = _arg(node, 1)[axis]
                if not isinstance(size, int):
                    return f"{node.label()} sizes the stream by a symbolic value"
                if size == d:
                    plan.arg_edits.append((node, axis))
        for node, i, axis in plan.edits.values():
            shape = node.inputs[i].shape
            if shape is None or shape[axis] != d:
                return f"{node.label()}: constant '{node.inputs[i].name}' is not {d} wide along the stream axis"
        return None

    def post_ln(self, ln: Node, limit: int = 2000) -> Node | None:
        """The residual addition that reads ``ln``'s output as its skip input (Post-LN), if any."""
        aliases, todo = [ln.outputs[0]], [ln.outputs[0]]
        while todo:  # the output as dropout (eval), identity or clone pass it on
            for u in todo.pop().users:
                if (u.dialect == "aten" and u.op in _PASSTHROUGH_ATEN | {"dropout"}) or \
                        (u.dialect == "onnx" and u.op == "Identity"):
                    aliases.append(u.outputs[0])
                    todo.append(u.outputs[0])
        ids = {id(v) for v in aliases}
        for add in [u for v in aliases for u in v.users if u.domain == CORE and u.op == "add"]:
            others = [x for x in add.inputs if id(x) not in ids]
            stack, seen = others[:1], set()
            while stack and len(seen) < limit:
                v = stack.pop()
                if id(v) in ids:
                    return add
                if id(v) in seen or v is None or v.producer is None:
                    continue
                seen.add(id(v))
                stack.extend(v.producer.inputs)
        return None

    def _shift_safe(self, v: Value, allowed: dict[int, Value], seen: set[int],
                    converted: set[int] | None = None) -> str | None:
        if id(v) in seen:
            return None
        seen.add(id(v))
        if id(v) in self.outputs:
            return f"stream value '{v.name}' is a graph output; recentring would change it"
        for r in v.users:
            if r.domain == CORE and r.op == "layer_norm" and r.attrs.get("axis", -1) == -1:
                if converted is not None and id(r) not in converted:
                    return (f"stream value '{v.name}' is also read by LayerNorm '{r.name}', which stays: "
                            f"it could not read the compressed stream")
                continue
            if any(id(o) in allowed for o in r.outputs):
                continue
            if (r.dialect == "aten" and (r.op.startswith("_assert") or r.op.startswith("sym_"))) or \
                    (r.dialect == "onnx" and r.op in ("Shape", "Size")):
                continue  # reads only the shape (or asserts on it); width reads: WidthTracer
            if r.domain == CORE and r.op in ("add", "sub") and r.outputs[0].rank == v.rank and converted is None:
                why = self._shift_safe(r.outputs[0], allowed, seen)  # a shifted addend shifts the sum
                if why is None:
                    continue
                return why
            return (f"stream value '{v.name}' is also read by {r.label()} ({r.qualified_op}), "
                    f"which would see the recentred stream")
        return None


def _size(d) -> tuple[int, tuple[str, ...]] | None:
    """A dim as (constant factor, sorted symbolic factors): ``"s0*s1"`` -> (1, ("s0", "s1")); a
    symbolic dim that is not a plain product is one opaque factor; unknown (None, -1) -> None."""
    if isinstance(d, int):
        return (d, ()) if d >= 0 else None
    if not isinstance(d, str) or not d.strip():
        return None
    const, syms = 1, []
    parts = [p.strip() for p in d.split("*")]
    if all(p.isdigit() or p.isidentifier() for p in parts):
        for p in parts:
            if p.isdigit():
                const *= int(p)
            else:
                syms.append(p)
    else:
        syms.append("".join(d.split()))
    return const, tuple(sorted(syms))


def _product(dims) -> tuple[int, tuple[str, ...]] | None:
    const, syms = 1, []
    for d in dims:
        s = _size(d)
        if s is None:
            return None
        const, syms = const * s[0], syms + list(s[1])
    return const, tuple(sorted(syms))


def _map_reshape(src, dst, axis: int) -> int | None:
    """The input axis that becomes output ``axis`` whole (same size, same elements before it).
    Symbolic dims (torch.export's ``s0``, ``s0*s1``) compare as products of their factors."""
    if src is None or dst is None or axis >= len(dst):
        return None
    before, size = _product(dst[:axis]), _size(dst[axis])
    if before is None or size is None or any(_size(d) is None for d in src):
        return None
    for j in range(len(src)):
        if _product(src[:j]) == before and _size(src[j]) == size:
            return j
    return None


