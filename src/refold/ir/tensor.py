"""Constant payloads, kept where they lie (a TensorProto, an external file, an array) until read."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from refold.errors import InvalidModelError
from refold.ir.dtypes import DType


@dataclasses.dataclass(frozen=True)
class ExternalRef:
    """Bytes ``[offset, offset+length)`` of ``path``, already checked to lie inside the model folder."""

    path: str
    offset: int
    length: int


def storage_bytes(dtype: DType, shape: tuple[int, ...]) -> int:
    """Bytes a dense tensor of this type and shape occupies (sub-byte types packed)."""
    n = math.prod(shape)
    return (n * dtype.itemsize_bits + 7) // 8


class Tensor:
    """A constant tensor. Import wraps the source without copying; ``numpy()`` reads it.

    >>> t = Tensor.from_array(np.ones((2, 3), np.float32))
    >>> t.dtype.short, t.shape, t.nbytes
    ('f32', (2, 3), 24)
    """

    __slots__ = ("dtype", "shape", "_array", "_proto", "_external", "_torch")

    def __init__(self, dtype: DType, shape: tuple[int, ...], *, array: np.ndarray | None = None,
                 proto: Any = None, external: ExternalRef | None = None, torch_tensor: Any = None):
        self.dtype = DType(dtype)
        self.shape = tuple(int(d) for d in shape)
        self._array = array
        self._proto = proto
        self._external = external
        self._torch = torch_tensor

    @classmethod
    def from_array(cls, array: np.ndarray, dtype: DType | None = None) -> "Tensor":
        """Wrap an array; ``dtype`` declares a type the array only holds (int4 in int8, uint4 in
        uint8), checked against its values.

        >>> Tensor.from_array(np.array([-8, 7], np.int8), DType.INT4)
        Tensor(i4[2], array)
        """
        array = np.asarray(array)
        if dtype is None or DType(dtype) == DType.from_numpy(array.dtype):
            return cls(DType.from_numpy(array.dtype), array.shape, array=array)
        dtype = DType(dtype)
        if not dtype.is_int4 or array.dtype != dtype.numpy():
            raise ValueError(f"a {array.dtype} array cannot hold {dtype.name}")
        lo, hi = dtype.int_range()
        if array.size and (array.min() < lo or array.max() > hi):
            raise ValueError(f"values [{array.min()}, {array.max()}] do not fit {dtype.name} [{lo}, {hi}]")
        return cls(dtype, array.shape, array=array)

    @classmethod
    def from_torch(cls, t) -> "Tensor":
        return cls(DType.from_torch(t.dtype), tuple(t.shape), torch_tensor=t)

    @property
    def proto(self):
        """The TensorProto this tensor was imported from, if it is unchanged (else None)."""
        return self._proto

    @property
    def external(self) -> ExternalRef | None:
        return self._external

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        if self.dtype == DType.STRING:
            return 0
        return storage_bytes(self.dtype, self.shape)

    def numpy(self) -> np.ndarray:
        """Read the payload into a numpy array (a fresh read for external data); int4 / uint4
        come unpacked, in int8 / uint8."""
        if self._array is not None:
            return self._array
        if self._torch is not None:
            return self._torch.detach().cpu().numpy()
        if self._external is not None:
            arr = _read_external(self.dtype, self.shape, self._external)
        else:
            from onnx import numpy_helper

            arr = numpy_helper.to_array(self._proto)
        return arr.astype(self.dtype.numpy()) if self.dtype.is_int4 else arr

    def torch(self):
        import torch

        if self._torch is not None:
            return self._torch
        return torch.from_numpy(np.array(self.numpy()))

    def __repr__(self) -> str:
        where = "external" if self._external else "array" if self._array is not None else "proto"
        return f"Tensor({self.dtype.short}{list(self.shape)}, {where})"


def _read_external(dtype: DType, shape: tuple[int, ...], ref: ExternalRef) -> np.ndarray:
    from onnx import TensorProto, numpy_helper

    with open(ref.path, "rb") as f:
        f.seek(ref.offset)
        raw = f.read(ref.length)
    if len(raw) != ref.length:
        raise InvalidModelError(f"{ref.path}: external data ends before offset+length "
                                f"{ref.offset}+{ref.length}")
    if dtype.itemsize_bits % 8 == 0 and dtype != DType.STRING:
        return np.frombuffer(raw, dtype=dtype.numpy()).reshape(shape)
    t = TensorProto(data_type=int(dtype), dims=shape, raw_data=raw)
    return numpy_helper.to_array(t)


_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data")


def check_inline_payload(proto, where: str) -> None:
    """Refuse a TensorProto whose dims x dtype disagree with its payload, before any allocation."""
    if any(d < 0 for d in proto.dims):
        raise InvalidModelError(f"{where}: tensor '{proto.name}' has negative dims {list(proto.dims)}")
    n = 1
    for d in proto.dims:
        n *= d
        if n > 2**62:
            raise InvalidModelError(f"{where}: tensor '{proto.name}' element count overflows int64")
    if proto.data_location == proto.EXTERNAL or proto.data_type == DType.STRING:
        return
    try:
        dtype = DType(proto.data_type)
    except ValueError:
        raise InvalidModelError(f"{where}: tensor '{proto.name}' has unknown data_type "
                                f"{proto.data_type}") from None
    if dtype == DType.UNDEFINED:
        raise InvalidModelError(f"{where}: tensor '{proto.name}' has data_type UNDEFINED")
    if proto.HasField("raw_data"):
        want = storage_bytes(dtype, tuple(proto.dims))
        if len(proto.raw_data) != want:
            raise InvalidModelError(
                f"{where}: tensor '{proto.name}' declares {list(proto.dims)} {dtype.name} "
                f"({want} bytes) but holds {len(proto.raw_data)} bytes")
        return
    got = sum(len(getattr(proto, f)) for f in _TYPED_FIELDS)
    if got == 0 and n == 0:
        return
    per = 2 if dtype in (DType.COMPLEX64, DType.COMPLEX128) else 1
    if dtype.itemsize_bits < 8:
        want = -(-n * dtype.itemsize_bits // 8) if dtype != DType.BOOL else n
        ok = got in (n, want)
    elif dtype in (DType.FLOAT16, DType.BFLOAT16) or dtype.value >= 17:
        ok = got in (n, -(-n // 2))  # 16-bit and 8-bit floats may be packed into int32 words
    else:
        ok = got == n * per
    if not ok:
        raise InvalidModelError(f"{where}: tensor '{proto.name}' declares {list(proto.dims)} "
                                f"{dtype.name} ({n} elements) but holds {got} values")

