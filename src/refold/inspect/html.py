"""One self-contained HTML file: graphs side by side, changed nodes highlighted and linked.

The page carries its data as JSON and its code inline: the viewer (``static/viewer.js``) and the
layered layout library dagre (``static/dagre.min.js``, MIT, vendored from the npm package
``@dagrejs/dagre`` 3.1.3). No network, no CDN: the file opens offline and can be mailed around.
"""
from __future__ import annotations

import html as _html
import json
import re
from importlib import resources
from typing import Any

from refold.inspect.diff import GraphDiff, as_snapshot, diff
from refold.inspect.snapshot import Snapshot


def _static(name: str) -> str:
    return resources.files("refold.inspect").joinpath("static", name).read_text(encoding="utf-8")


def _side(s: Snapshot, status: dict[str, str], changes: dict[str, list[str]]) -> dict[str, Any]:
    nodes = []
    for n in s.nodes:
        d = {"k": n.key, "n": n.name, "op": n.op, "a": n.attrs, "sc": n.scope,
             "i": [None if p is None else [p.name, p.dtype, p.shape, p.const, p.producer] for p in n.inputs],
             "o": [[p.name, p.dtype, p.shape] for p in n.outputs],
             "st": status.get(n.key, "same")}
        if n.provenance:
            d["pv"] = n.provenance
        if n.kernel:
            d["kn"] = n.kernel
        if n.key in changes:
            d["ch"] = changes[n.key]
        nodes.append(d)
    return {"title": s.title, "nodes": nodes, "count": s.node_count, "parameters": s.parameters,
            "inputs": [[p.name, p.dtype, p.shape] for p in s.inputs], "outputs": s.outputs}


def payload(a: Snapshot, b: Snapshot | None = None, d: GraphDiff | None = None, report=None,
            title: str = "") -> dict[str, Any]:
    sides = []
    if b is None:
        sides.append(_side(a, {}, {}))
    else:
        d = d or diff(a, b)
        ch = {c.b: c.what for c in d.changed}
        cha = {c.a: c.what for c in d.changed}
        sa = {k: "removed" for k in (r["a"] for r in d.removed)} | {c.a: "changed" for c in d.changed}
        sb = {k: "added" for k in (r["b"] for r in d.added)} | {c.b: "changed" for c in d.changed}
        sides += [_side(a, sa, cha), _side(b, sb, ch)]
    out: dict[str, Any] = {"title": title, "sides": sides}
    if d is not None:
        out["pairs"] = d.pairs
        out["summary"] = {"matched": len(d.pairs), "unchanged": d.unchanged, "changed": len(d.changed),
                          "added": len(d.added), "removed": len(d.removed),
                          "parameters_delta": b.parameters - a.parameters,
                          "ops_delta": {op: {"a": x, "b": y} for op, (x, y) in d.op_deltas().items()}}
        out["removed_by"] = {r["a"]: r["rule"] for r in d.removed if r.get("rule")}
    if report is not None:
        out["passes"] = [{"name": r.name, "seconds": r.seconds, "nodes_before": r.nodes_before,
                          "nodes_after": r.nodes_after, "max_abs": r.max_abs, "max_rel": r.max_rel,
                          "modified": r.modified,
                          "stats": {k: v for k, v in r.stats.items() if not isinstance(v, (dict, list, tuple))},
                          "tables": r.stats.get("tables") or {}, "frontier": r.stats.get("frontier"),
                          "chosen": r.stats.get("chosen")}
                         for r in report.passes]
        out["check"] = report.check_note
    return out


def render(a: Any, b: Any = None, *, titles: tuple[str, str] = ("", ""), report=None,
           title: str = "refold report") -> str:
    """The HTML page for one graph (``b`` None) or a before/after pair."""
    sa = as_snapshot(a, titles[0])
    sb = as_snapshot(b, titles[1]) if b is not None else None
    data = json.dumps(payload(sa, sb, report=report, title=title), default=str, separators=(",", ":"))
    data = data.replace("</", "<\\/")  # never closes the script element early
    parts = {"@TITLE@": _html.escape(title), "@CSS@": _static("viewer.css"), "@DAGRE@": _static("dagre.min.js"),
             "@VIEWER@": _static("viewer.js"), "@DATA@": data}
    return re.sub(r"@[A-Z]+@", lambda m: parts[m.group(0)], _PAGE)  # one pass: inserted text is not rescanned


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="generator" content="refold">
<title>@TITLE@</title>
<style>@CSS@</style>
</head><body>
<header id="bar">
  <strong id="title"></strong>
  <input id="search" type="search" placeholder="search name or op (Enter: next)" autocomplete="off">
  <span id="found"></span>
  <button id="collapse" type="button" title="group nodes by module scope again and go back to the inputs">regroup</button>
  <span id="legend"><i class="sw changed"></i>changed <i class="sw added"></i>added
  <i class="sw removed"></i>removed</span>
</header>
<section id="summary"></section>
<main id="panes"></main>
<aside id="details"><p class="hint">Click a node to see its attributes, shapes and provenance.
Each pane opens on the graph inputs; drag to pan, wheel to zoom, click a group box to open it.</p></aside>
<script id="refold-data" type="application/json">@DATA@</script>
<script>@DAGRE@</script>
<script>@VIEWER@</script>
</body></html>
"""
