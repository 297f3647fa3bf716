"""codegen: each fused block builds into exactly one TVM kernel (llvm here), called with torch
tensors, equal to the core reference; symbolic dims stay symbolic; TVM missing is one clear
error."""
from __future__ import annotations

import sys

import pytest
import torch

import zoo
from refold.api import example_path, load
from refold.errors import UnsupportedError
from refold.lowering import partition
from refold.passes import FuseConvBN, PassManager
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


def test_cuda_source_for_every_block_type_without_a_gpu():
    m = load(example_path())
    RaiseToCore().call(m)
    PassManager([FuseConvBN()], check=False).run(m)
    infer_shapes(m)
    model, inputs = zoo.tiny_hf_model("gpt2")
    g = load(zoo.last_hidden(model).eval(), inputs)
    RaiseToCore().call(g)
    rules = {}
    for mm in (m, g):
        for block in partition(mm):
            if not block.outputs or block.kind in rules:
                continue
            kernel = build_block(block, target="cuda")  # dlight rules tried one at a time
            assert _kernels_in(kernel.source) == 1, block.name
            rules[block.kind] = kernel.schedule
    assert rules["conv_bias_act"] == "Matmul" and rules["norm"] in ("Reduction", "GeneralReduction")
    assert rules["elementwise"] == "Fallback" and rules["linear"] in ("Matmul", "GEMV")
    assert {"conv_bias_act", "conv_bias", "linear", "norm", "elementwise"} <= set(rules)
