"""refold.runtime: the ORT, torch and reference runners agree with each other on real models,
capture returns intermediates, streaming hands batches to a callback, and gradients flow through
an ONNX-born graph in the torch runner."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import refold
import zoo
from refold.errors import UnsupportedError, UsageError
from refold.runtime import max_errors, probe_inputs, runner_for
from refold.runtime.ort import OrtRunner
from refold.runtime.reference import ReferenceRunner
from refold.runtime.torch_runner import TorchRunner, to_numpy

TOL = 1e-4


def _agree(a: dict, b: dict, atol: float = TOL) -> None:
    e_abs, e_rel, where = max_errors({k: to_numpy(v) for k, v in a.items()},
                                     {k: to_numpy(v) for k, v in b.items()})
    assert set(a) == set(b)
    assert e_abs <= atol or e_rel <= atol, f"{where}: abs {e_abs:.3g} rel {e_rel:.3g}"


def _feeds_for(model, shape=None, seed=0):
    v = model.graph.inputs[0]
    if shape is None:
        return probe_inputs(model, seed=seed)
    return {v.name: np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("name", ["cls", "det", "rec"])
def test_three_runners_agree_on_ppocr(name):
    m = refold.load(zoo.ppocr_path(name))
    feeds = _feeds_for(m, zoo.PPOCR_SHAPES[name])
    ort_out = OrtRunner(m).run(feeds)
    _agree(ort_out, TorchRunner(m).run(feeds))
    _agree(ort_out, ReferenceRunner(m).run(feeds))


@pytest.mark.parametrize("name", ["gpt2", "resnet"])
def test_three_runners_agree_on_transformers_onnx_exports(name, hf_onnx):
    m = refold.load(hf_onnx(name))
    _, inputs = zoo.tiny_hf_model(name)
    feeds = {m.graph.inputs[0].name: inputs[0].numpy()}
    ort_out = OrtRunner(m).run(feeds)
    _agree(ort_out, TorchRunner(m).run(feeds))
    _agree(ort_out, ReferenceRunner(m).run(feeds))


@pytest.mark.parametrize("name", ["gpt2", "resnet"])
def test_runners_agree_on_torch_export_captures(name):
    model, inputs = zoo.tiny_hf_model(name)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    module = zoo.last_hidden(model).eval()
    m = refold.load(module, inputs)
    with torch.no_grad():
        expected = module(*inputs)
    feeds = dict(zip(m.meta["torch.user_inputs"], inputs))
    out_name = m.graph.outputs[0].name
    with torch.no_grad():
        got_torch = TorchRunner(m).run(feeds)[out_name]
    got_ref = ReferenceRunner(m).run(feeds)[out_name]
    _agree({"y": expected}, {"y": got_torch})
    _agree({"y": expected}, {"y": got_ref})
    assert runner_for(m).engine == "torch"


def test_capture_returns_every_requested_intermediate_and_engines_agree_on_them():
    m = refold.load(zoo.ppocr_path("cls"))
    feeds = _feeds_for(m, zoo.PPOCR_SHAPES["cls"])
    names = [o.name for n in m.graph for o in n.outputs if o.kind != "omitted"]
    a = OrtRunner(m).run(feeds, capture=names)
    b = TorchRunner(m).run(feeds, capture=names)
    c = ReferenceRunner(m).run(feeds, capture=names)
    assert set(names) <= set(a) and set(names) <= set(b) and set(names) <= set(c)
    for name in names:
        _agree({name: a[name]}, {name: b[name]})
        _agree({name: a[name]}, {name: c[name]})


def test_capture_of_unknown_name_is_a_usage_error():
    m = refold.load(refold.example_path())
    with pytest.raises(UsageError, match="no value of the graph has that name"):
        OrtRunner(m).run(probe_inputs(m), capture=["nope"])
    with pytest.raises(UsageError, match="not one string"):
        TorchRunner(m).run(probe_inputs(m), capture="nope")


def test_stream_hands_each_batch_to_the_callback_from_lists_generators_and_dataloaders():
    m = refold.load(refold.example_path())
    target = [n.outputs[0].name for n in m.graph][2]
    batches = [probe_inputs(m, seed=i) for i in range(5)]
    seen = []
    runner = OrtRunner(m)
    n = runner.stream(batches, lambda i, vals: seen.append((i, sorted(vals))), capture=[target])
    assert n == 5 and [i for i, _ in seen] == list(range(5))
    assert all(target in names and m.graph.outputs[0].name in names for _, names in seen)

    def gen():
        for b in batches:
            yield b

    only = []
    runner.stream(gen(), lambda i, vals: only.append(list(vals)), capture=[target], outputs=False)
    assert only == [[target]] * 5

    cls = refold.load(zoo.ppocr_path("cls"))  # a dynamic batch dim
    first = [n.outputs[0].name for n in cls.graph][0]
    xs = torch.randn(5, *zoo.PPOCR_SHAPES["cls"][1:])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs, torch.zeros(len(xs))), batch_size=2)
    shapes = []
    TorchRunner(cls).stream(loader, lambda i, vals: shapes.append(tuple(vals[first].shape)), capture=[first])
    assert [s[0] for s in shapes] == [2, 2, 1]  # (x, label) batches; the label is not a graph input


def test_stream_takes_variable_sequence_lengths(tmp_path):
    model, inputs = zoo.tiny_hf_model("gpt2")
    path = str(tmp_path / "gpt2_dynamic.onnx")
    torch.onnx.export(zoo.last_hidden(model).eval(), inputs, path, dynamo=False, opset_version=17, input_names=["ids"],
                      output_names=["h"], dynamic_axes={"ids": {0: "batch", 1: "seq"}, "h": {0: "batch", 1: "seq"}})
    m = refold.load(path)
    name = m.graph.inputs[0].name
    batches = [{name: np.random.default_rng(i).integers(0, 99, (1 + i % 2, 4 + 3 * i)).astype(np.int64)}
               for i in range(4)]
    lengths = []
    OrtRunner(m).stream(batches, lambda i, vals: lengths.append(vals[m.graph.outputs[0].name].shape[:2]))
    assert lengths == [(1, 4), (2, 7), (1, 10), (2, 13)]


def _small_onnx_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32) * 0.3, "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    s = numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.5, "s")
    mu = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32) * 0.1, "mu")
    var = numpy_helper.from_array(rng.random(4).astype(np.float32) + 0.5, "var")
    fc = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "mu", "var"], ["bn"]),
             helper.make_node("Tanh", ["bn"], ["t"]),
             helper.make_node("GlobalAveragePool", ["t"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"]),
             helper.make_node("Softmax", ["y"], ["out"], axis=-1)]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3])],
                          [w, b, s, mu, var, fc])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_gradients_flow_through_an_onnx_born_graph_and_match_finite_differences():
    m = refold.load(_small_onnx_cnn())
    runner = TorchRunner(m, dtype=torch.float64)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)

    def loss(inp):
        return (runner.run({"x": inp})["out"] * torch.arange(3, dtype=torch.float64)).sum()

    assert torch.autograd.gradcheck(loss, (x,), eps=1e-6, atol=1e-6)
    # and by hand: one central difference against the autograd gradient
    g, = torch.autograd.grad(loss(x), x)
    e = torch.zeros_like(x)
    e[0, 1, 2, 3] = 1e-6
    fd = (loss(x + e) - loss(x - e)) / 2e-6
    assert abs(fd.item() - g[0, 1, 2, 3].item()) < 1e-6


def test_trainable_constants_get_gradients_on_a_real_model():
    m = refold.load(zoo.ppocr_path("cls"))
    runner = TorchRunner(m, trainable=True)
    params = runner.parameters()
    assert len(params) > 50 and all(p.requires_grad for p in params.values())
    feeds = _feeds_for(m, zoo.PPOCR_SHAPES["cls"])
    out = runner.run(feeds)[m.graph.outputs[0].name]
    out[:, 0].sum().backward()
    assert sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params.values()) > 50
    with pytest.raises(UnsupportedError, match="cannot mark"):
        TorchRunner(m, trainable=["no_such_weight"])


def test_runner_refuses_an_op_it_cannot_run_and_names_it():
    g = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    m = refold.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
    with pytest.raises(UnsupportedError, match="onnx.Hardmax"):
        TorchRunner(m)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    _agree(OrtRunner(m).run({"x": x}), ReferenceRunner(m).run({"x": x}))  # the reference covers it


@pytest.mark.parametrize("case_name", ["test_if", "test_loop11", "test_scan9_sum"])
def test_control_flow_runs_in_the_reference_and_ort_runners(case_name):
    from onnx.backend.test.case.node import collect_testcases

    case = next(c for c in collect_testcases(None) if c.name == case_name)
    m = refold.load(case.model)
    inputs, _ = case.data_sets[0]
    feeds = dict(zip([i.name for i in case.model.graph.input], inputs))
    _agree(OrtRunner(m).run(feeds), ReferenceRunner(m).run(feeds))


def test_feeds_are_checked():
    m = refold.load(refold.example_path())
    r = OrtRunner(m)
    with pytest.raises(UsageError, match="not inputs of the graph"):
        r.run({"bogus": np.zeros(1)})
    with pytest.raises(UsageError, match="lack graph inputs"):
        r.run({})


def test_streaming_memory_does_not_grow_with_the_number_of_batches():
    import tracemalloc

    m = refold.load(zoo.ppocr_path("cls"))
    names = [o.name for n in m.graph for o in n.outputs if o.kind != "omitted"][:20]
    runner = OrtRunner(m)
    batch = _feeds_for(m, (4, 3, 48, 192))
    sums = []

    def peak(n: int) -> int:
        tracemalloc.start()
        runner.stream((batch for _ in range(n)), lambda i, v: sums.append(float(v[names[-1]].sum())),
                      capture=names)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(3), peak(30)
    assert len(sums) == 33 and large < 1.3 * small, (small, large)
