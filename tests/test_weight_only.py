"""quantize:weight_only=true,weights=int4: weights in groups of input channels within each output
channel (oc32..), of output channels within each input channel (ic32.., AdaDim's per-IC), or one
scale per output channel (oc), chosen per layer by output error (AdaDim); blocked / int4
DequantizeLinear on either axis in the IR, on disk (packed) and in every runner; ORT's MatMulNBits;
the same numbers in torch."""
from __future__ import annotations

import os
import textwrap
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import refold
import zoo
from refold import cli
from refold.errors import UnsupportedError, UsageError
from refold.ir.parser import parse_model
from refold.ir.printer import format_model
from refold.passes import PassManager, Quantize
from refold.passes.quantize.groups import Layout, group_axis, quantize_grouped
from refold.passes.quantize.weight_only import PREFER_K, _least_error, _Plan
from refold.runtime import runner_for
from refold.runtime.ort import OrtRunner

OUTLIERS = [3, 70, 150, 201]  # input channels (rows of a [K, N] weight) scaled up 40x
KN = Layout(weight=1, ic=0, oc=1, act=0)  # x @ W, W [K, N]


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _outlier_weight(k=256, n=64, seed=0):
    """A [K, N] weight with a few input channels 40x larger, as LLM layers have once activation
    outliers are smoothed into the weights; the matching activations are 40x smaller."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.05
    w[[c for c in OUTLIERS if c < k]] *= 40
    return w


def _inputs(k=256, rows=16, n=1, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal((rows, k)).astype(np.float32)
        x[:, [c for c in OUTLIERS if c < k]] /= 40  # the float output is what an unplanted layer gives
        out.append({"x": x})
    return out


def _matmul(w, opset=17, lead=("b",)):
    k, n = w.shape
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [*lead, k])], [_vi("y", [*lead, n])],
                  [numpy_helper.from_array(w, "w")], opset)


def _rel_err(ref, got):
    return float(((ref - got) ** 2).sum() / (ref ** 2).sum())


def _stats(report):
    return report.record("quantize").stats


def test_per_ic_int4_beats_per_oc_and_k_blocks_on_planted_outlier_input_channels():
    w = _outlier_weight()
    m, x = _matmul(w), _inputs()[0]["x"]
    ref = x @ w
    err = {}
    for group in ("oc", "oc32", "oc64", "oc128", "ic32", "ic64"):
        proto, report = refold.optimize(m, passes=[Quantize(weight_only=True, weights="int4", group=group,
                                                            profile="tensorrt")])
        got = OrtRunner(proto).run({"x": x})["y"]
        # ORT computes exactly x @ DQ(W_q): the grouped weight refold's math says it wrote
        axis, block = group_axis(group, KN)  # DequantizeLinear's (axis, block_size) on W [K, N]
        assert (axis, block) == {"oc": (1, None), "oc32": (0, 32), "oc64": (0, 64), "oc128": (0, 128),
                                 "ic32": (1, 32), "ic64": (1, 64)}[group]
        g = quantize_grouped(w, axis, block, 4)
        np.testing.assert_allclose(got, x @ g.dequantized(), rtol=1e-5, atol=1e-5)
        assert _stats(report)["weight_groups"] == {"y": group}
        err[group] = _rel_err(ref, got)
    # one scale per output channel spans the outliers: every column's scale is 40x too coarse
    # (nearly all of the output lost); K blocks lose only the blocks that hold an outlier (half of
    # them at 32, every one at 128 with four outliers in 256 channels)
    assert err["oc"] > 0.9 and err["oc32"] < err["oc64"] < err["oc128"] < err["oc"], err
    assert err["oc32"] < 0.5 * err["oc"], err
    # per input channel, each outlier row has scales of its own: nothing else is coarsened
    assert err["ic32"] <= err["ic64"] < 0.05 * err["oc32"] and err["ic32"] < 0.02, err


def test_auto_prefers_a_matmul_nbits_grouping_within_prefer_k_of_the_best():
    plan = _Plan(SimpleNamespace(shape=(256, 64)), KN, ["oc", "oc32", "ic32", "ic64"])
    plan.errors = {"oc": 1.0, "oc32": 0.5, "ic32": 0.5 / (1 + PREFER_K / 2), "ic64": 0.6}
    assert PREFER_K == 0.01 and _least_error(plan) == "oc32"  # ic32 better by 0.5%: MatMulNBits's wins
    plan.errors["ic32"] = 0.5 / (1 + 2 * PREFER_K)
    assert _least_error(plan) == "ic32"  # better by 2%
    plan.errors = dict.fromkeys(plan.candidates, 0.5)
    assert _least_error(plan) == "oc"  # all equal: a MatMulNBits grouping, the fewest scales (64)
    plan.errors = {"oc": 0.9, "oc32": 0.8, "ic32": 0.3 * (1 - 1e-7), "ic64": 0.3}
    assert _least_error(plan) == "ic64"  # equal to rounding (TIE): 256 scales rather than 512
    plan.errors["ic32"] = 0.29
    assert _least_error(plan) == "ic32"


def test_grouped_weights_print_as_blocked_dequantize_and_as_matmul_nbits():
    src = textwrap.dedent("""
        graph g(%x: f32[2,64]) {
          %w = const f32[64,8]
          %y = onnx.MatMul(%x, %w)
          return %y
        }
        """)
    per_ic = """
        graph g(%x: f32[2,64]) {
          %w_quantized__0 = const i4[64,8]
          %w_scale__1 = const f32[64,1]
          %w_dq__3 = core.dequantize_linear(%w_quantized__0, %w_scale__1) {axis=1, block_size=32}  # f32[64,8]
          %y = core.matmul(%x, %w_dq__3)  # f32[2,8]
          return %y
        }"""
    expected = {("oc32", "tensorrt"): """
        graph g(%x: f32[2,64]) {
          %w_quantized__0 = const i4[64,8]
          %w_scale__1 = const f32[2,8]
          %w_dq__3 = core.dequantize_linear(%w_quantized__0, %w_scale__1) {axis=0, block_size=32}  # f32[64,8]
          %y = core.matmul(%x, %w_dq__3)  # f32[2,8]
          return %y
        }""", ("oc32", "ort"): """
        graph g(%x: f32[2,64]) {
          %w_q4__0 = const u8[8,2,16]
          %w_scales__1 = const f32[16]
          %y = com.microsoft.MatMulNBits(%x, %w_q4__0, %w_scales__1) {K=64, N=8, bits=4, block_size=32, accuracy_level=4}  # f32[2,8]
          return %y
        }""",
                # blocks of output channels within each input channel (N = 8: one per input channel),
                # along N: MatMulNBits has no such form, so profile=ort writes DequantizeLinear too
                ("ic32", "tensorrt"): per_ic, ("ic32", "ort"): per_ic}
    for (group, profile), text in expected.items():
        p = Quantize(weight_only=True, weights="int4", group=group, profile=profile)
        report = PassManager([p], atol=1e-5, rtol=1e-5).run(parse_model(src))
        got = format_model(report.model, types=True).split("\n", 1)[1]
        assert got == textwrap.dedent(text).strip(), got
        rec = report.record("quantize")
        # 64x8 nibbles + 16 f32 scales (oc32) or 64 (ic32)
        assert 0 < rec.max_abs < 5 and rec.stats["bytes_after"] == {"oc32": 320, "ic32": 512}[group]
        again = PassManager([p], check=False).run(report.model)  # idempotent
        assert not again.record("quantize").modified


def test_auto_picks_per_ic_for_the_outlier_layer_and_oc_where_it_is_as_good():
    rng = np.random.default_rng(2)
    w1 = _outlier_weight(256, 64)
    # every column of w2 is +-c_n: one scale per output channel is already exact, blocks add nothing
    w2 = (np.sign(rng.standard_normal((64, 32))) * rng.uniform(0.5, 2, 32)).astype(np.float32)
    m = _model([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
               [_vi("x", ["b", 256])], [_vi("y", ["b", 32])],
               [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    for data, measure in ((_inputs(n=3), "output"), (None, "weight")):
        proto, report = refold.optimize(m, passes=[Quantize(weight_only=True, weights="int4", data=data)])
        st = _stats(report)
        assert st["error_measure"] == measure
        assert st["weight_groups"] == {"h": "ic32", "y": "oc"}, st["weight_groups"]
        e = st["group_errors"]["h"]  # N = 64: ic64 is one scale per input channel, ic128 the same
        assert list(e) == ["oc", "oc32", "oc64", "oc128", "ic32", "ic64"], e
        assert e["ic32"] == min(e.values()) and e["oc"] > 2 * e["ic32"], e
        # the output error sees what the outlier rows cost the others; the weight error (no data) is
        # mostly the outlier rows' own, which every grouping keeps nearly whole
        assert min(e["oc"], e["oc32"], e["oc64"], e["oc128"]) > (10 if data else 1.2) * e["ic32"], e
        # y: K = 64, N = 32 (ic32 is one scale per input channel); oc exact, oc32 as exact, fewer scales
        assert list(st["group_errors"]["y"]) == ["oc", "oc32", "ic32"] and st["group_errors"]["y"]["oc"] < 1e-10
        assert [n.op_type for n in proto.graph.node] == ["DequantizeLinear", "MatMul", "MatMulNBits"]
        x = _inputs(seed=9)[0]
        oc, _ = refold.optimize(m, passes=[Quantize(weight_only=True, weights="int4", group="oc")])
        ref = OrtRunner(m).run(x)["y"]
        assert _rel_err(ref, OrtRunner(proto).run(x)["y"]) < 0.6 * _rel_err(ref, OrtRunner(oc).run(x)["y"])


def test_blocked_int4_dequantize_raises_lowers_back_and_runs_like_the_reference():
    # K = 80 is not a multiple of the block: the last block holds 16 rows (ONNX's ceil semantics)
    rng = np.random.default_rng(3)
    q = rng.integers(-8, 8, (80, 6)).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, (3, 6)).astype(np.float32)
    qt = numpy_helper.from_array(q.astype(ml_dtypes.int4), "q")  # packed, two a byte
    m = _model([helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=0, block_size=32),
                helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", [2, 80])], [_vi("y", [2, 6])],
               [qt, numpy_helper.from_array(scale, "s")], opset=21)
    onnx.checker.check_model(m, full_check=True)
    model = refold.load(m)
    PassManager([], check=False).run(model)
    from refold.passes import get_pass

    get_pass("raise-to-core").call(model)
    dq = next(n for n in model.graph if n.op == "dequantize_linear")
    assert dq.domain == "core" and dq.attrs == {"axis": 0, "block_size": 32}
    assert dq.inputs[0].dtype.short == "i4" and np.array_equal(dq.inputs[0].const.numpy(), q)
    out = refold.frontends.onnx.exporter.to_onnx(model)
    node = next(n for n in out.graph.node if n.op_type == "DequantizeLinear")
    assert {a.name: a.i for a in node.attribute} == {"axis": 0, "block_size": 32}
    packed = next(t for t in out.graph.initializer if t.name == "q")
    assert packed.data_type == TensorProto.INT4 and len(packed.raw_data) == 80 * 6 // 2
    x = rng.standard_normal((2, 80)).astype(np.float32)
    expected = x @ (q.astype(np.float32) * np.repeat(scale, 32, axis=0)[:80])
    from onnx.reference import ReferenceEvaluator

    np.testing.assert_allclose(ReferenceEvaluator(m).run(None, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    for got in (OrtRunner(out).run({"x": x})["y"], runner_for(model, "reference").run({"x": x})["y"],
                runner_for(model, "torch").run({"x": x})["y"].numpy()):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_int4_initializers_are_packed_on_disk(tmp_path):
    w = _outlier_weight(512, 256)
    src = tmp_path / "float.onnx"
    onnx.save(_matmul(w), str(src))
    model = refold.load(str(src))
    PassManager([Quantize(weight_only=True, weights="int4", group="oc128", profile="tensorrt")], check=False).run(model)
    out = tmp_path / "int4.onnx"
    refold.save(model, str(out))
    # 4 bits a weight plus one f32 scale per 128: ~0.14x the float file
    assert os.path.getsize(out) < 0.15 * os.path.getsize(src), (os.path.getsize(out), os.path.getsize(src))
    proto = onnx.load(str(out))
    q = next(t for t in proto.graph.initializer if t.data_type == TensorProto.INT4)
    assert len(q.raw_data) == w.size // 2 and "w" not in {t.name for t in proto.graph.initializer}
    back = refold.load(str(out))  # read back unpacked, in int8
    arr = next(v for v in back.graph.initializers.values() if v.dtype.short == "i4").const.numpy()
    assert arr.dtype == np.int8 and np.array_equal(arr, quantize_grouped(w, 0, 128, 4).q)


@pytest.mark.parametrize("weights,group,k", [("int4", "oc32", 80), ("int4", "oc", 256), ("int8", "oc64", 256)])
def test_matmul_nbits_equals_the_dequantize_matmul_reference(weights, group, k):
    # oc32 with K = 80: a short last block; oc: one block spanning K; int8: bits=8
    w = _outlier_weight(256, 48)[:k]
    m = _matmul(w, lead=("b", "s"))
    x = np.random.default_rng(4).standard_normal((3, 5, k)).astype(np.float32)
    kw = dict(weight_only=True, weights=weights, group=group)
    nbits, _ = refold.optimize(m, passes=[Quantize(profile="ort", **kw)])
    dq, _ = refold.optimize(m, passes=[Quantize(profile="tensorrt", **kw)])
    assert [n.op_type for n in nbits.graph.node] == ["MatMulNBits"]
    assert [n.op_type for n in dq.graph.node] == ["DequantizeLinear", "MatMul"]
    ref = OrtRunner(dq).run({"x": x})["y"]
    got = OrtRunner(nbits).run({"x": x})["y"]
    # accuracy_level=4: ORT rounds x to int8 per block of K, far below the weights' int4 error
    assert _rel_err(ref, got) < 3e-4 and _rel_err(x @ w, ref) > 10 * _rel_err(ref, got)
    model = refold.load(nbits)  # refold's runners do what ORT's kernel does, int8 x included
    for mine in (runner_for(model, "torch").run({"x": x})["y"].numpy(), runner_for(model, "reference").run({"x": x})["y"]):
        np.testing.assert_allclose(mine, got, rtol=1e-5, atol=1e-5 * np.abs(got).max())


def test_a_torch_llama_quantized_to_int4_matches_its_onnx_counterpart(tmp_path):
    import torch

    model, inputs = zoo.tiny_hf_model("llama")
    module = zoo.last_hidden(model).eval()
    ids = [torch.randint(0, 99, (1, 8), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    gm, rep_t = refold.optimize(module, inputs, passes=[Quantize(weight_only=True, weights="int4",
                                                                 data=[(i,) for i in ids])])
    path = str(tmp_path / "llama.onnx")
    torch.onnx.export(module, inputs, path, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["output"])
    data = [{"input": i.numpy()} for i in ids]
    proto, rep_o = refold.optimize(path, passes=[Quantize(weight_only=True, weights="int4", data=data)])
    dq, rep_d = refold.optimize(path, passes=[Quantize(weight_only=True, weights="int4", profile="tensorrt",
                                                       data=data)])
    st_t, st_o = _stats(rep_t), _stats(rep_o)
    assert st_t["error_measure"] == st_o["error_measure"] == "output"  # layer inputs captured in both worlds
    # the seven projections of both layers, the same choices in both worlds: random weights, no
    # outliers, so per-IC wins by a little where it wins (k_proj: N = 16, one scale per input
    # channel), oc or oc32 elsewhere
    chosen = ["ic32"] * 7 + ["oc"] * 6 + ["oc32"]
    assert sorted(st_t["weight_groups"].values()) == sorted(st_o["weight_groups"].values()) == chosen
    assert st_t["weight_groups"]["linear_1"] == st_o["weight_groups"]["/m/layers.0/self_attn/k_proj/MatMul"] == "ic32"
    assert sorted(_stats(rep_d)["weight_groups"].values()) == chosen
    assert st_o["matmul_nbits"] == st_o["dequantize"] == 7 and st_t["bytes_after"] < 0.35 * st_t["bytes_before"]
    targets = [str(n.target) for n in gm.graph.nodes]
    # blocks of 32 along K (down_proj, oc32) or along N = 32 (ic32 on [N, K], dequantized transposed)
    assert any("dequantize_per_channel_group" in t for t in targets)
    assert any("dequantize_per_channel." in t for t in targets)  # one scale per output channel
    assert any("repeat_interleave" in t for t in targets)  # ic32 with N = 16 < 32: written out
    x = torch.randint(0, 99, (1, 8))
    with torch.no_grad():
        y_torch, y_float = gm(x).numpy(), module(x).numpy()
    y_onnx, y_dq = (OrtRunner(p).run({"input": x.numpy()})["output"] for p in (proto, dq))
    quant_err = np.abs(y_torch - y_float).max()
    assert quant_err > 1e-3  # it did quantize
    # the same int4 weights: equal to rounding as blocked DQ; MatMulNBits adds its int8 x
    assert np.abs(y_torch - y_dq).max() < 1e-3 * quant_err, (np.abs(y_torch - y_dq).max(), quant_err)
    assert np.abs(y_torch - y_onnx).max() < 0.2 * quant_err, (np.abs(y_torch - y_onnx).max(), quant_err)


def test_the_cli_writes_an_int4_model_that_runs_in_ort(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    w = _outlier_weight()
    onnx.save(_matmul(w), str(path))
    assert cli.main(["run", str(path), "-p", "quantize:weight_only=true,weights=int4", "-o", str(out)]) == 0
    # without data, by weight error: per input channel, the outlier rows keep their own scales;
    # blocks along N have no MatMulNBits form, so the model goes to opset 21 for a blocked DQ
    assert "weight_groups: 1 (ic32 1)" in capsys.readouterr().out
    proto = onnx.load(str(out))
    assert [n.op_type for n in proto.graph.node] == ["DequantizeLinear", "MatMul"]
    assert proto.opset_import[0].version == 21
    x = _inputs()[0]
    assert _rel_err(x["x"] @ w, OrtRunner(str(out)).run(x)["y"]) < 0.02


def test_bad_option_combinations_are_usage_errors(tmp_path):
    m = _matmul(_outlier_weight())
    with pytest.raises(UsageError, match="per_channel=false"):
        refold.optimize(m, passes=[Quantize(weight_only=True, weights="int4", per_channel=False)])
    with pytest.raises(UsageError, match="group"):
        Quantize(weight_only=True, weights="int4", group="ic16")
    path, out = tmp_path / "m.onnx", tmp_path / "o.onnx"
    onnx.save(m, str(path))
    assert cli.main(["run", str(path), "-p", "quantize:weight_only=true,group=ic32,per_channel=false",
                     "-o", str(out)]) == 2
    assert not out.exists()


def test_an_opset_that_cannot_reach_21_keeps_matmul_nbits_and_refuses_blocked_dequantize():
    # Softmax over axis 1 of a rank-3 tensor changes meaning at opset 13: the model cannot be raised
    w = _outlier_weight(64, 16)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"], axis=1)],
               [_vi("x", [2, 3, 64])], [_vi("y", [2, 3, 16])], [numpy_helper.from_array(w, "w")], opset=11)
    proto, report = refold.optimize(m, passes=[Quantize(weight_only=True, weights="int4")])
    st = _stats(report)
    assert proto.opset_import[0].version == 11 and st["matmul_nbits"] == 1
    # auto tries only what MatMulNBits can run (ic32 would win here, and stay float)
    assert list(st["group_errors"]["h"]) == ["oc", "oc32"] and st["weight_groups"]["h"] in ("oc", "oc32")
    assert any(n.startswith("ic groupings not tried for 1 weight(s)") and "Softmax" in n for n in st["notes"])
    for kw in (dict(profile="tensorrt"), dict(group="ic32")):
        with pytest.raises(UnsupportedError, match="needs opset 21; Softmax"):
            refold.optimize(m, passes=[Quantize(weight_only=True, weights="int4", **kw)])


@pytest.mark.parametrize("op,n", [("MatMul", 80), ("Gemm", 64)])
def test_per_ic_blocked_dequantize_runs_alike_in_ort_the_reference_and_torch(op, n):
    # blocks of 32 output channels within each input channel: along N, axis 1 of MatMul's W [K, N]
    # (N = 80: a short last block) or axis 0 of Gemm's transB W [N, K]
    k = 96
    w = _outlier_weight(k, n)
    kn = w if op == "MatMul" else np.ascontiguousarray(w.T)
    node = helper.make_node(op, ["x", "w"], ["y"], **({"transB": 1} if op == "Gemm" else {}))
    m = _model([node], [_vi("x", [4, k])], [_vi("y", [4, n])], [numpy_helper.from_array(kn, "w")])
    proto, report = refold.optimize(m, passes=[Quantize(weight_only=True, weights="int4", group="ic32")])
    dq = next(x for x in proto.graph.node if x.op_type == "DequantizeLinear")
    axis = 1 if op == "MatMul" else 0
    assert {a.name: a.i for a in dq.attribute} == {"axis": axis, "block_size": 32}
    scale = next(t for t in proto.graph.initializer if t.name == dq.input[1])
    assert list(scale.dims) == ([k, 3] if op == "MatMul" else [2, k])  # ceil(N / 32) per input channel
    x = _inputs(k, rows=4)[0]["x"]
    expected = x @ np.asarray(quantize_grouped(w, 1, 32, 4).dequantized(), np.float64)
    model = refold.load(proto)
    got = {"ort": OrtRunner(proto).run({"x": x})["y"], "reference": runner_for(model, "reference").run({"x": x})["y"],
           "torch": runner_for(model, "torch").run({"x": x})["y"].numpy()}
    for name, y in got.items():
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5, err_msg=name)
    assert _rel_err(x @ w, got["ort"]) < 0.02  # per input channel: the outlier rows cost nothing else


def test_a_torch_module_with_per_ic_groups_matches_its_onnx_counterpart(tmp_path):
    import torch

    # N = 96: blocks divide it (PT2E's dequantize_per_channel_group on the transposed [K, N]);
    # N = 40: a short last block, written out as repeat_interleave
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 40)).eval()
    with torch.no_grad():
        module[0].weight[:, [3, 40]] *= 30  # outlier input channels
    x = torch.randn(2, 5, 64)
    q = Quantize(weight_only=True, weights="int4", group="ic32")
    gm, rep_t = refold.optimize(module, (x,), passes=[q])
    path = str(tmp_path / "mlp.onnx")
    torch.onnx.export(module, (x,), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    proto, rep_o = refold.optimize(path, passes=[q])
    assert set(_stats(rep_t)["weight_groups"].values()) == set(_stats(rep_o)["weight_groups"].values()) == {"ic32"}
    targets = [str(n.target) for n in gm.graph.nodes]
    assert any("dequantize_per_channel_group" in t for t in targets) and any("repeat_interleave" in t for t in targets)
    state = gm.state_dict()
    assert set(state) >= {"0.weight", "2.bias"}  # the source module's names
    with torch.no_grad():
        y_torch, y_float = gm(x).numpy(), module(x).numpy()
        y_other = gm(torch.randn(3, 7, 64))  # dims stay dynamic
    assert y_other.shape == (3, 7, 40)
    y_onnx = OrtRunner(proto).run({"x": x.numpy()})["y"]
    quant_err = np.abs(y_torch - y_float).max()
    assert quant_err > 1e-3  # it did quantize
    assert np.abs(y_torch - y_onnx).max() < 1e-3 * quant_err, (np.abs(y_torch - y_onnx).max(), quant_err)
