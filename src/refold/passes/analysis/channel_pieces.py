"""Channel rules of the ops that cut a channel axis into pieces or join pieces back: concat,
split, chunk and slice (``channel_rules.py`` dispatches here). A tracked axis may be a tuple of
axes holding one flat channel index (heads); the cut axis is then one of its components.

    concat:  x_k[c] ~ y[offset_k + c]
    split:   x[offset_j + c] ~ y_j[c]            sizes[j] shrinks by the units' channels in piece j
    chunk:   x[offset_j + c] ~ y_j[c] ~ x[c]     equal pieces stay equal
    slice:   x[start + c] ~ y[c]                 start / end shrink by the channels removed before them

A CSP block or YOLO's C2f (split into halves, one half through a block, concatenated back) is
these rules in a row: each half maps to a range of the concat, and both follow.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refold.ir.graph import CORE, Node, Value
from refold.passes.analysis.channel_attention import axes_of
from refold.passes.analysis.channel_shapes import chunk_piece, evaluate

ChannelGraph = Any  # the builder in channels.py


def _offsets(cg: ChannelGraph, whole: Value, piece: Value, axis, cut: int, off: int) -> list[tuple[int, int]] | None:
    """(channel of the piece, channel of the whole) where the piece sits at ``off`` on axis
    ``cut`` of the whole; channels are flat over the tracked axis (or axes)."""
    comps = axes_of(axis)
    dp, dw = cg.dims(piece, axis), cg.dims(whole, axis)
    if dp is None or dw is None:
        return None
    idx = list(np.unravel_index(np.arange(int(np.prod(dp))), dp))
    k = comps.index(cut)
    idx[k] = idx[k] + off
    try:
        return list(enumerate(np.ravel_multi_index(idx, dw).tolist()))
    except ValueError:  # the piece does not fit in the whole: sizes that do not add up
        return None


def _join(cg: ChannelGraph, whole: Value, piece: Value, v: Value, axis, cut: int, off: int) -> str | None:
    """Link a piece at ``off`` with the whole, from whichever side ``v`` is."""
    pairs = _offsets(cg, whole, piece, axis, cut, off)
    if pairs is None:
        return f"a piece of '{whole.name}' without a static size"
    if v is piece:
        cg._link(piece, axis, whole, axis, pairs)
    else:
        cg._link(whole, axis, piece, axis, ((w, p) for p, w in pairs))
    return None


def _equal(cg: ChannelGraph, whole: Value, piece: Value, axis, cut: int, off: int) -> None:
    """Channel c of the piece at ``off`` with channel c of the first piece: equal pieces stay equal."""
    if off and cg._track(whole, axis):
        first, here = _offsets(cg, whole, piece, axis, cut, 0), _offsets(cg, whole, piece, axis, cut, off)
        cg._link(whole, axis, whole, axis, ((h, f) for (_, h), (_, f) in zip(here, first)))


def concat(cg: ChannelGraph, n: Node, v: Value, axis) -> str | None:
    y = n.outputs[0]
    cat = n.attrs["axis"] % len(y.shape)
    if cat not in axes_of(axis):
        for u in [*n.inputs, y]:
            if u is not v and u is not None:
                cg.project(v, axis, u, list(axes_of(axis)))
        return None
    offsets, off = [], 0
    for u in n.inputs:
        offsets.append(off)
        size = cg.dims(u, cat)
        if size is None:
            return f"input '{u.name}' has no static size on the concat axis"
        off += size[0]
    for u, o in zip(n.inputs, offsets):  # every place v appears: cat([x, x]) ties x's channel c to both copies
        if v is y or u is v:
            why = _join(cg, y, u, v, axis, cat, o)
            if why is not None:
                return why
    return None


def split(cg: ChannelGraph, n: Node, v: Value, axis, split_axis: int) -> str | None:
    """Pieces by sizes (a constant: its entries shrink with the pieces), or equal pieces (chunk,
    num_outputs): channel j of every piece together, so the pieces stay equal."""
    x = n.inputs[0]
    ax = split_axis % len(x.shape)
    comps = axes_of(axis)
    if ax not in comps:
        for u in [x, *n.outputs]:
            if u is not v:
                cg.project(v, axis, u, list(comps))
        return None
    sizes_v = n.inputs[1] if n.domain == CORE and len(n.inputs) > 1 else None
    sizes = [(cg.dims(o, ax) or [None])[0] for o in n.outputs]
    if not all(isinstance(d, int) for d in sizes):
        return "a split into pieces without static sizes"
    if n.dialect == "onnx" and len(n.inputs) > 1 and n.inputs[1] is not None:
        return "an ONNX Split by sizes (not raised)"
    if sizes_v is not None and sizes_v.const is None:
        return f"a split by sizes computed at run time ('{sizes_v.name}')"
    if sizes_v is None and len(set(sizes)) > 1:
        return "an equal split with a smaller last piece"
    off = 0
    for j, o in enumerate(n.outputs):
        if v is x or v is o:
            why = _join(cg, x, o, v, axis, ax, off)
            if why is not None:
                return why
        if sizes_v is not None:  # the size of piece j counts the piece's channels on the split axis
            cg.shape_members[(o.name, ax)].append((sizes_v.name, j, 1, 1))
        else:
            _equal(cg, x, o, axis, ax, off)
        off += sizes[j]
    return None


def slice_(cg: ChannelGraph, n: Node, v: Value, axis) -> str | None:
    """Constant bounds: y[c] ~ x[start + c], and the bounds shrink by the channels removed before
    them (counted from the end for negative bounds). Bounds computed from x's own width: an
    equal piece (chunk), tied to the others."""
    x, y = n.inputs[0], n.outputs[0]
    if v is not x and v is not y:
        return None  # a bound: followed from the Shape it reads
    rank = len(x.shape)
    starts = evaluate(cg, n.inputs[1], {})
    count = starts.size if starts is not None else (n.inputs[1].shape or (1,))[0]
    axes_v = n.inputs[3] if len(n.inputs) > 3 else None
    axes = evaluate(cg, axes_v, {}) if axes_v is not None else np.arange(count if isinstance(count, int) else 1)
    if axes is None:
        return "a slice along computed axes"
    axes = [int(a) % rank for a in axes.reshape(-1)]
    comps = axes_of(axis)
    cut = [a for a in comps if a in axes]
    if not cut:
        cg.project(v, axis, y if v is x else x, list(comps))
        return None
    if len(cut) > 1 or isinstance(axis, tuple):
        return "a slice of channels spread over several axes"
    k, size = axes.index(axis), cg.dims(x, axis)
    if size is None:
        return "a slice of an axis without static size"
    size = size[0]
    constant = all(u is not None and u.const is not None for u in n.inputs[1:3])
    if not constant:
        got = chunk_piece(cg, n, axis, k, size)
        if isinstance(got, str):
            return got
        j, m = got
        _equal(cg, x, y, axis, axis, j * (size // m))
        return _join(cg, x, y, v, axis, axis, j * (size // m))
    steps = n.inputs[4] if len(n.inputs) > 4 else None
    if steps is not None and (steps.const is None or int(np.asarray(steps.const.numpy()).reshape(-1)[k]) != 1):
        return "a strided slice of these channels"
    s, e = (int(np.asarray(u.const.numpy()).reshape(-1)[k]) for u in n.inputs[1:3])
    idx = range(size)[slice(s, e)]
    why = _join(cg, x, y, v, axis, axis, idx.start) if len(idx) else None
    for u, b in ((n.inputs[1], s), (n.inputs[2], e)):
        if 0 < b < size:  # now b - (channels removed below b)
            cg.shape_members[(x.name, axis)].append((u.name, k, 1, 1, (0, b)))
        elif -size <= b < 0:  # counted from the end: b + (channels removed at or after size + b)
            cg.shape_members[(x.name, axis)].append((u.name, k, -1, 1, (size + b, size)))
    return why
