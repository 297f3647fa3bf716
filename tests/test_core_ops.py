"""Core ops: reference implementations agree with ONNX Runtime running their lowering, at several
opsets; raise_to_core keeps real models' outputs; decomposed LayerNorms are recognised exactly
where they are LayerNorms."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import zoo
from refold.frontends.onnx.exporter import to_onnx
from refold.frontends.onnx.importer import load_onnx
from refold.ir.dtypes import DType
from refold.ir.graph import CORE, Graph, Model, Node
from refold.ir.ops import CORE_OPS, evaluate
from refold.passes import PassManager, get_pass
from refold.runtime.ort import OrtRunner

rng = np.random.default_rng(0)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# (op, inputs (arrays; None for an omitted optional), attrs, constant input positions)
CASES = [
    ("conv", [f32(1, 4, 9, 9), f32(6, 2, 3, 3), f32(6)], dict(strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2], group=2), (1, 2)),
    ("conv", [f32(1, 3, 10), f32(5, 3, 3), None], dict(strides=[1], pads=[1, 1], dilations=[1], group=1), (1,)),
    ("conv", [f32(1, 2, 4, 5, 5), f32(2, 1, 3, 3, 3), f32(2)], dict(strides=[1, 1, 1], pads=[1] * 6, dilations=[1, 1, 1], group=2), (1, 2)),
    ("conv_transpose", [f32(1, 4, 5, 5), f32(4, 3, 3, 3), f32(6)], dict(strides=[2, 2], pads=[1, 1, 1, 1], dilations=[1, 1], group=2, output_padding=[1, 1]), (1, 2)),
    ("batch_norm", [f32(2, 3, 4, 4), f32(3), f32(3), f32(3), np.abs(f32(3)) + 0.5], dict(epsilon=1e-3), (1, 2, 3, 4)),
    ("layer_norm", [f32(2, 5, 8), f32(8), f32(8)], dict(axis=-1, epsilon=1e-5), (1, 2)),
    ("layer_norm", [f32(2, 5, 8), f32(5, 8), None], dict(axis=1, epsilon=1e-3), (1,)),
    ("rms_norm", [f32(2, 5, 8), f32(8)], dict(axis=-1, epsilon=1e-6), (1,)),
    ("crms_norm", [f32(2, 5, 7), f32(8)], dict(axis=-1, epsilon=1e-6), (1,)),
    ("gemm", [f32(3, 4), f32(5, 4), f32(5)], dict(alpha=0.5, beta=2.0, transA=0, transB=1), (1, 2)),
    ("linear", [f32(2, 3, 4), f32(6, 4), f32(6)], {}, (1, 2)),
    ("linear", [f32(3, 4), f32(6, 4), None], {}, (1,)),
    ("matmul", [f32(2, 3, 4), f32(4, 5)], {}, ()),
    ("add", [f32(2, 3), f32(3)], {}, ()), ("sub", [f32(2, 3), f32(2, 1)], {}, ()),
    ("mul", [f32(2, 3), f32(1)], {}, ()), ("div", [f32(2, 3), np.abs(f32(3)) + 1], {}, ()),
    ("relu", [f32(3, 4)], {}, ()), ("sigmoid", [f32(3, 4)], {}, ()), ("tanh", [f32(3, 4)], {}, ()),
    ("silu", [f32(3, 4)], {}, ()), ("sqrt", [np.abs(f32(3, 4))], {}, ()), ("hardswish", [f32(3, 4) * 4], {}, ()),
    ("gelu", [f32(3, 4)], dict(approximate="none"), ()), ("gelu", [f32(3, 4)], dict(approximate="tanh"), ()),
    ("reshape", [f32(2, 3, 4), np.array([0, -1], np.int64)], dict(allowzero=0), (1,)),
    ("transpose", [f32(2, 3, 4)], dict(perm=[2, 0, 1]), ()),
    ("flatten", [f32(2, 3, 4)], dict(axis=2), ()),
    ("concat", [f32(2, 3), f32(2, 1)], dict(axis=1), ()),
    ("split", [f32(7, 2), np.array([3, 4], np.int64)], dict(axis=0), (1,)),
    ("slice", [f32(6, 5), np.array([4, 0], np.int64), np.array([0, 5], np.int64), np.array([0, 1], np.int64),
               np.array([-2, 2], np.int64)], {}, (1, 2, 3, 4)),
    ("reduce_mean", [f32(2, 3, 4)], dict(axes=[1, 2], keepdims=0), ()),
    ("quantize_linear", [f32(2, 3), np.array([0.1, 0.2, 0.05], np.float32), np.array([0, 3, -2], np.int8)], dict(axis=1), (1, 2)),
    ("dequantize_linear", [np.array([[1, -5, 7]], np.int8), np.array(0.1, np.float32), np.array(2, np.int8)], dict(axis=1), (1, 2)),
]


def core_model(op, inputs, attrs, consts, opset, n_out=1):
    g = Graph("g")
    vals = []
    for i, a in enumerate(inputs):
        if a is None:
            vals.append(None)
        elif i in consts:
            vals.append(g.add_const(a, f"c{i}"))
        else:
            vals.append(g.add_input(f"in{i}", DType.from_numpy(a.dtype), a.shape))
    while vals and vals[-1] is None:
        vals.pop()
    node = g.append(Node(op, vals, attrs, domain=CORE, name="under_test", num_outputs=n_out))
    g.outputs.extend(node.outputs)
    for v, r in zip(node.outputs, reference(op, inputs, attrs, n_out)):
        v.dtype, v.shape = DType.from_numpy(r.dtype), r.shape
    return Model(g, opset_imports={"": opset}), node


def reference(op, inputs, attrs, n_out=1):
    import torch

    ins = [None if a is None else torch.from_numpy(np.array(a)) for a in inputs]
    return [o.numpy() for o in evaluate(op, ins, attrs, n_out)]


@pytest.mark.parametrize("opset", [13, 17, 18, 23])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}{i}" for i, c in enumerate(CASES)])
def test_reference_matches_onnxruntime_through_lowering(case, opset):
    op, inputs, attrs, consts = case
    n_out = 2 if op == "split" else 1
    model, _ = core_model(op, inputs, attrs, consts, opset, n_out)
    proto = to_onnx(model)
    onnx.checker.check_model(proto, full_check=True)
    feeds = {f"in{i}": a for i, a in enumerate(inputs) if a is not None and i not in consts}
    got = OrtRunner(proto).run(feeds)
    for want, name in zip(reference(op, inputs, attrs, n_out), [v.name for v in model.graph.outputs]):
        np.testing.assert_allclose(got[name], want, rtol=2e-5, atol=2e-5, err_msg=f"{op} opset {opset}")


def test_every_core_op_is_covered():
    assert {c[0] for c in CASES} == set(CORE_OPS)


def test_core_shape_agrees_with_onnx_shape_inference():
    for op, inputs, attrs, consts in CASES:
        model, node = core_model(op, inputs, attrs, consts, 18, 2 if op == "split" else 1)
        want = [v.shape for v in node.outputs]
        for v in node.outputs:
            v.shape = None
        PassManager([get_pass("infer-shapes")], check=False).run(model)
        assert [v.shape for v in node.outputs] == want, op


@pytest.mark.parametrize("name", ["cls", "det", "rec"])
def test_raise_to_core_keeps_ppocr_outputs(name):
    m = load_onnx(zoo.ppocr_path(name))
    m.graph.inputs[0].shape = zoo.PPOCR_SHAPES[name]
    r = PassManager([get_pass("raise-to-core")], atol=1e-5, rtol=1e-5).run(m)
    rec = r.passes[0]
    assert rec.stats["raised"] > 100 and rec.stats["not_raised"] == {}
    assert any(n.domain == CORE for n in m.graph)
    if name == "rec":
        assert rec.stats["by_rule"]["layer-norm-decomposed-pow"] == 5  # all written-out LayerNorms
        assert sum(n.op == "layer_norm" for n in m.graph) == 5
    assert rec.stats["by_rule"].get("hardswish-clip", 0) > 0


@pytest.mark.parametrize("path", zoo.LIGHT_MODELS, ids=lambda p: p.split("/")[-1])
def test_raise_to_core_keeps_light_model_outputs(path):
    m = load_onnx(zoo.random_weights(onnx.load(path)))
    r = PassManager([get_pass("raise-to-core")], atol=1e-5, rtol=1e-5).run(m)
    assert r.passes[0].stats["raised"] > 0


def _decomposed_ln(axes=(-1,), keepdims=1, opset=13, gamma=None, mul_square=False, shape=(2, 3, 8),
                   second_axes=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    inits = [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
    nodes = []

    def reduce(inp, out, ax):
        if opset >= 18:
            name = out + "_axes"
            inits.append(numpy_helper.from_array(np.array(ax, np.int64), name))
            return helper.make_node("ReduceMean", [inp, name], [out], keepdims=keepdims)
        return helper.make_node("ReduceMean", [inp], [out], axes=list(ax), keepdims=keepdims)

    nodes.append(reduce("x", "mean", axes))
    nodes.append(helper.make_node("Sub", ["x", "mean"], ["d"]))
    nodes.append(helper.make_node("Mul", ["d", "d"], ["sq"]) if mul_square
                 else helper.make_node("Pow", ["d", "two"], ["sq"]))
    nodes.append(reduce("sq", "var", second_axes or axes))
    nodes.append(helper.make_node("Add", ["var", "eps"], ["ve"]))
    nodes.append(helper.make_node("Sqrt", ["ve"], ["std"]))
    nodes.append(helper.make_node("Div", ["d", "std"], ["y0"]))
    out = "y0"
    if gamma is not None:
        inits.append(numpy_helper.from_array(gamma, "gamma"))
        nodes.append(helper.make_node("Mul", ["y0", "gamma"], ["y"]))
        out = "y"
    g = helper.make_graph(nodes, "ln", [x], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("kw,raised", [
    (dict(), True),
    (dict(axes=(-2, -1)), True),
    (dict(axes=(1, 2)), True),                       # positive axes, rank known
    (dict(opset=18), True),                          # axes as an input (onnxruntime#14537)
    (dict(mul_square=True), True),
    (dict(gamma=f32(8)), True),
    (dict(keepdims=0, shape=(4, 4)), False),         # broadcasts, but is no LayerNorm (onnxruntime#30513)
    (dict(axes=(1,)), False),                        # not the trailing dims (onnxruntime#15844)
    (dict(axes=(-1,), second_axes=(-2, -1)), False),  # two different reductions
])
def test_decomposed_layer_norm_recognition(kw, raised):
    proto = _decomposed_ln(**kw)
    m = load_onnx(proto)
    r = PassManager([get_pass("raise-to-core")], atol=1e-5, rtol=1e-5).run(m)
    has_ln = any(n.op == "layer_norm" for n in m.graph)
    assert has_ln is raised, r.passes[0].stats
    if not raised:
        assert any("layer-norm" in why for why in r.passes[0].stats["not_raised"].values()) \
            or kw.get("keepdims") == 0


def test_registry_shape_inference_matches_reference():
    from refold.ir.ops import infer_types

    for op, inputs, attrs, consts in CASES:
        model, node = core_model(op, inputs, attrs, consts, 18, 2 if op == "split" else 1)
        assert infer_types(node) == [(v.dtype, v.shape) for v in node.outputs], op


def test_registry_shape_inference_reports_bad_inputs():
    from refold.errors import UnsupportedError
    from refold.ir.ops import infer_types

    g = Graph("g")
    a, b = g.add_input("a", DType.FLOAT, (2, 3)), g.add_input("b", DType.FLOAT, (4, 5))
    node = g.append(Node("matmul", [a, b], domain=CORE, name="mm"))
    with pytest.raises(UnsupportedError, match="core.matmul rejects its input types"):
        infer_types(node)
    node.inputs[0].shape = ("n", 3)
    assert infer_types(node) is None  # symbolic: unknown, not guessed
