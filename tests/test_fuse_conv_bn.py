"""fuse-conv-bn on real models (ONNX and torch) and on every peer bug in ../shared/BAD_INPUTS.md."""
import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import refold
import zoo
from refold import cli
from refold.errors import UnsupportedError
from refold.frontends.onnx.exporter import to_onnx
from refold.frontends.onnx.importer import load_onnx
from refold.passes import FuseConvBN, PassManager
from refold.runtime.ort import OrtRunner

rng = np.random.default_rng(0)


def fuse(model, **kw):
    r = PassManager([FuseConvBN(**kw)], atol=1e-5, rtol=1e-5).run(model)
    return r.record("fuse-conv-bn")


def ops(model):
    return [n.op for n in model.graph]


# -- small ONNX builders -------------------------------------------------------------------------

def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def bn_inits(prefix, c, eps_var=0.5, dtype=np.float32):
    return [init(f"{prefix}.s", (rng.standard_normal(c) + 1).astype(dtype)),
            init(f"{prefix}.b", rng.standard_normal(c).astype(dtype)),
            init(f"{prefix}.m", rng.standard_normal(c).astype(dtype)),
            init(f"{prefix}.v", (np.abs(rng.standard_normal(c)) + eps_var).astype(dtype))]


def bn_node(x, y, prefix="bn", **attrs):
    return helper.make_node("BatchNormalization", [x, f"{prefix}.s", f"{prefix}.b", f"{prefix}.m", f"{prefix}.v"],
                            [y], name=prefix, **attrs)


def model(nodes, inits, x_shape, outputs=("y",), opset=17, dtype=TensorProto.FLOAT):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, list(x_shape))],
                          [helper.make_tensor_value_info(o, dtype, None) for o in outputs], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    return load_onnx(m)


def conv_bn(cin=4, cout=6, k=3, group=1, bias=True, transpose=False, pads=1, dims=2, eps=1e-5, **kw):
    w_shape = (cin, cout // group) if transpose else (cout, cin // group)
    w = rng.standard_normal(w_shape + (k,) * dims).astype(np.float32) * 0.3
    ins = ["x", "w"] + (["cb"] if bias else [])
    inits = [init("w", w)] + ([init("cb", rng.standard_normal(cout).astype(np.float32))] if bias else [])
    conv = helper.make_node("ConvTranspose" if transpose else "Conv", ins, ["c"], name="conv", group=group,
                            pads=[pads] * 2 * dims, strides=[2 if transpose else 1] * dims)
    return model([conv, bn_node("c", "y", epsilon=eps)], inits + bn_inits("bn", cout), (1, cin) + (7,) * dims, **kw)


# -- the block shapes that fold ------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(), dict(bias=False), dict(dims=1), dict(dims=3), dict(group=2), dict(cin=6, cout=6, group=6),  # depthwise
    dict(eps=0.1),                                           # epsilon read from the node (Paddle-Lite#9861)
    dict(transpose=True), dict(transpose=True, cin=4, cout=6, group=2),  # axis and groups (ultralytics#25364, pytorch#180995)
    dict(transpose=True, bias=False, dims=1),
])
def test_conv_bn_folds_exactly(kw):
    m = conv_bn(**kw)
    rec = fuse(m)
    assert rec.stats["folded"] == 1 and "batch_norm" not in ops(m), rec.stats
    assert rec.max_rel <= 1e-5 or rec.max_abs <= 1e-5


def test_bias_is_rescaled():
    # ncnn#1339: (b - mean) * s + beta, not b + beta - mean * s
    m = conv_bn(bias=True)
    bias = m.graph.initializers["cb"].const.numpy().copy()
    fuse(m)
    conv = m.graph.nodes[0]
    assert conv.op == "conv" and not np.allclose(conv.inputs[2].const.numpy(), bias)


@pytest.mark.parametrize("transB", [0, 1])
def test_gemm_and_matmul_and_linear_heads(transB):
    w = rng.standard_normal((6, 5) if transB else (5, 6)).astype(np.float32)
    g = helper.make_node("Gemm", ["x", "w", "gb"], ["c"], name="fc", transB=transB, alpha=0.7, beta=1.3)
    m = model([g, bn_node("c", "y")], [init("w", w), init("gb", rng.standard_normal(6).astype(np.float32))]
              + bn_inits("bn", 6), (3, 5))
    rec = fuse(m)
    assert rec.stats["by_rule"] == {"fuse-gemm-bn": 1}
    mm = helper.make_node("MatMul", ["x", "w"], ["c"], name="mm")
    m = model([mm, bn_node("c", "y")], [init("w", rng.standard_normal((5, 6)).astype(np.float32))]
              + bn_inits("bn", 6), (3, 5))
    assert fuse(m).stats["by_rule"] == {"fuse-matmul-bn": 1}


def test_bn_before_conv_without_padding_folds_forward():
    w = rng.standard_normal((6, 2, 1, 1)).astype(np.float32)
    nodes = [bn_node("x", "b"), helper.make_node("Conv", ["b", "w"], ["y"], name="conv", group=2)]
    m = model(nodes, [init("w", w)] + bn_inits("bn", 4), (1, 4, 5, 5))
    rec = fuse(m)
    assert rec.stats["by_rule"] == {"fuse-bn-conv": 1} and ops(m) == ["conv"]


def test_bn_before_padded_conv_is_left_exact():
    w = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    nodes = [bn_node("x", "b"), helper.make_node("Conv", ["b", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    m = model(nodes, [init("w", w)] + bn_inits("bn", 4), (1, 4, 5, 5))
    rec = fuse(m)
    assert rec.stats["folded"] == 0 and "zero padding" in rec.stats["not_folded"]["bn"]


@pytest.mark.parametrize("before", ["Relu", "Add", "MaxPool", "Concat"])
def test_bn_after_other_ops_left_exact_or_affine(before):
    attrs = {"kernel_shape": [2, 2]} if before == "MaxPool" else {"axis": 1} if before == "Concat" else {}
    ins = ["x", "x"] if before in ("Add", "Concat") else ["x"]
    c = 8 if before == "Concat" else 4
    nodes = [helper.make_node(before, ins, ["p"], name="pre", **attrs), bn_node("p", "y")]
    m = model(nodes, bn_inits("bn", c), (1, 4, 6, 6))
    rec = fuse(m)
    assert rec.stats["folded"] == 0 and "batch_norm" in ops(m)
    assert "not a conv or linear" in rec.stats["not_folded"]["bn"]
    assert rec.stats["not_folded"]["bn"].code == "no-partner"
    m = model(nodes, bn_inits("bn", c), (1, 4, 6, 6))
    rec = fuse(m, affine=True)
    assert rec.stats["affine"] == 1 and "batch_norm" not in ops(m)


# -- what must not fold --------------------------------------------------------------------------

def test_training_mode_not_folded():
    # apache/tvm#18703
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
               bn_node("c", "y", training_mode=1)],
              [init("w", rng.standard_normal((4, 4, 1, 1)).astype(np.float32))] + bn_inits("bn", 4), (2, 4, 3, 3))
    rec = PassManager([FuseConvBN()], check=False).run(m).record("fuse-conv-bn")
    assert rec.stats["folded"] == 0 and "training_mode=1" in rec.stats["not_folded"]["bn"]
    assert rec.stats["not_folded"]["bn"].code == "not-raised"  # typed: the frontend left it


def test_used_optional_outputs_not_folded():
    # microsoft/onnxruntime#2216: opset 9 BN whose running-mean output is read
    bn = helper.make_node("BatchNormalization", ["c", "bn.s", "bn.b", "bn.m", "bn.v"], ["y", "rm", "rv", "sm", "sv"],
                          name="bn")
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn],
              [init("w", rng.standard_normal((4, 4, 1, 1)).astype(np.float32))] + bn_inits("bn", 4), (1, 4, 3, 3),
              outputs=("y", "rm"), opset=9)
    rec = PassManager([FuseConvBN()], check=False).run(m).record("fuse-conv-bn")
    assert rec.stats["folded"] == 0 and "optional outputs ['rm'] are in use" in rec.stats["not_folded"]["bn"]


def test_zero_variance_with_zero_eps_not_folded():
    m = conv_bn(eps=0.0)
    m.graph.initializers["bn.v"].const = refold.ir.tensor.Tensor.from_array(np.zeros(6, np.float32))
    rec = PassManager([FuseConvBN()], check=False).run(m).record("fuse-conv-bn")
    assert rec.stats["folded"] == 0 and "var + eps <= 0" in rec.stats["not_folded"]["bn"]


def test_non_constant_statistics_not_folded():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "bn.s", "bn.b", "x_mean", "bn.v"], ["y"], name="bn"),
             helper.make_node("ReduceMean", ["x"], ["x_mean_full"], axes=[0, 2, 3], keepdims=0),
             ]
    nodes.insert(2, helper.make_node("Identity", ["x_mean_full"], ["x_mean"]))
    nodes = [nodes[0], nodes[3], nodes[2], nodes[1]]
    m = model(nodes, [init("w", rng.standard_normal((4, 4, 1, 1)).astype(np.float32))]
              + [t for t in bn_inits("bn", 4) if t.name != "bn.m"], (1, 4, 3, 3))
    rec = fuse(m)
    assert rec.stats["folded"] == 0 and "bn" in rec.stats["not_folded"]


def test_conv_with_other_users_folds_into_a_copy():
    # pytorch#104593: the other path must keep the unfused conv
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn_node("c", "y"),
             helper.make_node("Relu", ["c"], ["other"], name="other_path")]
    m = model(nodes, [init("w", rng.standard_normal((4, 4, 1, 1)).astype(np.float32))] + bn_inits("bn", 4),
              (1, 4, 3, 3), outputs=("y", "other"))
    rec = fuse(m)
    assert rec.stats["folded"] == 1 and ops(m).count("conv") == 2
    relu = next(n for n in m.graph if n.op == "relu")
    assert relu.inputs[0].producer.inputs[1].name == "w"  # the original, unscaled weight


def test_conv_output_is_graph_output():
    # onnxruntime#15109: an intermediate that is also a graph output
    m = model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn_node("c", "y")],
              [init("w", rng.standard_normal((4, 4, 1, 1)).astype(np.float32))] + bn_inits("bn", 4),
              (1, 4, 3, 3), outputs=("y", "c"))
    rec = fuse(m)
    assert rec.stats["folded"] == 1 and [o.name for o in m.graph.outputs] == ["y", "c"]


def test_shared_weight_is_cloned():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"), bn_node("c1", "y1"),
             helper.make_node("Conv", ["x", "w"], ["y2"], name="conv2")]
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    m = model(nodes, [init("w", w)] + bn_inits("bn", 4), (1, 4, 3, 3), outputs=("y1", "y2"))
    fuse(m)
    np.testing.assert_array_equal(m.graph.initializers["w"].const.numpy(), w)


def test_generated_names_do_not_collide():
    # onnx/onnx#2401, #3258
    m = conv_bn()
    m.graph.add_const(np.zeros(1, np.float32), "w_bnfolded_weight__0")
    fuse(m)
    proto = to_onnx(m)
    names = [t.name for t in proto.graph.initializer] + [o for n in proto.graph.node for o in n.output]
    assert len(names) == len(set(names))
    onnx.checker.check_model(proto, full_check=True)


def test_fp16_folded_in_higher_precision_and_overflow_refused():
    m = conv_bn(dtype=TensorProto.FLOAT16)
    for v in list(m.graph.initializers.values()):
        v.const = refold.ir.tensor.Tensor.from_array(v.const.numpy().astype(np.float16))
        v.dtype = refold.DType.FLOAT16
    m.graph.inputs[0].dtype = refold.DType.FLOAT16
    rec = PassManager([FuseConvBN()], atol=2e-2, rtol=2e-2).run(m).record("fuse-conv-bn")
    assert rec.stats["folded"] == 1
    assert next(n for n in m.graph if n.op == "conv").inputs[1].dtype == refold.DType.FLOAT16
    m = conv_bn(dtype=TensorProto.FLOAT16)
    for v in list(m.graph.initializers.values()):
        v.const = refold.ir.tensor.Tensor.from_array(v.const.numpy().astype(np.float16))
        v.dtype = refold.DType.FLOAT16
    m.graph.initializers["bn.v"].const = refold.ir.tensor.Tensor.from_array(np.full(6, 1e-7, np.float16))
    m.graph.initializers["bn.s"].const = refold.ir.tensor.Tensor.from_array(np.full(6, 60000, np.float16))
    rec = PassManager([FuseConvBN()], check=False).run(m).record("fuse-conv-bn")
    assert rec.stats["folded"] == 0 and "overflows FLOAT16" in rec.stats["not_folded"]["bn"]


def test_idempotent_and_tune_refused_for_onnx():
    m = conv_bn()
    assert fuse(m).modified
    assert not fuse(m).modified
    with pytest.raises(UnsupportedError, match="Tune mode .* use mode='deploy'"):
        PassManager([FuseConvBN(mode="tune")], check=False).run(conv_bn())


# -- real models ---------------------------------------------------------------------------------

def _render_crop() -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (192, 48), "white")
    ImageDraw.Draw(img).text((6, 8), "Hello refold 2026", fill="black", font=ImageFont.load_default(size=26))
    return np.asarray(img)


def _cls_input(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
    return ((x - 0.5) / 0.5)[None]


def test_ppocr_cls_all_35_folded_and_decision_kept(tmp_path, capsys):
    src = zoo.ppocr_path("cls")
    out = tmp_path / "cls.fused.onnx"
    code = cli.main(["run", src, "-p", "fuse-conv-bn", "-o", str(out), "--dim", "?=48",
                     "--atol", "1e-5", "--rtol", "1e-5"])
    text = capsys.readouterr().out
    assert code == 0 and "folded=35" in text
    fused = onnx.load(str(out))
    assert sum(n.op_type == "BatchNormalization" for n in onnx.load(src).graph.node) == 35
    assert not any(n.op_type == "BatchNormalization" for n in fused.graph.node)
    up = _render_crop()
    before, after = OrtRunner(onnx.load(src)), OrtRunner(fused)
    for img, label in ((up, 0), (up[::-1, ::-1].copy(), 1)):
        feeds = {"x": _cls_input(img)}
        a, b = before.run(feeds), after.run(feeds)
        (pa,), (pb,) = a.values(), b.values()
        assert np.max(np.abs(pa - pb)) <= 1e-5 * max(1.0, np.abs(pa).max())
        assert pa.argmax() == pb.argmax() == label


@pytest.mark.parametrize("name,folded,left", [("light_resnet50", 53, 0), ("light_densenet121", 59, 62)])
def test_light_models_fold_every_foldable_bn(name, folded, left):
    path = next(p for p in zoo.LIGHT_MODELS if name in p)
    m = load_onnx(zoo.random_weights(onnx.load(path)))
    rec = PassManager([FuseConvBN()], atol=1e-4, rtol=1e-4).run(m).record("fuse-conv-bn")
    assert rec.stats["folded"] == folded and len(rec.stats["not_folded"]) == left
    assert all("not a conv or linear" in why for why in rec.stats["not_folded"].values())


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2", "efficientnet"])
def test_transformers_cnns_torch_and_onnx(name, tmp_path, capsys):
    model, inputs = zoo.tiny_hf_model(name)
    gm, report = refold.optimize(model, inputs, passes=["fuse-conv-bn"], atol=1e-5, rtol=1e-5)
    assert not any("batch_norm" in str(n.target) for n in gm.graph.nodes)
    assert report.record("fuse-conv-bn").stats["not_folded"] == {}
    torch.testing.assert_close(gm(*inputs)[0], model(*inputs)[0], atol=1e-5, rtol=1e-5)
    onnx_path = zoo.export_hf_onnx(name, str(tmp_path / f"{name}.onnx"))
    n_bn = sum(n.op_type == "BatchNormalization" for n in onnx.load(onnx_path).graph.node)
    assert n_bn > 0
    out = tmp_path / "fused.onnx"
    assert cli.main(["run", onnx_path, "-p", "fuse-conv-bn", "-o", str(out), "--atol", "1e-5", "--rtol", "1e-5"]) == 0
    assert f"folded={n_bn}" in capsys.readouterr().out
    fused = onnx.load(str(out))
    assert not any(n.op_type == "BatchNormalization" for n in fused.graph.node)
    got = OrtRunner(fused).run({"input": inputs[0].numpy()})["output"]
    np.testing.assert_allclose(got, model(*inputs)[0].detach().numpy(), atol=1e-4, rtol=1e-4)


# -- torch specifics -----------------------------------------------------------------------------

class TwoPaths(torch.nn.Module):
    """One conv used on two paths, BN on one of them (pytorch#104593), and a functional BN
    (pytorch#122070)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.conv2 = torch.nn.Conv2d(4, 4, 1)
        self.register_buffer("m", torch.randn(4))
        self.register_buffer("v", torch.rand(4) + 0.5)
        self.g = torch.nn.Parameter(torch.randn(4))
        self.b = torch.nn.Parameter(torch.randn(4))

    def forward(self, x):
        a = self.bn(self.conv(x))
        b = torch.relu(self.conv(x))
        c = torch.nn.functional.batch_norm(self.conv2(a), self.m, self.v, self.g, self.b, False, 0.1, 1e-3)
        return a + b, c


def test_torch_shared_conv_and_functional_bn():
    torch.manual_seed(0)
    m = zoo._randomize_bn(TwoPaths()).eval()
    x = torch.randn(2, 3, 8, 8)
    gm, report = refold.optimize(m, (x,), passes=["fuse-conv-bn"], atol=1e-5, rtol=1e-5)
    assert report.record("fuse-conv-bn").stats["folded"] == 2
    assert not any("batch_norm" in str(n.target) for n in gm.graph.nodes)
    torch.testing.assert_close(gm(x), m(x), atol=1e-5, rtol=1e-5)
    sd = gm.state_dict()
    assert torch.equal(sd["conv.weight"], m.conv.weight)  # the relu path keeps the original conv
    assert "conv.weight_folded" in sd


@pytest.mark.parametrize("name", ["resnet", "mobilenetv2"])
def test_tune_mode_trains_like_eval_mode_bn(name):
    model, inputs = zoo.tiny_hf_model(name)
    ref = copy.deepcopy(model)
    gm, report = refold.optimize(model, inputs, passes=[FuseConvBN(mode="tune")])
    assert report.record("fuse-conv-bn").stats["folded"] > 0
    assert not any("batch_norm" in str(n.target) for n in gm.graph.nodes)
    assert set(dict(ref.named_parameters())) == set(dict(gm.named_parameters()))
    opt_a = torch.optim.SGD(ref.parameters(), lr=0.05)
    opt_b = torch.optim.SGD(gm.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        x = torch.randn(inputs[0].shape, generator=gen)
        la, lb = ref(x)[0].pow(2).mean(), gm(x)[0].pow(2).mean()
        opt_a.zero_grad()
        opt_b.zero_grad()
        la.backward()
        lb.backward()
        assert abs(la.item() - lb.item()) <= 1e-5 * max(1.0, abs(la.item()))
        ours = dict(gm.named_parameters())
        for k, p in ref.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(ours[k].grad, p.grad, atol=1e-5, rtol=1e-4)
        opt_a.step()
        opt_b.step()


def test_weights_behind_identity_nodes_fold():
    # torch's legacy exporter routes parameters through Identity nodes
    w = rng.standard_normal((4, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Identity", ["w_param"], ["w"], name="w_identity"),
             helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), bn_node("c", "y")]
    m = model(nodes, [init("w_param", w)] + bn_inits("bn", 4), (1, 4, 3, 3))
    rec = fuse(m)
    assert rec.stats["folded"] == 1 and ops(m) == ["conv"]


def test_bn1d_before_linear_folds_forward():
    # Linear(x*s + t) = (W*s) x + (W t + b), exact for BatchNorm1d over [N, C]
    lin = torch.nn.Sequential(torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 6)).eval()
    zoo._randomize_bn(lin)
    x = torch.randn(5, 4)
    gm, report = refold.optimize(lin, (x,), passes=["fuse-conv-bn"], atol=1e-5, rtol=1e-5)
    assert report.record("fuse-conv-bn").stats["by_rule"] == {"fuse-bn-linear": 1}
    torch.testing.assert_close(gm(x), lin(x), atol=1e-5, rtol=1e-5)


def test_cli_pass_options(tmp_path, capsys):
    nodes = [helper.make_node("Relu", ["x"], ["p"], name="pre"), bn_node("p", "y")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=bn_inits("bn", 4))
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    assert cli.main(["run", str(src), "-p", "fuse-conv-bn:affine=true", "-o", str(tmp_path / "o.onnx")]) == 0
    assert "affine=1" in capsys.readouterr().out
    assert [n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node] == ["Relu", "Mul", "Add"]
    assert cli.main(["run", str(src), "-p", "fuse-conv-bn:mode=tune", "-o", str(tmp_path / "t.onnx")]) == 4
    assert "use mode='deploy'" in capsys.readouterr().err
    assert cli.main(["run", str(src), "-p", "fuse-conv-bn:bogus=1", "-o", str(tmp_path / "t.onnx")]) == 2
