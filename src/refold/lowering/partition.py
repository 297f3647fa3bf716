"""Partition the core-op IR into fused blocks: the units that become one kernel each.

A block kind is a rule in the rewrite syntax (``ir/rewrite.py``); the partitioner tries the kinds
in order (largest first) at each node, from the graph's end backwards, and takes a match when
none of its nodes is in a block already and every value made inside it is read only inside it
(an intermediate someone else reads must be written out, so it ends the block). Elementwise ops
left over grow into chains: an elementwise op joins the block of its single elementwise reader.

    relu(conv(x, W, b))                  -> conv_bias_act
    gelu(linear(x, W, b))                -> linear_act
    layer_norm(x, g, b) / rms_norm(x, g) -> norm
    Q(act(matmul(DQ(xq), DQ(wq))))       -> dequant_matmul_quant (the activation optional; gemm too)
    Q(act(conv(DQ(xq), DQ(wq), b)))      -> dequant_conv_quant (b: the int32 bias's DQ, or float)
    add(mul(x, s), t) ...                -> elementwise

>>> blocks = partition(model)          # doctest: +SKIP
>>> [b.kind for b in blocks]           # doctest: +SKIP
['conv_bias_act', 'conv_bias_act', 'linear']
"""
from __future__ import annotations

import dataclasses

from refold.ir.graph import CORE, Model, Node, Value
from refold.ir.rewrite import Matcher, Var, op

ACTIVATIONS = ("relu", "silu", "sigmoid", "gelu", "hardswish", "tanh")
ELEMENTWISE = {"add", "sub", "mul", "div", *ACTIVATIONS, "sqrt"}

x, w, b = Var("x"), Var("w"), Var("b", optional=True)
xq, sx, zx, wq, sw, zw, sy, zy = (Var(n) for n in ("xq", "sx", "zx", "wq", "sw", "zw", "sy", "zy"))


def _acts(anchor):
    return [op.core.__getattr__(a)(anchor) for a in ACTIVATIONS]


def _table():
    """(kind, pattern) in the order they are tried: a larger block before its parts."""
    conv = op.core.conv(x, w, b, _name="anchor")
    linear = op.core.linear(x, w, b, _name="anchor")
    gemm = op.core.gemm(x, w, b, _name="anchor")
    matmul = op.core.matmul(x, w, _name="anchor")
    dx, dw = op.core.dequantize_linear(xq, sx, zx), op.core.dequantize_linear(wq, sw, zw)
    table = []
    for kind, anchor in (("dequant_matmul_quant", op.core.matmul(dx, dw, _name="anchor")),
                         ("dequant_matmul_quant", op.core.gemm(dx, dw, b, _name="anchor")),
                         ("dequant_conv_quant", op.core.conv(dx, dw, b, _name="anchor"))):
        table += [(kind, op.core.quantize_linear(a, sy, zy)) for a in _acts(anchor)]
        table.append((kind, op.core.quantize_linear(anchor, sy, zy)))
    for kind, anchor in (("conv", conv), ("linear", linear), ("linear", gemm), ("matmul", matmul)):
        table += [(f"{kind}_act" if kind != "conv" else "conv_bias_act", p) for p in _acts(anchor)]
        table.append((kind if kind != "conv" else "conv_bias", anchor))
    table += [("norm", op.core.layer_norm(x, Var("g"), b, _name="anchor")),
              ("norm", op.core.rms_norm(x, Var("g"), _name="anchor"))]
    return table


BLOCKS = _table()


@dataclasses.dataclass
class Block:
    """A fused block: its kind, nodes in graph order, the values it reads and the values it
    writes (read outside it or graph outputs)."""

    index: int
    kind: str
    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.index}"

    @property
    def computed(self) -> list[Node]:
        """The nodes a kernel replaces (a weight's dequantize, computed from constants only, may
        sit in several blocks and is left to run where it is)."""
        return [n for n in self.nodes if not _from_constants(n)]

    def reference(self, args: list):
        """The block's output from its ops' core references in torch (``args`` in ``inputs``
        order; meta tensors give just the shape)."""
        from refold.ir.ops import evaluate

        env = {id(v): t for v, t in zip(self.inputs, args)}
        for n in self.nodes:
            env[id(n.outputs[0])] = evaluate(n.op, [env.get(id(u)) if u is not None else None for u in n.inputs],
                                             n.attrs)[0]
        return env[id(self.outputs[0])]


def partition(model: Model) -> list[Block]:
    """The fused blocks of ``model``'s main graph (core ops; others stay outside any block).
    Each block's name is also left in its nodes' ``meta["block"]``."""
    graph = model.graph
    order = {n: i for i, n in enumerate(graph)}
    taken: set[Node] = set()
    found: list[tuple[str, list[Node]]] = []
    matchers = [(kind, Matcher(p)) for kind, p in BLOCKS]
    for node in reversed(list(graph)):
        if node in taken or node.domain != CORE:
            continue
        for kind, matcher in matchers:
            m = matcher.match(node)
            if m is None:
                continue
            nodes = sorted(set(m.matched), key=order.get)
            if any(n in taken and not _from_constants(n) for n in nodes) or not _closed(graph, nodes):
                continue
            taken.update(n for n in nodes if not _from_constants(n))
            found.append((kind, nodes))
            break
    found += _elementwise_chains(graph, taken, order)
    found.sort(key=lambda kn: order[kn[1][-1]])
    blocks = []
    for kind, nodes in found:
        block = Block(len(blocks), kind, nodes, *_boundary(graph, nodes))
        for n in nodes:
            n.meta.setdefault("block", block.name)
        blocks.append(block)
    return blocks


def _from_constants(n: Node) -> bool:
    """A node computing from constants only (a weight's dequantize): every block that reads it
    recomputes it, so it may sit in several."""
    return all(v is None or v.const is not None for v in n.inputs)


def _closed(graph, nodes: list[Node]) -> bool:
    """Every value made inside, except the last node's, is read only inside (and is not a graph
    output): the block writes one result."""
    inside = set(nodes)
    for n in nodes[:-1]:
        if _from_constants(n):
            continue
        for v in n.outputs:
            if graph.is_output(v) or any(r not in inside for r, _ in v.uses()):
                return False
    return True


def _elementwise_chains(graph, taken: set[Node], order: dict) -> list[tuple[str, list[Node]]]:
    """Elementwise core ops outside the pattern blocks, chained: an op joins its single reader's
    chain when that reader is elementwise too and nothing else reads it."""
    chains: dict[Node, list[Node]] = {}
    for node in reversed(list(graph)):
        if node in taken or node.domain != CORE or node.op not in ELEMENTWISE or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        readers = list(dict.fromkeys(r for r, _ in out.uses()))
        head = readers[0] if len(readers) == 1 and not graph.is_output(out) else None
        if head is not None and head in chains:
            chains[head].insert(0, node)
            chains[node] = chains[head]
        else:
            chains[node] = [node]
        taken.add(node)
    seen, out = set(), []
    for chain in chains.values():
        if id(chain) not in seen:
            seen.add(id(chain))
            out.append(("elementwise", sorted(chain, key=order.get)))
    return out


def _boundary(graph, nodes: list[Node]) -> tuple[list[Value], list[Value]]:
    inside = set(nodes)
    made = {id(v) for n in nodes for v in n.outputs}
    ins: dict[int, Value] = {}
    outs: dict[int, Value] = {}
    for n in nodes:
        for v in n.inputs:
            if v is not None and id(v) not in made:
                ins.setdefault(id(v), v)
        for v in n.outputs:
            if not _from_constants(n) and (graph.is_output(v) or any(r not in inside for r, _ in v.uses())):
                outs.setdefault(id(v), v)
    return list(ins.values()), list(outs.values())
