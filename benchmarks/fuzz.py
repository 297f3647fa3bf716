"""Fuzz refold's ONNX front door with mutated real models: no crash, no hang, input never modified.

    python benchmarks/fuzz.py [--n 10000] [--seed 0] [--timeout 60] [--mem-mb 4096] [--show 5]
                              [--keep DIR [--keep-matching REGEX]]

Every mutant is written to a fresh folder and given to ``refold show MODEL`` and
``refold run MODEL -o OUT`` (in-process, in a worker subprocess that is killed and restarted when
it passes the time cap, the memory cap, or dies). What must hold (../shared/BAD_INPUTS.md 1-9, 12):

- the exit code is 0 or documented (2 usage, 3 invalid, 4 unsupported, 5 security, 6 output);
  1 (internal error), an escaping exception, a dead worker, or a documented code whose message
  reports a bug ("pass 'x' crashed", "left an invalid graph") is a crash;
- on failure stderr is one line (captured at the file-descriptor level, so C++ logs count);
- the input files (model and its external data) are byte-for-byte unchanged, and nothing outside
  the model folder is read: external data aimed outside lands on FIFOs, which block a reader, so
  a read before the refusal shows up as a hang;
- nothing is left at the output path (nor a staging folder) when the code is non-zero;
- each command finishes within the time cap and the worker stays under the memory cap.

Mutants come from hypothesis (strategy ``mutants()``) over seeds: refold's bundled tiny_cnn, a
few of onnx's ``light_*`` models, onnx's node-test models with If / Loop / Scan bodies
(``test_if``, ``test_loop11``, ``test_scan9_sum``, built by onnx's own test-case code), a model
with a model-local function, and a model whose weights lie in a ``.data`` file beside it.
Mutations act on the protobuf (delete or duplicate repeated fields, swap dtypes, dangle inputs,
grow or negate dims and shape constants, move or corrupt payloads, corrupt external data entries
and the files around them, reorder nodes, clone nodes, turn inputs into constants, nest subgraphs
up to 2000 deep, set any scalar field to an odd value) and on the serialized bytes (flip bits and
bytes, truncate, splice, foreign file headers). ``tests/test_fuzz.py`` runs a fixed-seed slice of
the same strategy.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import math
import multiprocessing
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import traceback
from typing import Any

import numpy as np
import onnx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

DOCUMENTED = {0, 2, 3, 4, 5, 6}
MODEL = "model.onnx"
DATA = "model.onnx.data"
# Traps for external data that points outside the model folder: a FIFO beside each case folder
# (../secret.bin) and one at a fixed absolute path. Opening a FIFO for reading blocks, so a
# refold that reads one before refusing hangs, and the harness reports the hang.
SECRET = "secret.bin"
ABS_SECRET = os.path.join(tempfile.gettempdir(), "refold-fuzz-secret.fifo")


# ---------------------------------------------------------------------------------------------
# Seeds

def _light(name: str) -> bytes:
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light",
                        f"light_{name}.onnx")
    with open(path, "rb") as f:
        return f.read()


def _node_test_models() -> dict[str, onnx.ModelProto]:
    """onnx's own node-test models for If, Loop and Scan, built by onnx's test-case code."""
    import onnx.backend.test.case.node as N
    from onnx.backend.test.case.node import if_, loop, scan

    got: dict[str, onnx.ModelProto] = {}

    def capture(node, inputs, outputs, name, **kw):
        N._existing_names.pop(name, None)
        old, N._TargetOpType = N._TargetOpType, None
        try:
            N.expect(node, inputs, outputs, name, **kw)
            got[name] = N._NodeTestCases.pop().model
        finally:
            N._TargetOpType = old

    saved = [(mod, mod.expect) for mod in (if_, loop, scan)]
    try:
        for mod, _ in saved:
            mod.expect = capture
        if_.If.export_if()
        loop.Loop.export_loop_11()
        scan.Scan.export_scan_9()
    finally:
        for mod, fn in saved:
            mod.expect = fn
    return {k: got[k] for k in ("test_if", "test_loop11", "test_scan9_sum")}


def _function_model() -> onnx.ModelProto:
    """A model-local function (``local.AddRelu``) called from the main graph."""
    f = helper.make_function("local", "AddRelu", ["a", "b"], ["c"],
                             [helper.make_node("Add", ["a", "b"], ["s"]),
                              helper.make_node("Relu", ["s"], ["c"])],
                             [helper.make_opsetid("", 18)])
    b = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), "b")
    g = helper.make_graph([helper.make_node("AddRelu", ["x", "b"], ["h"], domain="local", name="f"),
                           helper.make_node("Mul", ["h", "b"], ["y"], name="mul")], "func",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
                          initializer=[b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                               helper.make_opsetid("local", 1)], functions=[f])


def _external_model() -> dict[str, bytes]:
    """MatMul + Add + Reshape with weights and the reshape target in ``model.onnx.data``."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b")
    shape = numpy_helper.from_array(np.array([2, 4, 4], np.int64), "shape")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                           helper.make_node("Add", ["h", "b"], ["hb"], name="add"),
                           helper.make_node("Reshape", ["hb", "shape"], ["y"], name="reshape")],
                          "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 4])],
                          initializer=[w, b, shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with tempfile.TemporaryDirectory() as d:
        onnx.save(m, os.path.join(d, MODEL), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=DATA, size_threshold=0)
        with open(os.path.join(d, MODEL), "rb") as f, open(os.path.join(d, DATA), "rb") as g2:
            return {MODEL: f.read(), DATA: g2.read()}


@dataclasses.dataclass(frozen=True)
class Seed:
    name: str
    files: tuple[tuple[str, bytes], ...]  # the model first, then files beside it

    @property
    def model(self) -> bytes:
        return self.files[0][1]


_SEEDS: list[Seed] | None = None


def seeds() -> list[Seed]:
    global _SEEDS
    if _SEEDS is None:
        from refold.api import example_path

        with open(example_path("tiny_cnn"), "rb") as f:
            out = [Seed("tiny_cnn", ((MODEL, f.read()),))]
        for name in ("squeezenet", "inception_v1", "bvlc_alexnet"):
            out.append(Seed(f"light_{name}", ((MODEL, _light(name)),)))
        for name, m in _node_test_models().items():
            out.append(Seed(name, ((MODEL, m.SerializeToString()),)))
        out.append(Seed("local_function", ((MODEL, _function_model().SerializeToString()),)))
        ext = _external_model()
        out.append(Seed("external_data", ((MODEL, ext[MODEL]), (DATA, ext[DATA]))))
        _SEEDS = out
    return _SEEDS


# ---------------------------------------------------------------------------------------------
# Mutants

@dataclasses.dataclass
class Mutant:
    """Files to write in a fresh case folder (``links``: name -> symlink target, relative to it;
    ``hardlinks``: name -> existing file in it), and what was done, for the report."""

    seed: str
    files: dict[str, bytes]
    steps: list[str]
    links: dict[str, str] = dataclasses.field(default_factory=dict)
    hardlinks: dict[str, str] = dataclasses.field(default_factory=dict)

    def __repr__(self) -> str:
        size = len(self.files.get(MODEL, b""))
        return f"Mutant({self.seed}: {' | '.join(self.steps)}; {size} bytes)"


def _graphs(g: onnx.GraphProto):
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.HasField("g"):
                yield from _graphs(a.g)
            for sg in a.graphs:
                yield from _graphs(sg)


def _all_graphs(m: onnx.ModelProto) -> list[onnx.GraphProto]:
    return list(_graphs(m.graph))


def _all_nodes(m: onnx.ModelProto) -> list[onnx.NodeProto]:
    out = [n for g in _all_graphs(m) for n in g.node]
    out += [n for f in m.functions for n in f.node]
    return out


def _all_tensors(m: onnx.ModelProto) -> list[onnx.TensorProto]:
    out = []
    for g in _all_graphs(m):
        out.extend(g.initializer)
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    out.append(a.t)
                out.extend(a.tensors)
    return out


def _all_value_infos(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return [vi for g in _all_graphs(m) for vi in (*g.input, *g.output, *g.value_info)]


def _messages(msg, depth: int = 0):
    """Every message inside ``msg`` (itself first), depth first, in field order."""
    yield msg
    if depth > 40:
        return
    for f, v in msg.ListFields():
        if f.message_type is None:
            continue
        if f.is_repeated:
            for x in v:
                yield from _messages(x, depth + 1)
        else:
            yield from _messages(v, depth + 1)


def _repeated(m: onnx.ModelProto) -> list[tuple[str, Any]]:
    """(label, repeated container) for the repeated fields worth deleting from or duplicating."""
    out: list[tuple[str, Any]] = [("opset_import", m.opset_import), ("functions", m.functions),
                                  ("metadata_props", m.metadata_props)]
    for g in _all_graphs(m):
        for field in ("node", "initializer", "input", "output", "value_info"):
            out.append((f"graph {g.name!r}.{field}", getattr(g, field)))
        for n in g.node:
            label = f"node {n.name or n.op_type!r}"
            out += [(f"{label}.input", n.input), (f"{label}.output", n.output),
                    (f"{label}.attribute", n.attribute)]
            for a in n.attribute:
                if a.ints:
                    out.append((f"{label}.{a.name}.ints", a.ints))
    for t in _all_tensors(m):
        out += [(f"tensor {t.name!r}.dims", t.dims), (f"tensor {t.name!r}.external_data", t.external_data)]
    for vi in _all_value_infos(m):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out.append((f"value_info {vi.name!r}.dims", vi.type.tensor_type.shape.dim))
    for f in m.functions:
        out += [(f"function {f.name!r}.node", f.node), (f"function {f.name!r}.input", f.input)]
    return [(label, c) for label, c in out if len(c)]


def _names(m: onnx.ModelProto) -> list[str]:
    names = []
    for g in _all_graphs(m):
        names += [vi.name for vi in (*g.input, *g.output, *g.value_info)]
        names += [t.name for t in g.initializer]
        for n in g.node:
            names += list(n.output) + [n.name]
    return sorted(set(names))


ODD_NAMES = ["", "ghost", "a\nb", "x" * 300, "\u00e9\u4e2d", "../x", "/etc/passwd", " ", "__0"]
ODD_INTS = [0, 1, -1, 2, 3, 7, 64, 255, 1 << 16, (1 << 31) - 1, -(1 << 31), 1 << 40, -(1 << 40),
            (1 << 62), (1 << 63) - 1, -(1 << 63)]
ODD_FLOATS = [0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e38, 1e-45, 65504.0]
ODD_DIMS = [0, 1, 2, -1, -3, 1 << 20, 1 << 31, 1 << 40, 1 << 62, (1 << 63) - 1]
OP_POOL = ["Relu", "Add", "Conv", "Gemm", "MatMul", "Reshape", "Constant", "ConstantOfShape",
           "Expand", "Loop", "If", "Scan", "Identity", "Concat", "Mystery", "BatchNormalization",
           "LayerNormalization", "Shape", "Gather", "Cast", "Split", "Tile", "Range", "", "add",
           "conv", "rms_norm", "batch_norm", "AddRelu"]
DOMAIN_POOL = ["", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.vendor", "core", "local", "aten"]


def _int_in_range(field, value: int) -> int:
    t = field.type
    if t in (field.TYPE_INT32, field.TYPE_SINT32, field.TYPE_SFIXED32):
        return max(-(1 << 31), min((1 << 31) - 1, value))
    if t in (field.TYPE_UINT32, field.TYPE_FIXED32):
        return max(0, min((1 << 32) - 1, value))
    if t in (field.TYPE_UINT64, field.TYPE_FIXED64):
        return max(0, min((1 << 64) - 1, value))
    return max(-(1 << 63), min((1 << 63) - 1, value))


def _odd_value(draw, field, names: list[str]):
    """An odd but type-correct value for a scalar protobuf field."""
    F = field
    if F.type == F.TYPE_BOOL:
        return draw(st.booleans())
    if F.type == F.TYPE_ENUM:
        return draw(st.sampled_from([v.number for v in F.enum_type.values]))
    if F.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return draw(st.sampled_from(ODD_FLOATS) | st.floats(width=32 if F.type == F.TYPE_FLOAT else 64))
    if F.type == F.TYPE_STRING:
        return draw(st.sampled_from(ODD_NAMES + names[:50]) | st.text(max_size=12))
    if F.type == F.TYPE_BYTES:
        return draw(st.binary(max_size=64))
    return _int_in_range(F, draw(st.sampled_from(ODD_INTS) | st.integers(-10, 100)))


class _Ctx:
    def __init__(self, model: onnx.ModelProto, mutant: Mutant):
        self.m = model
        self.mutant = mutant
        self.raw: bytes | None = None  # set by a step that writes the file itself (the last step)


def _index(draw, seq) -> int:
    """A drawn position in a non-empty sequence."""
    return draw(st.integers(0, len(seq) - 1))


def _pick(draw, seq):
    """A drawn element of a non-empty sequence."""
    return seq[_index(draw, seq)]


def mut_delete(draw, ctx: _Ctx) -> str:
    fields = _repeated(ctx.m)
    if not fields:
        return "delete: nothing"
    label, c = _pick(draw, fields)
    i = _index(draw, c)
    del c[i]
    return f"delete {label}[{i}]"


def mut_duplicate(draw, ctx: _Ctx) -> str:
    fields = _repeated(ctx.m)
    if not fields:
        return "duplicate: nothing"
    label, c = _pick(draw, fields)
    i = _index(draw, c)
    item = c[i]
    if hasattr(c, "add"):
        c.add().CopyFrom(item)
    else:
        c.append(item)
    return f"duplicate {label}[{i}]"


def mut_dtype(draw, ctx: _Ctx) -> str:
    dt = draw(st.sampled_from([*range(27), -1, 27, 40, 1000]))
    if draw(st.booleans()):
        ts = _all_tensors(ctx.m)
        if ts:
            t = _pick(draw, ts)
            old, t.data_type = t.data_type, dt
            return f"tensor {t.name!r} data_type {old} -> {dt}"
    vis = [vi for vi in _all_value_infos(ctx.m) if vi.type.HasField("tensor_type")]
    if not vis:
        return "dtype: nothing"
    vi = _pick(draw, vis)
    old, vi.type.tensor_type.elem_type = vi.type.tensor_type.elem_type, max(0, dt)
    return f"value_info {vi.name!r} elem_type {old} -> {max(0, dt)}"


def mut_dangle(draw, ctx: _Ctx) -> str:
    nodes = [n for n in _all_nodes(ctx.m) if len(n.input) or len(n.output)]
    if not nodes:
        return "dangle: nothing"
    n = _pick(draw, nodes)
    names = _names(ctx.m)
    new = draw(st.sampled_from(ODD_NAMES + names))
    if len(n.input) and (not len(n.output) or draw(st.booleans())):
        i = _index(draw, n.input)
        n.input[i] = new
        return f"node {n.name or n.op_type!r} input {i} -> {new!r}"
    i = _index(draw, n.output)
    n.output[i] = new
    return f"node {n.name or n.op_type!r} output {i} -> {new!r}"


def mut_rename_io(draw, ctx: _Ctx) -> str:
    g = draw(st.sampled_from(_all_graphs(ctx.m)))
    vis = [*g.input, *g.output]
    if not vis:
        return "rename: nothing"
    vi = _pick(draw, vis)
    new = draw(st.sampled_from(ODD_NAMES + _names(ctx.m)))
    old, vi.name = vi.name, new
    return f"graph {g.name!r} value {old!r} renamed {new!r}"


def mut_dims(draw, ctx: _Ctx) -> str:
    if draw(st.booleans()):
        ts = [t for t in _all_tensors(ctx.m)]
        if ts:
            t = _pick(draw, ts)
            if len(t.dims) == 0 or draw(st.integers(0, 4)) == 0:
                v = draw(st.sampled_from(ODD_DIMS))
                t.dims.append(v)
                return f"tensor {t.name!r} dims += [{v}]"
            i = _index(draw, t.dims)
            old = t.dims[i]
            v = draw(st.sampled_from(ODD_DIMS + [old * 2, old + 1, -old, old * 1000]))
            t.dims[i] = max(-(1 << 63), min((1 << 63) - 1, v))
            return f"tensor {t.name!r} dims[{i}] {old} -> {t.dims[i]}"
    vis = [vi for vi in _all_value_infos(ctx.m) if vi.type.HasField("tensor_type")]
    if not vis:
        return "dims: nothing"
    vi = _pick(draw, vis)
    shape = vi.type.tensor_type.shape
    if len(shape.dim) == 0 or draw(st.integers(0, 4)) == 0:
        d = shape.dim.add()
        d.dim_value = draw(st.sampled_from(ODD_DIMS))
        return f"value_info {vi.name!r} dims += [{d.dim_value}]"
    i = _index(draw, shape.dim)
    d = shape.dim[i]
    kind = draw(st.sampled_from(["value", "param", "clear"]))
    if kind == "param":
        d.dim_param = draw(st.sampled_from(["batch", "N", "", "a\nb", "unk__0"]))
        return f"value_info {vi.name!r} dims[{i}] -> {d.dim_param!r}"
    if kind == "clear":
        d.Clear()
        return f"value_info {vi.name!r} dims[{i}] cleared"
    old = d.dim_value
    d.dim_value = max(-(1 << 63), min((1 << 63) - 1, draw(st.sampled_from(ODD_DIMS + [old * 2, -old, old + 1]))))
    return f"value_info {vi.name!r} dims[{i}] {old} -> {d.dim_value}"


_SHAPE_INPUTS = {"ConstantOfShape": 0, "Expand": 1, "Reshape": 1, "Tile": 1, "Range": 1,
                 "Slice": 1, "Unsqueeze": 1, "Resize": 3, "Pad": 1, "TopK": 1}


def mut_shape_constant(draw, ctx: _Ctx) -> str:
    """Grow or negate the constant that gives a ConstantOfShape / Expand / Reshape its shape."""
    m = ctx.m
    consumers = [(n, _SHAPE_INPUTS[n.op_type]) for n in _all_nodes(m)
                 if n.op_type in _SHAPE_INPUTS and len(n.input) > _SHAPE_INPUTS[n.op_type]]
    if not consumers:
        return "shape constant: nothing"
    n, i = _pick(draw, consumers)
    name = n.input[i]
    target = None
    for t in _all_tensors(m):
        if t.name == name:
            target = t
    for node in _all_nodes(m):
        if node.op_type == "Constant" and list(node.output) == [name]:
            for a in node.attribute:
                if a.name == "value":
                    target = a.t
    vals = draw(st.lists(st.sampled_from(ODD_DIMS + [3, 4, 1 << 16, 1 << 30]), min_size=0, max_size=6))
    arr = np.array(vals, dtype=np.int64)
    if target is None:  # the shape is a graph input or computed: pin it with an initializer
        g = next(g for g in _all_graphs(m) if any(x is n for x in g.node))
        target = g.initializer.add()
    keep = target.name
    target.CopyFrom(numpy_helper.from_array(arr, keep or name))
    return f"{n.op_type} {n.name or n.output[0]!r} shape {name!r} := {vals}"


def mut_op(draw, ctx: _Ctx) -> str:
    nodes = _all_nodes(ctx.m)
    if not nodes:
        return "op: nothing"
    n = _pick(draw, nodes)
    if draw(st.booleans()):
        old, n.op_type = n.op_type, draw(st.sampled_from(OP_POOL))
        return f"node {n.name!r} op {old} -> {n.op_type}"
    old, n.domain = n.domain, draw(st.sampled_from(DOMAIN_POOL))
    return f"node {n.name or n.op_type!r} domain {old!r} -> {n.domain!r}"


def mut_attribute(draw, ctx: _Ctx) -> str:
    nodes = [n for n in _all_nodes(ctx.m) if len(n.attribute)]
    if not nodes:
        return "attribute: nothing"
    n = _pick(draw, nodes)
    a = _pick(draw, n.attribute)
    what = draw(st.sampled_from(["type", "ints", "int", "name", "float"]))
    if what == "type":
        old, a.type = a.type, draw(st.sampled_from([v.number for v in AttributeProto.AttributeType.DESCRIPTOR.values]))
        return f"node {n.name or n.op_type!r} attr {a.name} type {old} -> {a.type}"
    if what == "ints":
        a.ClearField("ints")
        a.ints.extend(draw(st.lists(st.sampled_from(ODD_INTS), max_size=6)))
        return f"node {n.name or n.op_type!r} attr {a.name} ints := {list(a.ints)}"
    if what == "int":
        a.i = draw(st.sampled_from(ODD_INTS))
        return f"node {n.name or n.op_type!r} attr {a.name} i := {a.i}"
    if what == "float":
        a.f = draw(st.sampled_from(ODD_FLOATS))
        return f"node {n.name or n.op_type!r} attr {a.name} f := {a.f}"
    old, a.name = a.name, draw(st.sampled_from(["value", "value_float", "value_ints", "axis", "body",
                                                 "then_branch", "to", "", "unknown"]))
    return f"node {n.name or n.op_type!r} attr {old} renamed {a.name}"


def mut_field(draw, ctx: _Ctx) -> str:
    """Any scalar field of any message in the model set to an odd value of its type."""
    msgs = list(_messages(ctx.m))
    msg = _pick(draw, msgs)
    fields = [f for f in msg.DESCRIPTOR.fields if f.message_type is None]
    if not fields:
        return "field: nothing"
    f = _pick(draw, fields)
    v = _odd_value(draw, f, _names(ctx.m))
    try:
        if f.is_repeated:
            c = getattr(msg, f.name)
            if len(c) and draw(st.booleans()):
                c[_index(draw, c)] = v
            else:
                c.append(v)
        else:
            setattr(msg, f.name, v)
    except (ValueError, TypeError):
        return f"field {msg.DESCRIPTOR.name}.{f.name}: refused {v!r}"
    return f"{msg.DESCRIPTOR.name}.{f.name} := {v!r}"[:200]


def mut_payload(draw, ctx: _Ctx) -> str:
    """Move or corrupt a tensor payload (raw_data <-> typed fields, wrong length, random bytes)."""
    ts = [t for t in _all_tensors(ctx.m) if t.data_location != TensorProto.EXTERNAL]
    if not ts:
        return "payload: nothing"
    t = _pick(draw, ts)
    what = draw(st.sampled_from(["random", "shorter", "longer", "to_typed", "clear", "strings"]))
    raw = t.raw_data
    if what == "random":
        t.raw_data = draw(st.binary(min_size=len(raw), max_size=len(raw))) if raw else draw(st.binary(max_size=32))
    elif what == "shorter":
        t.raw_data = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif what == "longer":
        t.raw_data = raw + bytes(draw(st.integers(1, 64)))
    elif what == "to_typed":
        t.ClearField("raw_data")
        t.int64_data.extend(draw(st.lists(st.sampled_from(ODD_INTS), max_size=8)))
    elif what == "strings":
        t.string_data.extend([b"a", b"\xff\xfe"])
    else:
        for f in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "string_data"):
            t.ClearField(f)
    return f"tensor {t.name!r} payload {what}"


def mut_reorder(draw, ctx: _Ctx) -> str:
    gs = [g for g in _all_graphs(ctx.m) if len(g.node) > 1]
    if not gs:
        return "reorder: nothing"
    g = _pick(draw, gs)
    nodes = list(g.node)
    how = draw(st.sampled_from(["reverse", "shuffle", "move"]))
    if how == "reverse":
        nodes.reverse()
    elif how == "shuffle":
        nodes = draw(st.permutations(nodes))
    else:
        i, j = _index(draw, nodes), _index(draw, nodes)
        nodes.insert(j, nodes.pop(i))
    del g.node[:]
    g.node.extend(nodes)
    return f"graph {g.name!r} nodes {how}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes | str | int) -> bytes:
    """One protobuf field on the wire: a varint for an int, else length-delimited."""
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def mut_nest(draw, ctx: _Ctx) -> str:
    """Wrap the main graph in ``depth`` nested If nodes (then: the next level, else: the original).

    Written straight on the wire (protobuf itself refuses to build messages this deep), so it is
    the last protobuf-level step of a mutant."""
    m = ctx.m
    depth = draw(st.sampled_from([1, 2, 3, 8, 20, 30, 40, 200, 2000]))
    body = onnx.GraphProto()
    body.CopyFrom(m.graph)
    body.name = "body"
    del body.input[:]  # the graph inputs become outer-scope reads
    outputs = [o.SerializeToString() for o in body.output]
    names = [o.name for o in body.output]
    flat = body.SerializeToString()
    if depth > 30:  # past protobuf's nesting limit: small else branches keep the file small
        flat = _field(2, "empty") + b"".join(_field(12, o) for o in outputs)
    inner = body.SerializeToString()
    for level in range(depth):
        attrs = b"".join(_field(5, _field(1, key) + _field(6, g) + _field(20, AttributeProto.GRAPH))
                         for key, g in (("then_branch", inner), ("else_branch", flat)))
        node = (_field(1, "refold_fuzz_cond") + b"".join(_field(2, n) for n in names)
                + _field(3, f"nest{level}") + _field(4, "If") + attrs)
        inner = _field(1, node) + _field(2, f"level{level}") + b"".join(_field(12, o) for o in outputs)
    cond = numpy_helper.from_array(np.array(True), "refold_fuzz_cond").SerializeToString()
    top = inner + _field(5, cond) + b"".join(_field(11, i.SerializeToString()) for i in m.graph.input)
    m.ClearField("graph")
    ctx.raw = m.SerializeToString() + _field(7, top)
    return f"nest in {depth} If levels"


def mut_external(draw, ctx: _Ctx) -> str:
    """Corrupt one external_data entry, or the files around it."""
    ts = [t for t in _all_tensors(ctx.m) if t.data_location == TensorProto.EXTERNAL]
    mutant = ctx.mutant
    if not ts:
        ts = _all_tensors(ctx.m)
        if not ts:
            return "external: nothing"
        t = _pick(draw, ts)
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", draw(st.sampled_from([DATA, "nope.bin", "../" + SECRET]))
        return f"tensor {t.name!r} made external at {e.value!r}"
    t = _pick(draw, ts)
    info = {e.key: e for e in t.external_data}
    size = len(mutant.files.get(DATA, b""))
    what = draw(st.sampled_from(["location", "offset", "length", "key", "symlink", "hardlink",
                                 "missing", "truncate", "dir", "inline"]))
    if what == "location":
        loc = draw(st.sampled_from(["../" + SECRET, "/etc/passwd", ABS_SECRET,
                                    "a/../../" + SECRET, "sub/../" + DATA, "./" + DATA, "",
                                    "nope.bin", "..", ".", "a\\..\\..\\" + SECRET, "C:/x",
                                    "\\\\server\\share", DATA + "\0x", MODEL, "sub/" + DATA]))
        if "location" in info:
            info["location"].value = loc
        return f"tensor {t.name!r} location {loc!r}"
    if what in ("offset", "length"):
        v = draw(st.sampled_from([size, size + 1, size * 2, 1 << 40, -1, -(1 << 40), 0, 3,
                                  (1 << 63) - 1, "x", "1e3", " 4", "0x10", ""]))
        if what in info:
            info[what].value = str(v)
        else:
            e = t.external_data.add()
            e.key, e.value = what, str(v)
        return f"tensor {t.name!r} {what} {v!r}"
    if what == "key":
        e = t.external_data.add()
        e.key, e.value = draw(st.sampled_from(["evil", "", "location", "checksum", "basepath"])), "1"
        return f"tensor {t.name!r} extra key {e.key!r}"
    loc = info["location"].value if "location" in info else DATA
    if what == "symlink":
        mutant.links["link.data"] = draw(st.sampled_from([DATA, "../" + SECRET, ABS_SECRET]))
        if "location" in info:
            info["location"].value = "link.data"
        return f"tensor {t.name!r} location is a symlink to {mutant.links['link.data']!r}"
    if what == "hardlink":
        mutant.hardlinks["hard.data"] = DATA
        if "location" in info:
            info["location"].value = "hard.data"
        return f"tensor {t.name!r} location is a hard link"
    if what == "missing":
        mutant.files.pop(loc, None)
        return f"external file {loc!r} removed"
    if what == "truncate":
        if loc in mutant.files:
            mutant.files[loc] = mutant.files[loc][: draw(st.integers(0, max(0, len(mutant.files[loc]) - 1)))]
        return f"external file {loc!r} truncated"
    if what == "dir" and loc in mutant.files:
        mutant.files.pop(loc)
        mutant.files[loc + "/x"] = b"x"
        return f"external file {loc!r} is a folder"
    t.data_location = TensorProto.DEFAULT
    return f"tensor {t.name!r} data_location DEFAULT, entries kept"


def mut_constify(draw, ctx: _Ctx) -> str:
    """A graph input becomes an initializer of its declared type (random values), so constant
    folding has a network to evaluate."""
    g = ctx.m.graph
    inits = {t.name for t in g.initializer}
    cands = [vi for vi in g.input if vi.name not in inits and vi.type.HasField("tensor_type")]
    if not cands:
        return "constify: nothing"
    vi = _pick(draw, cands)
    tt = vi.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else draw(st.integers(0, 3)) for d in tt.shape.dim]
    if math.prod(shape) > 1 << 16:
        shape = [min(d, 2) for d in shape]
    try:
        npdt = helper.tensor_dtype_to_np_dtype(tt.elem_type)
    except Exception:  # noqa: BLE001 - an odd type: keep it, with float payload
        npdt = np.dtype(np.float32)
    rng = np.random.default_rng(draw(st.integers(0, 1 << 16)))
    vals = rng.standard_normal(shape) * draw(st.sampled_from([1.0, 1e3, 1e-3, 0.0, 1e30]))
    try:
        arr = vals.astype(npdt)
        t = numpy_helper.from_array(arr, vi.name)
    except Exception:  # noqa: BLE001
        t = numpy_helper.from_array(vals.astype(np.float32), vi.name)
        t.data_type = tt.elem_type
    g.initializer.append(t)
    if draw(st.booleans()):
        g.input.remove(vi)
    return f"input {vi.name!r} became a constant {shape}"


def mut_clone(draw, ctx: _Ctx) -> str:
    """Copy a node under fresh output names (work for CSE), optionally fed by the original."""
    gs = [g for g in _all_graphs(ctx.m) if len(g.node)]
    if not gs:
        return "clone: nothing"
    g = _pick(draw, gs)
    i = _index(draw, g.node)
    n = onnx.NodeProto()
    n.CopyFrom(g.node[i])
    for k, o in enumerate(n.output):
        if o:
            n.output[k] = f"{o}_clone{i}"
    n.name = f"{n.name}_clone" if n.name else ""
    g.node.insert(i + 1, n)
    if draw(st.booleans()):
        o = next((x for x in n.output if x), None)
        if o:
            g.output.add().name = o
    return f"graph {g.name!r} node {i} cloned"


def byte_flip(draw, data: bytes) -> tuple[bytes, str]:
    if not data:
        return data, "flip: empty"
    b = bytearray(data)
    k = draw(st.integers(1, 8))
    where = []
    for _ in range(k):
        i = _index(draw, b)
        if draw(st.booleans()):
            b[i] ^= 1 << draw(st.integers(0, 7))
        else:
            b[i] = draw(st.sampled_from([0, 0x7F, 0x80, 0xFF, 0x08, 0x12, 0x1A, 0x22]))
        where.append(i)
    return bytes(b), f"bytes changed at {where}"


def byte_truncate(draw, data: bytes) -> tuple[bytes, str]:
    n = draw(st.integers(0, max(0, len(data) - 1)))
    return data[:n], f"truncated to {n} bytes"


def byte_splice(draw, data: bytes) -> tuple[bytes, str]:
    if len(data) < 2:
        return data, "splice: short"
    i = _index(draw, data)
    j = draw(st.integers(i, min(len(data), i + 256)))
    how = draw(st.sampled_from(["delete", "repeat", "insert"]))
    if how == "delete":
        return data[:i] + data[j:], f"deleted bytes [{i}, {j})"
    if how == "repeat":
        return data[:j] + data[i:j] + data[j:], f"repeated bytes [{i}, {j})"
    blob = draw(st.binary(min_size=1, max_size=16))
    return data[:i] + blob + data[i:], f"inserted {len(blob)} bytes at {i}"


def byte_prefix(draw, data: bytes) -> tuple[bytes, str]:
    head = draw(st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"PK\x03\x04", b"\x80\x04\x95", b"\x1f\x8b",
                                 b"\x00" * 8, b"\xff" * 8, b"%PDF-1.4"]))
    return head + data[: draw(st.sampled_from([0, 16, len(data)]))], f"file starts {head[:8]!r}"


PROTO_MUTATIONS = {
    "delete": mut_delete, "duplicate": mut_duplicate, "dtype": mut_dtype, "dangle": mut_dangle,
    "rename_io": mut_rename_io, "dims": mut_dims, "shape_constant": mut_shape_constant, "op": mut_op,
    "attribute": mut_attribute, "field": mut_field, "payload": mut_payload, "reorder": mut_reorder,
    "nest": mut_nest, "external": mut_external, "constify": mut_constify, "clone": mut_clone,
}
BYTE_MUTATIONS = {"flip": byte_flip, "truncate": byte_truncate, "splice": byte_splice,
                  "prefix": byte_prefix}


@st.composite
def mutants(draw, seed_names: list[str] | None = None, proto: list[str] | None = None,
            byte: list[str] | None = None, max_steps: int = 3) -> Mutant:
    """A mutated seed: 0..max_steps protobuf mutations, then possibly one byte-level mutation."""
    pool = [s for s in seeds() if seed_names is None or s.name in seed_names]
    s = draw(st.sampled_from(pool))
    mutant = Mutant(s.name, dict(s.files), [])
    proto_ops = list(PROTO_MUTATIONS) if proto is None else proto
    byte_ops = list(BYTE_MUTATIONS) if byte is None else byte
    n_proto = draw(st.integers(0 if byte_ops else 1, max_steps)) if proto_ops else 0
    if n_proto:
        m = onnx.ModelProto()
        m.ParseFromString(s.model)
        ctx = _Ctx(m, mutant)
        for _ in range(n_proto):
            op = draw(st.sampled_from(proto_ops))
            mutant.steps.append(f"{op}: {PROTO_MUTATIONS[op](draw, ctx)}")
            if ctx.raw is not None:
                break
        mutant.files[MODEL] = m.SerializeToString() if ctx.raw is None else ctx.raw
    if byte_ops and (not n_proto or draw(st.integers(0, 3)) == 0):
        op = draw(st.sampled_from(byte_ops))
        data, what = BYTE_MUTATIONS[op](draw, mutant.files[MODEL])
        mutant.files[MODEL] = data
        mutant.steps.append(f"{op}: {what}")
    return mutant


# ---------------------------------------------------------------------------------------------
# Harness: a worker process runs refold in-process; the parent enforces time and memory caps.

@dataclasses.dataclass
class Outcome:
    codes: dict[str, int | None]
    problems: list[str]
    kind: str = "ok"  # ok | crash | hang | memory | modified | stderr | leftover
    traceback: str = ""
    location: str = ""
    stderr: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    def describe(self, mutant: Mutant | None = None) -> str:
        lines = [f"{self.kind}: {'; '.join(self.problems)}"]
        if mutant is not None:
            lines.append(repr(mutant))
        for k, v in self.stderr.items():
            if v.strip():
                lines.append(f"{k} stderr: {v.strip()[:800]}")
        if self.traceback:
            lines.append(self.traceback)
        return "\n".join(lines)


def _digest(folder: str, skip: str) -> dict[str, str]:
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.join(root, d) != skip]
        for f in files:
            p = os.path.join(root, f)
            if os.path.islink(p):
                out[os.path.relpath(p, folder)] = "link:" + os.readlink(p)
                continue
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@contextlib.contextmanager
def _capture_fds():
    """Capture fd 1 and 2 (Python and C++ writes alike) into files; yields a dict filled on exit."""
    got: dict[str, str] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield got
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            for name, f in (("out", out), ("err", err)):
                f.seek(0)
                got[name] = f.read().decode("utf-8", "replace")


# Messages of a documented exit code that still report a bug in refold: a pass that raised, or
# that the verifier blames for a graph it was given.
INTERNAL = ("crashed: ", "internal error", "left an invalid graph")


def _internal_location(err: str) -> str:
    m = re.search(r"pass '([^']+)' crashed: (\w+)", err)
    if m:
        return f"{m.group(2)} in pass {m.group(1)}"
    return message_shape(err)


def message_shape(err: str) -> str:
    """A stderr line with paths, quoted names and numbers blanked, to group messages by kind."""
    line = (err.strip().splitlines() or [""])[-1]
    line = re.sub(r"/\S+", "<path>", line)
    line = re.sub(r"'[^']*'", "'_'", line)
    line = re.sub(r"\[[^\]]*\]", "[_]", line)
    line = re.sub(r"-?\d+", "N", line)
    return line[:110]


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def crash_location(tb: str) -> str:
    """The deepest frame inside refold (else the deepest frame) and the exception line."""
    frames = _FRAME.findall(tb)
    ours = [f for f in frames if "refold" in f[0] and "benchmarks" not in f[0]]
    f = (ours or frames or [("?", "?", "?")])[-1]
    last = [ln for ln in tb.strip().splitlines()
            if ln and not ln.startswith((" ", "refold:", "Traceback", "Fatal Python", "Thread", "Current"))]
    exc = last[-1].split(":")[0] if last else "?"
    path = f[0].split("src/", 1)[-1]
    return f"{exc} at {path}:{f[1]} in {f[2]}"


def _debug_traceback(argv: list[str]) -> str:
    """What ``refold --debug`` prints for ``argv``: the traceback behind an internal error."""
    from refold import cli

    with _capture_fds() as cap:
        try:
            cli.main([*argv, "--debug"])
        except BaseException:  # noqa: BLE001 - print it with the rest
            traceback.print_exc()
    return cap["err"]


def run_case(folder: str) -> Outcome:
    """Run ``refold show`` and ``refold run`` on ``folder/model.onnx`` (in this process)."""
    from refold import cli

    model = os.path.join(folder, MODEL)
    out_dir = os.path.join(folder, "out")
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "result.onnx")
    before = _digest(folder, out_dir)
    res = Outcome({}, [])
    t0 = time.perf_counter()
    for name, argv in (("show", ["show", model]), ("run", ["run", model, "-o", out])):
        escaped = ""
        with _capture_fds() as cap:
            try:
                code = cli.main(argv)
            except BaseException:  # noqa: BLE001 - an escaping exception is exactly what we look for
                code, escaped = None, traceback.format_exc()
        res.codes[name] = code
        res.stderr[name] = cap["err"]
        if escaped:
            res.problems.append(f"{name}: exception escaped cli.main")
            res.kind, res.traceback = "crash", escaped
            res.location = crash_location(escaped)
        elif code not in DOCUMENTED:
            res.problems.append(f"{name}: exit code {code}: {cap['err'].strip()[:300]}")
            if res.kind == "ok":
                res.kind = "crash"
                res.traceback = _debug_traceback(argv)
                res.location = crash_location(res.traceback)
        elif code != 0:
            lines = cap["err"].strip().splitlines()
            if any(m in cap["err"] for m in INTERNAL):  # an internal error under a documented code
                res.problems.append(f"{name}: exit {code}: {cap['err'].strip()[:300]}")
                if res.kind == "ok":
                    res.kind = "crash"
                    res.location = _internal_location(cap["err"])
                    res.traceback = _debug_traceback(argv)[-6000:]
            if len(lines) != 1:
                res.problems.append(f"{name}: exit {code} with {len(lines)} stderr lines")
                res.kind = "stderr" if res.kind == "ok" else res.kind
        if name == "run":
            left = sorted(os.listdir(out_dir))
            if code != 0 and left:
                res.problems.append(f"run: exit {code} but the output folder holds {left}")
                res.kind = "leftover" if res.kind == "ok" else res.kind
            elif code == 0 and [f for f in left if ".refold-" in f]:
                res.problems.append(f"run: staging left behind: {left}")
                res.kind = "leftover" if res.kind == "ok" else res.kind
        after = _digest(folder, out_dir)
        if after != before:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            res.problems.append(f"{name}: input files modified: {changed}")
            res.kind = "modified"
            before = after
    res.seconds = time.perf_counter() - t0
    return res


def _worker(conn, hang_file: str) -> None:
    import faulthandler
    import warnings

    warnings.filterwarnings("ignore")
    with open(hang_file + ".crash", "w") as crash_log:
        faulthandler.enable(file=crash_log)
        import refold.cli  # noqa: F401  (import once, before the first case)

        conn.send("ready")
        while True:
            msg = conn.recv()
            if msg is None:
                return
            folder, timeout = msg
            with open(hang_file, "w") as hang_log:
                faulthandler.dump_traceback_later(timeout, file=hang_log)
                try:
                    res = run_case(folder)
                finally:
                    faulthandler.cancel_dump_traceback_later()
            conn.send(res)


class Harness:
    """Writes mutants into case folders and runs them in a worker process under time and memory
    caps; the worker is restarted after a hang, a memory blow-up or a death."""

    def __init__(self, root: str | None = None, *, timeout: float = 60.0, mem_mb: int = 4096,
                 keep: str | None = None, keep_matching: str | None = None):
        self.keep = keep  # a folder that receives a copy of each failing case
        self.keep_matching = re.compile(keep_matching) if keep_matching else None  # and these
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="refold-fuzz-")
        self.timeout, self.mem_mb = timeout, mem_mb
        self._ctx = multiprocessing.get_context("spawn")
        self._proc = None
        self._conn = None
        self._count = 0
        self.hang_file = os.path.join(self.root, "hang.txt")
        os.mkfifo(os.path.join(self.root, SECRET))
        if not os.path.exists(ABS_SECRET):
            try:
                os.mkfifo(ABS_SECRET)
            except FileExistsError:
                pass

    def _start(self) -> None:
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child, self.hang_file), daemon=True)
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(120) or parent.recv() != "ready":
            raise RuntimeError("fuzz worker did not start")

    def _stop(self, kill: bool = False) -> None:
        if self._proc is None:
            return
        if not kill:
            try:
                self._conn.send(None)
                self._proc.join(5)
            except (OSError, EOFError):
                pass
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()
        self._proc = self._conn = None

    def close(self) -> None:
        self._stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def write(self, mutant: Mutant) -> str:
        self._count += 1
        folder = os.path.join(self.root, f"case{self._count}")
        os.makedirs(folder)
        for rel, data in mutant.files.items():
            if os.path.isabs(rel) or ".." in rel.split("/"):
                continue  # the harness writes inside the case folder only
            p = os.path.join(folder, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
        for rel, target in mutant.links.items():
            os.symlink(target, os.path.join(folder, rel))
        for rel, target in mutant.hardlinks.items():
            if os.path.isfile(os.path.join(folder, target)):  # a later step may have made it a folder
                os.link(os.path.join(folder, target), os.path.join(folder, rel))
        return folder

    def check(self, mutant: Mutant, keep: bool = False) -> Outcome:
        if self._proc is None or not self._proc.is_alive():
            self._start()
        folder = self.write(mutant)
        t0 = time.perf_counter()
        self._conn.send((folder, self.timeout))
        res = self._wait(t0)
        for trap in (os.path.join(self.root, SECRET), ABS_SECRET):
            if not stat.S_ISFIFO(os.lstat(trap).st_mode):
                res.problems.append(f"{trap} (outside the model folder) was replaced")
                res.kind = "modified"
        matched = self.keep_matching and any(self.keep_matching.search(e) for e in res.stderr.values())
        if (res.kind != "ok" or matched) and self.keep:
            dest = os.path.join(self.keep, f"{res.kind}{self._count}-{mutant.seed}")
            shutil.copytree(folder, dest, symlinks=True, ignore=shutil.ignore_patterns("out"))
            with open(os.path.join(dest, "what.txt"), "w") as f:
                f.write(res.describe(mutant) + "\n")
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        return res

    def _wait(self, t0: float) -> Outcome:
        import psutil

        proc = psutil.Process(self._proc.pid)
        while True:
            try:
                if self._conn.poll(0.05):
                    return self._conn.recv()
            except (EOFError, OSError):
                pass
            elapsed = time.perf_counter() - t0
            if not self._proc.is_alive():
                self._proc.join(1)
                code = self._proc.exitcode
                log = _read(self.hang_file + ".crash")
                self._stop(kill=True)
                return Outcome({}, [f"worker process died (exit {code})"], "crash", log,
                               crash_location(log))
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                rss = 0
            if rss > self.mem_mb << 20:
                self._stop(kill=True)
                return Outcome({}, [f"memory over {self.mem_mb} MiB (rss {rss >> 20} MiB)"], "memory")
            if elapsed > self.timeout + 5:
                time.sleep(0.5)
                log = _read(self.hang_file)
                self._stop(kill=True)
                return Outcome({}, [f"no result after {elapsed:.0f} s"], "hang", log, crash_location(log))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# The benchmark

class Tally:
    def __init__(self):
        self.n = 0
        self.codes = collections.Counter()
        self.kinds = collections.Counter()
        self.seeds = collections.Counter()
        self.failures: dict[str, tuple[int, str]] = {}  # location -> (count, first description)
        self.slowest: list[tuple[float, str]] = []
        self.messages = collections.Counter()
        self.busy = 0.0  # seconds spent running refold (the rest: generating and writing mutants)

    def add(self, mutant: Mutant, res: Outcome) -> None:
        self.n += 1
        self.seeds[mutant.seed] += 1
        for cmd in ("show", "run"):
            code = res.codes.get(cmd)
            self.codes[f"{cmd} {code if code is not None else '-'}"] += 1
        self.kinds[res.kind] += 1
        for cmd in ("show", "run"):
            code = res.codes.get(cmd)
            if code:
                self.messages[f"{code} {message_shape(res.stderr.get(cmd, ''))}"] += 1
        if res.kind != "ok":
            key = f"{res.kind}: {res.location or res.problems[0]}"
            count, first = self.failures.get(key, (0, res.describe(mutant)))
            self.failures[key] = (count + 1, first)
        self.busy += res.seconds
        self.slowest.append((res.seconds, repr(mutant)[:160]))
        self.slowest = sorted(self.slowest, reverse=True)[:3]

    def format(self, seconds: float, show: int = 5, per_code: int = 5) -> str:
        lines = [f"mutants: {self.n} in {seconds:.0f} s ({seconds / max(1, self.n) * 1000:.0f} ms each)",
                 "seeds:   " + ", ".join(f"{k} {v}" for k, v in sorted(self.seeds.items()))]
        for cmd in ("show", "run"):
            row = sorted((k.split()[1], v) for k, v in self.codes.items() if k.startswith(cmd + " "))
            lines.append(f"{cmd:<5} exit codes: " + ", ".join(f"{c}: {v}" for c, v in row))
        lines.append(f"crashes: {self.kinds['crash']}   hangs: {self.kinds['hang']}   "
                     f"memory: {self.kinds['memory']}   modified inputs: {self.kinds['modified']}   "
                     f"multi-line stderr: {self.kinds['stderr']}   output left: {self.kinds['leftover']}")
        lines.append(f"time in refold: {self.busy:.0f} s; slowest: "
                     + "; ".join(f"{s:.1f} s {d}" for s, d in self.slowest))
        lines.append("most common refusals per exit code (names and numbers blanked):")
        for code in sorted({k.split()[0] for k in self.messages}, key=int):
            top = [(m, c) for m, c in self.messages.most_common() if m.split()[0] == code][:per_code]
            for msg, count in top:
                lines.append(f"  {count:>6}  {msg}")
        if self.failures:
            lines.append(f"distinct failures: {len(self.failures)}")
            for key, (count, first) in list(self.failures.items())[:show]:
                lines.append(f"--- {count}x {key}\n{first}")
        return "\n".join(lines)


def fuzz(n: int, seed: int, harness: Harness, *, progress: bool = True) -> Tally:
    tally = Tally()
    t0 = time.perf_counter()
    round_ = 0
    while tally.n < n:
        want = n - tally.n

        @hypothesis_seed(seed + round_ * 1_000_003)
        @settings(max_examples=want, database=None, deadline=None, derandomize=False,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                  report_multiple_bugs=False)
        @given(mutants())
        def one(mutant):
            if tally.n >= n:
                return
            tally.add(mutant, harness.check(mutant))
            if progress and tally.n % 250 == 0:
                el = time.perf_counter() - t0
                print(f"  {tally.n}/{n} mutants, {el:.0f} s, crashes {tally.kinds['crash']}, "
                      f"hangs {tally.kinds['hang']}, other failures "
                      f"{tally.n - tally.kinds['ok'] - tally.kinds['crash'] - tally.kinds['hang']}",
                      flush=True)

        one()
        round_ += 1
    return tally


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="mutants to run (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant (default 60)")
    ap.add_argument("--mem-mb", type=int, default=4096, help="worker memory cap in MiB (default 4096)")
    ap.add_argument("--show", type=int, default=5, help="distinct failures to print (default 5)")
    ap.add_argument("--keep", metavar="DIR", help="copy each failing case folder (and what.txt) into DIR")
    ap.add_argument("--keep-matching", metavar="REGEX", help="with --keep, also keep cases whose stderr matches")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    seeds()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    harness = Harness(timeout=args.timeout, mem_mb=args.mem_mb, keep=args.keep,
                      keep_matching=args.keep_matching)
    try:
        tally = fuzz(args.n, args.seed, harness)
    finally:
        harness.close()
    print(tally.format(time.perf_counter() - t0, args.show))
    bad = tally.n - tally.kinds["ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
