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
