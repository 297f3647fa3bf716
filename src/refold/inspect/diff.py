"""Compare two graphs node by node, with refold's provenance where B came from A through refold.

Nodes are paired in three rounds, each only among nodes not paired yet:
1. same key (node name, else first output name) and same op;
2. provenance: a B node made by a rule whose sources name an A node of the same op is that node,
   rewritten (a fused conv keeps being "the conv");
3. same op reading the same paired producers (unnamed nodes whose outputs were renamed).
Paired nodes whose attributes, shapes, constants or producers differ are "changed". What is left
is removed (A) or added (B); a removed node named as a source by a B node was removed by that rule.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from refold.inspect.snapshot import NodeView, Snapshot, canonical_op, take


@dataclasses.dataclass
class Change:
    a: str
    b: str
    op: str
    what: list[str]
    rule: str | None = None
    sources: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class GraphDiff:
    a: Snapshot
    b: Snapshot
    pairs: dict[str, str]                      # A key -> B key, every paired node
    changed: list[Change]
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]

    @property
    def unchanged(self) -> int:
        return len(self.pairs) - len(self.changed)

    def op_deltas(self) -> dict[str, tuple[int, int]]:
        a, b = self.a.ops, self.b.ops
        return {op: (a.get(op, 0), b.get(op, 0)) for op in sorted(set(a) | set(b)) if a.get(op, 0) != b.get(op, 0)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": {"title": self.a.title, "nodes": self.a.node_count, "parameters": self.a.parameters},
            "b": {"title": self.b.title, "nodes": self.b.node_count, "parameters": self.b.parameters},
            "matched": len(self.pairs), "unchanged": self.unchanged,
            "changed": [dataclasses.asdict(c) for c in self.changed],
            "added": self.added, "removed": self.removed,
            "parameters_delta": self.b.parameters - self.a.parameters,
            "ops_delta": {op: {"a": x, "b": y, "delta": y - x} for op, (x, y) in self.op_deltas().items()},
        }

    def format(self, limit: int = 50) -> str:
        d = self
        lines = [f"A  {d.a.title}: {d.a.node_count} nodes, {d.a.parameters:,} parameters",
                 f"B  {d.b.title}: {d.b.node_count} nodes, {d.b.parameters:,} parameters",
                 f"matched {len(d.pairs)} (unchanged {d.unchanged}, changed {len(d.changed)}), "
                 f"removed {len(d.removed)}, added {len(d.added)}; parameters "
                 f"{d.b.parameters - d.a.parameters:+,}"]
        deltas = d.op_deltas()
        if deltas:
            lines.append("ops: " + ", ".join(f"{op} {x}->{y}" for op, (x, y) in deltas.items()))

        def section(title: str, rows: list[str]) -> None:
            if rows:
                lines.append(f"{title} ({len(rows)}):")
                lines.extend("  " + r for r in rows[:limit])
                if len(rows) > limit:
                    lines.append(f"  ... {len(rows) - limit} more (--json lists all)")

        section("removed", [f"{r['a']} ({r['op']})" + (f"  removed by {r['rule']}" if r.get("rule") else "")
                            for r in d.removed])
        section("changed", [f"{c.a}" + (f" -> {c.b}" if c.b != c.a else "") + f" ({c.op})"
                            + (f"  [{c.rule} from {', '.join(c.sources)}]" if c.rule else "")
                            + ": " + "; ".join(c.what) for c in d.changed])
        section("added", [f"{r['b']} ({r['op']})" + (f"  [{r['rule']} from {', '.join(r['sources'])}]"
                                                      if r.get("rule") else "") for r in d.added])
        return "\n".join(lines)


def as_snapshot(x: Any, title: str) -> Snapshot:
    """A snapshot of a Model or Graph (a snapshot stays as it is). Files are loaded by the caller."""
    if isinstance(x, Snapshot):
        return x
    from refold.ir.graph import Graph, Model

    if isinstance(x, (Model, Graph)):
        return take(x, title)
    from refold.errors import UsageError

    raise UsageError(f"refold.inspect takes refold Models or snapshots, not a {type(x).__name__}; "
                     f"load it first (refold.load)")


def _known(p) -> bool:
    return p.shape is not None and p.dtype is not None


def _changes(na: NodeView, nb: NodeView, pairs: dict[str, str]) -> list[str]:
    what = []
    keys = sorted(set(na.attrs) | set(nb.attrs))
    for k in keys:
        if na.attrs.get(k) != nb.attrs.get(k):
            what.append(f"attribute {k}: {na.attrs.get(k, '-')} -> {nb.attrs.get(k, '-')}")
    for i in range(max(len(na.inputs), len(nb.inputs))):
        pa = na.inputs[i] if i < len(na.inputs) else None
        pb = nb.inputs[i] if i < len(nb.inputs) else None
        if pa is None and pb is None:
            continue
        if pa is None or pb is None:
            what.append(f"input {i} {'added' if pa is None else 'removed'}")
        elif (pa.const is None) != (pb.const is None):
            what.append(f"input {i} {'became' if pb.const else 'is no longer'} a constant")
        elif pa.const is not None:
            if pa.const != pb.const:
                shape = f" {list(pa.shape)} -> {list(pb.shape)}" if pa.shape != pb.shape else ""
                what.append(f"input {i} constant '{pb.name}' changed{shape}")
        else:
            if _known(pa) and _known(pb) and (pa.shape != pb.shape or pa.dtype != pb.dtype):
                what.append(f"input {i} type {pa.dtype}{list(pa.shape)} -> {pb.dtype}{list(pb.shape)}")
            # a producer that was removed is reported as removed; one that is still there but no
            # longer feeds this input is a rewiring of this node
            if pa.producer in pairs and pairs[pa.producer] != pb.producer:
                what.append(f"input {i} now from {pb.producer or pb.name}")
    for i, (pa, pb) in enumerate(zip(na.outputs, nb.outputs)):
        if _known(pa) and _known(pb) and (pa.shape, pa.dtype) != (pb.shape, pb.dtype):
            what.append(f"output {i} type {pa.dtype}{list(pa.shape)} -> {pb.dtype}{list(pb.shape)}")
    if len(na.outputs) != len(nb.outputs):
        what.append(f"outputs {len(na.outputs)} -> {len(nb.outputs)}")
    return what


def diff(a: Any, b: Any, *, titles: tuple[str, str] = ("", "")) -> GraphDiff:
    """Diff two graphs: refold Models / Graphs or snapshots of them."""
    sa, sb = as_snapshot(a, titles[0]), as_snapshot(b, titles[1])
    ka, kb = sa.by_key(), sb.by_key()
    pairs: dict[str, str] = {}
    rev: dict[str, str] = {}

    def same(x: NodeView, y: NodeView) -> bool:
        return x.op == y.op or canonical_op(x.op) == canonical_op(y.op)

    def pair(x: str, y: str) -> None:
        pairs[x], rev[y] = y, x

    for k, n in ka.items():  # 1. same key, same op
        if k in kb and same(kb[k], n):
            pair(k, k)
    for k, n in kb.items():  # 2. provenance: the rewritten node of the same op
        prov = n.provenance
        if k in rev or not prov:
            continue
        for s in prov.get("sources", []):
            if s in ka and s not in pairs and same(ka[s], n):
                pair(s, k)
                break
    def port_sig(p, mapped: bool):
        if p is None:
            return None
        if p.producer is not None:
            return rev.get(p.producer, p.producer) if mapped else p.producer
        return "<const>" if p.const is not None else p.name

    progress = True
    while progress:  # 3. same op reading the same (paired) producers
        progress = False
        sig: dict[tuple, list[str]] = defaultdict(list)
        for k, n in ka.items():
            if k not in pairs:
                sig[(canonical_op(n.op), tuple(port_sig(p, False) for p in n.inputs))].append(k)
        for k, n in kb.items():
            if k in rev:
                continue
            cands = sig.get((canonical_op(n.op), tuple(port_sig(p, True) for p in n.inputs)))
            if cands:
                pair(cands.pop(0), k)
                progress = True
    removed_by: dict[str, str] = {}
    for n in sb.nodes:
        if n.provenance:
            for s in n.provenance.get("sources", []):
                removed_by.setdefault(s, n.provenance.get("rule"))
    out_changes = []
    for x, y in pairs.items():
        what = _changes(ka[x], kb[y], pairs)
        if what or x != y:
            prov = kb[y].provenance or {}
            out_changes.append(Change(x, y, kb[y].op, what or ["renamed"], prov.get("rule"), list(prov.get("sources", []))))
    removed = [{"a": k, "op": n.op, "rule": removed_by.get(k)} for k, n in ka.items() if k not in pairs]
    added = [{"b": k, "op": n.op, "rule": (n.provenance or {}).get("rule"),
              "sources": list((n.provenance or {}).get("sources", []))} for k, n in kb.items() if k not in rev]
    return GraphDiff(sa, sb, pairs, out_changes, added, removed)
