"""Reading an ONNX file safely: sniff, parse, check the header and every external-data reference
before a single tensor byte is read."""
from __future__ import annotations

import contextlib
import os
import stat

import onnx
from google.protobuf.message import DecodeError

from refold.errors import InvalidModelError, SecurityError, UnsupportedError
from refold.ir.tensor import ExternalRef

_MAGIC = [
    (b"\x89PNG", "a PNG image"), (b"PK\x03\x04", "a zip archive"), (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"), (b"%PDF", "a PDF document"), (b"\x7fELF", "an ELF binary"),
    (b"\x1f\x8b", "a gzip archive"),
]
_EXTERNAL_KEYS = {"location", "offset", "length", "checksum", "basepath"}


def read_model_proto(path: str) -> onnx.ModelProto:
    """Parse ``path`` as a ModelProto without loading external data; one-line errors otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InvalidModelError(f"{path}: no such file") from None
    except OSError as e:
        raise InvalidModelError(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidModelError(f"{path}: is a directory, not an ONNX file")
    if st.st_size == 0:
        raise InvalidModelError(f"{path}: file is empty, not an ONNX model")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InvalidModelError(f"{path}: cannot read ({e.strerror})") from None
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise InvalidModelError(f"{path}: looks like {what}, not an ONNX model")
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise InvalidModelError(f"{path}: looks like a Python pickle, not an ONNX model "
                                f"(refold never unpickles)")
    return parse_model_bytes(data, path)


def parse_model_bytes(data: bytes, where: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise InvalidModelError(f"{where}: not a valid ONNX protobuf (truncated or corrupted: "
                                f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    check_utf8(model, where)
    check_header(model, where)
    return model


_STRING, _MESSAGE = 9, 11  # FieldDescriptor.TYPE_STRING, TYPE_MESSAGE


def check_utf8(model, where: str) -> None:
    """Refuse a model with a string field that is not valid UTF-8.

    Protobuf (upb) parses proto2 strings without checking them and hands a bad one back as
    ``bytes``, which then breaks whatever reads it (a name compared with ``str``, a field set on
    a new proto). One pass over the set fields, about 3 us a node; the culprit is looked up only
    when there is one."""
    if _has_bytes(model):
        raise InvalidModelError(f"{where}: string field {find_bad_utf8(model) or '(unknown)'} "
                                f"is not valid UTF-8")


def _has_bytes(msg) -> bool:
    for f, v in msg.ListFields():
        t = f.type
        if t == _STRING:
            if (bytes in map(type, v)) if f.is_repeated else type(v) is bytes:
                return True
        elif t == _MESSAGE:
            if f.is_repeated:
                for x in v:
                    if _has_bytes(x):
                        return True
            elif _has_bytes(v):
                return True
    return False


def find_bad_utf8(msg, path: str = "model") -> str | None:
    """The path (``model.graph.node[3].name``) of the first string field of ``msg`` that is not
    valid UTF-8, or None."""
    for f, v in msg.ListFields():
        if f.type == _STRING:
            if not f.is_repeated:
                if type(v) is bytes:
                    return f"{path}.{f.name}"
                continue
            for i, x in enumerate(v):
                if type(x) is bytes:
                    return f"{path}.{f.name}[{i}]"
        elif f.type == _MESSAGE:
            for i, x in enumerate(v) if f.is_repeated else [(None, v)]:
                bad = find_bad_utf8(x, f"{path}.{f.name}" + ("" if i is None else f"[{i}]"))
                if bad:
                    return bad
    return None


@contextlib.contextmanager
def utf8_checked(model, where: str):
    """Turn a UnicodeDecodeError met while reading ``model`` (a bad string, set on another proto)
    into a one-line InvalidModelError naming the field."""
    try:
        yield
    except UnicodeDecodeError:
        raise InvalidModelError(f"{where}: string field {find_bad_utf8(model) or '(unknown)'} "
                                f"is not valid UTF-8") from None


def check_header(model: onnx.ModelProto, where: str) -> None:
    if not model.HasField("graph"):
        raise InvalidModelError(f"{where}: ONNX model has no graph")
    if model.ir_version <= 0:
        raise InvalidModelError(f"{where}: ONNX model has no ir_version")
    if model.ir_version > onnx.IR_VERSION:
        raise UnsupportedError(f"{where}: ir_version {model.ir_version} is newer than the installed "
                               f"onnx {onnx.__version__} supports ({onnx.IR_VERSION})")
    if model.ir_version >= 3 and len(model.opset_import) == 0:
        raise InvalidModelError(f"{where}: ONNX model has no opset_import")
    newest = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and o.version > newest:
            raise UnsupportedError(f"{where}: opset {o.version} is newer than the installed onnx "
                                   f"{onnx.__version__} supports ({newest})")


def resolve_external(tensor: onnx.TensorProto, base_dir: str | None, where: str) -> ExternalRef:
    """Check one external-data reference and return where its bytes lie.

    Refused (SecurityError) before reading: unknown keys, absolute paths, paths that leave the
    model folder (``..``, symlinks anywhere on the way), hard links, offsets or lengths past the
    end of the file.
    """
    info = {e.key: e.value for e in tensor.external_data}
    name = tensor.name or "<unnamed>"
    unknown = sorted(set(info) - _EXTERNAL_KEYS)
    if unknown:
        raise SecurityError(f"{where}: tensor '{name}' external data has unknown keys {unknown}")
    loc = info.get("location", "")
    if not loc:
        raise InvalidModelError(f"{where}: tensor '{name}' is external but has no location")
    if "\0" in loc:
        raise SecurityError(f"{where}: tensor '{name}' external data location {loc!r} holds a NUL byte")
    if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        raise InvalidModelError(f"{where}: tensor '{name}' of data_type {tensor.data_type} cannot be "
                                f"stored as external data")
    if base_dir is None:
        raise UnsupportedError(f"{where}: tensor '{name}' has external data; load the model by path")
    if os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":"):
        raise SecurityError(f"{where}: tensor '{name}' external data location '{loc}' is absolute")
    parts = loc.replace("\\", "/").split("/")
    if any(p == ".." for p in parts):
        raise SecurityError(f"{where}: tensor '{name}' external data location '{loc}' leaves the "
                            f"model folder")
    base = os.path.realpath(base_dir)
    path = os.path.join(base, *parts)
    probe = base
    for p in parts:
        probe = os.path.join(probe, p)
        if os.path.islink(probe):
            raise SecurityError(f"{where}: tensor '{name}' external data '{loc}' is a symlink")
    real = os.path.realpath(path)
    if os.path.commonpath([real, base]) != base:
        raise SecurityError(f"{where}: tensor '{name}' external data '{loc}' leaves the model folder")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise InvalidModelError(f"{where}: tensor '{name}' external data file '{loc}' is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecurityError(f"{where}: tensor '{name}' external data '{loc}' is not a regular file")
    if st.st_nlink > 1:
        raise SecurityError(f"{where}: tensor '{name}' external data '{loc}' is a hard link "
                            f"({st.st_nlink} links)")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise InvalidModelError(f"{where}: tensor '{name}' has a non-integer external offset or "
                                f"length") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise SecurityError(f"{where}: tensor '{name}' external data [{offset}, {offset + length}) "
                            f"runs past the end of '{loc}' ({st.st_size} bytes)")
    from refold.ir.dtypes import DType
    from refold.ir.tensor import storage_bytes

    try:
        want = storage_bytes(DType(tensor.data_type), tuple(tensor.dims))
    except ValueError:
        raise InvalidModelError(f"{where}: tensor '{name}' has unknown data_type {tensor.data_type}") from None
    if tensor.data_type != DType.STRING and want != length:
        raise InvalidModelError(f"{where}: tensor '{name}' declares {list(tensor.dims)} "
                                f"({want} bytes) but its external length is {length}")
    return ExternalRef(real, offset, length)


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def typed_field(data_type: int) -> str:
    """The TensorProto field that holds values of ``data_type`` when ``raw_data`` is not used."""
    if data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.COMPLEX64):
        return "float_data"
    if data_type in (onnx.TensorProto.DOUBLE, onnx.TensorProto.COMPLEX128):
        return "double_data"
    if data_type == onnx.TensorProto.INT64:
        return "int64_data"
    if data_type in (onnx.TensorProto.UINT32, onnx.TensorProto.UINT64):
        return "uint64_data"
    if data_type == onnx.TensorProto.STRING:
        return "string_data"
    return "int32_data"  # every narrower type, packed or not


def check_typed_payload(tensor: onnx.TensorProto, where: str) -> None:
    """Refuse an inline tensor whose values lie in a field its data type does not read (a float
    tensor retyped int2 keeps its float_data): onnx would find no values when it reads it."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return
    if tensor.data_type == onnx.TensorProto.STRING:  # strings live in string_data, one per element
        count = 1
        for d in tensor.dims:
            count *= d
        held = "raw_data" if tensor.HasField("raw_data") else f"{len(tensor.string_data)} strings"
        if tensor.HasField("raw_data") or len(tensor.string_data) != count:
            raise InvalidModelError(f"{where}: tensor '{tensor.name or '<unnamed>'}' is STRING "
                                    f"{list(tensor.dims)} ({count} elements) but holds {held}")
    if tensor.HasField("raw_data"):
        return
    own = typed_field(tensor.data_type)
    other = [f for f in _TYPED_FIELDS if f != own and len(getattr(tensor, f))]
    if other:
        from refold.ir.dtypes import DType

        try:
            kind = DType(tensor.data_type).name
        except ValueError:
            kind = f"data_type {tensor.data_type}"
        raise InvalidModelError(f"{where}: tensor '{tensor.name or '<unnamed>'}' is {kind} but holds its "
                                f"values in {other[0]} (its type reads {own})")


def _all_nodes(g: onnx.GraphProto):
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sg in a.graphs:
                    yield from _all_nodes(sg)


def _body(n: onnx.NodeProto) -> onnx.GraphProto | None:
    for a in n.attribute:
        if a.name == "body" and a.type == onnx.AttributeProto.GRAPH:
            return a.g
    return None


def _trips_onnxruntime(n: onnx.NodeProto) -> bool:
    """A Loop or Scan that ONNX Runtime 1.32 mishandles: an omitted output, or a body output that
    is a body input passed straight through."""
    if n.op_type not in ("Loop", "Scan") or n.domain not in ("", "ai.onnx"):
        return False
    if "" in n.output:
        return True
    body = _body(n)
    if body is None:
        return False
    inputs = {i.name for i in body.input}
    return any(o.name in inputs for o in body.output)


def for_onnxruntime(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy that computes the same and that ONNX Runtime 1.32 runs right.

    Two ORT bugs on valid models (onnx.checker passes them), met by fuzzing: a Loop whose final
    loop-carried value is omitted segfaults (other omitted Loop / Scan outputs fail), and a Loop /
    Scan body that returns one of its inputs unchanged gives uninitialized memory. The copy names
    omitted outputs (left unused) and routes such body outputs through an Identity."""
    if not any(_trips_onnxruntime(n) for n in _all_nodes(model.graph)):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graphs = [out.graph] + [_body(n) for n in _all_nodes(out.graph) if _body(n) is not None]
    taken = {o for n in _all_nodes(out.graph) for o in n.output}
    taken |= {v.name for g in graphs if g is not None for v in (*g.input, *g.initializer)}
    count = 0

    def fresh() -> str:
        nonlocal count
        while f"refold_ort_{count}" in taken:
            count += 1
        taken.add(f"refold_ort_{count}")
        return f"refold_ort_{count}"

    for n in [n for n in _all_nodes(out.graph) if _trips_onnxruntime(n)]:
        for i, o in enumerate(n.output):
            if o == "":
                n.output[i] = fresh()
        body = _body(n)
        inputs = {i.name for i in body.input} if body is not None else set()
        for vo in body.output if body is not None else ():
            if vo.name in inputs:
                name = fresh()
                body.node.append(onnx.helper.make_node("Identity", [vo.name], [name]))
                vo.name = name
    return out
