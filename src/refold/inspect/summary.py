"""A model at a glance: interface, op histogram, parameter count."""
from __future__ import annotations

from collections import Counter
from typing import Any

from refold.inspect.snapshot import constant_nodes
from refold.ir.graph import Model


def summarize(m: Model) -> dict[str, Any]:
    ops = Counter(n.qualified_op for n in m.graph.all_nodes())
    consts = constant_nodes(m.graph)
    if consts:  # weights held in Constant nodes: nodes of the file like any other
        ops["onnx.Constant"] += consts
    return {
        "path": m.meta.get("path"),
        "ir_version": m.ir_version,
        "opsets": {d or "ai.onnx": v for d, v in m.opset_imports.items()},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "inputs": [{"name": v.name, "type": v.type_str()} for v in m.graph.inputs if v.const is None],
        "outputs": [{"name": v.name, "type": v.type_str()} for v in m.graph.outputs],
        "nodes": sum(ops.values()),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "parameters": m.parameter_count(),
        "subgraphs": sum(1 for _ in m.graph.all_graphs()) - 1,
        "functions": len(m.functions),
    }


def format_summary(s: dict[str, Any]) -> str:
    lines = []
    if s["path"]:
        lines.append(f"model       {s['path']}")
    lines.append(f"format      ONNX ir_version {s['ir_version']}, opsets "
                 + ", ".join(f"{d} {v}" for d, v in s["opsets"].items()))
    if s["producer"]:
        lines.append(f"producer    {s['producer']}")
    for key in ("inputs", "outputs"):
        for i, io in enumerate(s[key]):
            lines.append(f"{key if i == 0 else '':<11} {io['name']}: {io['type']}")
    lines.append(f"parameters  {s['parameters']:,}")
    extra = f" ({s['subgraphs']} subgraphs, {s['functions']} functions)" if s["subgraphs"] or s["functions"] else ""
    lines.append(f"nodes       {s['nodes']}{extra}")
    width = max((len(k) for k in s["ops"]), default=0)
    for op, n in s["ops"].items():
        lines.append(f"  {op:<{width}} {n:>6}")
    return "\n".join(lines)


def format_kernels(rows: list[dict]) -> str:
    """One line per fused block: its name, what it became (a TVM kernel with its schedule, torch
    with the reason, or planned only) and its nodes."""
    if not rows:
        return "fused blocks: none"
    built = [r for r in rows if r["status"] != "planned"]
    head = (f"kernels: {sum(r['status'] == 'kernel' for r in rows)} of {len(rows)} blocks "
            f"({sum(r['status'] == 'torch' for r in rows)} run in torch)" if built else
            f"fused blocks: {len(rows)} (what `refold compile` builds, one kernel each)")
    width = max(len(r["block"]) for r in rows)
    lines = [head]
    for r in rows:
        what = {"kernel": "kernel", "torch": "torch ", "planned": ""}[r["status"]]
        detail = f" [{r['detail']}]" if r["detail"] else ""
        nodes = ", ".join(r["nodes"][:6]) + (f", ... ({len(r['nodes'])} nodes)" if len(r["nodes"]) > 6 else "")
        lines.append(f"  {r['block']:<{width}}  {what}{' ' if what else ''}{nodes}{detail}")
    return "\n".join(lines)
