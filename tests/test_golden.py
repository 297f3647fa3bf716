"""Golden before/after tests (TVM Relax's Before/Expected habit): each pass's input and expected
output are printed IR text, compared exactly. The PassManager's numeric check runs on each (the
graph before vs after, in ONNX Runtime), and a second run changes nothing."""
from __future__ import annotations

import textwrap

import pytest

from refold.ir.parser import parse_model
from refold.ir.printer import format_model
from refold.passes import PassManager, get_pass

CASES: dict[str, tuple[str, str]] = {}

CASES['dce'] = (
    """
    graph g(%x: f32[2,3]) {
      %y = onnx.Relu(%x)
      %dead = onnx.Neg(%x)
      %dead2 = onnx.Exp(%dead)
      return %y
    }
    """,
    """
    graph g(%x) {
      %y = onnx.Relu(%x)
      return %y
    }
    """)

CASES['cse'] = (
    """
    graph g(%x: f32[2,3]) {
      %a = onnx.Sigmoid(%x)
      %b = onnx.Sigmoid(%x)
      %y = onnx.Add(%a, %b)
      return %y
    }
    """,
    """
    graph g(%x) {
      %a = onnx.Sigmoid(%x)
      %y = onnx.Add(%a, %a)
      return %y
    }
    """)

CASES['fold-constants'] = (
    """
    graph g(%x: f32[2,3]) {
      %c1 = const f32[3]
      %c2 = const f32[3]
      %s = onnx.Add(%c1, %c2)
      %y = onnx.Mul(%x, %s)
      return %y
    }
    """,
    """
    graph g(%x) {
      %s = const f32[3]
      %y = onnx.Mul(%x, %s)
      return %y
    }
    """)

CASES['infer-shapes'] = (
    """
    graph g(%x: f32[2,3]) {
      %w = const f32[3,5]
      %y = onnx.MatMul(%x, %w)
      %z = onnx.Transpose(%y) {perm=[1,0]}
      return %z
    }
    """,
    """
    graph g(%x: f32[2,3]) {
      %w = const f32[3,5]
      %y = onnx.MatMul(%x, %w)  # f32[2,5]
      %z = onnx.Transpose(%y) {perm=[1,0]}  # f32[5,2]
      return %z
    }
    """)

CASES['raise-to-core'] = (
    """
    graph g(%x: f32[1,3,8,8]) {
      %w = const f32[4,3,3,3]
      %b = const f32[4]
      %c = onnx.Conv(%x, %w, %b) {pads=[1,1,1,1], strides=[2,2]}
      %r = onnx.Relu(%c)
      %f = onnx.Flatten(%r) {axis=1}
      return %f
    }
    """,
    """
    graph g(%x) {
      %w = const f32[4,3,3,3]
      %b = const f32[4]
      %c = core.conv(%x, %w, %b) {strides=[2,2], pads=[1,1,1,1], dilations=[1,1], group=1}
      %r = core.relu(%c)
      %f = core.flatten(%r) {axis=1}
      return %f
    }
    """)

CASES['fuse-conv-bn'] = (
    """
    graph g(%x: f32[1,3,8,8]) {
      %w = const f32[4,3,3,3]
      %b = const f32[4]
      %scale = const f32[4]
      %bias = const f32[4]
      %mean = const f32[4]
      %var = const f32[4]
      %c = onnx.Conv(%x, %w, %b) {pads=[1,1,1,1]}
      %bn = onnx.BatchNormalization(%c, %scale, %bias, %mean, %var) {epsilon=0.001}
      %y = onnx.Relu(%bn)
      return %y
    }
    """,
    """
    graph g(%x) {
      %w_bnfolded_weight__0 = const f32[4,3,3,3]
      %b_bnfolded_bias__1 = const f32[4]
      %conv__3 = core.conv(%x, %w_bnfolded_weight__0, %b_bnfolded_bias__1) {strides=[1,1], pads=[1,1,1,1], dilations=[1,1], group=1}
      %y = core.relu(%conv__3)
      return %y
    }
    """)

CASES['layernorm-to-rmsnorm'] = (
    """
    graph g(%ids: i64[1,4]) {
      %wte = const f32[10,8]
      %wpe = const f32[1,4,8]
      %g1 = const f32[8]
      %b1 = const f32[8]
      %w1 = const f32[8,8]
      %c1 = const f32[8]
      %gf = const f32[8]
      %bf = const f32[8]
      %e = onnx.Gather(%wte, %ids) {axis=0}
      %h = onnx.Add(%e, %wpe)
      %n = onnx.LayerNormalization(%h, %g1, %b1) {axis=-1, epsilon=1e-05}
      %m = onnx.MatMul(%n, %w1)
      %mb = onnx.Add(%m, %c1)
      %h2 = onnx.Add(%h, %mb)
      %o = onnx.LayerNormalization(%h2, %gf, %bf) {axis=-1, epsilon=1e-05}
      return %o
    }
    """,
    """
    graph g(%ids) {
      %g1 = const f32[8]
      %gf = const f32[8]
      %bf = const f32[8]
      %wte_centered__0 = const f32[10,8]
      %wpe_centered__1 = const f32[1,4,8]
      %w1_centered__2 = const f32[8,8]
      %c1_centered__3_shifted__8 = const f32[8]
      %e = onnx.Gather(%wte_centered__0, %ids) {axis=0}
      %h = core.add(%e, %wpe_centered__1)
      %rms_norm__5 = core.rms_norm(%h, %g1) {axis=-1, epsilon=1e-05}
      %m = core.matmul(%rms_norm__5, %w1_centered__2)
      %mb = core.add(%m, %c1_centered__3_shifted__8)
      %h2 = core.add(%h, %mb)
      %rms_norm__10 = core.rms_norm(%h2, %gf) {axis=-1, epsilon=1e-05}
      %o = core.add(%rms_norm__10, %bf)
      return %o
    }
    """)


def _text(model, types: bool = False) -> str:
    return format_model(model, types=types).split("\n", 1)[1]  # without the opsets line


def _dedent(text: str) -> str:
    return textwrap.dedent(text).strip()


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_before_after(name):
    before, expected = (_dedent(t) for t in CASES[name])
    report = PassManager([get_pass(name)], atol=1e-5, rtol=1e-5).run(parse_model(before))
    assert all(r.max_abs is not None and r.max_abs <= 1e-5 for r in report.passes), report.format()
    assert report.record(name).modified
    assert _text(report.model, types=name == "infer-shapes") == expected
    again = PassManager([get_pass(name)], check=False).run(report.model)
    assert not again.record(name).modified  # idempotent


@pytest.mark.parametrize("name", sorted(CASES))
def test_parsed_text_prints_back_the_same(name):
    text = _dedent(CASES[name][0])
    assert _text(parse_model(text), types=True) == text
