"""Shape computations at run time, as torch.onnx's TorchScript exporter writes them: a ``Shape``
of a tracked tensor is harmless where nothing reads its channel entry, or where what reads it
follows the width by itself. Two readers do: a reshape target that spells the same width
(``reshape_as``: the reshaped axis is coupled with the measured one) and the bounds of an equal
piece (``chunk``: the pieces stay equal, so the bounds computed from the pruned width are right).
Any other reader of the width blocks, and the reason names it.

    Shape(x)[1] -> Add 1 -> Div 2 -> Slice(x, 0, h), Slice(x, h, 2h)   chunk(2): x[h*j + c] ~ x[c]
    Shape(lin) -> Reshape(bn(flatten(lin)), ·)                        reshape_as: y[2] ~ lin[2]

Whether a value reads a width is found by evaluating the computation (a few integer ops) with
that width changed: what does not change does not read it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refold.ir.graph import CORE, Node, Value

ChannelGraph = Any  # the builder in channels.py

Widths = dict  # (value name, axis) -> the size assumed there instead of the run's
_ARITH = {"add": np.add, "sub": np.subtract, "mul": np.multiply,
          "Add": np.add, "Sub": np.subtract, "Mul": np.multiply}
_PASS = {"Cast", "Identity", "CastLike"}
# Other ops exporters spell integer vectors with (the TorchScript-based exporter writes F.pad's
# pads as ConstantOfShape, Concat, Reshape, a reversing Slice, Transpose and Cast)
_SMALL = {"onnx": frozenset({"ConstantOfShape", "Slice", "Transpose", "Reshape", "Expand", "Tile",
                             "Max", "Min", "Mod", "Neg", "Abs", "Where", "Equal", "Less", "Greater", "Not"}),
          CORE: frozenset({"slice", "transpose", "reshape", "flatten"})}
_KNOWN = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "concat", "Concat", "slice", "reshape", "div", "Div",
                    *_ARITH, *_PASS, *_SMALL["onnx"], *_SMALL[CORE]})
_STEPS = (-2, -1, 1, 2, 3)  # how far a width is moved (in whole pieces, for a chunk) to see what follows it


def _shape_of(cg: ChannelGraph, u: Value) -> list[int] | None:
    if u.shape is None:
        return None
    got = []
    for a, d in enumerate(u.shape):
        d = d if isinstance(d, int) and d >= 0 else ((cg.concrete(u) or (None,) * len(u.shape))[a])
        if not isinstance(d, int):
            return None
        got.append(int(d))
    return got


def evaluate(cg: ChannelGraph, v: Value | None, widths: Widths, memo: dict | None = None) -> np.ndarray | None:
    """The integer tensor ``v`` holds when tensor axis (name, axis) has size ``widths[...]`` (the
    run's size elsewhere); None where a non-shape op or a graph input is on the way."""
    if v is None:
        return None
    if v.const is not None:
        return np.asarray(v.const.numpy())
    memo = {} if memo is None else memo
    if v.name not in memo:
        try:
            memo[v.name] = _evaluate_node(cg, v, widths, memo)
        except (ValueError, IndexError, TypeError, ZeroDivisionError, FloatingPointError):
            memo[v.name] = None  # not a computation these rules can follow
    return memo[v.name]


def _evaluate_node(cg: ChannelGraph, v: Value, widths: Widths, memo: dict) -> np.ndarray | None:
    n = v.producer
    if n is None or len(n.outputs) != 1:
        return None
    op, a = n.op, n.attrs
    if op == "Shape" and n.dialect == "onnx":
        shape = _shape_of(cg, n.inputs[0])
        if shape is None:
            return None
        shape = [widths.get((n.inputs[0].name, i), d) for i, d in enumerate(shape)]
        return np.asarray(shape[slice(a.get("start", 0), a.get("end"))], np.int64)
    ins = [evaluate(cg, u, widths, memo) for u in n.inputs]
    if any(x is None for x, u in zip(ins, n.inputs) if u is not None) or not ins:
        return None
    x = ins[0]
    if op in _ARITH and n.dialect in (CORE, "onnx"):
        return _ARITH[op](ins[0], ins[1])
    if op in ("div", "Div"):
        if np.issubdtype(np.result_type(ins[0], ins[1]), np.integer):
            q = np.abs(ins[0]) // np.maximum(np.abs(ins[1]), 1)  # ONNX integer Div truncates
            return (np.sign(ins[0]) * np.sign(ins[1]) * q).astype(np.result_type(ins[0], ins[1]))
        return ins[0] / ins[1]
    if op in _PASS:
        return x
    if op == "Gather":
        return np.take(x, ins[1].astype(np.int64), axis=a.get("axis", 0))
    if op in ("Unsqueeze", "Squeeze"):
        axes = a.get("axes")
        axes = [int(i) for i in (ins[1].reshape(-1) if axes is None and len(ins) > 1 and ins[1] is not None
                                 else (axes or []))]
        if op == "Unsqueeze":
            rank = x.ndim + len(axes)
            return x.reshape([1 if i in {k % rank for k in axes} else -1 for i in range(rank)]) if x.size else None
        return np.squeeze(x, tuple(k % x.ndim for k in axes)) if axes else np.squeeze(x)
    if op in ("concat", "Concat"):
        return np.concatenate([np.atleast_1d(i) for i in ins], a.get("axis", 0))
    if op == "slice" and x.ndim == 1:
        starts, ends = ins[1].reshape(-1), ins[2].reshape(-1)
        steps = ins[4].reshape(-1) if len(ins) > 4 and ins[4] is not None else [1]
        return x[slice(int(starts[0]), int(ends[0]), int(steps[0]))]
    if op == "reshape" and x.ndim <= 1:
        return x.reshape([int(i) for i in ins[1].reshape(-1)])
    if op in _SMALL.get(n.dialect, ()) and all(i is None or i.size <= 64 for i in ins):
        return _small_node(cg, n, ins)
    return None


def _small_node(cg: ChannelGraph, n: Node, ins: list) -> np.ndarray | None:
    """One node on small integer tensors: a core op by its reference implementation, an ONNX op in
    onnx's reference evaluator."""
    try:
        if n.dialect == CORE:
            import torch

            from refold.ir.ops import evaluate as core_evaluate

            out = core_evaluate(n.op, [None if i is None else torch.from_numpy(np.array(i)) for i in ins],
                                n.attrs, len(n.outputs))[0].numpy()
        else:
            from refold.runtime.reference import evaluate_onnx_node, node_model

            feeds = {u.name: np.asarray(i) for u, i in zip(n.inputs, ins) if u is not None}
            out = evaluate_onnx_node(node_model(n, cg.model.opset_imports, list(ins)), feeds)[0]
    except Exception:  # not a computation on these values: the caller names the op
        return None
    return out if out.size <= 64 else None


def computed_pads(cg: ChannelGraph, pads: Value, x: Value, axis) -> list[int] | None:
    """A Pad's amounts computed at run time, where they do not read the padded tensor's width on
    ``axis`` (the same with that width moved); None where they cannot be followed."""
    if not isinstance(axis, int) or x.shape is None:
        return None
    size = (_shape_of(cg, x) or [None] * len(x.shape))[axis]
    base, moved = _moved(cg, pads, (x.name, axis), size) if size is not None else (evaluate(cg, pads, {}), [])
    if base is None or any(not np.array_equal(base, m) for _, m in moved):
        return None
    return [int(p) for p in np.asarray(base).reshape(-1)]


def _moved(cg: ChannelGraph, v: Value, track: tuple[str, int], size: int):
    """``v`` as run, then (width, value) with the tracked axis ``size`` wide made wider or narrower."""
    base = evaluate(cg, v, {})
    return base, [(size + t, evaluate(cg, v, {track: size + t})) for t in _STEPS if size + t > 0]


def _culprit(v: Value) -> str:
    """The first op on the way back from ``v`` that the evaluator does not know."""
    seen, todo = set(), [v]
    while todo:
        u = todo.pop()
        if u is None or u.const is not None or u.name in seen:
            continue
        seen.add(u.name)
        if u.producer is None:
            return f"graph input '{u.name}'"
        if evaluate_known(u.producer):
            todo.extend(u.producer.inputs if u.producer.op != "Shape" else ())
        else:
            return u.producer.label()
    return "integer ops that do not evaluate"


def evaluate_known(n: Node) -> bool:
    """An op ``evaluate`` computes (on small integer tensors)."""
    return n.op in _KNOWN


def chunk_piece(cg: ChannelGraph, n: Node, ax: int, k: int, size: int) -> tuple[int, int] | str:
    """(j, m) where slice ``n`` (computed bounds; its entry ``k`` cuts axis ``ax`` of a tensor
    ``size`` wide) takes piece j of m equal pieces, for every width that keeps the pieces equal:
    ``chunk``. A string: why not."""
    x = n.inputs[0]
    if len(n.inputs) > 4 and n.inputs[4] is not None:
        steps = evaluate(cg, n.inputs[4], {})
        if steps is None or int(steps.reshape(-1)[k]) != 1:
            return "a strided slice of these channels"

    def bounds(w, widths):
        s, e = (evaluate(cg, n.inputs[i], widths) for i in (1, 2))
        if s is None or e is None:
            return None
        return range(w)[slice(int(s.reshape(-1)[k]), int(e.reshape(-1)[k]))]

    got = bounds(size, {})
    if got is None:
        unknown = n.inputs[1] if evaluate(cg, n.inputs[1], {}) is None else n.inputs[2]
        return f"its bounds are computed by {_culprit(unknown)}"
    p = len(got)
    if not p or size % p or got.start % p:
        return f"its bounds ({got.start}, {got.stop}) are not an equal piece of {size} channels"
    m, j = size // p, got.start // p
    for t in _STEPS:
        w = size + m * t
        if w <= 0:
            continue
        r = bounds(w, {(x.name, ax): w})
        piece = w // m
        if r is None or (r.start, r.stop) != (j * piece, (j + 1) * piece):
            return f"its bounds do not follow the width of '{x.name}' as piece {j} of {m} equal pieces"
    return j, m


def target_entry(cg: ChannelGraph, target: Value, pos: int):
    """What entry ``pos`` of a computed reshape target is: ("width", u, a) where it is the size of
    axis a of tensor u, whatever that size is; ("literal", constant name, index) where it is one
    element of a constant (which then shrinks with the channels); ("follows",) for -1 / 0; a
    string: why not."""
    base = evaluate(cg, target, {})
    if base is None or base.ndim != 1 or pos >= base.size:
        return f"the reshape target is computed by {_culprit(target)}"
    for u, a in _measured(target):
        shape = _shape_of(cg, u)
        if shape is None:
            continue
        if all((got := evaluate(cg, target, {(u.name, a): w})) is not None and int(got[pos]) == w
               for w in (shape[a] + 1, shape[a] + 2)):
            return ("width", u, a)
    for u, a in _measured(target):  # the entry must not read any other width
        shape = _shape_of(cg, u)
        got = evaluate(cg, target, {(u.name, a): shape[a] + 1}) if shape is not None else None
        if got is None or int(got[pos]) != int(base[pos]):
            return f"entry {pos} of the reshape target is computed from the width of '{u.name}' axis {a}"
    if int(base[pos]) in (-1, 0):
        return ("follows",)
    lit = _literal(target, pos)
    if lit is None:
        return (f"entry {pos} of the reshape target is computed from constants, not copied from one "
                "(fold-constants first may settle it)")
    return ("literal", *lit)


def _measured(v: Value) -> list[tuple[Value, int]]:
    """Every (tensor, axis) whose size a Shape upstream of ``v`` reads."""
    out, seen, todo = [], set(), [v]
    while todo:
        u = todo.pop()
        if u is None or u.const is not None or u.name in seen or u.producer is None:
            continue
        seen.add(u.name)
        p = u.producer
        if p.op == "Shape" and p.dialect == "onnx":
            x = p.inputs[0]
            if x.shape is not None:
                rank = len(x.shape)
                start, end = p.attrs.get("start", 0), p.attrs.get("end", rank)
                out.extend((x, a) for a in range(rank)[slice(start, end)])
        elif evaluate_known(p):
            todo.extend(p.inputs)
    return out


def _literal(v: Value, pos: int) -> tuple[str, int] | None:
    """The constant and element that entry ``pos`` of ``v`` is a copy of (through Concat,
    Unsqueeze, Squeeze, Cast)."""
    while True:
        if v.const is not None:
            return (v.name, pos) if int(np.prod(v.shape or ())) > pos else None
        p = v.producer
        if p is None:
            return None
        if p.op in ("concat", "Concat"):
            for u in p.inputs:
                size = int(np.prod(u.shape or (1,))) if u is not None and u.shape is not None else None
                if size is None:
                    return None
                if pos < size:
                    v = u
                    break
                pos -= size
            else:
                return None
        elif p.op in ("Unsqueeze", "Squeeze", *_PASS):
            v = p.inputs[0]
        else:
            return None


def shape_rule(cg: ChannelGraph, n: Node, v: Value, axis) -> str | None:
    """``n`` = Shape(v), channel axis ``axis`` of v tracked: follow the width to every reader;
    harmless readers pass (a reshape target spelling it is linked with v's axis), the first
    other reader is named."""
    shape = _shape_of(cg, v)
    if shape is None:
        return "its width feeds a shape computation, and the tensor's shape is unknown"
    for a in (axis if isinstance(axis, tuple) else (axis,)):
        why = _width_readers(cg, n, v, a, shape[a])
        if why is not None:
            return why
    return None


def _width_readers(cg: ChannelGraph, n: Node, v: Value, a: int, size: int) -> str | None:
    track = (v.name, a)
    todo, seen = [n.outputs[0]], set()
    while todo:
        s = todo.pop()
        if s.name in seen:
            continue
        seen.add(s.name)
        base, moved = _moved(cg, s, track, size)
        if base is not None and all(m is not None and np.array_equal(m, base) for _, m in moved):
            continue  # does not read this width (another entry of the shape, a batch size)
        for c, i in s.uses():
            if c.domain == CORE and c.op == "slice" and i in (1, 2):
                why = _bound_reader(cg, c, v, a, size)
            elif c.domain == CORE and c.op == "reshape" and i == 1:
                why = _target_reader(cg, c, v, a, size)
            elif evaluate_known(c) and all(evaluate(cg, o, {}) is not None for o in c.outputs):
                todo.extend(c.outputs)  # shape arithmetic: follow what it computes
                why = None
            else:
                why = f"its width feeds {c.label()}"
            if why is not None:
                return why
    return None


def _bound_reader(cg: ChannelGraph, c: Node, v: Value, a: int, size: int) -> str | None:
    if c.inputs[0] is not v:
        return f"its width sets the bounds of {c.label()}, which slices another tensor"
    axes = evaluate(cg, c.inputs[3], {}) if len(c.inputs) > 3 and c.inputs[3] is not None else None
    axes = [int(i) % len(v.shape) for i in axes.reshape(-1)] if axes is not None else None
    k = (axes.index(a) if a in axes else None) if axes is not None else a
    if k is None:
        return f"its width sets the bounds of {c.label()} on another axis"
    got = chunk_piece(cg, c, a, k, size)
    return f"{c.label()}: {got}" if isinstance(got, str) else None


def _target_reader(cg: ChannelGraph, c: Node, v: Value, a: int, size: int) -> str | None:
    base, moved = _moved(cg, c.inputs[1], (v.name, a), size)
    if base is None or any(m is None for _, m in moved):
        return f"its width is computed into the target of {c.label()} by {_culprit(c.inputs[1])}"
    for pos in range(base.size):
        if all(int(m[pos]) == int(base[pos]) for _, m in moved):
            continue
        if not all(int(m[pos]) == w for w, m in moved):
            return f"its width is computed into entry {pos} of the target of {c.label()}"
        cg._identity(c.outputs[0], pos, v, a)  # y's axis is as wide as v's, whatever that is
    return None
