"""Text form of the IR: one line per node, stable across runs.

    graph main(%x: f32[1,3,8,8]) {
      %w = const f32[4,3,3,3]
      %y = core.conv(%x, %w) {strides=[1,1], pads=[1,1,1,1], dilations=[1,1], group=1}
      return %y
    }
"""
from __future__ import annotations

from typing import Any

from refold.ir.graph import Graph, Model, Node, Value
from refold.ir.tensor import Tensor


def format_attr(v: Any) -> str:
    if isinstance(v, Graph):
        return f"<graph {v.name}>"
    if isinstance(v, Tensor):
        return f"tensor {v.dtype.short}{list(v.shape)}"
    if isinstance(v, bytes):
        return repr(v.decode("utf-8", "replace"))
    if isinstance(v, float):
        return repr(float(f"{v:.7g}"))
    if isinstance(v, list):
        if v and isinstance(v[0], Graph):
            return "[" + ", ".join(f"<graph {g.name}>" for g in v) + "]"
        return "[" + ",".join(format_attr(x) for x in v) + "]"
    if hasattr(v, "DESCRIPTOR"):
        return f"<{type(v).__name__}>"
    return repr(v)


def _ref(v: Value | None) -> str:
    return "_" if v is None or v.kind == "omitted" else f"%{v.name}"


def format_node(n: Node) -> str:
    outs = ", ".join(_ref(v) for v in n.outputs)
    ins = ", ".join(_ref(v) for v in n.inputs)
    attrs = ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items())
    line = f"{outs} = {n.qualified_op}({ins})" if outs else f"{n.qualified_op}({ins})"
    return line + (f" {{{attrs}}}" if attrs else "")


def format_graph(g: Graph, indent: str = "", *, types: bool = True) -> str:
    sig = ", ".join(f"%{v.name}: {v.type_str()}" if types else f"%{v.name}" for v in g.inputs)
    lines = [f"{indent}graph {g.name or '_'}({sig}) {{"]
    inner = indent + "  "
    input_ids = {id(v) for v in g.inputs}
    for v in g.initializers.values():
        if id(v) not in input_ids and v.const is not None:
            lines.append(f"{inner}%{v.name} = const {v.type_str()}")
    for n in g:
        line = inner + format_node(n)
        if types:
            typed = [v.type_str() for v in n.outputs if v.kind != "omitted"]
            if any(t != "?" for t in typed):
                line += "  # " + ", ".join(typed)
        lines.append(line)
        for sub in n.subgraphs():
            lines.append(format_graph(sub, inner + "  ", types=types))
    lines.append(f"{inner}return " + ", ".join(_ref(v) for v in g.outputs))
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def format_model(m: Model, *, types: bool = True) -> str:
    opsets = ", ".join(f"{d or 'ai.onnx'}:{v}" for d, v in m.opset_imports.items())
    return f"# opsets {opsets}\n" + format_graph(m.graph, types=types)
