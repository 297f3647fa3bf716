"""prune on architectures from outside the repo (tests/yolo.py, tests/bn_attention.py): a
YOLOv8-style detector as both torch.onnx exporters write it (C2f's split sizes as a shared int64
input, or chunk as Shape/Slice arithmetic), a cross-stage-partial backbone, and a LeViT-style
net of Linear + BatchNorm1d pairs over flattened tokens. Every case prunes without error, shrinks
the parameters, and equals the zeroing oracle (the original with the removed channels zeroed)."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

import bn_attention
import refold
import yolo
from refold.api import load
from refold.passes.analysis.channels import ChannelGraph
from refold.passes.prune import remove_units, zero_units
from refold.runtime import runner_for
from refold.runtime.ort import OrtRunner
from test_prune import _oracle, _prepared


def _numpy(t) -> np.ndarray:
    return np.asarray(t.detach() if hasattr(t, "detach") else t, np.float64)


def _oracle_at_once(factory, feeds, seed: int = 0):
    """Every prunable group at once: a third of each group's units zeroed in the original, the
    same units removed physically; the outputs agree (and the zeroing changed them, so the
    check is not vacuous). Returns the groups and the plan."""
    m = _prepared(factory)
    groups = ChannelGraph(m).groups
    rng = np.random.default_rng(seed)
    plan = {g.index: np.sort(rng.choice(g.units, max(1, g.units // 3), replace=False))
            for g in groups if g.prunable and g.units > 1}
    consts = {k: v.const for k, v in m.graph.initializers.items()}
    before = runner_for(m).run(feeds)
    for i, units in plan.items():
        zero_units(m, groups[i], units)
    ref = runner_for(m).run(feeds)
    for k, v in m.graph.initializers.items():  # back to the original weights, then cut
        v.const = consts[k]
    remove_units(m, {i: groups[i] for i in plan}, plan)
    got = runner_for(m).run(feeds)
    moved = 0.0
    for k in ref:
        r, o, b = _numpy(ref[k]), _numpy(got[k]), _numpy(before[k])
        assert r.shape == o.shape, k
        assert np.abs(r - o).max() <= 1e-5 * max(1.0, np.abs(r).max()), k
        moved = max(moved, np.abs(r - b).max())
    assert moved > 1e-3  # the removed channels did contribute
    return groups, plan


def _export(net, x, path: str, dynamo: bool) -> str:
    if dynamo:
        torch.onnx.export(net, (x,), path, dynamo=True, opset_version=18, input_names=["x"], output_names=["y"])
    else:
        torch.onnx.export(net, (x,), path, dynamo=False, opset_version=13, input_names=["x"], output_names=["y"])
    return path


def _pruned_runs(proto, x, shape) -> None:
    onnx.checker.check_model(proto)
    assert OrtRunner(proto).run({"x": x.numpy()})["y"].shape == shape


@pytest.mark.parametrize("split", ["split", "chunk"])
def test_yolov8_legacy_onnx_prunes_c2f_and_matches_the_oracle(tmp_path, split):
    # split((c, c)): TorchScript's exporter writes Split with its sizes as an int64 input, one
    # initializer shared by every C2f of that width; shrinking it for one block broke the others
    # ("Mismatch between the sum of 'split' and the split dimension"). chunk(2): Shape -> Add ->
    # Div -> Slice bounds, which follow the width by themselves when the halves stay equal.
    net, x = yolo.yolov8(split=split)
    path = _export(net, x, str(tmp_path / "yolo.onnx"), dynamo=False)
    nodes = onnx.load(path).graph.node
    if split == "split":
        sizes = Counter(n.input[1] for n in nodes if n.op_type == "Split" and len(n.input) > 1)
        assert len(sizes) >= 3 and max(sizes.values()) > 1  # sizes as an input, shared
    else:
        assert sum(n.op_type == "Slice" for n in nodes) >= 16 and any(n.op_type == "Shape" for n in nodes)
    proto, report = refold.optimize(path, passes=["prune:ratio=0.3"])
    st = report.record("prune").stats
    # measured: split 63 groups / 59 prunable; chunk (halves tied) 55 / 51. The ones left: the
    # head's class and box outputs (graph output, DFL's softmax over bins) and DFL's conv
    assert st["groups"] - st["prunable"] == 4 and st["pruned_groups"] == st["prunable"] >= 51
    assert st["params_after"] < 0.6 * st["params_before"]
    _pruned_runs(proto, x, tuple(net(x).shape))
    groups, plan = _oracle_at_once(lambda: load(path), {"x": x.numpy()})
    cv1 = re.compile(r"/(b2|b4|b6|b8|h12|h15|h18|h21)/cv1/conv/Conv")  # the 8 C2f blocks' first conv
    c2f = [g for g in groups if any(cv1.fullmatch(s) for s in g.sources)]
    assert len(c2f) == (16 if split == "split" else 8)  # its output (by halves for split), through the split
    assert all(g.prunable and g.index in plan for g in c2f)
    reasons = [str(g.why_not) for g in groups if not g.prunable]
    assert any("'y' is a graph output" in r for r in reasons)
    assert sum("/detect/dfl/" in r for r in reasons) == 3  # named: the DFL conv and reshape


def test_yolov8_dynamo_onnx_prunes_and_matches_the_oracle(tmp_path):
    net, x = yolo.yolov8(split="split")
    path = _export(net, x, str(tmp_path / "yolo_dynamo.onnx"), dynamo=True)
    sizes = Counter(n.input[1] for n in onnx.load(path).graph.node if n.op_type == "Split" and len(n.input) > 1)
    assert max(sizes.values()) > 1  # the dynamo exporter shares the sizes too
    proto, report = refold.optimize(path, passes=["prune:ratio=0.3"])
    st = report.record("prune").stats
    assert st["prunable"] >= 59 and st["pruned_groups"] == st["prunable"]  # measured 63 / 59
    assert st["params_after"] < 0.6 * st["params_before"]
    _pruned_runs(proto, x, tuple(net(x).shape))
    _oracle_at_once(lambda: load(path), {"x": x.numpy()})


def test_yolov8_torch_world_prunes_and_matches_the_oracle():
    net, x = yolo.yolov8()
    gm, report = refold.optimize(net, (x,), passes=["prune:ratio=0.3"])
    st = report.record("prune").stats
    assert st["prunable"] >= 51 and st["pruned_groups"] == st["prunable"]  # measured 55 / 51
    assert st["params_after"] < 0.6 * st["params_before"]
    with torch.no_grad():
        assert gm(x).shape == net(x).shape
    _oracle_at_once(lambda: load(net, (x,)), (x,))


@pytest.mark.parametrize("world", ["onnx", "torch"])
def test_csp_backbone_halves_prune_and_match_the_oracle(tmp_path, world):
    # chunk into halves, one through the blocks, concatenated back: each half is a range of the
    # concat; the halves stay equal. Was 15 of 28 prunable from ONNX (Shape/Slice chunk).
    net, x = yolo.csp_backbone()
    if world == "onnx":
        path = _export(net, x, str(tmp_path / "csp.onnx"), dynamo=False)
        factory, feeds = (lambda: load(path)), {"x": x.numpy()}
        out, report = refold.optimize(path, passes=["prune:ratio=0.3"])
    else:
        factory, feeds = (lambda: load(net, (x,))), (x,)
        out, report = refold.optimize(net, (x,), passes=["prune:ratio=0.3"])
    st = report.record("prune").stats
    assert st["groups"] == 24 and st["prunable"] >= 23  # measured 23: all but the classifier's outputs
    assert st["params_after"] < 0.6 * st["params_before"]
    groups, plan = _oracle_at_once(factory, feeds)
    if world == "onnx":  # one group at a time too (each load of a torch module is a torch.export)
        assert _oracle(factory, feeds, max_groups=3) == 3
    last = next(g for g in groups if not g.prunable)
    assert last.why_not.code == "graph-output" and ("'y'" in str(last.why_not) or "'linear'" in str(last.why_not))


@pytest.mark.parametrize("world", ["onnx", "torch"])
def test_linear_batchnorm1d_attention_prunes_heads_streams_and_mlps(tmp_path, world):
    # x [B, N, C] -> Linear -> flatten(0, 1) -> BatchNorm1d -> reshape_as: channelwise, so the
    # residual streams, the MLPs and the heads (q, k, v split per head out of one pair) all go.
    # Was 1 of 12 (ONNX: Reshape to Shape(linear) "computed") and 1 of 20 (torch: reshape_as).
    net, x = bn_attention.levit()
    if world == "onnx":
        path = _export(net, x, str(tmp_path / "levit.onnx"), dynamo=False)
        factory, feeds = (lambda: load(path)), {"x": x.numpy()}
        out, report = refold.optimize(path, passes=["prune:ratio=0.5"])  # 0.5: one head of 2 or 3 goes
    else:
        factory, feeds = (lambda: load(net, (x,))), (x,)
        out, report = refold.optimize(net, (x,), passes=["prune:ratio=0.5"])
    st = report.record("prune").stats
    assert st["groups"] == 12 and st["prunable"] == 11 and st["pruned_groups"] == 11
    assert st["heads_removed"] == 4 and st["params_after"] < 0.75 * st["params_before"]
    groups, _ = _oracle_at_once(factory, feeds)
    assert sorted(g.units for g in groups if g.heads) == [2, 2, 3, 3]
    if world == "onnx":
        assert _oracle(factory, feeds, max_groups=3) == 3


class ChannelSlices(torch.nn.Module):
    """Constant slices of the channel axis, one counted from the end: when channels before a
    bound go, the bound moves (it did not, and the pruned conv read the wrong channels)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a = torch.nn.Conv2d(3, 12, 1)
        self.b, self.c, self.d = torch.nn.Conv2d(6, 5, 1), torch.nn.Conv2d(4, 5, 1), torch.nn.Conv2d(5, 3, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.d(self.b(y[:, 2:8]) + self.c(y[:, -4:]))


@pytest.mark.parametrize("world", ["onnx", "torch"])
def test_constant_channel_slices_move_their_bounds(tmp_path, world):
    net, x = ChannelSlices().eval(), torch.randn(2, 3, 6, 6)
    if world == "onnx":
        path = _export(net, x, str(tmp_path / "slices.onnx"), dynamo=False)
        factory, feeds = (lambda: load(path)), {"x": x.numpy()}
    else:
        factory, feeds = (lambda: load(net, (x,))), (x,)
    groups, plan = _oracle_at_once(factory, feeds)
    # a's 12 channels: 2:8 (6), -4: (4), and 0:2 read by nobody (2); with b's outputs, 4 prunable
    assert sorted(g.units for g in groups if g.prunable) == [2, 4, 5, 6]
    dead = next(g for g in groups if g.prunable and g.units == 2)
    assert sorted(per[0] for _, _, per in dead.shapes) == [0, 1, 1]  # start 2 and end 8 move, -4 stays
    assert _oracle(factory, feeds, max_groups=4) == 4


def _shape_readers() -> onnx.ModelProto:
    """Two convs whose widths are read at run time by ops that do not follow them: an uneven
    slice (Shape -> Div 2 -> Add 1 -> Slice: 5 of 8 channels, not a chunk) and a Range as wide
    as the other conv, multiplied in."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    init = [numpy_helper.from_array(a, k) for k, a in {
        "wa": w(8, 3, 1, 1), "wb": w(6, 3, 1, 1), "wc": w(4, 5, 1, 1), "wd": w(2, 6, 1, 1),
        "i1": np.array([1], np.int64), "two": np.array([2], np.int64), "zero": np.array([0], np.int64),
        "one": np.array(1, np.int64),
        "z0": np.array(0, np.int64)}.items()]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["ya"], name="conv_a"),
        helper.make_node("Conv", ["x", "wb"], ["yb"], name="conv_b"),
        helper.make_node("Shape", ["ya"], ["sa"], name="shape_a"),
        helper.make_node("Gather", ["sa", "i1"], ["ca"], name="width_a"),
        helper.make_node("Div", ["ca", "two"], ["ha"], name="half_a"),
        helper.make_node("Add", ["ha", "i1"], ["ea"], name="end_a"),
        helper.make_node("Slice", ["ya", "zero", "ea", "i1"], ["part"], name="uneven_slice"),
        helper.make_node("Conv", ["part", "wc"], ["ya2"], name="conv_c"),
        helper.make_node("Shape", ["yb"], ["sb"], name="shape_b"),
        helper.make_node("Gather", ["sb", "one"], ["cb"], name="width_b"),
        helper.make_node("Range", ["z0", "cb", "one"], ["idx"], name="ramp_range"),
        helper.make_node("Cast", ["idx"], ["ramp"], to=TensorProto.FLOAT, name="ramp_float"),
        helper.make_node("Mul", ["yb", "ramp"], ["yb2"], name="times_ramp"),  # [.., 6, 6] * [6]: the last axis
        helper.make_node("Conv", ["yb2", "wd"], ["yd"], name="conv_d"),
    ]
    graph = helper.make_graph(nodes, "readers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                              [helper.make_tensor_value_info("ya2", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("yd", TensorProto.FLOAT, None)], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_declined_groups_name_the_op_that_couples_them(tmp_path):
    path = str(tmp_path / "readers.onnx")
    onnx.save(_shape_readers(), path)
    groups = ChannelGraph(_prepared(lambda: load(path))).groups
    a = next(g for g in groups if ("wa", 0) in g.params)
    b = next(g for g in groups if ("wb", 0) in g.params)
    assert not a.prunable and "uneven_slice" in str(a.why_not) and "not an equal piece" in str(a.why_not)
    assert not b.prunable and "ramp_range" in str(b.why_not)  # names the node reading the width
    assert a.why_not.code == b.why_not.code == "no-rule"
    proto, report = refold.optimize(path, passes=["prune:ratio=0.5"])  # declines, never crashes
    assert report.record("prune").stats["pruned_groups"] == 0
