"""LayerNorm -> RMSNorm, losslessly ("Pre-RMSNorm and Pre-CRMSNorm Transformers").

LN(x) = RMSNorm(x - mean(x)). If every writer to the residual stream produces zero-mean vectors,
the stream stays zero-mean and each LayerNorm reading it is an RMSNorm with the same gain.

For each LayerNorm the analysis walks its input back through the stream: additions, layout ops
that keep the normalized axis whole (reshape, transpose, flatten, concat along another axis,
dropout in eval, expand), down to the writers, which must be linear in constants: linear / gemm /
matmul / conv weights and biases, embedding tables, constants (position embeddings, class tokens).
Each constant is recentred along the axis that becomes the normalized one. Every value whose
content changes may be read only by LayerNorms (mean-invariant) or by the stream itself; anything
else (a raw-stream reader, a graph output, a non-linear writer, a Post-LN block) stops the
conversion for that LayerNorm, and the report says why.

With ``compress=True`` (CRMSNorm) the stream is also stored in d-1 coordinates: a zero-mean
d-vector is its first d-1 coordinates, the last being minus their sum. Each writer drops its last
output feature, every shape vector that spells the width says d-1 (``stream_width``), and each
LayerNorm becomes ``crms_norm``, which recovers the norm and the dropped coordinate.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from refold.ir.graph import CORE, Graph, Model, Node, Value, const_ints
from refold.ir.tensor import Tensor
from refold.passes.base import Pass, PassResult
from refold.passes.raise_core import RaiseToCore
from refold.passes.rewrite import Builder
from refold.passes.shape_inference import infer_shapes
from refold.passes.stream_width import WidthTracer, set_elements

_PASSTHROUGH_ATEN = {"clone", "contiguous", "alias", "detach"}
_SHAPED = {"reshape", "onnx.Expand", "aten.expand", "aten.view", "aten.reshape"}  # layout ops whose shape argument spells the width


@dataclasses.dataclass
class _Plan:
    values: dict[int, Value] = dataclasses.field(default_factory=dict)    # contents that change
    width: int | None = None                                               # CRMSNorm: d
    shape_edits: list = dataclasses.field(default_factory=list)            # (node, input, position)
    arg_edits: list = dataclasses.field(default_factory=list)              # (aten node, position)
    edits: dict[tuple[int, int], tuple[Node, int, int]] = dataclasses.field(default_factory=dict)
    axes: dict[int, int] = dataclasses.field(default_factory=dict)        # value id -> stream axis
    layout: dict[int, tuple[Node, int]] = dataclasses.field(default_factory=dict)  # reshapes/expands
    derived: dict[int, tuple[Value, int]] = dataclasses.field(default_factory=dict)  # transposed consts

    def merge(self, other: "_Plan") -> None:
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


class _Analysis:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.outputs = {id(v) for v in graph.outputs}

    def center(self, v: Value, axis: int, plan: _Plan, depth: int = 0) -> str | None:
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

    def center_input(self, p: Node, i: int, out: Value, axis: int, plan: _Plan, depth: int) -> str | None:
        x = p.inputs[i]
        if x.rank is None:
            return f"'{x.name}' has unknown rank"
        ax = axis - (out.rank - x.rank)  # broadcasting aligns trailing axes
        if ax < 0 or (x.shape is not None and x.shape[ax] == 1 and out.shape is not None and out.shape[axis] != 1):
            return f"{p.label()} adds '{x.name}', which is broadcast along the normalized axis"
        return self.center_operand(p, i, ax, plan, depth)

    def center_operand(self, p: Node, i: int, ax: int, plan: _Plan, depth: int) -> str | None:
        """Input ``i`` of ``p`` must become zero-mean along its axis ``ax``."""
        x = p.inputs[i]
        if x.const is not None:
            return self.edit(plan, p, i, ax)
        return self.center(x, ax, plan, depth + 1)

    def edit(self, plan: _Plan, node: Node, i: int, axis: int) -> str | None:
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

    def writer(self, p: Node, v: Value, axis: int, plan: _Plan) -> str | None:
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

    def readers_ok(self, plan: _Plan, allowed: dict[int, Value], converted: set[int] | None = None) -> str | None:
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

    def compress_ok(self, ln: Node, plan: _Plan, axes: dict[int, int]) -> str | None:
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


def _map_reshape(src, dst, axis: int) -> int | None:
    """The input axis that becomes output ``axis`` whole (same size, same elements before it)."""
    if not _static(src) or not _static(dst):
        return None
    before = int(np.prod(dst[:axis]))
    acc = 1
    for j, d in enumerate(src):
        if acc == before and d == dst[axis]:
            return j
        acc *= d
    return None


def _new_const(graph: Graph, arr: np.ndarray, like: Value | None, prefix: str, sources: list[str]) -> Value:
    """A constant replacing ``like``: a parameter or buffer again (same torch name) if it was one."""
    new = graph.add_const(Tensor.from_array(np.asarray(arr, order="C")), prefix=prefix)  # keeps 0-d scalars 0-d
    if like is not None:
        new.kind = like.kind
        for k in ("torch.target", "requires_grad", "torch.persistent"):
            if k in like.meta:
                new.meta[k] = like.meta[k]
    new.meta["provenance"] = {"rule": "layernorm-to-rmsnorm", "sources": sources}
    return new


def _recentre(arr: np.ndarray, axis: int) -> np.ndarray:
    a = np.asarray(arr, np.float64)
    return (a - a.mean(axis=axis, keepdims=True)).astype(arr.dtype)


class LayerNormToRMSNorm(Pass):
    """Turn LayerNorms that read a provably zero-mean stream into RMSNorms, exactly.

    >>> LayerNormToRMSNorm().name
    'layernorm-to-rmsnorm'
    """

    name = "layernorm-to-rmsnorm"
    description = "recentre residual-stream writers so Pre-LN LayerNorms become RMSNorms, exactly"

    def __init__(self, compress: bool = False, target: str = "auto"):
        self.compress = bool(compress)
        self.target = target

    def call(self, model: Model) -> PassResult:
        RaiseToCore().call(model)
        graph = model.graph
        lns = [n for n in graph if n.domain == CORE and n.op == "layer_norm"]
        if model.source == "onnx" and any(ln.inputs[0].rank is None for ln in lns):
            infer_shapes(model, probe=True)  # the stream analysis needs ranks onnx alone may not give
        analysis = _Analysis(graph)
        plans: dict[Node, _Plan] = {}
        reasons: dict[str, str] = {}
        for ln in lns:
            if ln.attrs.get("axis", -1) != -1:
                reasons[ln.name] = f"normalizes over axes from {ln.attrs['axis']}, not only the last"
                continue
            skip = analysis.post_ln(ln)
            if skip is not None:
                reasons[ln.name] = (f"its output is the residual stream itself, read by {skip.label()} "
                                    f"(Post-LN placement): the model is left as it is")
                continue
            plan = _Plan()
            why = analysis.center(ln.inputs[0], ln.inputs[0].rank - 1 if ln.inputs[0].rank else -1, plan)
            if why:
                reasons[ln.name] = why
            else:
                plans[ln] = plan
        # Readers are checked against everything that changes; a failing plan is dropped, which can
        # make others fail in turn: iterate to a fixed point.
        changed = True
        while changed:
            changed = False
            allowed: dict[int, Value] = {}
            axes: dict[int, int] = {}
            for p in plans.values():
                allowed.update(p.values)
                axes.update(p.axes)
            converted = {id(ln) for ln in plans} if self.compress else None
            for ln, p in list(plans.items()):
                why = analysis.readers_ok(p, allowed, converted)
                if why is None and self.compress:
                    why = analysis.compress_ok(ln, p, axes)
                if why:
                    reasons[ln.name] = why
                    del plans[ln]
                    changed = True
        if not plans:  # raising to core ops alone is exact and not a change worth reporting
            return PassResult(model, False, {"converted": 0, "rewrites": 0, "layer_norms": len(lns),
                                             "not_converted": reasons})
        total = _Plan()
        for p in plans.values():
            total.merge(p)
        width = None
        if self.compress:
            width = plans[next(iter(plans))].width
            self._compress_layout(graph, total, width)
        self._apply_edits(graph, total, width)
        self._folded = 0
        for ln in plans:
            self._replace(graph, ln, model)
        if self.target == "ort":
            model.meta["target_runtime"] = "onnxruntime"  # ORT-only ops: checked with ORT on save
        return PassResult(model, True, {"converted": len(plans), "rewrites": len(plans), "layer_norms": len(lns),
                                        "recentred_constants": len(total.edits), "compressed": self.compress,
                                        "biases_folded_into_linears": self._folded,
                                        "not_converted": reasons})

    @staticmethod
    def _compress_layout(graph: Graph, plan: _Plan, d: int) -> None:
        """Shape vectors and sizes that spell the width now say d-1; stream values are d-1 wide."""
        positions: dict[tuple[int, int], tuple[Node, int, set[int]]] = {}
        for node, i, j in plan.shape_edits:
            positions.setdefault((id(node), i), (node, i, set()))[2].add(j)
        for node, i, pos in positions.values():
            old = node.inputs[i]
            node.set_input(i, _new_const(graph, set_elements(old.const.numpy(), pos, d - 1), old,
                                         f"{old.name}_compressed", [old.name]))
            graph.release_const(old)
        for node, axis in plan.arg_edits:
            args = list(node.attrs["args"])
            args[1] = [d - 1 if k == axis else s for k, s in enumerate(args[1])]
            node.attrs["args"] = tuple(args)
        for v, axis in [(v, plan.axes[k]) for k, v in plan.values.items()] + list(plan.derived.values()):
            if v.shape is not None and v.shape[axis] == d:
                v.shape = tuple(d - 1 if k == axis else s for k, s in enumerate(v.shape))

    @staticmethod
    def _apply_edits(graph: Graph, plan: _Plan, width: int | None = None) -> None:
        """Recentre each planned constant; with ``width`` also drop its last stream coordinate."""
        made: dict[tuple[int, int], Value] = {}
        replaced: list[Value] = []
        for node, i, axis in plan.edits.values():
            old = node.inputs[i]
            replaced.append(old)
            key = (id(old), axis)
            if key not in made:
                arr = _recentre(old.const.numpy(), axis)
                if width is not None:  # a zero-mean vector is its first d-1 coordinates
                    arr = np.take(arr, np.arange(width - 1), axis=axis)
                made[key] = _new_const(graph, arr, old, f"{old.name}_centered", [old.name])
            node.set_input(i, made[key])
        for old in replaced:  # originals nothing reads any more (parameters stay: the exporter decides)
            graph.release_const(old)

    def _replace(self, graph: Graph, ln: Node, model: Model) -> None:
        # LN(x) = RMSNorm(x) * gamma + beta  when mean(x) = 0 along the normalized axis
        x, scale, bias = (list(ln.inputs) + [None, None])[:3]
        b = Builder(graph, ln)
        ins = [x] + ([scale] if scale is not None else [])
        op = "core.crms_norm" if self.compress else "core.rms_norm"
        y = b.op(op, *ins, axis=-1, epsilon=ln.attrs.get("epsilon", 1e-5))
        rms = y.producer
        if self.target == "ort" and not self.compress:
            rms.meta["lower_to"] = "ort"
        if bias is not None:
            y = b.op("core.add", y, bias)
        for n in b.created:
            n.meta["provenance"] = {"rule": "layernorm-to-rmsnorm", "sources": [ln.name]}
        if y.dtype is None:
            y.dtype, y.shape = ln.outputs[0].dtype, ln.outputs[0].shape
        graph.substitute(ln.outputs[0], y)
        graph.remove(ln)
        if bias is not None and _fold_shift(graph, y.producer, ln.name):
            self._folded += 1


def _shift_targets(v: Value, d: int, out: list[Node]) -> bool:
    """Collect the linear readers of ``v`` (through reshapes keeping the last axis) a constant shift
    of ``v`` along its last axis can fold into; False if any reader is something else."""
    for u in v.users:
        if u.domain != CORE or u.inputs[0] is not v or any(x is v for x in u.inputs[1:]):
            return False
        o = u.outputs[0]
        if u.op == "reshape":
            if o.shape is None or not o.shape or o.shape[-1] != d or o.users == [] or not _shift_targets(o, d, out):
                return False
        elif u.op == "linear" and u.inputs[1].const is not None:
            out.append(u)
        elif (u.op == "gemm" and u.inputs[1].const is not None and not u.attrs.get("transA")
              and u.attrs.get("alpha", 1.0) == 1.0 and u.attrs.get("beta", 1.0) == 1.0
              and (len(u.inputs) < 3 or u.inputs[2] is None or u.inputs[2].const is not None)):
            out.append(u)
        elif u.op == "matmul" and u.inputs[1].const is not None and u.inputs[1].rank == 2 and len(o.users) == 1:
            add = o.users[0]
            if not (add.domain == CORE and add.op == "add" and any(x.const is not None and x.rank == 1 for x in add.inputs)):
                return False
            out.append(u)
        else:
            return False
    return True


def _fold_shift(graph: Graph, add: Node, source: str) -> bool:
    """(x + beta) @ W + b  ==>  x @ W + (b + beta @ W): the LayerNorm bias joins the next linear's."""
    x, beta = add.inputs
    y = add.outputs[0]
    if beta.const is None or beta.rank != 1 or graph.is_output(y):
        return False
    targets: list[Node] = []
    if not _shift_targets(y, beta.shape[0], targets) or not targets:
        return False
    bvec = beta.const.numpy().astype(np.float64)
    for t in targets:
        w = t.inputs[1].const.numpy().astype(np.float64)
        if t.op == "linear" or (t.op == "gemm" and t.attrs.get("transB")):
            shift, node, i = w @ bvec, t, 2   # W is [out, in]
        else:
            shift, node, i = bvec @ w, t, 2   # W is [in, out]
        if t.op == "matmul":
            node = t.outputs[0].users[0]
            i = next(k for k, v in enumerate(node.inputs) if v.const is not None and v.rank == 1)
        old = node.inputs[i] if len(node.inputs) > i else None
        base = old.const.numpy() if old is not None else np.zeros_like(shift)
        dtype = base.dtype if old is not None else beta.const.numpy().dtype
        node.set_input(i, _new_const(graph, (base.astype(np.float64) + shift).astype(dtype), old,
                                     f"{old.name if old is not None else t.name}_shifted", [source, beta.name]))
        if old is not None:
            graph.release_const(old)
    graph.substitute(y, x)
    graph.remove(add)
    graph.release_const(beta)
    return True
