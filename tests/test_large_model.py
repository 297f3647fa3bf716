"""The by-path machinery for models past protobuf's 2 GiB, proven on a few KB: the thresholds are
lowered so a small model with external data goes the way a large one does (ONNX Runtime opens a
file, the numeric check snapshots to files, no external weight is read into Python memory).
The 2 GB run itself is benchmarks/external_data.py."""
from __future__ import annotations

import gc
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import refold
from sabotage import Sabotage
from refold.errors import PassFailedError
from refold.ir.tensor import Tensor
from refold.passes import PassManager, get_pass
from refold.runtime import check
from refold.runtime import ort as ort_mod
from refold.runtime.ort import OrtRunner

D = 64  # 64 x 64 fp32 weights: 16 KiB each, external; the threshold below is 8 KiB


def _model(folder) -> str:
    """x -> 4 x (MatMul, Add(bias_raw * 0.5), Relu); a duplicated Relu, a dead Neg."""
    rng = np.random.default_rng(0)
    inits = [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])]
    nodes, prev = [], "x"
    for i in range(4):
        inits.append(numpy_helper.from_array(rng.standard_normal((D, D)).astype(np.float32) / 8, f"w{i}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), f"bias_raw{i}"))
        nodes += [helper.make_node("Mul", [f"bias_raw{i}", "half"], [f"bias{i}"], name=f"bias_scale{i}"),
                  helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"),
                  helper.make_node("Add", [f"mm{i}", f"bias{i}"], [f"add{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"add{i}"], [f"h{i}"], name=f"relu{i}")]
        prev = f"h{i}"
        if i == 1:
            nodes += [helper.make_node("Relu", [f"add{i}"], ["dup"], name="relu_dup"),
                      helper.make_node("Add", [prev, "dup"], ["twice"], name="twice")]
            prev = "twice"
        if i == 2:
            nodes.append(helper.make_node("Neg", [prev], ["dead"], name="dead"))
    g = helper.make_graph(nodes, "ext", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, D])],
                          [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [2, D])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    path = os.path.join(str(folder), "ext.onnx")
    onnx.save(m, path, save_as_external_data=True, location="ext.onnx.data", size_threshold=1024)
    return path


@pytest.fixture
def large(monkeypatch, tmp_path):
    """Lowered thresholds, and Tensor.numpy() refusing the external weights (they must stay on disk)."""
    monkeypatch.setattr(ort_mod, "BY_PATH_BYTES", 8 << 10)
    plain = Tensor.numpy

    def numpy(self):
        if self.external is not None and self.nbytes > 4096:
            raise AssertionError(f"external weight {self} read into memory")
        return plain(self)

    monkeypatch.setattr(Tensor, "numpy", numpy)
    src = tmp_path / "src"
    src.mkdir()
    return _model(src)


def _feeds():
    return {"x": np.random.default_rng(1).standard_normal((2, D)).astype(np.float32)}


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k, v in a.items():
        np.testing.assert_array_equal(v, b[k])


def test_ort_runner_goes_by_path_captures_and_cleans_up(large):
    model = refold.load(large)
    assert model.weight_bytes() > ort_mod.BY_PATH_BYTES
    in_memory = OrtRunner(onnx.load(large))  # weights loaded by onnx, session from bytes
    assert not in_memory.by_path
    runner = OrtRunner(model)
    assert runner.by_path
    folder = runner._folder
    assert os.path.isdir(folder) and "model.onnx.data" in os.listdir(folder)
    _same(runner.run(_feeds()), in_memory.run(_feeds()))
    capture = ["mm1", "dup", "bias2"]
    got = runner.run(_feeds(), capture=capture)
    _same(got, in_memory.run(_feeds(), capture=capture))
    assert set(capture) <= set(got)
    assert sorted(os.listdir(folder)) == ["model.onnx", "model.onnx.data"]  # written once, captures too
    runner.close()
    assert not os.path.exists(folder)

    by_file = OrtRunner(large)  # a path: opened where it lies, nothing written
    assert by_file.by_path and by_file._folder is None
    _same(by_file.run(_feeds(), capture=capture), got)
    by_file.close()
    assert os.path.exists(large) and os.path.exists(large + ".data")


def test_pipeline_with_check_goes_by_path(large, monkeypatch, tmp_path):
    snapshots = []

    class Recorded(check.FrozenFile):
        def __init__(self, model):
            super().__init__(model)
            snapshots.append(self.folder)

    monkeypatch.setattr(check, "FrozenFile", Recorded)
    model = refold.load(large)
    pm = PassManager([get_pass(p) for p in ("fold-constants", "cse", "dce")], check=True,
                     check_limit_bytes=1 << 30)
    report = pm.run(model)
    assert report.check_engine == "onnxruntime"
    stats = {r.name: r.stats for r in report.passes}
    assert stats["fold-constants"]["folded"] == 4 and stats["cse"]["merged_nodes"] == 1
    assert stats["dce"]["removed_nodes"] == 1
    assert all(r.max_abs == 0.0 for r in report.passes)
    assert len(snapshots) == 4  # the input, then after each of the three passes
    gc.collect()
    assert not any(os.path.exists(f) for f in snapshots)  # each snapshot's folder went with it

    out = tmp_path / "out.onnx"
    refold.save(report.model, out)  # byte ranges copied, weights never read
    _same(OrtRunner(str(out)).run(_feeds()), OrtRunner(large).run(_feeds()))


def test_check_by_path_names_first_diverging_node(large):
    with pytest.raises(PassFailedError) as e:
        PassManager([Sabotage(lambda n: n.name == "relu2")], check_limit_bytes=1 << 30).run(refold.load(large))
    assert "first diverging node: 'dead' (Neg)" in str(e.value)  # relu2's first reader
