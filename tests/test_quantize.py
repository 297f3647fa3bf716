"""quantize: calibrated QDQ on real models (PP-OCR cls keeps its orientation decisions), the
TensorRT profile's invariants on every pair, per-channel axes by op and layout, and each
quantization bug peers shipped (../shared/PEERS.md, BAD_INPUTS 14 and 21)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import refold
import zoo
from refold import cli
from refold.errors import UsageError
from refold.passes import PassManager, Quantize
from refold.runtime.ort import OrtRunner


def _cls_data(n=24):
    crops = zoo.text_crops(n)
    return [{"x": zoo.cls_input(c)} for c in crops] + [{"x": zoo.cls_input(c[::-1, ::-1].copy())} for c in crops[:8]]


def _decisions(proto, crops):
    r = OrtRunner(proto)
    out = []
    for c in crops:
        for img in (c, c[::-1, ::-1].copy()):
            out.append(int(next(iter(r.run({"x": zoo.cls_input(img)}).values())).argmax()))
    return out


def _pairs(proto):
    """(DequantizeLinear node, its scale, zero point, quantized input array or None) for every DQ."""
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "DequantizeLinear":
            axis = next((a.i for a in n.attribute if a.name == "axis"), None)
            yield n, inits[n.input[1]], inits[n.input[2]] if len(n.input) > 2 else None, inits.get(n.input[0]), axis


@pytest.mark.parametrize("profile", ["ort", "tensorrt"])
def test_ppocr_cls_keeps_its_orientation_decisions(profile, tmp_path):
    src = zoo.ppocr_path("cls")
    proto, report = refold.optimize(src, passes=[Quantize(calibration="percentile", profile=profile,
                                                          data=_cls_data())])
    st = report.record("quantize").stats
    # every conv and the classifier; under tensorrt also the 25 residual adds
    assert st["quantized"] == (79 if profile == "tensorrt" else 54) and st["per_channel"] is True
    onnx.checker.check_model(proto, full_check=True)
    test = zoo.text_crops(12, seed=5)
    expected = [0, 1] * len(test)
    float_right = sum(a == b for a, b in zip(_decisions(onnx.load(src), test), expected))
    quant_right = sum(a == b for a, b in zip(_decisions(proto, test), expected))
    assert quant_right >= float_right - 1, (quant_right, float_right)
    up = zoo.text_crop()
    assert _decisions(proto, [up]) == [0, 1]  # the canonical crop, upright and rotated
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == st["activations"] and "BatchNormalization" in ops
    sqnr = st["sqnr_db"]
    assert list(sqnr.values()) == sorted(sqnr.values()) and st["worst_sqnr_db"] > 5  # worst first


def test_tensorrt_profile_invariants_on_every_pair():
    proto, report = refold.optimize(zoo.ppocr_path("cls"), passes=[Quantize(profile="tensorrt", data=_cls_data(8))])
    seen = 0
    conv_bias = {n.input[2] for n in proto.graph.node if n.op_type == "Conv" and len(n.input) > 2}
    dq_out = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    assert not (conv_bias & dq_out)  # no DQ on a bias input
    for n, scale, zp, q, axis in _pairs(proto):
        seen += 1
        assert np.all(scale > 0) and np.all(np.isfinite(scale))
        assert zp is not None and zp.dtype == np.int8 and not np.any(zp)  # symmetric: zero point 0
        if scale.ndim == 1 and scale.size > 1:
            assert axis is not None and q is not None and q.shape[axis] == scale.size
        if q is not None:
            assert q.dtype == np.int8 and q.min() >= -127  # restricted range
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            assert numpy_helper.to_array(next(t for t in proto.graph.initializer if t.name == n.input[2])).dtype == np.int8
    assert seen == report.record("quantize").stats["activations"] + report.record("quantize").stats["weights"]


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _data(shape, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _axis_of(proto, weight):
    for n, scale, zp, q, axis in _pairs(proto):
        if n.input[0].startswith(weight):
            return axis, scale.shape
    raise AssertionError(f"no DQ for {weight}")


@pytest.mark.parametrize("profile,axis", [("ort", 1), ("tensorrt", 0)])
def test_conv_transpose_axis_follows_the_profile(profile, axis):
    # weights are [Cin, Cout/g, k, k]: ORT quantizes axis 1 (onnxruntime#19694), TensorRT axis 0 (TensorRT#2380)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 6, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.random.default_rng(1).standard_normal(6).astype(np.float32), "b")
    m = _model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"])], [_vi("x", [1, 4, 5, 5])],
               [_vi("y", [1, 6, 7, 7])], [w, b])
    proto, _ = refold.optimize(m, passes=[Quantize(profile=profile, data=_data((1, 4, 5, 5)))])
    got_axis, shape = _axis_of(proto, "w")
    assert got_axis == axis and shape == ((6,) if axis == 1 else (4,))


@pytest.mark.parametrize("trans_b,axis", [(1, 0), (0, 1)])
def test_gemm_axis_follows_trans_b(trans_b, axis):
    shape = (5, 3) if trans_b else (3, 5)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), "w")
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"], transB=trans_b)], [_vi("x", [2, 3])],
               [_vi("y", [2, 5])], [w])
    proto, _ = refold.optimize(m, passes=[Quantize(data=_data((2, 3)))])
    assert _axis_of(proto, "w") == (axis, (5,))


def test_shared_weight_quantized_once_and_names_never_collide():
    # Paddle#47587 (a weight shared by two nodes quantized twice); onnxruntime#24705 (a generated
    # name collided with an existing one): 'w_scale' already exists in the model
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")
    trap = numpy_helper.from_array(np.ones(4, np.float32), "w_scale")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["b"]), helper.make_node("Add", ["b", "w_scale"], ["y"])]
    m = _model(nodes, [_vi("x", [2, 4])], [_vi("y", [2, 4])], [w, trap])
    proto, report = refold.optimize(m, passes=[Quantize(data=_data((2, 4)))])
    assert report.record("quantize").stats["weights"] == 1
    assert sum(n.op_type == "DequantizeLinear" and n.input[0].startswith("w_quantized") for n in proto.graph.node) == 1
    names = [t.name for t in proto.graph.initializer]
    assert len(names) == len(set(names))
    onnx.checker.check_model(proto, full_check=True)


def test_all_zero_channel_and_int32_bias_overflow():
    # coremltools#2851: an all-zero channel gave scale 0; onnxruntime#22020: a tiny weight scale
    # overflowed the int32 bias. Here channel 1 is all zero and channel 2 tiny with a large bias:
    # their weight scales rise until the bias fits, so the bias is int32 and the output right.
    wa = np.random.default_rng(0).standard_normal((3, 2, 1, 1)).astype(np.float32)
    wa[1] = 0
    wa[2] = 1e-12
    w = numpy_helper.from_array(wa, "w")
    b = numpy_helper.from_array(np.array([0.1, 0.2, 1e4], np.float32), "b")
    m = _model([helper.make_node("Conv", ["x", "w", "b"], ["y"])], [_vi("x", [1, 2, 4, 4])],
               [_vi("y", [1, 3, 4, 4])], [w, b])
    proto, report = refold.optimize(m, passes=[Quantize(data=_data((1, 2, 4, 4)))])
    st = report.record("quantize").stats
    assert st["bias_kept_float"] == {}
    pairs = list(_pairs(proto))
    assert any(q is not None and q.dtype == np.int32 for _, _, _, q, _ in pairs)  # the bias
    w_q = next(q for _, _, _, q, _ in pairs if q is not None and q.dtype == np.int8)
    assert not w_q[1].any()  # the dead channel stays exactly zero
    for n, scale, zp, q, axis in pairs:
        assert np.all(scale > 0)
    x = _data((1, 2, 4, 4), 1, seed=3)[0]
    ref, got = OrtRunner(m).run(x)["y"], OrtRunner(proto).run(x)["y"]
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max()


def test_already_quantized_model_is_left_alone_and_reported():
    wq = numpy_helper.from_array(np.ones((4, 4), np.int8), "wq")
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    m = _model(nodes, [_vi("x", [2, 4])], [_vi("y", [2, 4])], [wq, s, z])
    proto, report = refold.optimize(m, passes=[Quantize(data=_data((2, 4)))])
    st = report.record("quantize").stats
    assert st["quantized"] == 0 and any(r.code == "already-quantized" for r in st["not_quantized"].values())
    assert [n.op_type for n in proto.graph.node] == ["DequantizeLinear", "MatMul"]


def test_calibration_takes_variable_shapes_and_the_cli_takes_npz(tmp_path, capsys):
    # onnxruntime#18792 / optimum#409: histogram calibrators broke on varying sequence length / batch
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
               [_vi("x", ["batch", "seq", 8])], [_vi("y", ["batch", "seq", 8])], [w])
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((b, s, 8)).astype(np.float32)} for b, s in ((1, 3), (4, 9), (2, 17))]
    for method in ("minmax", "percentile", "entropy", "mse"):
        _, report = refold.optimize(m, passes=[Quantize(calibration=method, data=data)])
        assert report.record("quantize").stats["quantized"] == 1
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((16, 5, 8)).astype(np.float32))
    out = tmp_path / "q.onnx"
    assert cli.main(["run", str(path), "-p", "quantize:calibration=entropy,profile=tensorrt",
                     "--data", str(tmp_path / "calib.npz"), "-o", str(out)]) == 0
    assert "quantize" in capsys.readouterr().out
    assert sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node) == 1


def test_missing_data_and_bad_options_are_usage_errors(tmp_path, capsys):
    with pytest.raises(UsageError, match="calibration needs data"):
        PassManager([Quantize()], check=False).run(refold.load(zoo.ppocr_path("cls")))
    with pytest.raises(UsageError, match="int8 activations"):
        Quantize(profile="tensorrt", activations="uint8")
    out = tmp_path / "o.onnx"
    assert cli.main(["run", "example:tiny_cnn", "-p", "quantize", "-o", str(out)]) == 2
    assert cli.main(["run", "example:tiny_cnn", "-p", "dce", "--data", str(tmp_path), "-o", str(out)]) == 2
    assert not out.exists()


def test_tensorrt_profile_quantizes_both_branches_of_residual_adds():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.2, "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["x", "c"], ["y"])]
    m = _model(nodes, [_vi("x", [1, 4, 6, 6])], [_vi("y", [1, 4, 6, 6])], [w])
    # TensorRT: both branches; ORT: the conv's output is requantized (so ORT runs an int8 conv),
    # the skip input stays float
    for profile, expect in (("tensorrt", 2), ("ort", 1)):
        proto, _ = refold.optimize(m, passes=[Quantize(profile=profile, data=_data((1, 4, 6, 6)))])
        add = next(n for n in proto.graph.node if n.op_type == "Add")
        producers = {o: n.op_type for n in proto.graph.node for o in n.output}
        assert sum(producers.get(i) == "DequantizeLinear" for i in add.input) == expect, profile


def test_a_transformer_quantized_in_torch_and_in_onnx_gives_the_same_outputs(tmp_path):
    import torch

    model, inputs = zoo.tiny_hf_model("bert")
    module = zoo.last_hidden(model).eval()
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 99, (1, 8)) for _ in range(8)]
    # torch fuses attention (scaled_dot_product_attention), ONNX spells it out: quantize the
    # linear layers in both, so both worlds quantize the same twelve nodes
    gm, rep_t = refold.optimize(module, inputs, passes=[Quantize(attention=False, data=[(torch.from_numpy(i),) for i in ids])])
    path = str(tmp_path / "bert.onnx")
    torch.onnx.export(module, inputs, path, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["output"])
    proto, rep_o = refold.optimize(path, passes=[Quantize(attention=False, data=[{"input": i} for i in ids])])
    st_t, st_o = rep_t.record("quantize").stats, rep_o.record("quantize").stats
    assert st_t["quantized"] == st_o["quantized"] == 12
    assert any("quantized_decomposed" in str(n.target) for n in gm.graph.nodes)  # PT2E's representation
    x = rng.integers(0, 99, (1, 8))
    with torch.no_grad():
        y_torch = gm(torch.from_numpy(x)).numpy()
        y_float = module(torch.from_numpy(x)).numpy()
    y_onnx = OrtRunner(proto).run({"input": x})["output"]
    quant_err = np.abs(y_torch - y_float).max()
    assert quant_err > 1e-5  # it did quantize
    assert np.abs(y_torch - y_onnx).max() < 0.1 * quant_err, (np.abs(y_torch - y_onnx).max(), quant_err)


def test_quantization_parameters_peers_got_wrong():
    from refold.passes.quantize.params import TINY, activation_params, weight_params

    scale, zp = activation_params(-1.0, 3.0, "uint8", symmetric=True)  # onnxruntime#25823: 127
    assert zp == 128 and zp.dtype == np.uint8 and np.isclose(scale, 3.0 / 127.5)
    scale, zp = activation_params(-1.0, 3.0, "uint8", symmetric=False)
    assert zp.dtype == np.uint8 and np.isclose(scale, 4.0 / 255) and zp == round(1.0 / (4.0 / 255))
    assert activation_params(0.0, 0.0, "int8", symmetric=True)[0] == np.float32(TINY)  # never 0
    s, z = weight_params(np.zeros((3, 2)), axis=0)
    assert np.all(s == np.float32(TINY)) and z.dtype == np.int8


def test_tensorrt_profile_on_attention_is_symmetric_everywhere_and_keeps_activations(tmp_path):
    # onnxruntime#14626: Softmax output stayed asymmetric, which TensorRT rejects; #9425/#11660:
    # a Relu removed after Q is wrong for symmetric activations
    import torch

    model, inputs = zoo.tiny_hf_model("bert")
    path = str(tmp_path / "bert.onnx")
    torch.onnx.export(zoo.last_hidden(model).eval(), inputs, path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"])
    rng = np.random.default_rng(0)
    proto, report = refold.optimize(path, passes=[Quantize(profile="tensorrt", data=[
        {"input": rng.integers(0, 99, (1, 8))} for _ in range(4)])])
    softmax_out = {n.output[0] for n in proto.graph.node if n.op_type == "Softmax"}
    q_inputs = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert softmax_out & q_inputs  # the attention probabilities are quantized ...
    for n, scale, zp, q, axis in _pairs(proto):
        assert zp is None or not np.any(zp)  # ... with zero point 0, like every other tensor
    before = [n.op_type for n in onnx.load(path).graph.node if n.op_type in ("Relu", "Erf", "Softmax")]
    after = [n.op_type for n in proto.graph.node if n.op_type in ("Relu", "Erf", "Softmax")]
    assert before == after


def test_weight_only_needs_no_data_and_exclude_keeps_nodes_float(tmp_path):
    out = tmp_path / "w.onnx"
    assert cli.main(["run", zoo.ppocr_path("cls"), "-p", "quantize:weight_only=true,exclude=matmul", "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") == 53  # the 53 conv weights
    matmul = next(n for n in proto.graph.node if n.op_type == "MatMul")
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in matmul.input)


def _scale_of(proto, value, op="QuantizeLinear"):
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return [float(inits[n.input[1]]) for n in proto.graph.node if n.op_type == op and n.input[0] == value]


def _pooled_cnn(opset=17):
    rng = np.random.default_rng(0)
    w = lambda name, *shape: numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["x", "w2"], ["c"], strides=[2, 2]),
             helper.make_node("Concat", ["m", "c"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["d"]),
             helper.make_node("AveragePool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p", "shape"], ["flat"]),
             helper.make_node("Transpose", ["flat"], ["t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "w4"], ["y"])]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8), w("w2", 8, 3, 2, 2), w("w3", 4, 16, 1, 1), w("w4", 4, 5),
             numpy_helper.from_array(np.array([1, 4, 16], np.int64), "shape")]
    return _model(nodes, [_vi("x", [1, 3, 16, 16])], [_vi("y", [1, 16, 5])], inits, opset=opset)


def _sqnr(ref, got):
    return 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())


def test_concat_and_pass_through_ops_share_one_scale(tmp_path):
    # onnxruntime#12254 (Concat quantized twice), executorch#19159 (concat inputs need one scale),
    # PEERS: reshape / transpose / max-pool keep their input's scale, so ORT runs them in int8
    m = _pooled_cnn()
    data = _data((1, 3, 16, 16), 8)
    proto, report = refold.optimize(m, passes=[Quantize(concat=True, pooling=True, data=data)])
    st = report.record("quantize").stats
    assert st["quantized"] == 7 and st["shared_scales"] >= 2  # 3 convs, matmul, concat, 2 pools
    q_inputs = [n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(q_inputs) == len(set(q_inputs))  # each tensor quantized once
    cat = next(n for n in proto.graph.node if n.op_type == "Concat")
    producers = {o: n for n in proto.graph.node for o in n.output}
    cat_in = [producers[i] for i in cat.input]
    assert all(p.op_type == "DequantizeLinear" for p in cat_in)
    assert len({p.input[1] for p in cat_in}) == 1  # one scale constant for every concat input ...
    assert _scale_of(proto, "cat") == _scale_of(proto, "m")  # ... and the concat's output
    assert _scale_of(proto, "m") == _scale_of(proto, "r")  # max-pool keeps relu's scale
    assert _scale_of(proto, "t") == _scale_of(proto, "p")  # reshape + transpose keep the pool's
    assert _scale_of(proto, "p") != _scale_of(proto, "d")  # an average has its own, narrower range
    assert "Relu" in [n.op_type for n in proto.graph.node]
    x = _data((1, 3, 16, 16), 1, seed=5)[0]
    assert _sqnr(OrtRunner(m).run(x)["y"], OrtRunner(proto).run(x)["y"]) > 25
    # ONNX Runtime runs the max-pool, reshape and transpose on int8: no DQ feeds them any more
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    made = {o: n.op_type for n in opt.graph.node for o in n.output}
    for n in opt.graph.node:
        if n.op_type in ("MaxPool", "Transpose"):
            assert made.get(n.input[0]) != "DequantizeLinear", n.op_type


def test_without_the_options_concat_and_pools_stay_float():
    proto, report = refold.optimize(_pooled_cnn(), passes=[Quantize(data=_data((1, 3, 16, 16)))])
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    cat = next(n for n in proto.graph.node if n.op_type == "Concat")
    # ORT profile: conv outputs are requantized, so the concat's conv input is a DQ; the max-pool
    # output is not quantized (nothing quantized reads it but the float concat)
    assert producers[cat.input[0]] == "MaxPool" and report.record("quantize").stats["quantized"] == 4


@pytest.mark.parametrize("profile", ["ort", "tensorrt"])
def test_relu_is_never_dropped_and_its_output_is_what_ort_quantizes(profile):
    # onnxruntime#9425 / #11660: removing a Relu after Q is wrong for signed or symmetric
    # activations; here the pre-relu values are mostly negative (bias -1)
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.full(4, -1.0, np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")
    m = _model([helper.make_node("Conv", ["x", "w1", "b1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
                helper.make_node("Conv", ["r", "w2"], ["y"])], [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 2, 6, 6])],
               [w1, b1, w2])
    proto, _ = refold.optimize(m, passes=[Quantize(profile=profile, data=_data((1, 3, 6, 6)))])
    assert [n.op_type for n in proto.graph.node if n.op_type in ("Conv", "Relu")] == ["Conv", "Relu", "Conv"]
    assert _scale_of(proto, "a") == []  # never the pre-relu values: they would waste the range
    assert len(_scale_of(proto, "r")) == 1
    x = _data((1, 3, 6, 6), 1, seed=4)[0]
    assert _sqnr(OrtRunner(m).run(x)["y"], OrtRunner(proto).run(x)["y"]) > 25


def test_int16_activations_keep_int8_weights_and_raise_the_opset():
    # onnxruntime#20881: under per_channel the activation type overrode the weight type (A16W8
    # became A16W16). The model is at opset 11 with an attribute-axes Squeeze, rewritten for 21.
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    m = _model([helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Unsqueeze", ["a"], ["u"], axes=[0]),
                helper.make_node("Squeeze", ["u"], ["s"], axes=[0]), helper.make_node("Relu", ["s"], ["y"])],
               [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 4, 6, 6])], [w], opset=11)
    data = _data((1, 3, 8, 8), 8)
    wide, report = refold.optimize(m, passes=[Quantize(activations="int16", data=data)])
    narrow, _ = refold.optimize(m, passes=[Quantize(data=data)])
    assert wide.opset_import[0].version == 21
    assert "opset raised from 11 to 21" in report.record("quantize").stats["notes"][0]
    types = {zp.dtype for n, s, zp, q, axis in _pairs(wide) if q is None}
    weights = {q.dtype for n, s, zp, q, axis in _pairs(wide) if q is not None}
    assert types == {np.dtype(np.int16)} and weights == {np.dtype(np.int8)}
    onnx.checker.check_model(wide, full_check=True)
    x = data[0]  # a calibration input: no clipping, only rounding
    weights_only, _ = refold.optimize(m, passes=[Quantize(weight_only=True)])
    ref = OrtRunner(weights_only).run(x)["y"]  # the same int8 weights: what is left is the activations' error
    assert _sqnr(ref, OrtRunner(wide).run(x)["y"]) > _sqnr(ref, OrtRunner(narrow).run(x)["y"]) + 30
    with pytest.raises(UsageError):
        Quantize(profile="tensorrt", activations="int16")


def test_concat_pooling_and_int16_work_on_torch_modules_like_on_onnx(tmp_path):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(3, 8, 2, stride=2)
            self.head = torch.nn.Linear(16, 5)

        def forward(self, x):
            m = torch.nn.functional.max_pool2d(torch.relu(self.a(x)), 2)
            cat = torch.cat([m, self.b(x)], 1)
            return self.head(torch.nn.functional.adaptive_avg_pool2d(cat, 1).flatten(1))

    net = Net().eval()
    torch.manual_seed(0)
    xs = [torch.randn(2, 3, 16, 16) for _ in range(6)]
    path = str(tmp_path / "net.onnx")
    torch.onnx.export(net, (xs[0],), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    for kw in (dict(concat=True, pooling=True), dict(activations="int16")):
        gm, rep_t = refold.optimize(net, (xs[0],), passes=[Quantize(data=[(x,) for x in xs], **kw)])
        proto, rep_o = refold.optimize(path, passes=[Quantize(data=[{"x": x.numpy()} for x in xs], **kw)])
        assert rep_t.record("quantize").stats["quantized"] == rep_o.record("quantize").stats["quantized"], kw
        with torch.no_grad():
            y_t, y_f = gm(xs[0]).numpy(), net(xs[0]).numpy()
        y_o = OrtRunner(proto).run({"x": xs[0].numpy()})["y"]
        err = np.abs(y_t - y_f).max()
        assert 0 < err and np.abs(y_t - y_o).max() < 0.25 * err + 1e-6, (kw, np.abs(y_t - y_o).max(), err)


def test_tied_embedding_is_quantized_for_the_head_and_left_float_for_the_lookup():
    # onnxruntime#28326: a tied embedding (the same table read by Gather and by the output Gemm)
    # crashed DQ fusion. Here the head reads an int8 copy, the lookup the float table.
    rng = np.random.default_rng(0)
    emb = numpy_helper.from_array(rng.standard_normal((11, 6)).astype(np.float32), "emb")
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "emb"], ["y"], transB=1)]
    m = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])], [_vi("y", [4, 11])], [emb])
    data = [{"ids": rng.integers(0, 11, 4)} for _ in range(6)]
    proto, report = refold.optimize(m, passes=[Quantize(data=data)])
    gather = next(n for n in proto.graph.node if n.op_type == "Gather")
    assert gather.input[0] == "emb" and _axis_of(proto, "emb") == (0, (11,))
    ids = data[0]
    assert _sqnr(OrtRunner(m).run(ids)["y"], OrtRunner(proto).run(ids)["y"]) > 25
