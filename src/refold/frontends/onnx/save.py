"""Writing ONNX safely: stage next to the destination, stream external data, check, then rename.

Every write goes to a fresh staging folder inside the destination folder (same filesystem, so the
final ``os.replace`` is atomic). Tensors that lived in an external file are copied by byte range
(never through Python memory); the data file is renamed into place first and the model last. On
any error or interrupt the staging folder is removed and the destination is unchanged.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile

import onnx

from refold.errors import InvalidModelError, OutputError
from refold.frontends.onnx.exporter import inline_tensor, to_onnx
from refold.ir.graph import Model
from refold.ir.tensor import Tensor

# Past this many bytes of weights a model is saved with external data (protobuf's limit is 2 GiB).
EXTERNAL_THRESHOLD = 1_800_000_000
_MIN_EXTERNAL_TENSOR = 1024
_ALIGN = 4096


class _ExternalWriter:
    """Tensor sink that appends tensors to one data file, copying external ranges in the kernel."""

    def __init__(self, data_path: str, location: str, durable: bool = True):
        self.location = location
        self.f = open(data_path, "xb")  # fresh, never an existing file
        self.offset = 0
        self.durable = durable

    def __call__(self, name: str, tensor: Tensor) -> onnx.TensorProto:
        if tensor.nbytes < _MIN_EXTERNAL_TENSOR:
            return inline_tensor(name, tensor)
        pad = (-self.offset) % _ALIGN if tensor.nbytes >= 1 << 20 else 0
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        start = self.offset
        ref = tensor.external
        if ref is not None:
            self.f.flush()
            with open(ref.path, "rb") as src:
                _copy_range(src.fileno(), self.f.fileno(), ref.offset, ref.length)
            self.f.seek(0, os.SEEK_END)
            length = ref.length
        else:
            raw = _raw_bytes(tensor)
            self.f.write(raw)
            length = len(raw)
        self.offset += length
        t = onnx.TensorProto(name=name, data_type=int(tensor.dtype), dims=tensor.shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(start)), ("length", str(length))):
            e = t.external_data.add()
            e.key, e.value = k, v
        return t

    def close(self) -> None:
        self.f.flush()
        if self.durable:
            os.fsync(self.f.fileno())
        self.f.close()


def _raw_bytes(tensor: Tensor) -> bytes:
    if tensor.proto is not None and tensor.proto.HasField("raw_data"):
        return tensor.proto.raw_data
    return inline_tensor("", tensor).raw_data or onnx.numpy_helper.from_array(tensor.numpy()).raw_data


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src, dst, length - done, offset + done)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = os.sendfile(dst, src, offset + done, min(length - done, 1 << 26))
        if n == 0:
            raise InvalidModelError(f"external data ended early while copying ({done}/{length} bytes)")
        done += n


def weight_bytes(model: Model) -> int:
    return model.weight_bytes()


def save_onnx(model: Model, path: str | os.PathLike, *, external_data: bool | None = None,
              check: bool = True, durable: bool = True) -> None:
    """Write ``model`` to ``path`` atomically (model and data file, or neither).

    ``external_data``: None keeps external data when the model had it or must have it (over
    ~1.8 GB of weights); True / False force it. ``check`` runs
    ``onnx.checker.check_model(path, full_check=True)`` on the staged file before it goes live.
    ``durable=False`` skips the fsyncs (scratch copies, e.g. ONNX Runtime's by-path file, which
    would otherwise wait for gigabytes to reach the disk).
    """
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise OutputError(f"{path}: output folder {folder} {what}")
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory")
    if external_data is None:
        external_data = bool(model.meta.get("external_data")) or weight_bytes(model) > EXTERNAL_THRESHOLD
    try:
        stage = tempfile.mkdtemp(prefix=f".{base}.refold-", dir=folder)
    except OSError as e:
        raise OutputError(f"{path}: cannot write to {folder} ({e.strerror})") from None
    try:
        staged = os.path.join(stage, base)
        data_name = base + ".data"
        writer = None
        try:
            if external_data:
                writer = _ExternalWriter(os.path.join(stage, data_name), data_name, durable)
                proto = to_onnx(model, writer)
                writer.close()
            else:
                proto = to_onnx(model)
            if not external_data and proto.ByteSize() >= 2**31:
                raise OutputError(f"{path}: model is over 2 GiB; save it with external data")
            with open(staged, "xb") as f:
                f.write(proto.SerializeToString())
                f.flush()
                if durable:
                    os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
        finally:
            if writer is not None and not writer.f.closed:
                writer.f.close()
        if check and model.meta.get("target_runtime") == "onnxruntime":
            _check_with_onnxruntime(staged, path)
        elif check:
            try:
                onnx.checker.check_model(staged, full_check=True)
            except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
                raise InvalidModelError(f"{path}: the result fails onnx.checker (full check), so "
                                        f"nothing was written; is the input valid? "
                                        f"{str(e).splitlines()[0][:300]}") from None
        if external_data:
            os.replace(os.path.join(stage, data_name), os.path.join(folder, data_name))
        os.replace(staged, path)
        if durable:
            _fsync_dir(folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_with_onnxruntime(staged: str, path: str) -> None:
    """Models targeting ONNX Runtime use its contrib ops, which onnx.checker does not know: such a
    model is validated by loading it in ONNX Runtime."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(staged, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InvalidModelError(f"{path}: the result does not load in ONNX Runtime, so nothing was "
                                f"written: {str(e).splitlines()[0][:300]}") from None


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
