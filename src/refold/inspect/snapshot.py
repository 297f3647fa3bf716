"""A frozen, data-free view of a graph: what diffs and the HTML viewer read.

Taking one is cheap and keeps no tensors alive: each constant input is remembered by name, shape,
dtype and a content digest, so a snapshot taken before passes run can be compared with the graph
after them, or with a graph loaded from another file.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from typing import Any

from refold.ir.graph import Graph, Model, Node, Value


@dataclasses.dataclass
class Port:
    name: str
    dtype: str | None
    shape: tuple | None
    const: str | None = None        # content digest when the input is a constant
    producer: str | None = None     # key of the producing node


# ONNX op types and ATen ops that are one core op, so graphs in different dialects pair up
_CANON = {
    "layernormalization": "layer_norm", "native_layer_norm": "layer_norm", "batchnormalization": "batch_norm",
    "_native_batch_norm_legit_no_training": "batch_norm", "rmsnormalization": "rms_norm",
    "simplifiedlayernormalization": "rms_norm", "convtranspose": "conv_transpose", "convolution": "conv",
    "conv2d": "conv", "conv1d": "conv", "addmm": "gemm", "mm": "matmul", "bmm": "matmul", "view": "reshape",
    "_unsafe_view": "reshape", "permute": "transpose", "cat": "concat", "reducemean": "reduce_mean",
    "mean": "reduce_mean", "quantizelinear": "quantize_linear", "dequantizelinear": "dequantize_linear",
    "split_with_sizes": "split", "hardswish": "hardswish",
}


def canonical_op(op: str) -> str:
    """'Gemm', 'core.gemm', 'aten.addmm.default' -> 'gemm': what pairing compares."""
    parts = op.split(".")
    if parts[0] in ("core", "aten", "onnx") and len(parts) > 1:
        parts = parts[1:]
    base = parts[0].lower() if len(parts) == 1 or parts[0] not in ("com",) else op.lower()
    return _CANON.get(base, base)


@dataclasses.dataclass
class NodeView:
    key: str                        # name, else first output name: what provenance sources say
    name: str
    op: str                         # ONNX op_type (with domain) or dialect-qualified op
    attrs: dict[str, str]
    inputs: list[Port | None]
    outputs: list[Port]
    provenance: dict[str, Any] | None
    scope: list[str]
    kernel: dict[str, Any] | None = None  # the fused block it belongs to, and whether that became a kernel

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = [None if p is None else dataclasses.asdict(p) for p in self.inputs]
        return d


@dataclasses.dataclass
class Snapshot:
    title: str
    nodes: list[NodeView]
    parameters: int
    inputs: list[Port]
    outputs: list[str]
    node_count: int = -1  # nodes of the model as written (Constant nodes, subgraphs); set by take

    def by_key(self) -> dict[str, NodeView]:
        return {n.key: n for n in self.nodes}

    @property
    def ops(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.op] = out.get(n.op, 0) + 1
        return out


def node_key(n: Node) -> str:
    return n.name or (n.outputs[0].name if n.outputs else "?")


def _digest(v: Value, cache: dict[int, str]) -> str:
    t = v.const
    if id(t) not in cache:
        h = hashlib.blake2b(digest_size=12)
        arr = t.numpy()
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(memoryview(arr.reshape(-1).view("u1")) if arr.size else b"")
        cache[id(t)] = h.hexdigest()
    return cache[id(t)]


def _op_name(n: Node) -> str:
    if n.dialect == "onnx":
        return n.op if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op}"
    return n.qualified_op


def _fmt_attr(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 200 else s[:197] + "..."


def _kernel(n: Node) -> dict[str, Any] | None:
    """``meta["kernel"]`` (left by the codegen plan or ``api.kernel_map``): block, kind, status
    (kernel | torch | planned), and the schedule or the reason it runs in torch."""
    k = n.meta.get("kernel")
    return dict(k) if isinstance(k, dict) else None


def _scope(n: Node) -> list[str]:
    stack = n.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        return [p for p in str(path).split(".") if p]
    if n.name and "/" in n.name:
        return [p for p in n.name.split("/")[:-1] if p]
    return []


def _onnx_defaults(n: Node) -> dict[str, Any]:
    """Attribute defaults from the ONNX schema, so an attribute spelled out equals one left out."""
    if n.dialect != "onnx":
        return {}
    return _schema_defaults(n.op, "" if n.domain in ("", "ai.onnx") else n.domain)


@functools.lru_cache(maxsize=None)
def _schema_defaults(op: str, domain: str) -> dict[str, Any]:
    try:
        import onnx.defs
        from onnx import helper

        schema = onnx.defs.get_schema(op, domain=domain)
    except Exception:  # unknown op or domain: no defaults to fill in
        return {}
    out = {}
    for name, a in schema.attributes.items():
        if a.default_value is not None and a.default_value.type:
            out[name] = helper.get_attribute_value(a.default_value)
    return out


def _port(v: Value, cache: dict[int, str]) -> Port:
    p = v.producer
    return Port(v.name, str(v.dtype) if v.dtype is not None else None,
                tuple(v.shape) if v.shape is not None else None,
                _digest(v, cache) if v.const is not None else None,
                node_key(p) if p is not None else None)


def constant_nodes(g: Graph) -> int:
    """Constants of ``g`` and its subgraphs that were read from Constant nodes (they are written
    back as Constant nodes: nodes of the file, though constants in the IR)."""
    return sum("onnx.constant_node" in v.meta for sub in g.all_graphs() for v in sub.initializers.values())


def written_count(g: Graph) -> int:
    """Nodes of an imported graph as its file has them: every node of every graph, and each
    Constant node (:func:`constant_nodes`)."""
    return sum(len(sub) for sub in g.all_graphs()) + constant_nodes(g)


def take(model: Model | Graph, title: str = "", *, node_count: int | None = None) -> Snapshot:
    """Snapshot the top-level graph of ``model`` (a refold Model or Graph). ``node_count``: the
    model's node count as the user holds it (the caller knows how it is exported); by default
    :func:`written_count`."""
    g = model.graph if isinstance(model, Model) else model
    cache: dict[int, str] = {}
    nodes = []
    for n in g:
        given = {**_onnx_defaults(n), **n.attrs}
        attrs = {k: _fmt_attr(v) for k, v in sorted(given.items()) if k != "kwargs" or v}
        nodes.append(NodeView(node_key(n), n.name, _op_name(n), attrs,
                              [None if v is None else _port(v, cache) for v in n.inputs],
                              [_port(v, cache) for v in n.outputs],
                              n.meta.get("provenance"), _scope(n), _kernel(n)))
    params = sum(math.prod(v.shape) for v in g.initializers.values()
                 if v.shape is not None and v.dtype is not None and v.dtype.is_float)
    return Snapshot(title or g.name, nodes, int(params),
                    [_port(v, cache) for v in g.inputs if v.const is None], [v.name for v in g.outputs],
                    written_count(g) if node_count is None else node_count)
