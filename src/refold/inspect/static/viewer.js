// refold graph viewer: one or two graphs side by side, laid out with dagre, changed nodes linked.
// Large graphs are grouped by module / name scope; a group box opens on click.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("refold-data").textContent);
  const LIMIT = 400;       // most boxes laid out at once per side
  const CHUNK = 150;       // nodes per synthetic group when a big graph has no scopes
  const READABLE = 0.75;   // the first screen never shrinks boxes below this: their names stay legible
  const MARGIN = 10;       // px between a pane's edge and the graph on the first screen
  const SVGNS = "http://www.w3.org/2000/svg";
  const t0 = performance.now();
  const panes = [];

  function el(tag, attrs, parent) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function h(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  function hue(name) {  // a stable colour per kernel name
    let x = 0;
    for (const c of name) x = (x * 31 + c.charCodeAt(0)) >>> 0;
    return "hsl(" + (x % 360) + ", 65%, 48%)";
  }
  function shape(s) { return s === null || s === undefined ? "?" : "[" + s.join(", ") + "]"; }

  class Pane {
    constructor(side, index) {
      this.side = side;
      this.index = index;
      this.nodes = side.nodes;
      this.byKey = new Map(this.nodes.map((n) => [n.k, n]));
      this.root = h("div", undefined, "pane");
      this.root.id = "pane-" + "ab"[index];
      this.root.dataset.nodeCount = String(this.nodes.length);
      const head = h("div", undefined, "pane-head");
      head.appendChild(h("strong", side.title || (index ? "after" : "before")));
      const count = side.count == null || side.count < 0 ? this.nodes.length : side.count;
      this.root.dataset.fileCount = String(count);
      head.appendChild(h("span", " " + count + " nodes" +
        (count !== this.nodes.length ? " (" + this.nodes.length + " drawn; Constant nodes are inputs here)" : "") + ", " +
        side.parameters.toLocaleString() + " parameters", "muted"));
      this.root.appendChild(head);
      this.svg = el("svg", { class: "graph" }, this.root);
      const defs = el("defs", {}, this.svg);
      const m = el("marker", { id: "arrow" + index, viewBox: "0 0 10 10", refX: 10, refY: 5,
        markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" }, defs);
      el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }, m);
      this.view = el("g", { class: "view" }, this.svg);
      this.k = 1; this.tx = 20; this.ty = 20;
      this.groups = this.buildGroups();
      this.open = new Set();
      this.regroup();
      this.bindPanZoom();
    }

    // -- grouping --------------------------------------------------------------------------------
    buildGroups() {
      const big = this.nodes.length > LIMIT;
      const groups = new Map();  // id -> {id, parent, size, children:Set, status}
      const get = (id, parent) => {
        if (!groups.has(id)) {
          groups.set(id, { id, parent, size: 0, kids: new Set(), changed: 0 });
          if (parent !== null) get(parent, parent.includes("/") ? parent.slice(0, parent.lastIndexOf("/")) : "").kids.add(id);
        }
        return groups.get(id);
      };
      get("", null);
      this.nodes.forEach((n, i) => {
        let sc = n.sc || [];
        if (big && sc.length === 0) sc = ["#" + Math.floor(i / CHUNK) * CHUNK];
        n.path = [];
        let id = "";
        for (const part of sc) {
          const pid = id;
          id = id ? id + "/" + part : part;
          get(id, pid);
          n.path.push(id);
        }
        for (const g of ["", ...n.path]) {
          const G = groups.get(g);
          G.size++;
          if (n.st !== "same") G.changed++;
        }
        groups.get(id).kids.add("node:" + n.k);
      });
      return groups;
    }

    regroup() {
      // open groups breadth first, biggest first, while the boxes on screen stay under LIMIT
      this.open = new Set([""]);
      let visible = this.groups.get("").kids.size;
      let frontier = [...this.groups.get("").kids].filter((k) => this.groups.has(k));
      while (frontier.length) {
        frontier.sort((x, y) => this.groups.get(y).size - this.groups.get(x).size);
        const next = [];
        for (const id of frontier) {
          const g = this.groups.get(id);
          if (visible - 1 + g.kids.size <= LIMIT) {
            this.open.add(id);
            visible += g.kids.size - 1;
            for (const k of g.kids) if (this.groups.has(k)) next.push(k);
          }
        }
        frontier = next;
      }
      this.layout();
    }

    rep(n) {  // the box that shows node n: itself, or its outermost closed group
      for (const g of n.path) if (!this.open.has(g)) return "group:" + g;
      return "node:" + n.k;
    }

    // -- layout and drawing ----------------------------------------------------------------------
    layout() {
      const g = new dagre.graphlib.Graph();
      g.setGraph({ rankdir: "TB", nodesep: 18, ranksep: 28, marginx: 10, marginy: 10,
        ranker: this.nodes.length > 200 ? "tight-tree" : "network-simplex" });
      g.setDefaultEdgeLabel(() => ({}));
      const boxes = new Map();
      for (const n of this.nodes) {
        const r = this.rep(n);
        if (!boxes.has(r)) {
          let label, sub, status, count = 1;
          if (r.startsWith("group:")) {
            const G = this.groups.get(r.slice(6));
            label = r.slice(6).split("/").pop();
            count = G.size;
            sub = G.size + " nodes" + (G.changed ? ", " + G.changed + " differ" : "");
            status = G.changed ? "changed" : "same";
          } else {
            label = n.op;
            sub = n.kn ? n.kn.block + " · " + (n.n || n.k) : n.n || n.k;
            status = n.st;
          }
          const w = Math.min(260, Math.max(70, 7 * Math.max(label.length, Math.min(sub.length, 34)) + 16));
          boxes.set(r, { label, sub, status, count, width: w, height: 38, node: r.startsWith("node:") ? n : null });
          g.setNode(r, boxes.get(r));
        }
      }
      for (const n of this.nodes) {
        const dst = this.rep(n);
        for (const p of n.i) {
          if (!p || !p[4] || !this.byKey.has(p[4])) continue;
          const src = this.rep(this.byKey.get(p[4]));
          if (src !== dst && !g.hasEdge(src, dst)) g.setEdge(src, dst);
        }
      }
      dagre.layout(g);
      this.draw(g, boxes);
    }

    draw(g, boxes) {
      this.view.textContent = "";
      const edges = el("g", { class: "edges" }, this.view);
      for (const e of g.edges()) {
        const pts = g.edge(e).points;
        el("path", { d: "M" + pts.map((p) => p.x.toFixed(1) + "," + p.y.toFixed(1)).join("L"),
          "marker-end": "url(#arrow" + this.index + ")" }, edges);
      }
      this.boxEls = new Map();
      for (const id of g.nodes()) {
        const b = g.node(id);
        const grp = el("g", { class: "node " + b.status + (id.startsWith("group:") ? " group" : ""),
          transform: "translate(" + (b.x - b.width / 2) + "," + (b.y - b.height / 2) + ")" }, this.view);
        grp.dataset.id = id;
        if (b.node) grp.dataset.key = b.node.k;
        el("rect", { width: b.width, height: b.height, rx: 4 }, grp);
        if (b.node && b.node.kn) {  // a stripe in the kernel's own colour; grey: the block runs in torch
          const kn = b.node.kn;
          grp.classList.add("in-" + kn.status);
          grp.dataset.kernel = kn.block;
          el("rect", { width: 5, height: b.height, rx: 2, class: "kstripe",
            fill: kn.status === "torch" ? "#9aa1ad" : hue(kn.block) }, grp);
        }
        el("text", { x: 8, y: 15, class: "op" }, grp).textContent = b.label;
        el("text", { x: 8, y: 30, class: "sub" }, grp).textContent = b.sub.length > 36 ? b.sub.slice(0, 35) + "…" : b.sub;
        grp.addEventListener("click", (ev) => { ev.stopPropagation(); this.clicked(id, b); });
        this.boxEls.set(id, { el: grp, box: b });
      }
      this.root.dataset.rendered = String(g.nodeCount());
      this.graphSize = [g.graph().width, g.graph().height];
      this.apply();
    }

    apply() { this.view.setAttribute("transform", "translate(" + this.tx + "," + this.ty + ") scale(" + this.k + ")"); }

    bindPanZoom() {
      let drag = null;
      this.svg.addEventListener("mousedown", (e) => { drag = [e.clientX - this.tx, e.clientY - this.ty]; });
      window.addEventListener("mousemove", (e) => { if (drag) { this.tx = e.clientX - drag[0]; this.ty = e.clientY - drag[1]; this.apply(); } });
      window.addEventListener("mouseup", () => { drag = null; });
      this.svg.addEventListener("wheel", (e) => {
        e.preventDefault();
        const r = this.svg.getBoundingClientRect();
        const x = e.clientX - r.left, y = e.clientY - r.top;
        const f = Math.exp(-e.deltaY * 0.0015);
        const k = Math.min(4, Math.max(0.05, this.k * f));
        this.tx = x - (x - this.tx) * (k / this.k);
        this.ty = y - (y - this.ty) * (k / this.k);
        this.k = k;
        this.apply();
      }, { passive: false });
    }

    // -- the first screen: the graph's inputs at a readable scale --------------------------------
    firstBoxes() {  // the boxes of the nodes that read a graph input, in graph order; else the top rank
      const inputs = new Set(this.side.inputs.map((p) => p[0]));
      const ids = new Set();
      for (const n of this.nodes) if (n.i.some((p) => p && !p[3] && inputs.has(p[0]))) ids.add(this.rep(n));
      const boxes = [...ids].map((id) => this.boxEls.get(id).box);
      if (boxes.length) return boxes;
      const all = [...this.boxEls.values()].map((it) => it.box);
      const top = Math.min(...all.map((b) => b.y));
      return all.filter((b) => b.y === top).sort((a, b) => a.x - b.x);
    }

    home() {
      // The whole graph if it fits at a readable scale; else the width if that is readable; else
      // READABLE, scrolled to the inputs. Fitting a wide graph's width instead (a quantized CNN whose
      // weights' DequantizeLinear boxes spread 14,000 px) drew it at 0.3 and opened on blank space.
      const r = this.svg.getBoundingClientRect();
      const w = r.width || 600, h = r.height || 400;
      const [gw, gh] = this.graphSize.map((v) => v || 1);
      const fitW = (w - 2 * MARGIN) / gw, fitH = (h - 2 * MARGIN) / gh;
      const whole = Math.min(1, fitW, fitH);
      this.k = whole >= READABLE ? whole : Math.max(READABLE, Math.min(1, fitW));
      const k = this.k;
      let boxes = this.boxEls.size ? this.firstBoxes() : [];
      const span = (bs) => [Math.min(...bs.map((b) => b.x - b.width / 2)), Math.max(...bs.map((b) => b.x + b.width / 2))];
      if (boxes.length && (span(boxes)[1] - span(boxes)[0]) * k > w - 2 * MARGIN) boxes = boxes.slice(0, 1);
      // across: centre the inputs, but leave no blank beside the graph when it is wider than the pane
      const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
      if (gw * k <= w - 2 * MARGIN || !boxes.length) this.tx = Math.max(MARGIN, (w - gw * k) / 2);
      else {
        const [x0, x1] = span(boxes);
        this.tx = clamp(w / 2 - (x0 + x1) / 2 * k, w - MARGIN - gw * k, MARGIN);
      }
      // down: the graph's top, unless that leaves the inputs' boxes below the pane (a graph input read
      // only after a shape computation): then the highest of them at the top
      const y0 = boxes.length ? Math.min(...boxes.map((b) => b.y - b.height / 2)) : 0;
      const y1 = boxes.length ? Math.max(...boxes.map((b) => b.y + b.height / 2)) : 0;
      this.ty = y1 * k <= h - 2 * MARGIN ? MARGIN : clamp(2 * MARGIN - y0 * k, h - MARGIN - gh * k, MARGIN);
      this.apply();
    }

    center(id) {
      const it = this.boxEls.get(id);
      if (!it) return;
      const r = this.svg.getBoundingClientRect();
      const b = it.box;
      this.tx = r.width / 2 - b.x * this.k;
      this.ty = r.height / 2 - b.y * this.k;
      this.apply();
    }

    reveal(key) {  // open the groups around node `key`, then center and mark it
      const n = this.byKey.get(key);
      if (!n) return false;
      let changed = false;
      for (const g of n.path) if (!this.open.has(g)) { this.open.add(g); changed = true; }
      if (changed) this.layout();
      this.mark("node:" + key);
      this.center("node:" + key);
      return true;
    }

    mark(id) {
      for (const pane of panes) for (const { el: e } of pane.boxEls.values()) e.classList.remove("selected");
      const it = this.boxEls.get(id);
      if (it) it.el.classList.add("selected");
    }

    clicked(id, b) {
      if (id.startsWith("group:")) {
        this.open.add(id.slice(6));
        this.layout();
        return;
      }
      const n = b.node;
      this.mark(id);
      const other = partner(this.index, n.k);
      if (other) {
        const p = panes[1 - this.index];
        p.reveal(other);
        p.boxEls.get("node:" + other)?.el.classList.add("selected");
      }
      showDetails(this, n, other);
    }
  }

  function partner(index, key) {
    if (!DATA.pairs || panes.length < 2) return null;
    if (index === 0) return DATA.pairs[key] || null;
    if (!DATA._rev) DATA._rev = Object.fromEntries(Object.entries(DATA.pairs).map(([a, b]) => [b, a]));
    return DATA._rev[key] || null;
  }

  function showDetails(pane, n, other) {
    const d = document.getElementById("details");
    d.textContent = "";
    d.appendChild(h("h2", n.op));
    const dl = h("dl");
    const row = (k, v) => { dl.appendChild(h("dt", k)); dl.appendChild(h("dd", v)); };
    row("name", n.n || "(unnamed)");
    row("side", pane.side.title || (pane.index ? "after" : "before"));
    row("status", n.st + (other ? " (paired with " + other + ")" : ""));
    if (n.sc && n.sc.length) row("scope", n.sc.join("/"));
    if (n.pv) row("provenance", n.pv.rule + " from " + (n.pv.sources || []).join(", "));
    if (n.kn) {
      const what = { kernel: "TVM kernel", torch: "runs in torch", planned: "fused block (not built)" }[n.kn.status];
      row("kernel", n.kn.block + " (" + n.kn.kind + "): " + what + (n.kn.detail ? ", " + n.kn.detail : ""));
    }
    if (pane.index === 0 && DATA.removed_by && DATA.removed_by[n.k]) row("removed by", DATA.removed_by[n.k]);
    d.appendChild(dl);
    if (n.ch) {
      d.appendChild(h("h3", "changes"));
      const ul = h("ul", undefined, "changes");
      n.ch.forEach((c) => ul.appendChild(h("li", c)));
      d.appendChild(ul);
    }
    const table = (title, rows, cols) => {
      if (!rows.length) return;
      d.appendChild(h("h3", title));
      const t = h("table");
      const tr = h("tr");
      cols.forEach((c) => tr.appendChild(h("th", c)));
      t.appendChild(tr);
      rows.forEach((r) => { const x = h("tr"); r.forEach((c) => x.appendChild(h("td", c))); t.appendChild(x); });
      d.appendChild(t);
    };
    table("attributes", Object.entries(n.a).map(([k, v]) => [k, v]), ["name", "value"]);
    table("inputs", n.i.map((p, i) => p ? [String(i), p[0], (p[1] || "?") + shape(p[2]), p[3] ? "constant" : (p[4] || "input")]
      : [String(i), "(omitted)", "", ""]), ["#", "value", "type", "from"]);
    table("outputs", n.o.map((p, i) => [String(i), p[0], (p[1] || "?") + shape(p[2])]), ["#", "value", "type"]);
  }

  // -- page ----------------------------------------------------------------------------------------
  document.getElementById("title").textContent = DATA.title || "refold";
  const main = document.getElementById("panes");
  DATA.sides.forEach((s, i) => { const p = new Pane(s, i); panes.push(p); main.appendChild(p.root); });
  main.classList.toggle("two", panes.length === 2);
  if (panes.length < 2) document.getElementById("legend").style.display = "none";

  const sum = document.getElementById("summary");
  if (DATA.summary) {
    const s = DATA.summary;
    sum.appendChild(h("p", "matched " + s.matched + " (unchanged " + s.unchanged + "), changed " + s.changed +
      ", removed " + s.removed + ", added " + s.added + "; parameters " + (s.parameters_delta >= 0 ? "+" : "") +
      s.parameters_delta.toLocaleString()));
    const ops = Object.entries(s.ops_delta || {});
    if (ops.length) sum.appendChild(h("p", "ops: " + ops.map(([k, v]) => k + " " + v.a + "→" + v.b).join(", "), "muted"));
  }
  {  // kernels: how many blocks became one, and which run in torch
    const blocks = new Map();
    panes.forEach((p) => p.nodes.forEach((n) => { if (n.kn) blocks.set(n.kn.block, n.kn); }));
    if (blocks.size) {
      const all = [...blocks.values()];
      const count = (st) => all.filter((k) => k.status === st).length;
      const torch = all.filter((k) => k.status === "torch");
      sum.appendChild(h("p", all.some((k) => k.status === "planned") ? blocks.size + " fused blocks (not built)"
        : count("kernel") + " TVM kernels, " + torch.length + " blocks in torch" +
          (torch.length ? ": " + torch.map((k) => k.block + " (" + k.detail + ")").join("; ") : "")));
    }
  }
  // HAWQ's size / sensitivity frontier: every allocation not beaten on both, the chosen one in red
  function frontierPlot(points, chosen) {
    const NS = "http://www.w3.org/2000/svg", W = 420, H = 220, L = 60, B = 34;
    const el = (tag, attrs, text) => {
      const e = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
      if (text !== undefined) e.textContent = text;
      return e;
    };
    const logy = points.every(([, c]) => c > 0);
    const ys = points.map(([, c]) => (logy ? Math.log10(c) : c));
    const xs = points.map(([s]) => s);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const px = (x) => L + (x1 > x0 ? (x - x0) / (x1 - x0) : 0.5) * (W - L - 10);
    const py = (y) => H - B - (y1 > y0 ? (y - y0) / (y1 - y0) : 0.5) * (H - B - 10);
    const svg = el("svg", { width: W, height: H, class: "frontier", role: "img" });
    svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - 10, y2: H - B, stroke: "#888" }));
    svg.appendChild(el("line", { x1: L, y1: 10, x2: L, y2: H - B, stroke: "#888" }));
    svg.appendChild(el("text", { x: (W + L) / 2, y: H - 6, "text-anchor": "middle", "font-size": 11 }, "weights (MB)"));
    svg.appendChild(el("text", { x: 12, y: H / 2, "font-size": 11, transform: "rotate(-90 12 " + H / 2 + ")", "text-anchor": "middle" },
      logy ? "log10 sensitivity" : "sensitivity"));
    svg.appendChild(el("text", { x: L, y: H - B + 14, "font-size": 10, "text-anchor": "middle" }, String(+x0.toPrecision(3))));
    svg.appendChild(el("text", { x: W - 10, y: H - B + 14, "font-size": 10, "text-anchor": "end" }, String(+x1.toPrecision(3))));
    points.forEach(([s], i) => svg.appendChild(el("circle", { cx: px(s), cy: py(ys[i]), r: 2.5, fill: "#555" })));
    if (chosen) {
      const cy = logy ? Math.log10(chosen[1]) : chosen[1];
      svg.appendChild(el("circle", { cx: px(chosen[0]), cy: py(cy), r: 5, fill: "none", stroke: "#d22", "stroke-width": 2 }));
    }
    const box = h("div", undefined, "passtable");
    box.appendChild(h("p", "size / sensitivity frontier (" + points.length + " points; red: chosen)", "muted"));
    box.appendChild(svg);
    return box;
  }

  if (DATA.passes) {
    const t = h("table", undefined, "passes");
    const head = h("tr");
    ["pass", "time", "nodes before", "nodes after", "max abs err", "max rel err", "changes"].forEach((c) => head.appendChild(h("th", c)));
    t.appendChild(head);
    for (const p of DATA.passes) {
      const r = h("tr");
      [p.name, (p.seconds * 1000).toFixed(1) + " ms", String(p.nodes_before), String(p.nodes_after),
        p.max_abs === null ? "-" : p.max_abs.toPrecision(3), p.max_rel === null ? "-" : p.max_rel.toPrecision(3),
        Object.entries(p.stats).map(([k, v]) => k + "=" + v).join(", ")].forEach((c) => r.appendChild(h("td", c)));
      t.appendChild(r);
      const extra = [];
      for (const [title, rows] of Object.entries(p.tables || {})) {
        const box = h("div", undefined, "passtable");
        box.appendChild(h("p", title, "muted"));
        const tt = h("table");
        rows.forEach((row, i) => {
          const rr = h("tr");
          row.forEach((c) => rr.appendChild(h(i ? "td" : "th", typeof c === "number" ? String(+c.toPrecision(4)) : String(c))));
          tt.appendChild(rr);
        });
        box.appendChild(tt);
        extra.push(box);
      }
      if (p.frontier && p.frontier.length) extra.push(frontierPlot(p.frontier, p.chosen));
      if (extra.length) {
        const tr = h("tr"), td = h("td");
        td.colSpan = 7;
        extra.forEach((e) => td.appendChild(e));
        tr.appendChild(td);
        t.appendChild(tr);
      }
    }
    sum.appendChild(t);
    if (DATA.check) sum.appendChild(h("p", "check: " + DATA.check, "muted"));
  }

  let hits = [], hit = -1;
  const search = document.getElementById("search");
  const matches = (n, q) => (n.n || n.k).toLowerCase().includes(q) || n.op.toLowerCase().includes(q);
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    hits = [];
    hit = -1;
    if (q) panes.forEach((p) => p.nodes.forEach((n) => {
      if (matches(n, q)) hits.push([p, n]);
    }));
    document.getElementById("found").textContent = q ? hits.length + " found" : "";
    for (const p of panes) for (const { el: e, box } of p.boxEls.values())
      e.classList.toggle("hit", !!q && !!box.node && matches(box.node, q));
  });
  search.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !hits.length) return;
    hit = (hit + 1) % hits.length;
    const [p, n] = hits[hit];
    p.reveal(n.k);
    showDetails(p, n, partner(p.index, n.k));
  });
  document.getElementById("collapse").addEventListener("click", () => panes.forEach((p) => { p.regroup(); p.home(); }));
  panes.forEach((p) => p.home());
  document.body.dataset.ready = "1";
  document.body.dataset.renderMs = String(Math.round(performance.now() - t0));
  window.refoldViewer = { panes, data: DATA };
})();
