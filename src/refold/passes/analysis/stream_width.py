"""Where a tensor's width shows up in shape computations, for passes that change that width.

CRMSNorm stores a residual stream of width d in d-1 coordinates. Every shape vector that spells the
stream's width (a reshape's target, an expand's shape) must then say d-1, and every computation
that reads the width off the stream (``Shape``) must only feed such shape vectors.

``dim_edits`` traces one element of a shape vector back to where it comes from: a constant that
says d (edit it), a ``Shape`` of a stream value at its stream axis (follows by itself), or a value
that is not d (nothing to do). ``width_reads_ok`` follows ``Shape`` reads of a stream value forward
and checks the width only reaches stream reshapes. Both answer a reason string when they cannot
prove it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from refold.ir.graph import CORE, Node, Value
from refold.ir.graph import const_ints as _ints

# (node, input index, flat position to set to the new width)
ConstEdit = tuple[Node, int, int]


def _op(n: Node) -> str:
    return n.op if n.domain == CORE else f"{n.dialect}.{n.op}"


def _length(v: Value) -> int | None:
    if v.shape is None:
        return None
    if len(v.shape) == 0:
        return 1
    return v.shape[0] if len(v.shape) == 1 and isinstance(v.shape[0], int) else None


def _slice_positions(node: Node) -> list[int] | None:
    """Input positions a 1-D core.slice keeps, in output order (None when not constant)."""
    x = node.inputs[0]
    n = _length(x)
    starts, ends = _ints(node.inputs[1]), _ints(node.inputs[2])
    axes = _ints(node.inputs[3]) if len(node.inputs) > 3 else None
    steps = _ints(node.inputs[4]) if len(node.inputs) > 4 else None
    if n is None or starts is None or ends is None or (axes not in (None, [0], [-1])):
        return None
    return list(range(n))[slice(starts[0], ends[0], (steps or [1])[0])]


class WidthTracer:
    """Shape-vector reasoning for one stream width ``d`` and the stream values ``axes`` (value id
    -> its stream axis)."""

    def __init__(self, d: int, axes: dict[int, int]):
        self.d = d
        self.axes = axes

    def dim_edits(self, v: Value, j: int, reader: Node, idx: int, depth: int = 0) -> list[ConstEdit] | str:
        """Edits making element ``j`` of shape vector ``v`` (input ``idx`` of ``reader``) say d-1."""
        if depth > 64:
            return f"the shape read by {reader.label()} is computed too deep to follow"
        vals = _ints(v)
        if vals is not None:
            if j >= len(vals):
                return f"{reader.label()} reads element {j} of a {len(vals)}-element shape"
            return [(reader, idx, j)] if vals[j] == self.d else []
        p = v.producer
        if p is None:
            return f"the stream width at {reader.label()} comes from graph input '{v.name}'"
        op = _op(p)
        follow: Callable[[Value, int, int], list[ConstEdit] | str] = \
            lambda x, k, i: self.dim_edits(x, k, p, i, depth + 1)  # noqa: E731
        if op == "concat" and p.attrs.get("axis") in (0, -1):
            off = 0
            for i, x in enumerate(p.inputs):
                n = _length(x)
                if n is None:
                    return f"{p.label()} joins shape pieces of unknown length"
                if j < off + n:
                    return follow(x, j - off, i)
                off += n
            return f"{p.label()} is shorter than the shape read by {reader.label()}"
        if op in ("onnx.Unsqueeze", "onnx.Squeeze", "onnx.Cast", "onnx.Identity", "reshape"):
            x = p.inputs[0]
            return follow(x, j if _length(x) != 1 else 0, 0)
        if op == "slice":
            kept = _slice_positions(p)
            if kept is None or j >= len(kept):
                return f"{p.label()} slices a shape by non-constant bounds"
            return follow(p.inputs[0], kept[j], 0)
        if op == "onnx.Gather" and p.attrs.get("axis", 0) == 0:
            idx, n = _ints(p.inputs[1]), _length(p.inputs[0])
            if idx is None or n is None:
                return f"{p.label()} gathers a shape element by a non-constant index"
            return follow(p.inputs[0], idx[j if len(idx) > 1 else 0] % n, 0)
        if op == "onnx.Shape":
            x = p.inputs[0]
            if x.rank is None:
                return f"{p.label()} reads the shape of '{x.name}' of unknown rank"
            start = p.attrs.get("start", 0)
            pos = (start + x.rank if start < 0 else start) + j
            if self.axes.get(id(x)) == pos:
                return []  # the width of a stream value: becomes d-1 with it
            if x.shape is not None and isinstance(x.shape[pos], int) and x.shape[pos] != self.d:
                return []
            return f"{p.label()} reads dim {pos} of '{x.name}', which is not the stream but may be {self.d} wide"
        if op == "onnx.ConstantOfShape":
            t = p.attrs.get("value")
            val = int(t.numpy().reshape(-1)[0]) if t is not None else 0
            return [] if val != self.d else f"{p.label()} fills a shape with the stream width"
        if op == "onnx.Where":
            out: list[ConstEdit] = []
            for i in (1, 2):
                x = p.inputs[i]
                r = follow(x, j if _length(x) != 1 else 0, i)
                if isinstance(r, str):
                    return r
                out += r
            return out
        return f"the shape read by {reader.label()} is computed by {p.label()} ({p.qualified_op})"

    def width_reads_ok(self, v: Value) -> str | None:
        """Shape reads of stream value ``v`` must carry its width only into stream reshapes."""
        ax = self.axes[id(v)]
        for r in v.users:
            op = _op(r)
            if op == "onnx.Shape":
                rank = v.rank
                start = r.attrs.get("start", 0) % (rank + 1) if r.attrs.get("start", 0) < 0 else r.attrs.get("start", 0)
                end = r.attrs.get("end", rank)
                end = end % (rank + 1) if end < 0 else min(end, rank)
                if start <= ax < end:
                    why = self._taint(r.outputs[0], {ax - start}, 0)
                    if why:
                        return why
            elif op in ("aten.sym_size", "aten.size") and len(r.attrs.get("args", ())) > 1:
                if r.attrs["args"][1] % v.rank == ax:
                    return f"{r.label()} reads the stream width of '{v.name}'"
            elif op in ("aten.sym_numel", "onnx.Size"):
                return f"{r.label()} reads the element count of '{v.name}'"
        return None

    def _taint(self, v: Value, pos: set[int], depth: int) -> str | None:
        """``pos``: the positions of shape vector ``v`` that hold the stream width."""
        if depth > 64:
            return f"the stream width flows too deep through '{v.name}'"
        for u in v.users:
            op = _op(u)
            i = next(k for k, x in enumerate(u.inputs) if x is v)
            nxt: set[int] | None = None
            if op in ("onnx.Unsqueeze", "onnx.Squeeze", "onnx.Cast", "onnx.Identity") or (op == "reshape" and i == 0 and (u.outputs[0].rank or 0) <= 1):
                nxt = set(pos)
            elif op == "concat" and u.attrs.get("axis") in (0, -1):
                off = 0
                for x in u.inputs[:i]:
                    n = _length(x)
                    if n is None:
                        return f"{u.label()} joins shape pieces of unknown length"
                    off += n
                nxt = {p + off for p in pos}
            elif op == "slice" and i == 0:
                kept = _slice_positions(u)
                if kept is None:
                    return f"{u.label()} slices the stream's shape by non-constant bounds"
                nxt = {k for k, src in enumerate(kept) if src in pos}
            elif op == "onnx.Gather" and i == 0 and u.attrs.get("axis", 0) == 0:
                idx, n = _ints(u.inputs[1]), _length(v)
                if idx is None or n is None:
                    return f"{u.label()} gathers from the stream's shape by a non-constant index"
                nxt = {k for k, src in enumerate(idx) if src % n in pos}
            elif op == "onnx.Where" and i in (1, 2):
                nxt = set(pos)
            elif op in ("reshape", "onnx.Expand") and i == 1 and id(u.inputs[0]) in self.axes:
                continue  # the shape of a stream value: checked with that reshape
            elif op == "onnx.Equal":
                other = _ints(u.inputs[1 - i])
                if other is not None and self.d not in other and self.d - 1 not in other:
                    continue  # the comparison comes out the same with either width
                return f"{u.label()} compares the stream width"
            else:
                return f"the stream width read off '{v.name}' flows into {u.label()} ({u.qualified_op})"
            if nxt:
                why = self._taint(u.outputs[0], nxt, depth + 1)
                if why:
                    return why
        return None


def set_elements(arr: np.ndarray, positions: set[int], value: int) -> np.ndarray:
    out = np.array(arr, copy=True)
    flat = out.reshape(-1)
    for p in positions:
        flat[p] = value
    return out
