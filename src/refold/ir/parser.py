"""Read the printer's text form back into a Model, so tests write graphs the way they read them.

    >>> m = parse_model('''
    ... # opsets ai.onnx:17
    ... graph g(%x: f32[1,4]) {
    ...   %w = const f32[4,4]
    ...   %y = onnx.MatMul(%x, %w)
    ...   %z = onnx.Relu(%y)
    ...   return %z
    ... }''', consts={"w": np.eye(4, dtype=np.float32)})
    >>> [n.op for n in m.graph]
    ['MatMul', 'Relu']

Constants carry no data in the text: ``consts`` gives their arrays, and any left out are filled
with seeded random numbers (standard normal; positive for names ending in ``var``, which is what a
BatchNorm variance must be). ONNX and core ops are supported; ``# f32[...]`` comments after a node
give its output types. Subgraphs are not.
"""
from __future__ import annotations

import ast
import re
from typing import Any

import numpy as np

from refold.errors import InvalidModelError
from refold.ir.dtypes import DType
from refold.ir.graph import Graph, Model, Node, Value

_BY_SHORT = {d.short: d for d in DType}
_TYPE = re.compile(r"^(\w+)\[(.*)\]$")
_HEAD = re.compile(r"^graph\s+(\S+)\((.*)\)\s*\{$")
_NODE = re.compile(r"^(?:(.+?)\s*=\s*)?([\w.]+)\((.*?)\)(?:\s*\{(.*)\})?\s*(?:#\s*(.*))?$")


def _type(text: str) -> tuple[DType | None, tuple | None]:
    text = text.strip()
    if text == "?":
        return None, None
    m = _TYPE.match(text)
    if not m or m.group(1) not in _BY_SHORT:
        raise InvalidModelError(f"cannot read type '{text}'")
    dims = m.group(2)
    if dims == "?":
        return _BY_SHORT[m.group(1)], None
    shape = tuple(None if d == "?" else int(d) if re.fullmatch(r"-?\d+", d) else d
                  for d in (s.strip() for s in dims.split(",")) if d)
    return _BY_SHORT[m.group(1)], shape


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets and quotes."""
    parts, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def _attrs(text: str | None, onnx_node: bool) -> dict[str, Any]:
    out = {}
    for item in _split_top(text or ""):
        key, _, val = item.partition("=")
        v = ast.literal_eval(val.strip())
        out[key.strip()] = v.encode() if onnx_node and isinstance(v, str) else v
    return out


def _random(name: str, dtype: DType, shape: tuple, rng) -> np.ndarray:
    if dtype.is_float:
        a = rng.standard_normal(shape)
        return (np.abs(a) + 0.5 if name.endswith("var") else a).astype(dtype.numpy())
    return rng.integers(0, 4, shape).astype(dtype.numpy())


def parse_model(text: str, consts: dict[str, Any] | None = None, *, seed: int = 0) -> Model:
    """The Model a printed graph describes (see the module docstring)."""
    consts = dict(consts or {})
    rng = np.random.default_rng(seed)
    opsets = {"": 17}
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if lines and lines[0].startswith("# opsets"):
        opsets = {}
        for item in lines.pop(0)[len("# opsets"):].split(","):
            dom, _, ver = item.strip().rpartition(":")
            opsets["" if dom == "ai.onnx" else dom] = int(ver)
    head = _HEAD.match(lines[0]) if lines else None
    if head is None or lines[-1] != "}":
        raise InvalidModelError("expected 'graph NAME(%in: type, ...) { ... }'")
    g = Graph(head.group(1))
    env: dict[str, Value] = {}
    for sig in _split_top(head.group(2)):
        name, _, t = sig.partition(":")
        env[name.strip().lstrip("%")] = g.add_input(name.strip().lstrip("%"), *_type(t))
    for line in lines[1:-1]:
        if line.startswith("return"):
            for ref in _split_top(line[len("return"):]):
                g.outputs.append(env[ref.lstrip("%")])
            continue
        const = re.match(r"^%(\S+)\s*=\s*const\s+(.+)$", line)
        if const:
            name, (dtype, shape) = const.group(1), _type(const.group(2))
            arr = np.asarray(consts.pop(name)) if name in consts else _random(name, dtype, shape, rng)
            env[name] = g.add_const(arr.astype(dtype.numpy()).reshape(shape), name)
            continue
        m = _NODE.match(line)
        if m is None:
            raise InvalidModelError(f"cannot read line '{line}'")
        outs, qop, ins, attrs, types = m.groups()
        dialect, _, op = qop.rpartition(".")
        domain = "" if dialect == "onnx" else dialect
        inputs = []
        for ref in _split_top(ins):
            if ref == "_":
                inputs.append(None)
            elif ref.lstrip("%") in env:
                inputs.append(env[ref.lstrip("%")])
            else:
                raise InvalidModelError(f"'{line}': reads {ref}, which is not defined above")
        names = [r.lstrip("%") for r in _split_top(outs or "")]
        node = Node(op, inputs, _attrs(attrs, domain == ""), domain=domain, num_outputs=len(names),
                    name=names[0] if names and names[0] != "_" else op,
                    outputs=["" if n == "_" else n for n in names])
        g.append(node)
        typed = _split_top(types or "")
        for v, n in zip(node.outputs, names):
            if n == "_":
                v.kind = "omitted"
            else:
                env[n] = v
        for v, t in zip([v for v in node.outputs if v.kind != "omitted"], typed):
            v.dtype, v.shape = _type(t)
    if consts:
        raise InvalidModelError(f"consts {sorted(consts)} are not constants of the graph")
    return Model(g, opset_imports=opsets)
