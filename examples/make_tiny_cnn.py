"""Build refold's bundled example: a small residual CNN with the clutter exporters leave behind
(a shape computed from constants, a duplicated activation, a dead branch).

    python examples/make_tiny_cnn.py src/refold/examples/tiny_cnn.onnx
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name, *shape, positive=False):
        a = rng.standard_normal(shape).astype(np.float32) * 0.2
        return numpy_helper.from_array(np.abs(a) + 0.5 if positive else a, name)

    inits = [init("conv1.w", 8, 3, 3, 3), init("conv1.b", 8),
             init("bn1.scale", 8), init("bn1.bias", 8), init("bn1.mean", 8), init("bn1.var", 8, positive=True),
             init("conv2.w", 8, 8, 3, 3),
             init("bn2.scale", 8), init("bn2.bias", 8), init("bn2.mean", 8), init("bn2.var", 8, positive=True),
             init("fc.w", 10, 8), init("fc.b", 10),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"],
                         ["b1"], name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "conv2.w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn2.scale", "bn2.bias", "bn2.mean", "bn2.var"],
                         ["b2"], name="bn2", epsilon=1e-3),
        helper.make_node("Add", ["b2", "r1"], ["res"], name="residual"),
        helper.make_node("Relu", ["res"], ["r2"], name="relu2"),
        helper.make_node("Relu", ["res"], ["r2_dup"], name="relu2_duplicate"),
        helper.make_node("Add", ["r2", "r2_dup"], ["r2x2"], name="sum_dup"),
        helper.make_node("Sigmoid", ["r2"], ["unused"], name="dead_branch"),
        helper.make_node("GlobalAveragePool", ["r2x2"], ["gap"], name="pool"),
        helper.make_node("Concat", ["one", "minus_one"], ["flat_shape"], name="shape_from_consts", axis=0),
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="refold-example")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


if __name__ == "__main__":
    onnx.save(build(), sys.argv[1] if len(sys.argv) > 1 else "tiny_cnn.onnx")
