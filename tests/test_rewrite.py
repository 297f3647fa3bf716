"""The rewrite-rule engine: matching, why-not reasons, provenance, fixed point, loop guard."""
import numpy as np
import pytest

from refold.errors import PassFailedError
from refold.ir.dtypes import DType
from refold.ir.graph import Graph, Node
from refold.ir.printer import format_graph
from refold.ir.verify import verify
from refold.ir.rewrite import Const, Matcher, Rule, Var, apply_rules, op


def chain_graph():
    g = Graph("g")
    x = g.add_input("x", DType.FLOAT, (4,))
    zero = g.add_const(np.zeros(4, np.float32), "zero")
    a = g.append(Node("Add", [zero, x], name="add0", outputs=["a"])).output  # 0 + x, operands swapped
    r = g.append(Node("Relu", [a], name="relu", outputs=["r"])).output
    g.outputs.append(r)
    return g


def add_zero_rule():
    def why_not(m):
        if np.any(m.const("zero") != 0):
            return "constant is not zero"
        return None

    # x + 0 -> x
    return Rule("add-zero", op.Add(Var("x"), Const("zero")),
                lambda b, m: b.op("Identity", m["x"]), why_not)


def test_commutative_match_and_provenance():
    g = chain_graph()
    stats = apply_rules(g, [add_zero_rule()])
    assert stats.applied == {"add-zero": 1}
    verify(g)
    ident = g.nodes[0]
    assert ident.op == "Identity" and ident.meta["provenance"] == {"rule": "add-zero", "sources": ["add0"]}
    assert "zero" not in g.initializers  # the constant only the matched node read is gone
    assert format_graph(g, types=False).splitlines()[1].endswith("= onnx.Identity(%x)")


def test_why_not_is_recorded():
    g = chain_graph()
    g.initializers["zero"].const = __import__("refold").ir.tensor.Tensor.from_array(np.ones(4, np.float32))
    stats = apply_rules(g, [add_zero_rule()])
    assert stats.applied == {} and stats.skipped == {"add-zero": {"add0": "constant is not zero"}}


def test_rewrite_returning_none_rolls_back():
    g = chain_graph()
    before = format_graph(g)

    def half_then_refuse(b, m):
        b.op("Neg", m["x"])
        return None  # no match after all: what the builder made must vanish

    apply_rules(g, [Rule("refuse", op.Add(Var("x"), Const("zero")), half_then_refuse)])
    assert format_graph(g) == before


def test_shared_variable_must_bind_same_value():
    g = Graph("g")
    x = g.add_input("x", DType.FLOAT, (4,))
    y = g.add_input("y", DType.FLOAT, (4,))
    s1 = g.append(Node("Sigmoid", [y], name="sig")).output
    m1 = g.append(Node("Mul", [x, s1], name="not_silu")).output
    s2 = g.append(Node("Sigmoid", [x], name="sig2")).output
    m2 = g.append(Node("Mul", [s2, x], name="silu")).output
    g.outputs.extend([m1, m2])
    v = Var("v")
    # v * sigmoid(v) -> silu(v)
    rule = Rule("silu", op.Mul(v, op.Sigmoid(v)), lambda b, m: b.op("core.silu", m["v"]))
    stats = apply_rules(g, [rule])
    assert stats.applied == {"silu": 1}
    assert [n.op for n in g] == ["Sigmoid", "Mul", "silu"]


def test_nested_commutative_ops_match_without_blowup():
    # ((((x + c) + c) + c) ...) 20 deep, matched by a pattern 20 commutative adds deep.
    g = Graph("g")
    x = g.add_input("x", DType.FLOAT, (1,))
    c = g.add_const(np.ones(1, np.float32), "c")
    v = x
    for i in range(20):
        v = g.append(Node("Add", [c, v] if i % 2 else [v, c], name=f"a{i}")).output
    g.outputs.append(v)
    pat = Var("x")
    for _ in range(20):
        pat = op.Add(pat, Const("c"))
    matcher = Matcher(pat)
    m = matcher.match(g.nodes[-1])
    assert m is not None and m["x"] is x
    assert matcher.calls < 2000  # 2**20 orders if matched naively


def test_intermediate_with_other_users_is_kept():
    g = Graph("g")
    x = g.add_input("x", DType.FLOAT, (4,))
    s = g.append(Node("Sigmoid", [x], name="sig")).output
    m = g.append(Node("Mul", [x, s], name="mul")).output
    g.outputs.extend([m, s])  # the sigmoid is also a graph output
    v = Var("v")
    apply_rules(g, [Rule("silu", op.Mul(v, op.Sigmoid(v)), lambda b, mm: b.op("core.silu", mm["v"]))])
    assert [n.op for n in g] == ["Sigmoid", "silu"] and g.outputs[1] is s
    verify(g)


def test_loop_guard_names_rule():
    g = chain_graph()

    # x + 0 -> 0 + x: never reaches a fixed point
    def flip(b, m):
        return b.op("Add", m["zero"], m["x"])

    with pytest.raises(PassFailedError, match="rule 'flip' keeps firing"):
        apply_rules(g, [Rule("flip", op.Add(Var("x"), Const("zero")), flip)], max_rounds=5)


def test_attribute_constraints_and_named_nodes():
    g = Graph("g")
    x = g.add_input("x", DType.FLOAT, (2, 3))
    t1 = g.append(Node("Transpose", [x], {"perm": [1, 0]}, name="t1")).output
    t2 = g.append(Node("Transpose", [t1], {"perm": [1, 0]}, name="t2")).output
    g.outputs.append(t2)
    # transpose(transpose(x, p), p^-1) -> x  (here p = p^-1 = [1, 0])
    rule = Rule("transpose-pair", op.Transpose(op.Transpose(Var("x"), perm=[1, 0], _name="inner"), perm=[1, 0]),
                lambda b, m: b.op("Identity", m["x"]))
    stats = apply_rules(g, [rule])
    assert stats.applied == {"transpose-pair": 1}
    assert [n.op for n in g] == ["Identity"]
    assert g.nodes[0].meta["provenance"]["sources"] == ["t2", "t1"]
