"""Element types, numbered as ONNX numbers them, with numpy and torch mappings."""
from __future__ import annotations

import enum

import numpy as np


class DType(enum.IntEnum):
    """Tensor element type; the value is ``onnx.TensorProto.DataType``."""

    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26

    @property
    def short(self) -> str:
        return _SHORT.get(self, self.name.lower())

    @property
    def itemsize_bits(self) -> int:
        if self in (DType.UINT4, DType.INT4, DType.FLOAT4E2M1):
            return 4
        if self in (DType.UINT2, DType.INT2):
            return 2
        if self == DType.STRING:
            return 0
        return int(self.numpy().itemsize) * 8

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    def numpy(self) -> np.dtype:
        """The numpy dtype that holds this type: ml_dtypes for bf16/fp8/fp4; int4 / uint4 are held
        unpacked, one value per int8 / uint8 (packed two to a byte only on disk)."""
        import onnx.helper

        held = _UNPACKED.get(self)
        if held is not None:
            return np.dtype(held)
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(self)))

    @property
    def is_int4(self) -> bool:
        return self in _UNPACKED

    def int_range(self) -> tuple[int, int]:
        """(min, max) of an integer type, int4 / uint4 included."""
        if self == DType.INT4:
            return -8, 7
        if self == DType.UINT4:
            return 0, 15
        info = np.iinfo(self.numpy())
        return int(info.min), int(info.max)

    def torch(self):

        try:
            return _torch_map()[self]
        except KeyError:
            raise KeyError(f"{self.name} has no torch dtype") from None

    @classmethod
    def from_numpy(cls, dtype) -> "DType":
        import onnx.helper

        return cls(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))

    @classmethod
    def from_torch(cls, dtype) -> "DType":
        for k, v in _torch_map().items():
            if v == dtype:
                return k
        raise KeyError(f"torch dtype {dtype} has no refold DType")


_SHORT = {
    DType.FLOAT: "f32", DType.DOUBLE: "f64", DType.FLOAT16: "f16", DType.BFLOAT16: "bf16",
    DType.INT8: "i8", DType.INT16: "i16", DType.INT32: "i32", DType.INT64: "i64",
    DType.UINT8: "u8", DType.UINT16: "u16", DType.UINT32: "u32", DType.UINT64: "u64",
    DType.BOOL: "bool", DType.STRING: "str", DType.INT4: "i4", DType.UINT4: "u4",
}
_UNPACKED = {DType.INT4: np.int8, DType.UINT4: np.uint8}
_FLOATS = {DType.FLOAT, DType.DOUBLE, DType.FLOAT16, DType.BFLOAT16, DType.FLOAT8E4M3FN,
           DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ, DType.FLOAT4E2M1,
           DType.FLOAT8E8M0}
_TORCH: dict | None = None


def _torch_map() -> dict:
    global _TORCH
    if _TORCH is None:
        import torch

        _TORCH = {
            DType.FLOAT: torch.float32, DType.DOUBLE: torch.float64, DType.FLOAT16: torch.float16,
            DType.BFLOAT16: torch.bfloat16, DType.INT8: torch.int8, DType.INT16: torch.int16,
            DType.INT32: torch.int32, DType.INT64: torch.int64, DType.UINT8: torch.uint8,
            DType.BOOL: torch.bool, DType.COMPLEX64: torch.complex64,
            DType.COMPLEX128: torch.complex128,
            DType.FLOAT8E4M3FN: torch.float8_e4m3fn, DType.FLOAT8E5M2: torch.float8_e5m2,
            DType.UINT16: torch.uint16, DType.UINT32: torch.uint32, DType.UINT64: torch.uint64,
            # held unpacked, as numpy holds them; listed after INT8 / UINT8 so that from_torch
            # reads an int8 tensor as INT8
            DType.INT4: torch.int8, DType.UINT4: torch.uint8,
        }
    return _TORCH
