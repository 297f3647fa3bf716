"""ONNX ops as torch functions, so an ONNX-born graph runs (and differentiates) in torch.

``ONNX_TORCH[op](inputs, attrs, opset) -> outputs``: the table and its helpers are in ``registry``,
filled by ``compute`` (arithmetic, activations, matmul, conv, pooling, norms, reductions) and
``layout`` (shapes, indexing, casts, constants) and ``sequence`` (sequence ops, GatherND). Ops refold cannot run in torch are named in the
error the runner raises; the reference runner covers them.
"""
from __future__ import annotations

from refold.runtime.onnx_torch import compute, layout, sequence  # noqa: F401  (they fill the table)
from refold.runtime.onnx_torch.registry import ONNX_TORCH, OnnxTorchFn, onnx_op

__all__ = ["ONNX_TORCH", "OnnxTorchFn", "onnx_op"]
