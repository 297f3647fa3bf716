"""ONNX -> refold IR, faithfully: every field refold does not model is carried verbatim so that
export gives back the same model. Initializers stay where they are (no copy)."""
from __future__ import annotations

import os
from typing import Any

import onnx
from onnx import AttributeProto as AP

from refold.errors import InvalidModelError
from refold.ir.gcpause import gc_paused
from refold.frontends.onnx.file import (
    check_typed_payload,
    read_model_proto,
    resolve_external,
    utf8_checked,
)
from refold.ir.dtypes import DType
from refold.ir.graph import Graph, Model, Node, Value
from refold.ir.tensor import Tensor, check_inline_payload

_SCALAR_NODE_FIELDS = ("name", "op_type", "domain", "doc_string", "overload")
_NODE_FIELDS = ("input", "output", "name", "op_type", "domain", "attribute", "doc_string",
                "metadata_props", "overload")
_NODE_FIELD_SET = frozenset(_NODE_FIELDS)
# AttributeProto types whose Python value refold keeps as the proto itself.
_VERBATIM_ATTRS = {AP.SPARSE_TENSOR, AP.SPARSE_TENSORS, AP.TYPE_PROTO, AP.TYPE_PROTOS, AP.TENSORS}


@gc_paused()  # millions of new objects and no garbage: the collector's scans were >50% of load
def load_onnx(src: str | os.PathLike | onnx.ModelProto) -> Model:
    """Load an ONNX file (by path, external data checked and left on disk) or a ModelProto."""
    if isinstance(src, onnx.ModelProto):
        from refold.frontends.onnx.file import check_header

        with utf8_checked(src, "<ModelProto>"):
            check_header(src, "<ModelProto>")
            return import_model(src, base_dir=None, where="<ModelProto>")
    path = os.fspath(src)
    proto = read_model_proto(path)
    with utf8_checked(proto, path):
        model = import_model(proto, base_dir=os.path.dirname(os.path.abspath(path)), where=path)
    model.meta["path"] = os.path.abspath(path)
    return model


def import_model(proto: onnx.ModelProto, *, base_dir: str | None, where: str) -> Model:
    imp = _Importer(base_dir, where)
    graph = imp.graph(proto.graph, outer=None)
    model = Model(graph, opset_imports={o.domain: o.version for o in proto.opset_import},
                  ir_version=proto.ir_version, source="onnx")
    model.producer_name = proto.producer_name
    model.producer_version = proto.producer_version
    model.domain = proto.domain
    model.model_version = proto.model_version
    model.doc_string = proto.doc_string
    model.metadata_props = {p.key: p.value for p in proto.metadata_props}
    model.functions = list(proto.functions)
    model.extra["model"] = _leftover(proto, ("graph", "opset_import", "ir_version", "producer_name",
                                              "producer_version", "domain", "model_version",
                                              "doc_string", "metadata_props", "functions"))
    model.extra["defaults"] = explicit_defaults(proto)
    model.extra["opset_import"] = list(proto.opset_import)  # written back as-is while unchanged
    model.base_dir = base_dir
    model.meta["external_data"] = imp.has_external
    return model


def _leftover(msg, modelled: tuple[str, ...]) -> bytes:
    """Serialized fields of ``msg`` that refold does not model (kept to write back verbatim)."""
    return _split_fields(msg, modelled)[0]


def explicit_defaults(msg) -> tuple[str, ...]:
    """Singular fields present in ``msg`` with their default value (proto2 keeps that presence)."""
    return _split_fields(msg, ())[1]


def _split_fields(msg, modelled: tuple[str, ...]) -> tuple[bytes, tuple[str, ...]]:
    """One pass over the set fields: (unmodelled fields serialized, explicitly-default fields)."""
    rest_fields, defaults = [], []
    for f, v in msg.ListFields():
        if f.name not in modelled:
            rest_fields.append(f.name)
        if not f.is_repeated and f.message_type is None and v == f.default_value:
            defaults.append(f.name)
    if not rest_fields:
        return b"", tuple(defaults)
    rest = type(msg)()
    for f in rest_fields:
        rest.MergeFrom(_only_field(msg, f))
    return rest.SerializeToString(), tuple(defaults)


def restore_defaults(msg, names: tuple[str, ...]) -> None:
    for name in names:
        if not msg.HasField(name):
            setattr(msg, name, getattr(msg, name))


def _only_field(msg, field: str):
    out = type(msg)()
    src = getattr(msg, field)
    dst = getattr(out, field)
    desc = msg.DESCRIPTOR.fields_by_name[field]
    if desc.is_repeated:
        dst.extend(src)
    elif desc.message_type is not None:
        dst.CopyFrom(src)
    else:
        setattr(out, field, src)
    return out


def type_from_proto(tp: onnx.TypeProto) -> tuple[DType | None, tuple | None]:
    if tp.WhichOneof("value") != "tensor_type":
        return None, None
    tt = tp.tensor_type
    try:
        dtype = DType(tt.elem_type) if tt.elem_type else None
    except ValueError:
        raise InvalidModelError(f"unknown elem_type {tt.elem_type}") from None
    if not tt.HasField("shape"):
        return dtype, None
    dims = []
    for d in tt.shape.dim:
        kind = d.WhichOneof("value")
        dims.append(d.dim_value if kind == "dim_value" else d.dim_param if kind == "dim_param" else None)
    return dtype, tuple(dims)


def type_to_proto(dtype: DType | None, shape: tuple | None) -> onnx.TypeProto:
    tp = onnx.TypeProto()
    tt = tp.tensor_type
    if dtype is not None:
        tt.elem_type = int(dtype)
    if shape is not None:
        tt.shape.SetInParent()
        for d in shape:
            dim = tt.shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            elif d is not None:
                dim.dim_value = int(d)
    return tp


def apply_value_info(v: Value, vi: onnx.ValueInfoProto, where: str = "") -> None:
    """Give ``v`` the type in ``vi``; keep the proto where refold's own form would lose detail."""
    try:
        dtype, shape = type_from_proto(vi.type)
    except InvalidModelError as e:
        raise InvalidModelError(f"{where}{': ' if where else ''}value '{vi.name}' has {e}") from None
    v.dtype, v.shape = dtype, shape
    if vi.HasField("type") and type_to_proto(dtype, shape) != vi.type:
        v.meta["onnx.type"] = (vi.type, dtype, shape)
    elif not vi.HasField("type"):
        v.meta["onnx.untyped"] = True
    if vi.doc_string:
        v.meta["doc_string"] = vi.doc_string
    if explicit_defaults(vi):
        v.meta["onnx.defaults"] = explicit_defaults(vi)
    rest = _leftover(vi, ("name", "type", "doc_string"))
    if rest:
        v.meta["onnx.value_info_extra"] = rest


class _Importer:
    def __init__(self, base_dir: str | None, where: str):
        self.base_dir = base_dir
        self.where = where
        self.has_external = False

    def tensor(self, t: onnx.TensorProto) -> Tensor:
        check_inline_payload(t, self.where)
        check_typed_payload(t, self.where)
        try:
            dtype = DType(t.data_type)
        except ValueError:
            raise InvalidModelError(f"{self.where}: tensor '{t.name}' has unknown data_type "
                                    f"{t.data_type}") from None
        if t.data_location == onnx.TensorProto.EXTERNAL:
            self.has_external = True
            ref = resolve_external(t, self.base_dir, self.where)
            return Tensor(dtype, tuple(t.dims), external=ref, proto=None)
        if t.segment.ByteSize():
            raise InvalidModelError(f"{self.where}: tensor '{t.name}' uses segments, which ONNX "
                                    f"has deprecated")
        return Tensor(dtype, tuple(t.dims), proto=t)

    def graph(self, gp: onnx.GraphProto, outer: dict[str, Value] | None, parent=None) -> Graph:
        g = Graph(gp.name, parent=parent)
        g.doc_string = gp.doc_string
        scope: dict[str, Value] = {}
        lookup = _Scope(scope, outer)
        for vi in gp.input:
            if vi.name in scope:
                raise InvalidModelError(f"{self.where}: graph '{gp.name}' lists input '{vi.name}' twice")
            v = g.add_input(vi.name)
            apply_value_info(v, vi, self.where)
            scope[vi.name] = v
        for t in gp.initializer:
            tensor = self.tensor(t)
            if t.name in scope and scope[t.name].kind == "input":
                v = scope[t.name]
                v.const = tensor
                g.initializers[t.name] = v
            elif t.name in scope:
                raise InvalidModelError(f"{self.where}: initializer '{t.name}' is defined twice")
            else:
                scope[t.name] = g.add_const(tensor, t.name)
            g.initializers[t.name].meta["onnx.initializer"] = True
        for sp in gp.sparse_initializer:
            v = Value(sp.values.name, DType(sp.values.data_type), tuple(sp.dims), kind="sparse_const")
            v.meta["onnx.sparse"] = sp
            g.claim_name(v.name)
            scope[v.name] = v
        g.meta["onnx.sparse_initializers"] = [scope[sp.values.name] for sp in gp.sparse_initializer]

        # Outputs first, so that nodes may appear out of order; sorted below. Each NodeProto is
        # read once (ListFields), which matters on graphs of 100k nodes.
        produced: dict[str, Node] = {}
        nodes = []
        for index, npb in enumerate(gp.node):
            fields = {f.name: v for f, v in npb.ListFields()}
            op_type = fields.get("op_type", "")
            if op_type == "Constant" and _is_plain_constant(npb):
                v = self.constant(npb, g)
                v.meta["onnx.constant_node"]["index"] = index
                if v.name in scope or v.name in produced:
                    raise InvalidModelError(f"{self.where}: value '{v.name}' is produced twice")
                scope[v.name] = v
                continue
            outs = []
            for o in fields.get("output", ()):
                if o == "":
                    outs.append(Value("", kind="omitted"))
                    continue
                if o in scope or o in produced:
                    first = produced[o].name if o in produced else "a graph input or initializer"
                    raise InvalidModelError(f"{self.where}: value '{o}' is produced twice (by "
                                            f"{first!r} and node '{fields.get('name', '')}' ({op_type}))")
                if any(v.name == o for v in outs):
                    raise InvalidModelError(f"{self.where}: node '{fields.get('name', '')}' ({op_type}) "
                                            f"lists output '{o}' twice")
                outs.append(Value(o))
            if not outs and fields.get("domain", "") in ("", "ai.onnx", "core"):  # every such op has one
                raise InvalidModelError(f"{self.where}: node '{fields.get('name', '')}' ({op_type}) "
                                        f"has no outputs")
            node = Node(op_type, domain=fields.get("domain", ""), name=fields.get("name", ""),
                        outputs=outs, overload=fields.get("overload", ""), meta={"onnx.index": index})
            for v in outs:
                if v.name:
                    produced[v.name] = node
                    scope[v.name] = v
            nodes.append((node, npb, fields))
        out_of_order = False
        position = {id(node): i for i, (node, _, _) in enumerate(nodes)}
        for i, (node, npb, fields) in enumerate(nodes):
            for name in fields.get("input", ()):
                if name == "":
                    node._append_input(None)
                    continue
                v = lookup.get(name)
                if v is None:
                    raise InvalidModelError(f"{self.where}: {node.label()} reads '{name}', which "
                                            f"nothing produces")
                if v.producer is not None and position.get(id(v.producer), -1) >= i:
                    out_of_order = True
                node._append_input(v)
            if "attribute" in fields:
                self.attributes(node, npb, lookup)
            if "doc_string" in fields:
                node.meta["doc_string"] = fields["doc_string"]
            if "metadata_props" in fields:
                node.meta["metadata_props"] = {p.key: p.value for p in fields["metadata_props"]}
                prov = node.meta["metadata_props"]
                if "refold.rule" in prov:
                    node.meta["provenance"] = {"rule": prov["refold.rule"],
                                               "sources": prov.get("refold.sources", "").split(",")}
            if not fields.keys() <= _NODE_FIELD_SET:
                node.meta["onnx.node_extra"] = _split_fields(npb, _NODE_FIELDS)[0]
            if "" in (fields.get("name"), fields.get("domain"), fields.get("doc_string"),
                      fields.get("overload"), fields.get("op_type")):
                node.meta["onnx.defaults"] = tuple(k for k in _SCALAR_NODE_FIELDS if fields.get(k) == "")
            g.append(node)
        try:
            if (out_of_order or any(n.subgraphs() for n, _, _ in nodes)) and g.sort():
                g.meta["sorted_on_import"] = True
        except InvalidModelError as e:  # a cycle: name the file too
            raise InvalidModelError(f"{self.where}: {e}") from None
        for vo in gp.output:
            v = lookup.get(vo.name)
            if v is None:
                raise InvalidModelError(f"{self.where}: graph '{gp.name}' output '{vo.name}' is "
                                        f"not produced by any node")
            if v.kind == "intermediate" and v.dtype is None and v.shape is None:
                apply_value_info(v, vo, self.where)
            elif not vo.HasField("type"):
                v.meta["onnx.output_untyped"] = True
            g.outputs.append(v)
            if vo.doc_string:
                v.meta["output_doc_string"] = vo.doc_string
        # Entries in file order: a name whose value takes its type from the entry, or
        # (entry, (dtype, shape) of its value, or None for a name not in this graph) kept verbatim.
        # Inputs, outputs and constants take their type from the input, output or tensor: a
        # value_info entry for one (often shapeless) must not overwrite it, or a graph output
        # would be written without its shape, which onnx.checker refuses.
        order: list = []
        output_ids = {id(v) for v in g.outputs}
        for vi in gp.value_info:
            v = scope.get(vi.name)
            if v is None or v.kind != "intermediate" or id(v) in output_ids:
                order.append((vi, None if v is None else (v.dtype, v.shape)))
                continue
            apply_value_info(v, vi, self.where)
            order.append(vi.name)
        g.meta["onnx.value_info_order"] = order
        rest = _leftover(gp, ("node", "name", "initializer", "sparse_initializer", "doc_string",
                               "input", "output", "value_info"))
        if rest:
            g.meta["onnx.graph_extra"] = rest
        g.meta["onnx.defaults"] = explicit_defaults(gp)
        return g

    def constant(self, npb: onnx.NodeProto, g: Graph) -> Value:
        """A Constant node becomes a constant value; export writes it back as a Constant node."""
        a = npb.attribute[0]
        if a.name == "value":
            tensor = self.tensor(a.t)
        else:
            import numpy as np

            val = onnx.helper.get_attribute_value(a)
            dt = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                  "value_ints": np.int64}[a.name]
            tensor = Tensor.from_array(np.array(val, dtype=dt))
        v = g.add_const(tensor, npb.output[0])
        v.meta["onnx.constant_node"] = {"name": npb.name, "attr": a.name,
                                        "doc_string": npb.doc_string,
                                        "tensor_name": a.t.name if a.name == "value" else "",
                                        "defaults": explicit_defaults(npb)}
        return v

    def attributes(self, node: Node, npb: onnx.NodeProto, lookup: "_Scope") -> None:
        for a in npb.attribute:
            if a.type == AP.UNDEFINED:  # required since IR version 2; without it the value is unknown
                raise InvalidModelError(f"{self.where}: {node.label()} attribute '{a.name}' has no type")
            if a.ref_attr_name:  # function bodies are kept verbatim: this is a graph, where ONNX forbids it
                raise InvalidModelError(f"{self.where}: {node.label()} attribute '{a.name}' refers to "
                                        f"function attribute '{a.ref_attr_name}' outside a function")
            node.attr_types[a.name] = a.type
            if a.ref_attr_name or a.doc_string or a.type in _VERBATIM_ATTRS:
                node.meta.setdefault("onnx.raw_attrs", {})[a.name] = a
            if a.ref_attr_name:
                node.attrs[a.name] = None
            elif a.type == AP.GRAPH:
                node.attrs[a.name] = self.graph(a.g, lookup.flat(), parent=node)
            elif a.type == AP.GRAPHS:
                node.attrs[a.name] = [self.graph(x, lookup.flat(), parent=node) for x in a.graphs]
            elif a.type == AP.TENSOR:
                node.attrs[a.name] = self.tensor(a.t)
                node.meta.setdefault("onnx.attr_tensor_names", {})[a.name] = a.t.name
            else:
                node.attrs[a.name] = _attr_value(a)


def _attr_value(a: onnx.AttributeProto) -> Any:
    v = onnx.helper.get_attribute_value(a)
    if a.type in (AP.FLOATS, AP.INTS, AP.STRINGS):
        return list(v)
    return v


# The Constant attributes refold turns into constant values, with the type each must have.
_CONSTANT_ATTRS = {"value": AP.TENSOR, "value_float": AP.FLOAT, "value_floats": AP.FLOATS,
                   "value_int": AP.INT, "value_ints": AP.INTS}


def _is_plain_constant(npb: onnx.NodeProto) -> bool:
    return (npb.op_type == "Constant" and npb.domain in ("", "ai.onnx") and len(npb.output) == 1
            and len(npb.attribute) == 1 and not npb.metadata_props and npb.output[0] != ""
            and _CONSTANT_ATTRS.get(npb.attribute[0].name) == npb.attribute[0].type
            and not npb.attribute[0].ref_attr_name
            and not _leftover(npb, ("input", "output", "name", "op_type", "domain", "attribute",
                                    "doc_string")))


class _Scope:
    """Name lookup through this graph and the graphs around it (for subgraph outer-scope reads)."""

    def __init__(self, local: dict[str, Value], outer: dict[str, Value] | None):
        self.local, self.outer = local, outer

    def get(self, name: str) -> Value | None:
        v = self.local.get(name)
        if v is None and self.outer is not None:
            v = self.outer.get(name)
        return v

    def flat(self) -> dict[str, Value]:
        out = dict(self.outer or {})
        out.update(self.local)
        return out
