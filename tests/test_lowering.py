"""lowering: the IR partitioned into fused blocks (one kernel each, later), by a pattern table in
the rewrite syntax plus elementwise chains; deterministic, disjoint, closed."""
from __future__ import annotations

from collections import Counter

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import refold
import zoo
from refold.api import example_path, load
from refold.lowering import partition
from refold.passes import FuseConvBN, PassManager, Quantize
from refold.passes.raise_core import RaiseToCore


def _raised(src, *args):
    m = load(src, *args)
    RaiseToCore().call(m)
    return m


def _check_disjoint_and_closed(m, blocks):
    seen = set()
    for b in blocks:
        computed = {n for n in b.nodes if any(v is not None and v.const is None for v in n.inputs)}
        assert not seen & computed  # only a weight's dequantize may sit in two blocks
        seen |= computed
        assert all(n.meta["block"] == b.name for n in computed)
        inside = set(b.nodes)
        for v in b.outputs:  # what a block writes: its last result, or read outside / a graph output
            assert v.producer in inside
        if b.kind != "elementwise":
            assert b.outputs == [b.nodes[-1].outputs[0]]


def test_tiny_cnn_after_folding_gives_conv_bias_act_blocks_deterministically():
    m = _raised(example_path())
    PassManager([FuseConvBN()], check=False).run(m)
    blocks = partition(m)
    kinds = Counter(b.kind for b in blocks)
    # conv -> relu; conv -> residual add (read twice: the add stays outside); the classifier gemm
    assert (kinds["conv_bias_act"], kinds["conv_bias"], kinds["linear"]) == (1, 1, 1), kinds
    _check_disjoint_and_closed(m, blocks)
    again = _raised(example_path())
    PassManager([FuseConvBN()], check=False).run(again)
    assert [(b.kind, [n.op for n in b.nodes]) for b in partition(again)] == [(b.kind, [n.op for n in b.nodes])
                                                                              for b in blocks]


def test_an_intermediate_read_outside_ends_the_block():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "c"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w, b])
    m = _raised(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    blocks = partition(m)
    # conv's output is read by the add too: conv alone, relu + add an elementwise chain
    assert [(b.kind, [n.op for n in b.nodes]) for b in blocks] == [("conv_bias", ["conv"]),
                                                                   ("elementwise", ["relu", "add"])]
    _check_disjoint_and_closed(m, blocks)


def test_transformer_blocks_and_the_quantized_matmul_block(tmp_path):
    model, inputs = zoo.tiny_hf_model("gpt2")
    m = _raised(zoo.last_hidden(model).eval(), inputs)
    blocks = partition(m)
    kinds = Counter(b.kind for b in blocks)
    assert kinds["norm"] == 5 and kinds["linear"] == 8, kinds
    _check_disjoint_and_closed(m, blocks)
    # a MatMul quantized for ONNX Runtime: DQ -> matmul -> Q is one block
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w])
    data = [{"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(4)]
    proto, _ = refold.optimize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                               passes=[Quantize(data=data, per_channel=False)])
    q = _raised(proto)
    blocks = partition(q)
    kinds = Counter(b.kind for b in blocks)
    assert kinds["dequant_matmul_quant"] == 1, kinds  # Q(relu(matmul(DQ(x), DQ(w)))): one kernel
    _check_disjoint_and_closed(q, blocks)
