"""codegen: each fused block builds into exactly one TVM kernel (llvm here), called with torch
tensors, equal to the core reference; symbolic dims stay symbolic; TVM missing is one clear
error."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import refold
import zoo
from refold.api import example_path, load
from refold.errors import UnsupportedError
from refold.lowering import partition
from refold.passes import FuseConvBN, PassManager, Quantize
from refold.passes.raise_core import RaiseToCore
from refold.runtime.shapes import infer_shapes

pytest.importorskip("tvm")
from refold.codegen import build_block  # noqa: E402


def _args(block, sizes):
    gen = torch.Generator().manual_seed(0)
    return [v.const.torch() if v.const is not None else
            torch.randn([d if isinstance(d, int) else sizes for d in v.shape], generator=gen) for v in block.inputs]


@pytest.mark.parametrize("source", ["tiny_cnn", "gpt2"])
def test_every_block_is_one_kernel_equal_to_the_reference(source):
    if source == "tiny_cnn":
        m = load(example_path())
        RaiseToCore().call(m)
        PassManager([FuseConvBN()], check=False).run(m)
        infer_shapes(m)
    else:
        model, inputs = zoo.tiny_hf_model("gpt2")
        m = load(zoo.last_hidden(model).eval(), inputs)
        RaiseToCore().call(m)
    built = 0
    for block in partition(m):
        if not block.outputs:
            continue  # dead code (nothing reads it): no kernel
        kernel = build_block(block)  # raises unless exactly one PrimFunc came out
        for size in (2, 5):  # a symbolic dim takes any size: one kernel serves both
            args = _args(block, size)
            with torch.no_grad():
                ref = block.reference(args)
            assert torch.allclose(kernel(*args), ref, atol=1e-4, rtol=1e-4), block.name
        built += 1
    assert built >= (4 if source == "tiny_cnn" else 20)


def test_tvm_missing_is_one_clear_error(monkeypatch):
    from refold.codegen import require_tvm

    monkeypatch.setitem(sys.modules, "tvm", None)
    with pytest.raises(UnsupportedError, match=r"pip install 'refold\[tvm\]'"):
        require_tvm()


def _kernels_in(source: str) -> int:
    """CUDA kernels defined (a declaration and a definition each carry __global__)."""
    return sum(1 for line in source.splitlines() if "__global__" in line and line.rstrip().endswith("{"))


def _quantized_matmul():
    """Q(relu(matmul(DQ(x), DQ(w)))) from the quantize pass, weights per channel."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [w])
    data = [{"x": rng.standard_normal((2, 8)).astype(np.float32)} for _ in range(4)]
    proto, _ = refold.optimize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]),
                               passes=[Quantize(data=data)])
    m = load(proto)
    RaiseToCore().call(m)
    return m


def test_the_quantized_matmul_block_is_one_kernel_equal_to_the_reference():
    block = next(b for b in partition(_quantized_matmul()) if b.kind == "dequant_matmul_quant")
    kernel = build_block(block)
    for size in (3, 64):
        gen = torch.Generator().manual_seed(size)
        args = [v.const.torch() if v.const is not None else
                torch.randint(0, 256, [d if isinstance(d, int) else size for d in v.shape], generator=gen,
                              dtype=torch.uint8) for v in block.inputs]
        ref = block.reference(args)
        assert ref.dtype == torch.uint8 and torch.equal(kernel(*args), ref)  # integer levels: exact


def test_cuda_source_and_cubin_for_every_block_type_without_a_gpu(tmp_path):
    from refold.codegen.cubin import nvcc_path

    m = load(example_path())
    RaiseToCore().call(m)
    PassManager([FuseConvBN()], check=False).run(m)
    infer_shapes(m)
    model, inputs = zoo.tiny_hf_model("gpt2")
    g = load(zoo.last_hidden(model).eval(), inputs)
    RaiseToCore().call(g)
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    qcnn = load(refold.optimize(example_path(), passes=[Quantize(data=data)])[0])
    RaiseToCore().call(qcnn)
    infer_shapes(qcnn)
    rules = {}
    for mm in (m, g, _quantized_matmul(), qcnn):
        for block in partition(mm):
            if not block.outputs or block.kind in rules:
                continue
            kernel = build_block(block, target="cuda", cubin_folder=str(tmp_path))  # dlight rules one at a time
            assert _kernels_in(kernel.source) == 1, block.name
            if nvcc_path() is not None:  # CI has nvcc from PyPI: the CUDA C compiles for sm_90, here
                assert kernel.binary[:4] == b"\x7fELF", block.name
            rules[block.kind] = kernel.schedule
    assert rules["conv_bias_act"] == "Matmul" and rules["norm"] in ("Reduction", "GeneralReduction")
    assert rules["elementwise"] == "Fallback" and rules["linear"] in ("Matmul", "GEMV")
    assert rules["dequant_matmul_quant"] in ("Matmul", "GEMV") and rules["dequant_conv_quant"] == "Matmul"
    assert {"conv_bias_act", "conv_bias", "linear", "norm", "elementwise", "dequant_matmul_quant",
            "dequant_conv_quant"} <= set(rules)
    if nvcc_path() is not None:
        assert len(list(tmp_path.rglob("*.cubin"))) == len(rules)  # cached: a second build compiles nothing


def test_distinct_unknown_dims_of_an_add_are_one_size_checked_on_every_call():
    """onnx leaves the two operands' sizes as different unknowns; TVM cannot prove they broadcast,
    so the kernel takes them as equal, and a call where they differ (a real broadcast) runs the
    block's ops in torch instead."""
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 4, "h1", "w1"]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 4, "h2", "w2"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    RaiseToCore().call(m)
    (block,) = partition(m)
    kernel = build_block(block)
    assert kernel.equal == [(0, 2, 1, 2), (0, 3, 1, 3)]
    a, b = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    assert torch.equal(kernel(a, b), a + b)
    b1 = torch.randn(2, 4, 1, 6)  # broadcast along h: not what the kernel was built for
    assert torch.equal(kernel(a, b1), a + b1)


def test_an_unknown_dim_that_meets_a_fixed_one_is_that_size_checked_on_every_call():
    """x[n, t, c] * w[120], c unknown (PP-OCR rec's layer norm affine after a reshape): the
    kernel takes c = 120; a call with c = 1 (a real broadcast) runs the ops in torch."""
    w = numpy_helper.from_array(np.linspace(-1, 1, 120, dtype=np.float32), "w")
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "t", "c"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    m = load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    RaiseToCore().call(m)
    (block,) = partition(m)
    kernel = build_block(block)
    assert kernel.equal == [(0, 2, -1, 120)]
    wt = torch.from_numpy(numpy_helper.to_array(w))
    for x in (torch.randn(2, 5, 120), torch.randn(2, 5, 1)):
        assert torch.equal(kernel(x, wt), x * wt)
