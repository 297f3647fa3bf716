"""Regressions found by benchmarks/zoo.py: each is a valid model on which a pass crashed or declined
everything; each test fails on the code before its fix."""
from __future__ import annotations

import warnings

import onnx
import torch
from torch import nn

import refold


class ConvBNNoBias(nn.Module):
    """ResNet's stem and block: convs without bias, each followed by BatchNorm."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = torch.relu(self.b1(self.c1(x)))
        return self.head(torch.relu(self.b2(self.c2(y)) + y))


def _randomized(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.uniform_(-1, 1)
            b.running_var.uniform_(0.5, 2)
            b.weight.data.uniform_(0.5, 1.5)
    return m.eval()


def test_dynamo_export_zero_bias_is_a_constant(tmp_path):
    """torch.onnx.export(dynamo=True, optimize=False) writes a conv without bias as
    Conv(x, W, Expand(CastLike(0, x), Shape(W))) with its Constants kept as nodes (they carry
    metadata): fuse-conv-bn declined all 20 BNs of ResNet-18 ('val_5' is not constant) and prune
    found 0 of 13 groups prunable. raise-to-core now resolves such values to constants."""
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_randomized(ConvBNNoBias()), (torch.randn(1, 3, 16, 16),), path,
                          dynamo=True, optimize=False)
    assert {"CastLike", "Shape", "Expand"} <= {n.op_type for n in onnx.load(path).graph.node}
    proto, report = refold.optimize(path, passes=["fuse-conv-bn", "prune:ratio=0.3"])
    raised, fused, pruned = (report.record(n).stats for n in ("raise-to-core", "fuse-conv-bn", "prune"))
    assert raised["static_values"] > 0
    assert fused["folded"] == 2 and not fused.get("not_folded")
    assert pruned["pruned_groups"] >= 1 and pruned["params_after"] < pruned["params_before"]
    assert not {"CastLike", "Shape", "Expand", "BatchNormalization"} & {n.op_type for n in proto.graph.node}


def test_torch_runner_runs_the_dynamo_exporters_sequence_ops(tmp_path):
    """GPT-2 exported with dynamo=True splits its fused qkv with SplitToSequence + SequenceAt and
    indexes with GatherND: refold.compile stopped with 'the torch runner has no implementation of
    [onnx.GatherND, onnx.SequenceAt, onnx.SplitToSequence]'."""
    import numpy as np
    import onnxruntime as ort

    import zoo
    from refold.runtime.torch_runner import TorchRunner

    m, (ids,) = zoo.tiny_hf_model("gpt2")

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, use_cache=False).last_hidden_state

    path = str(tmp_path / "gpt2.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(), (ids,), path, dynamo=True, optimize=False)
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"SplitToSequence", "SequenceAt"} <= ops
    feed = {"x": ids.numpy()}
    want = ort.InferenceSession(path).run(None, feed)[0]
    got = TorchRunner(refold.load(path)).run(feed)
    got = np.asarray(got[0] if isinstance(got, (list, tuple)) else next(iter(got.values())))
    assert np.abs(got - want).max() < 1e-5


def test_gather_nd_matches_the_reference_evaluator():
    import numpy as np
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from refold.runtime.onnx_torch import ONNX_TORCH

    rng = np.random.default_rng(0)
    for b, xs, ish in [(0, (4, 5, 6), (3, 2)), (1, (2, 5, 6), (2, 3, 1)), (0, (4, 5), (2, 2)),
                       (2, (2, 3, 4, 5), (2, 3, 6, 2)), (0, (4, 5, 6), (3,))]:
        x = rng.random(xs).astype(np.float32)
        idx = np.stack([rng.integers(-xs[b + j], xs[b + j], ish[:-1]) for j in range(ish[-1])], -1)
        node = helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=b)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                            helper.make_tensor_value_info("i", TensorProto.INT64, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        ref = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
        want = ref.run(None, {"x": x, "i": idx.astype(np.int64)})[0]
        got = ONNX_TORCH["GatherND"]([torch.from_numpy(x), torch.from_numpy(idx.astype(np.int64))],
                                     {"batch_dims": b}, 18)[0]
        assert got.shape == want.shape and np.allclose(got.numpy(), want), (b, xs, ish)


def test_torch_runner_keeps_integer_types_and_scatters():
    """RoBERTa / MPNet exported by the TorchScript-based exporter compute position ids with an
    int32 CumSum: the torch runner widened it to int64 (torch's default for integer sums) and the
    compiled model stopped with 'Mismatched ..._CumSum_output_0.dtype'. BEiT's index assignment is
    a ScatterND the runner lacked."""
    import numpy as np
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    from refold.runtime.onnx_torch import ONNX_TORCH

    mask = torch.tensor([[1, 1, 0]], dtype=torch.int32)
    assert ONNX_TORCH["CumSum"]([mask, torch.tensor(1)], {}, 14)[0].dtype == torch.int32
    assert ONNX_TORCH["ReduceSum"]([mask, torch.tensor([1])], {}, 13)[0].dtype == torch.int32
    assert ONNX_TORCH["ReduceProd"]([mask, torch.tensor([1])], {}, 18)[0].dtype == torch.int32
    rng = np.random.default_rng(0)
    for how in ("none", "add", "mul", "max", "min"):
        for xs, ish in [((4, 5, 6), (3, 2)), ((4, 5), (2, 1)), ((4, 5, 6), (2, 3))]:
            x, k = rng.random(xs).astype(np.float32), ish[-1]
            idx = np.stack([rng.permutation(xs[j])[:ish[0]] if how == "none" else
                            rng.integers(0, xs[j], ish[:-1]) for j in range(k)], -1).astype(np.int64)
            upd = rng.random((*ish[:-1], *xs[k:])).astype(np.float32)
            attrs = {} if how == "none" else {"reduction": how}
            ios = [helper.make_tensor_value_info(n, t, None) for n, t in
                   (("x", TensorProto.FLOAT), ("i", TensorProto.INT64), ("u", TensorProto.FLOAT))]
            g = helper.make_graph([helper.make_node("ScatterND", ["x", "i", "u"], ["y"], **attrs)], "g", ios,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
            ref = ReferenceEvaluator(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
            want = ref.run(None, {"x": x, "i": idx, "u": upd})[0]
            got = ONNX_TORCH["ScatterND"]([torch.from_numpy(x), torch.from_numpy(idx), torch.from_numpy(upd)],
                                          attrs, 18)[0]
            assert np.allclose(got.numpy(), want), (how, xs, ish)


def test_pads_spelled_out_by_the_torchscript_exporter_do_not_block_pruning(tmp_path):
    """transformers' MobileNetV2 pads TF-style with F.pad; the TorchScript-based exporter writes
    the pads as ConstantOfShape / Concat / Reshape / reversing Slice / Transpose / Cast of
    constants, and prune declined all 42 groups ('a pad with computed amounts'). Prune now
    evaluates such pads, and cuts through a pad that leaves the channel axis alone whatever its
    width."""
    import zoo

    m, (x,) = zoo.tiny_hf_model("mobilenetv2")

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).last_hidden_state

    path = str(tmp_path / "mv2.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Features(), (x,), path, dynamo=False, opset_version=17, input_names=["x"],
                          training=torch.onnx.TrainingMode.PRESERVE)
    _, report = refold.optimize(path, passes=["prune:ratio=0.3"])
    stats = report.record("prune").stats
    assert stats["pruned_groups"] >= 20 and stats["params_after"] < 0.7 * stats["params_before"]
    assert not any("computed amounts" in why for why in stats.get("not_pruned", {}).values())


def test_dynamo_bert_linears_and_attention_are_prunable(tmp_path):
    """BERT exported with dynamo=True, optimize=False writes each Linear as MatMul(x, Transpose(W))
    and guards its softmax with IsNaN: prune found no channel groups at all. Now the transposed
    weight is stored transposed (raise-to-core) and elementwise predicates pass channels through:
    the FFN and attention groups prune as in the torch world; the residual stream stays (it is
    normalised by LayerNorms), and says so."""
    import zoo

    m, (ids,) = zoo.tiny_hf_model("bert")

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x).last_hidden_state

    path = str(tmp_path / "bert.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(), (ids,), path, dynamo=True, optimize=False)
    assert "IsNaN" in {n.op_type for n in onnx.load(path).graph.node}
    proto, report = refold.optimize(path, passes=["prune:ratio=0.3"])
    stats = report.record("prune").stats
    assert stats["prunable"] >= 4 and stats["pruned_groups"] >= 2
    assert stats["params_after"] < 0.92 * stats["params_before"]
    assert all("layer_norm" in why for why in stats["not_pruned"].values())
    weights = {t.name for t in proto.graph.initializer}
    assert not [n.name for n in proto.graph.node if n.op_type == "Transpose" and n.input[0] in weights]


def _caffe2_style(tmp_path) -> str:
    """An opset-9 graph the way the onnx model zoo's Caffe2 exports are written: conv, LRN,
    Dropout with its ratio attribute, two branches summed with Sum, then a classifier."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("LRN", ["r1"], ["n1"], size=5, alpha=1e-3, beta=0.75, bias=1.0),
        helper.make_node("Conv", ["n1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["n1", "w3", "b3"], ["c3"]),
        helper.make_node("Sum", ["c2", "c3"], ["s"]),
        helper.make_node("Relu", ["s"], ["r2"]),
        helper.make_node("Dropout", ["r2"], ["d"], ratio=0.5),
        helper.make_node("GlobalAveragePool", ["d"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["y"], transB=1),
    ]
    inits = [w("w1", 16, 3, 3, 3), w("b1", 16), w("w2", 16, 16, 3, 3), w("b2", 16), w("w3", 16, 16, 1, 1),
             w("b3", 16), w("w4", 5, 16), w("b4", 5)]
    g = helper.make_graph(nodes, "caffe2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    path = str(tmp_path / "caffe2.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)], ir_version=4), path)
    return path


def test_onnx_zoo_alexnet_and_shufflenet_ops(tmp_path):
    """The onnx zoo's AlexNet: quantize raised it to opset 13 for per-channel pairs and wrote
    Dropout's ratio attribute (an input since opset 12), which ORT refused; compile had no LRN in
    torch. ShuffleNet's branches join with Sum, which had no channel rule: 0 of 49 groups."""
    import numpy as np
    import onnxruntime as ort

    from refold.runtime.torch_runner import TorchRunner

    path = _caffe2_style(tmp_path)
    x = np.random.default_rng(1).random((1, 3, 12, 12), dtype=np.float32)
    want = ort.InferenceSession(path).run(None, {"x": x})[0]
    got = TorchRunner(refold.load(path)).run({"x": x})
    got = np.asarray(got[0] if isinstance(got, (list, tuple)) else next(iter(got.values())))
    assert np.abs(got - want).max() < 1e-5  # LRN in torch

    q = refold.passes.Quantize(calibration="minmax", data=[{"x": x}])
    proto, report = refold.optimize(path, passes=[q])
    assert proto.opset_import[0].version >= 13 and report.record("quantize").stats["quantized"] == 4
    drop = next(n for n in proto.graph.node if n.op_type == "Dropout")
    assert not drop.attribute and len(drop.input) == 2  # ratio as an input
    ort.InferenceSession(proto.SerializeToString())  # loads: was INVALID_GRAPH

    _, report = refold.optimize(path, passes=["prune:ratio=0.3"])
    stats = report.record("prune").stats
    assert stats["pruned_groups"] == 1  # the two convs summed; c1 feeds LRN, which mixes channels
    assert not any("Sum" in why for why in stats["not_pruned"].values())
    assert any("LRN" in why for why in stats["not_pruned"].values())
