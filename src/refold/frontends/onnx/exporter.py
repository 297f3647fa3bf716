"""refold IR -> ONNX. Unchanged parts are written back as they were read; core-dialect nodes are
lowered to the model's opset on the way out (the IR itself is not changed)."""
from __future__ import annotations

from typing import Callable

import onnx
from onnx import AttributeProto as AP

from refold.errors import UnsupportedError
from refold.frontends.onnx.importer import restore_defaults, type_to_proto
from refold.ir.graph import CORE, Graph, Model, Node, Value
from refold.ir.tensor import Tensor

TensorSink = Callable[[str, Tensor], onnx.TensorProto]


def inline_tensor(name: str, tensor: Tensor) -> onnx.TensorProto:
    """A TensorProto holding the data inline; the imported proto itself when unchanged."""
    if tensor.proto is not None:
        if tensor.proto.name == name:
            return tensor.proto
        t = onnx.TensorProto()
        t.CopyFrom(tensor.proto)
        t.name = name
        return t
    from onnx import numpy_helper

    arr = tensor.numpy()
    if tensor.dtype.is_int4:  # held unpacked in int8 / uint8; written packed, two to a byte
        arr = arr.astype(onnx.helper.tensor_dtype_to_np_dtype(int(tensor.dtype)))
    t = numpy_helper.from_array(arr, name)
    if t.data_type != int(tensor.dtype):  # e.g. bf16 held as ml_dtypes
        t.data_type = int(tensor.dtype)
    return t


STUB_INLINE_BYTES = 4096


def stub_tensor(name: str, tensor: Tensor) -> onnx.TensorProto:
    """A sink for exports that need the graph, not the weights: small tensors inline (shape
    computations read them), larger ones as type-only stubs pointing at no file."""
    if tensor.nbytes <= STUB_INLINE_BYTES:
        return inline_tensor(name, tensor)
    stub = onnx.TensorProto(name=name, data_type=int(tensor.dtype), dims=tensor.shape)
    stub.data_location = onnx.TensorProto.EXTERNAL
    e = stub.external_data.add()
    e.key, e.value = "location", "refold-stub"
    return stub


def exported_node_count(model: Model) -> int:
    """How many nodes the written file will have, subgraphs included: core ops lowered to the
    model's opset, and the Constant nodes that hold weights counted like any node (they are nodes
    of the file, and what ``onnx`` or Netron counts)."""
    def count(g: onnx.GraphProto) -> int:
        total = len(g.node)
        for n in g.node:
            for a in n.attribute:
                total += count(a.g) if a.HasField("g") else 0
                total += sum(count(sg) for sg in a.graphs)
        return total

    return count(to_onnx(model, stub_tensor).graph)


def to_onnx(model: Model, sink: TensorSink = inline_tensor) -> onnx.ModelProto:
    """Export a Model; ``sink`` decides how each tensor is stored (inline, or external on save)."""
    ctx = _Exporter(model, sink)
    graph = ctx.graph(model.graph)
    m = onnx.ModelProto()
    if model.extra.get("model"):
        m.MergeFromString(model.extra["model"])
    m.ir_version = model.ir_version
    kept = model.extra.get("opset_import")
    if kept is not None and {o.domain: o.version for o in kept} == ctx.opsets:
        m.opset_import.extend(kept)
    else:
        for dom, ver in ctx.opsets.items():
            o = m.opset_import.add()
            o.domain, o.version = dom, ver
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if getattr(model, field):
            setattr(m, field, getattr(model, field))
    for k, v in model.metadata_props.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    restore_defaults(m, model.extra.get("defaults", ()))
    m.graph.CopyFrom(graph)
    m.functions.extend(model.functions)
    return m


def value_info(v: Value, *, as_output: bool = False) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(name=v.name)
    kept = v.meta.get("onnx.type")
    if kept is not None and kept[1] == v.dtype and kept[2] == v.shape:
        vi.type.CopyFrom(kept[0])
    elif v.meta.get("onnx.untyped") and v.dtype is None and v.shape is None:
        pass
    elif as_output and v.meta.get("onnx.output_untyped"):
        pass
    elif v.dtype is not None or v.shape is not None:
        vi.type.CopyFrom(type_to_proto(v.dtype, v.shape))
    doc = v.meta.get("output_doc_string" if as_output else "doc_string")
    if doc:
        vi.doc_string = doc
    restore_defaults(vi, v.meta.get("onnx.defaults", ()))
    if v.meta.get("onnx.value_info_extra"):
        vi.MergeFromString(v.meta["onnx.value_info_extra"])
    return vi


class _Exporter:
    def __init__(self, model: Model, sink: TensorSink):
        self.model = model
        self.sink = sink
        self.opsets = dict(model.opset_imports)

    def require_opset(self, domain: str, version: int) -> None:
        if domain not in self.opsets:
            self.opsets[domain] = version

    def graph(self, g: Graph) -> onnx.GraphProto:
        gp = onnx.GraphProto()
        if g.meta.get("onnx.graph_extra"):
            gp.MergeFromString(g.meta["onnx.graph_extra"])
        gp.name = g.name
        if g.doc_string:
            gp.doc_string = g.doc_string
        input_ids = {id(v) for v in g.inputs}
        for v in g.inputs:
            gp.input.append(value_info(v))
        pending = []  # constants written back as Constant nodes, in original order
        # Below IR version 4 every initializer must also be a graph input; new constants would
        # change the interface, so they become Constant nodes instead.
        legacy = self.model.ir_version < 4
        info_of: dict[int, dict] = {}
        for v in g.initializers.values():
            if id(v) in input_ids:
                gp.initializer.append(self.sink(v.name, v.const))
            elif "onnx.constant_node" in v.meta:
                pending.append(v)
                info_of[id(v)] = v.meta["onnx.constant_node"]
            elif legacy:
                pending.append(v)
                info_of[id(v)] = {"name": "", "attr": "value", "doc_string": "", "tensor_name": v.name}
            else:
                gp.initializer.append(self.sink(v.name, v.const))
        for v in g.meta.get("onnx.sparse_initializers", []):
            gp.sparse_initializer.append(v.meta["onnx.sparse"])
        pending.sort(key=lambda v: info_of[id(v)].get("index", -1))
        pending_ids = {id(v): v for v in pending}
        emitted: set[int] = set()

        def emit_const(v: Value) -> None:
            if id(v) in emitted:
                return
            emitted.add(id(v))
            info = info_of[id(v)]
            if info["attr"] == "value":
                t = self.sink(info["tensor_name"], v.const)
                attr = onnx.helper.make_attribute("value", t)
            else:
                arr = v.const.numpy()
                val = arr.tolist()
                attr = onnx.helper.make_attribute(info["attr"], val)
            n = gp.node.add(op_type="Constant", output=[v.name])
            if info["name"]:
                n.name = info["name"]
            n.attribute.append(attr)
            if info["doc_string"]:
                n.doc_string = info["doc_string"]
            restore_defaults(n, info.get("defaults", ()))

        queue = list(pending)
        for node in g:
            idx = node.meta.get("onnx.index")
            while queue and idx is not None and info_of[id(queue[0])].get("index", -1) < idx:
                emit_const(queue.pop(0))
            for v in _reads(node):
                if id(v) in pending_ids:
                    emit_const(v)
            if node.domain == CORE:
                from refold.frontends.onnx.lower import lower_core_node

                protos = lower_core_node(node, self)
                for p in protos:
                    _stamp_provenance(p, node)
                gp.node.extend(protos)
            else:
                gp.node.append(self.node(node))
        for v in queue:
            emit_const(v)
        for v in g.outputs:
            if id(v) in pending_ids:
                emit_const(v)
            gp.output.append(value_info(v, as_output=True))
        out_ids = {id(v) for v in g.outputs}
        seen = set()
        typed = {}
        for node in g:
            for v in node.outputs:
                if v.kind != "omitted" and id(v) not in out_ids and (v.dtype is not None or v.shape is not None):
                    typed[v.name] = v
        held = _values_typed_elsewhere(g)
        for entry in g.meta.get("onnx.value_info_order", []):
            if not isinstance(entry, str):
                if _verbatim_still_fits(entry, held, typed):
                    gp.value_info.append(entry[0])
                continue
            v = typed.get(entry)
            if v is not None:
                gp.value_info.append(value_info(v))
                seen.add(entry)
        for name, v in typed.items():
            if name not in seen:
                gp.value_info.append(value_info(v))
        restore_defaults(gp, g.meta.get("onnx.defaults", ()))
        return gp

    def node(self, node: Node) -> onnx.NodeProto:
        n = onnx.NodeProto()
        if node.meta.get("onnx.node_extra"):
            n.MergeFromString(node.meta["onnx.node_extra"])
        n.op_type = node.op
        if node.domain:
            n.domain = node.domain
        if node.name:
            n.name = node.name
        if node.overload:
            n.overload = node.overload
        n.input.extend("" if v is None else v.name for v in node.inputs)
        n.output.extend(v.name for v in node.outputs)
        raw = node.meta.get("onnx.raw_attrs", {})
        tensor_names = node.meta.get("onnx.attr_tensor_names", {})
        for name, val in node.attrs.items():
            r = raw.get(name)
            if r is not None and (r.ref_attr_name or r.type in (AP.SPARSE_TENSOR, AP.SPARSE_TENSORS,
                                                              AP.TYPE_PROTO, AP.TYPE_PROTOS, AP.TENSORS)):
                n.attribute.append(r)
                continue
            n.attribute.append(self.attribute(name, val, node.attr_types.get(name),
                                              tensor_names.get(name, ""),
                                              r.doc_string if r is not None else None))
        if node.meta.get("doc_string"):
            n.doc_string = node.meta["doc_string"]
        for k, v in node.meta.get("metadata_props", {}).items():
            p = n.metadata_props.add()
            p.key, p.value = k, v
        _stamp_provenance(n, node)
        restore_defaults(n, node.meta.get("onnx.defaults", ()))
        return n

    def attribute(self, name, val, attr_type, tensor_name, doc) -> onnx.AttributeProto:
        if isinstance(val, Graph):
            return onnx.helper.make_attribute(name, self.graph(val), doc)
        if isinstance(val, list) and val and isinstance(val[0], Graph):
            return onnx.helper.make_attribute(name, [self.graph(x) for x in val], doc)
        if isinstance(val, Tensor):
            return onnx.helper.make_attribute(name, self.sink(tensor_name, val), doc)
        try:
            return onnx.helper.make_attribute(name, val, doc, attr_type=attr_type)
        except (TypeError, ValueError) as e:
            raise UnsupportedError(f"attribute '{name}': cannot write {type(val).__name__} to "
                                   f"ONNX ({e})") from None


def _stamp_provenance(proto: onnx.NodeProto, node: Node) -> None:
    """Write which rule made a node, and from what, into its metadata (refold diff reads it)."""
    prov = node.meta.get("provenance")
    if not prov or node.meta.get("metadata_props", {}).get("refold.rule") == prov["rule"]:
        return
    for k, v in (("refold.rule", prov["rule"]), ("refold.sources", ",".join(prov["sources"]))):
        p = proto.metadata_props.add()
        p.key, p.value = k, v


def _values_typed_elsewhere(g: Graph) -> dict[str, Value]:
    """Inputs, constants and outputs of ``g`` by name: values whose type ONNX holds outside
    value_info (in the input, the tensor, the output)."""
    held = {v.name: v for v in g.inputs}
    held.update(g.initializers)
    held.update((v.name, v) for v in g.meta.get("onnx.sparse_initializers", []))
    held.update((v.name, v) for v in g.outputs)
    return held


def _verbatim_still_fits(entry: tuple, held: dict[str, Value], typed: dict[str, Value]) -> bool:
    """Whether a value_info entry kept verbatim on import may be written back as it was.

    An entry for a name the graph did not define (an outer-scope value) always is. Otherwise its
    value must still be an input, constant or output of the graph, with the type it had on import:
    once a rewrite retypes or removes the value, the stale entry could contradict the new type
    (shape inference in onnx.checker then fails), and it is dropped; the value's own type stays.
    """
    vi, was = entry
    if was is None:
        return True
    v = held.get(vi.name)
    return v is not None and vi.name not in typed and (v.dtype, v.shape) == was


def _reads(node: Node):
    """Values a node reads, including reads from inside its subgraphs."""
    for v in node.inputs:
        if v is not None:
            yield v
    for g in node.subgraphs():
        for sub in g.all_nodes():
            for v in sub.inputs:
                if v is not None:
                    yield v
        for v in g.outputs:
            yield v
