"""Channel rules of attention: matmuls of two activations and scaled_dot_product_attention
(heads are batch axes that meet in every operand; see ``channel_rules.py`` for the rest).

    q [B, H, L, E] x k^T [B, H, E, S]  ->  scores [B, H, L, S]:  q[h] ~ k[h] ~ scores[h]; q[.., e] ~ k[.., e]
"""
from __future__ import annotations

from typing import Any

from refold.ir.graph import Node, Value

ChannelGraph = Any  # the builder in channels.py (which imports the rules that import these)


def axes_of(axis) -> tuple:
    return axis if isinstance(axis, tuple) else (axis,)



def attention_matmul(cg: ChannelGraph, n: Node, v: Value, axis) -> str | None:
    """[..., M, K] x [..., K, N]: batch axes (heads) meet in all three; K links a and b; M links a
    and y; N links b and y."""
    a, b, y = n.inputs[0], n.inputs[1], n.outputs[0]
    ra, rb, ry = len(a.shape), len(b.shape), len(y.shape)
    if ra < 2 or rb < 2:
        return "a matrix-vector product"
    role = {}
    for u, r in ((a, ra), (b, rb), (y, ry)):
        for ax in range(r - 2):
            role[(id(u), ax)] = ("batch", ax - r)  # right-aligned batch position
    role[(id(a), ra - 2)], role[(id(a), ra - 1)] = ("M", 0), ("K", 0)
    role[(id(b), rb - 2)], role[(id(b), rb - 1)] = ("K", 0), ("N", 0)
    role[(id(y), ry - 2)], role[(id(y), ry - 1)] = ("M", 0), ("N", 0)

    def where(u, r, kind):
        name, pos = kind
        if name == "batch":
            return pos + r if pos + r >= 0 and pos + r < r - 2 else None
        return {"M": r - 2 if u is not b else None, "K": (r - 1 if u is a else r - 2) if u is not y else None,
                "N": r - 1 if u is not a else None}[name]

    cg.attention.add((v.name, axis))
    for u, r in ((a, ra), (b, rb), (y, ry)):
        if u is v:
            continue
        cg.project(v, axis, u, [where(u, r, role[(id(v), c)]) for c in axes_of(axis)])
    return None


def sdpa(cg: ChannelGraph, n: Node, v: Value, axis) -> str | None:
    """scaled_dot_product_attention(q [B,H,L,E], k [B,H,S,E], v [B,H,S,Ev]) -> [B,H,L,Ev]: heads
    meet in all four, E links q and k, S links k and v, Ev links v and the output. The default
    scale is 1/sqrt(E): only whole heads go (every E of a head meets in one channel of the
    output's head axis)."""
    q, k, val = n.inputs[0], n.inputs[1], n.inputs[2]
    y = n.outputs[0]
    if v not in (q, k, val, y):
        return "an attention mask's channels"
    if any(u.shape is None or len(u.shape) != 4 for u in (q, k, val, y)):
        return "attention over tensors that are not [B, H, T, E]"
    if q.shape[1] != k.shape[1]:
        return "grouped-query attention (query heads per key/value head) is not handled yet"
    table = {id(q): {0: 0, 1: 1, 2: "L", 3: "E"}, id(k): {0: 0, 1: 1, 2: "S", 3: "E"},
             id(val): {0: 0, 1: 1, 2: "S", 3: "Ev"}, id(y): {0: 0, 1: 1, 2: "L", 3: "Ev"}}
    names = {id(q): {"L": 2, "E": 3}, id(k): {"S": 2, "E": 3}, id(val): {"S": 2, "Ev": 3}, id(y): {"L": 2, "Ev": 3}}
    roles = [table[id(v)][c] for c in axes_of(axis)]
    cg.attention.add((v.name, axis))
    for u in (q, k, val, y):
        if u is v:
            continue
        cg.project(v, axis, u, [r if isinstance(r, int) else names[id(u)].get(r) for r in roles])
    if len(n.inputs) > 3 and n.inputs[3] is not None and n.inputs[3].shape is not None and v is not n.inputs[3]:
        m = n.inputs[3]
        cg.project(v, axis, m, [(r - 4 + len(m.shape)) if r in (0, 1) and len(m.shape) == 4 else None
                                for r in roles])
    return None
