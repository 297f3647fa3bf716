"""The table of ONNX ops as torch functions, and the helpers that read their inputs and attributes.

Each entry is ``fn(inputs, attrs, opset) -> list of outputs``; ``inputs`` are torch tensors (None
for an omitted optional input). ONNX ops are keyed by op name, ONNX Runtime's contrib ops by
``domain.op`` (``com.microsoft.MatMulNBits``). Attribute-vs-input changes across opsets (Squeeze
axes, Split sizes, Reduce axes, Clip bounds, Pad pads) are read both ways.
"""
from __future__ import annotations

from typing import Callable

OnnxTorchFn = Callable[[list, dict, int], list]
ONNX_TORCH: dict[str, OnnxTorchFn] = {}


def onnx_op(*names: str):
    def register(fn):
        for n in names:
            ONNX_TORCH[n] = fn
        return fn
    return register


def _ints(t) -> list[int]:
    return [int(x) for x in t.reshape(-1).tolist()]


def _opt(ins: list, i: int):
    return ins[i] if len(ins) > i else None


def _axes(ins: list, a: dict, i: int = 1) -> list[int] | None:
    """Axes from the attribute (older opsets) or input ``i`` (newer ones)."""
    if a.get("axes") is not None:
        return list(a["axes"])
    t = _opt(ins, i)
    return None if t is None else _ints(t)
