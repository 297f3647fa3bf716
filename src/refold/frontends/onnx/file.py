"""Reading an ONNX file safely: sniff, parse, check the header and every external-data reference
before a single tensor byte is read."""
from __future__ import annotations

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
    check_header(model, where)
    return model


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
