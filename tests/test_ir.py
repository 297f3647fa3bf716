"""The IR's invariants: use lists, surgery, ordering, names, verifier, printer."""
import numpy as np
import pytest

from refold.errors import InvalidModelError
from refold.ir.dtypes import DType
from refold.ir.graph import Graph, Model, Node, Value
from refold.ir.printer import format_graph, format_node
from refold.ir.tensor import Tensor
from refold.ir.verify import VerifyError, verify


def small_graph():
    g = Graph("g")
    x = g.add_input("x", DType.FLOAT, (1, 4))
    w = g.add_const(np.ones((4, 4), np.float32), "w")
    mm = g.append(Node("MatMul", [x, w], name="mm", outputs=["y"]))
    relu = g.append(Node("Relu", [mm.output], name="relu", outputs=["z"]))
    g.outputs.append(relu.output)
    return g, x, w, mm, relu


def test_use_lists_follow_inputs():
    g, x, w, mm, relu = small_graph()
    assert x.uses() == [(mm, 0)] and w.uses() == [(mm, 1)]
    mm.set_input(1, x)
    assert w.uses() == [] and x.uses() == [(mm, 0), (mm, 1)]
    mm.replace_input(x, None)
    assert x.uses() == [] and mm.inputs == (None, None)


def test_replace_all_uses_and_remove():
    g, x, w, mm, relu = small_graph()
    mm.output.replace_all_uses_with(x)
    assert relu.inputs == (x,)
    g.remove(mm)
    assert [n.name for n in g] == ["relu"] and w.uses() == []
    verify(g)


def test_remove_refuses_used_node():
    g, x, w, mm, relu = small_graph()
    with pytest.raises(ValueError, match="still used"):
        g.remove(mm)


def test_substitute_keeps_graph_output_name():
    g, x, w, mm, relu = small_graph()
    new = g.append(Node("Sigmoid", [mm.output], name="sig")).output
    g.substitute(relu.output, new)
    assert g.outputs[0] is new and new.name == "z"
    # an output replaced by a graph input goes through an Identity, keeping the name
    g.substitute(new, x)
    assert g.outputs[0].name == "z" and g.outputs[0].producer.op == "Identity"
    verify(g)


def test_multi_output_and_omitted_outputs():
    g = Graph("g")
    x = g.add_input("x", DType.FLOAT, (6,))
    n = g.append(Node("Split", [x], num_outputs=3, name="s"))
    assert [v.index for v in n.outputs] == [0, 1, 2] and all(v.producer is n for v in n.outputs)
    d = g.append(Node("Dropout", [x], outputs=[Value("y"), Value("", kind="omitted")]))
    assert d.outputs[1].name == ""  # omitted outputs stay unnamed
    g.outputs.extend([n.outputs[0], d.outputs[0]])
    verify(g)


def test_sort_keeps_valid_order_and_fixes_invalid():
    g, x, w, mm, relu = small_graph()
    assert g.sort() is False
    g2 = Graph("g2")
    a = g2.add_input("a", DType.FLOAT, (1,))
    n1 = Node("Relu", [a], name="n1")
    n2 = Node("Neg", [n1.output], name="n2")
    g2.append(n2)
    g2.append(n1)
    assert g2.sort() is True
    assert [n.name for n in g2] == ["n1", "n2"]


def test_cycle_is_named():
    g = Graph("g")
    a = Node("Relu", [], name="a")
    b = Node("Relu", [a.output], name="b")
    a.set_input(0, b.output)
    g.append(a)
    g.append(b)
    with pytest.raises(InvalidModelError, match="cycle: (a -> b|b -> a)"):
        g.sort()


def test_unique_names_avoid_existing_and_subgraph_names():
    g = Graph("g")
    g.claim_name("relu__0")
    sub = Graph("body")
    sub.claim_name("relu__1")
    x = g.add_input("x", DType.BOOL, ())
    g.append(Node("If", [x], {"then_branch": sub, "else_branch": Graph("e")}, name="if"))
    name = g.unique_name("relu")
    assert name not in ("relu__0", "relu__1")
    assert sub.unique_name("relu") != name  # one namespace for the whole model


def test_verifier_reports_dangling_and_stale_uses():
    g, x, w, mm, relu = small_graph()
    stray = Value("stray")
    relu._inputs[0] = stray  # behind the IR's back: the verifier must notice
    with pytest.raises(VerifyError) as e:
        verify(g)
    assert "reads 'stray'" in str(e.value) and "use list" in str(e.value)


def test_verifier_checks_core_schemas():
    g = Graph("g")
    x = g.add_input("x", DType.FLOAT, (1, 4))
    y = g.add_input("y", DType.INT64, (1, 4))
    g.append(Node("add", [x, y], domain="core", name="bad_add"))
    g.append(Node("conv", [x], domain="core", name="bad_conv"))
    g.outputs.append(g.nodes[0].output)
    with pytest.raises(VerifyError) as e:
        verify(g)
    assert "mixes input types" in str(e.value) and "takes ('x', 'w', 'b?')" in str(e.value)


def test_printer_golden():
    g, *_ = small_graph()
    g.nodes[0].attrs["alpha"] = 0.5
    assert format_graph(g) == (
        "graph g(%x: f32[1,4]) {\n"
        "  %w = const f32[4,4]\n"
        "  %y = onnx.MatMul(%x, %w) {alpha=0.5}\n"
        "  %z = onnx.Relu(%y)\n"
        "  return %z\n"
        "}")


def test_printer_node_forms():
    n = Node("conv", [Value("x"), Value("w"), None], {"strides": [1, 1], "auto_pad": b"SAME"},
             domain="core", outputs=["y"])
    assert format_node(n) == "%y = core.conv(%x, %w, _) {strides=[1,1], auto_pad='SAME'}"
    assert repr(n) == "Node(core.conv, name='')"


def test_dtype_mappings():
    import torch

    assert DType.FLOAT.numpy() == np.float32 and DType.from_numpy(np.int64) == DType.INT64
    assert DType.BFLOAT16.torch() == torch.bfloat16 and DType.from_torch(torch.float16) == DType.FLOAT16
    assert DType.INT4.itemsize_bits == 4 and DType.FLOAT.short == "f32"


def test_tensor_is_lazy_and_sized():
    t = Tensor(DType.FLOAT, (1000, 1000), array=None, proto=None)
    assert t.nbytes == 4_000_000 and t.numel == 1_000_000
    assert repr(Tensor.from_array(np.zeros(3, np.int8))) == "Tensor(i8[3], array)"


def test_model_parameter_count():
    g, *_ = small_graph()
    assert Model(g).parameter_count() == 16
