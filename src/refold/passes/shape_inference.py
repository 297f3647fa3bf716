"""The infer-shapes pass: fill in value dtypes and shapes (``refold.runtime.shapes``)."""
from __future__ import annotations

import onnx

from refold.ir.graph import Model
from refold.passes.base import Pass, PassResult
from refold.runtime.shapes import infer_shapes


class InferShapes(Pass):
    name = "infer-shapes"
    description = "fill in value dtypes and shapes with onnx shape inference (data propagation on)"

    def call(self, model: Model) -> PassResult:
        try:
            n = infer_shapes(model, probe=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, RuntimeError, ValueError) as e:
            return PassResult(model, False, {"error": str(e).splitlines()[0][:200]})
        return PassResult(model, n > 0, {"values_typed": n})
