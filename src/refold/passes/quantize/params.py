"""Quantization parameters from ranges, and the invariants every emitted pair must satisfy.

    asymmetric uint8:  s = (hi - lo) / 255,  zp = round(-lo / s)        with lo <= 0 <= hi
    symmetric int8:    s = max(|lo|, |hi|) / 127,  zp = 0                (weights: [-127, 127])
    symmetric uint8:   s = max(|lo|, |hi|) / 127.5, zp = 128             (onnxruntime#25823: not 127)

An all-zero range gets the smallest normal float32 scale, never 0 (coremltools#2851).
"""
from __future__ import annotations

import numpy as np

from refold.errors import PassFailedError

TINY = float(np.finfo(np.float32).tiny)
QTYPES = {"uint8": (np.uint8, 0, 255), "int8": (np.int8, -128, 127), "int16": (np.int16, -32768, 32767),
          "uint16": (np.uint16, 0, 65535)}


def activation_params(lo: float, hi: float, qtype: str, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) as 0-d arrays: scale float32, zero point of the quantized type."""
    dtype, qmin, qmax = QTYPES[qtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        amax = max(-lo, hi)
        if qmin == 0:  # unsigned symmetric: zero sits in the middle of the range
            scale = amax / ((qmax - qmin) / 2)
            zp = (qmax + qmin + 1) // 2
        else:
            scale, zp = amax / qmax, 0
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = qmin - lo / scale if scale > 0 else 0
    scale = max(scale, TINY)
    zp = int(np.clip(np.round(zp), qmin, qmax))
    return np.array(scale, np.float32), np.array(zp, dtype)


def weight_params(w: np.ndarray, axis: int | None, bits: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric, in [-(2^(b-1) - 1), 2^(b-1) - 1] ([-127, 127] at 8 bits): per channel along
    ``axis`` (a vector), or per tensor. Zero points int8 whatever the bits (stored as int8)."""
    w = np.asarray(w, np.float32)
    qmax = float(2 ** (bits - 1) - 1)
    if axis is None:
        amax = np.abs(w).max() if w.size else 0.0
        return np.array(max(float(amax) / qmax, TINY), np.float32), np.array(0, np.int8)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(moved).max(axis=1) if moved.shape[1] else np.zeros(w.shape[axis], np.float32)
    scale = np.maximum(amax / qmax, TINY).astype(np.float32)
    return scale, np.zeros(w.shape[axis], np.int8)


def quantize_weight(w: np.ndarray, scale: np.ndarray, axis: int | None, bits: int = 8) -> np.ndarray:
    """round(w / s), clipped to the symmetric b-bit range ([-127, 127] at 8: the restricted range
    TensorRT requires), as int8."""
    w = np.asarray(w, np.float32)
    qmax = 2 ** (bits - 1) - 1
    return np.clip(np.round(w / _along(scale, axis, w.ndim)), -qmax, qmax).astype(np.int8)


def rounded_weight(w: np.ndarray, axis: int | None, bits: int = 8) -> np.ndarray:
    """Q_b(W) back in float: what the weight becomes at ``bits`` (s * round(w / s), float64)."""
    scale, _ = weight_params(w, axis, bits)
    q = quantize_weight(w, scale, axis, bits).astype(np.float64)
    return q * _along(scale, axis, np.ndim(w))


def _along(scale: np.ndarray, axis: int | None, ndim: int) -> np.ndarray:
    """A per-channel scale shaped to broadcast along ``axis`` of a rank-``ndim`` weight."""
    if axis is None or scale.ndim == 0:
        return scale
    return scale.reshape([-1 if i == axis % ndim else 1 for i in range(ndim)])


def quantize_bias(b: np.ndarray, x_scale: np.ndarray, w_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    """int32 bias with scale s_x * s_w (per output channel), or why it must stay float."""
    scale = (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, np.shape(b)).astype(np.float32) if scale.ndim else scale
    if np.any(scale <= 0) or not np.all(np.isfinite(scale)):
        return "bias scale s_x * s_w is not a positive finite number"
    q = np.round(np.asarray(b, np.float64) / scale)
    if np.any(np.abs(q) > 2**31 - 1):  # a tiny weight scale overflows int32 (onnxruntime#22020)
        worst = float(np.abs(q).max())
        return f"bias / (s_x * s_w) reaches {worst:.3g}, beyond int32: kept in float"
    return q.astype(np.int32), np.maximum(scale, TINY).astype(np.float32)


def check_pair(name: str, scale: np.ndarray, zp: np.ndarray, axis: int | None, channels: int | None) -> None:
    """The invariants of one emitted Q/DQ pair; a violation is a bug in refold, caught here."""
    s = np.asarray(scale)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise PassFailedError(f"quantize: '{name}' got a non-positive or non-finite scale {s.min()}")
    info = np.iinfo(np.asarray(zp).dtype)
    if np.any(np.asarray(zp) < info.min) or np.any(np.asarray(zp) > info.max):
        raise PassFailedError(f"quantize: '{name}' zero point outside {np.asarray(zp).dtype}")
    if s.ndim == 1 and s.size > 1:
        if axis is None or channels != s.size:
            raise PassFailedError(f"quantize: '{name}' is per-channel ({s.size}) without a matching axis")
    if np.asarray(zp).shape != s.shape:
        raise PassFailedError(f"quantize: '{name}' scale and zero point shapes differ")
