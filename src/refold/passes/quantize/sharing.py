"""Which activations share one quantization scale, and the ops that decide it.

    y = reshape / transpose / flatten / squeeze / slice / max-pool (x)   ==>  s_y = s_x   (y's values are x's)
    y = relu(x) with lo_x >= 0                                          ==>  s_y = s_x   (relu is the identity there)
    y = concat(x_1, ..., x_k)                                           ==>  s_y = s_x1 = ... = s_xk

A group's range is the union of its members' calibrated ranges, so no member clips. Equal scales
on both sides of a pass-through op let ONNX Runtime drop its DQ -> op -> Q (an int8 max-pool or
reshape) and TensorRT keep it in int8; equal scales on concat inputs make the concat a copy
(onnxruntime#12254, executorch#19159).
"""
from __future__ import annotations

from refold.ir.graph import CORE, Node, Value

ATEN = "aten"
_PASS_THROUGH = {
    CORE: {"reshape", "transpose", "flatten", "slice", "split"},
    "onnx": {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Identity",
             "MaxPool", "GlobalMaxPool", "DepthToSpace", "SpaceToDepth", "Expand", "Tile", "Gather"},
    ATEN: {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "squeeze", "unsqueeze",
           "flatten", "clone", "contiguous", "expand", "slice", "select", "alias", "detach",
           "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
           "pixel_shuffle", "pixel_unshuffle", "split", "split_with_sizes", "chunk"},
}
_SPLITS = {"split", "Split", "split_with_sizes", "chunk"}
_MAX_POOL = {("onnx", "MaxPool"), ("onnx", "GlobalMaxPool"), (ATEN, "max_pool1d"), (ATEN, "max_pool2d"),
             (ATEN, "max_pool3d"), (ATEN, "max_pool2d_with_indices"), (ATEN, "max_pool3d_with_indices")}
_AVG_POOL = {("onnx", "AveragePool"), ("onnx", "GlobalAveragePool"), (ATEN, "avg_pool1d"),
             (ATEN, "avg_pool2d"), (ATEN, "avg_pool3d"), (ATEN, "adaptive_avg_pool1d"),
             (ATEN, "adaptive_avg_pool2d"), (ATEN, "adaptive_avg_pool3d")}


def is_pass_through(node: Node) -> bool:
    """Every output value of ``node`` is one of its first input's values."""
    return node.op in _PASS_THROUGH.get(node.dialect, ())


def is_pool(node: Node) -> bool:
    return (node.dialect, node.op) in _MAX_POOL or (node.dialect, node.op) in _AVG_POOL


def is_relu(node: Node) -> bool:
    return node.op == "relu" and node.dialect in (CORE, ATEN)


def pass_through_source(v: Value, quantized) -> str | None:
    """The nearest quantized value that ``v`` is a rearrangement of (through pass-through ops)."""
    for _ in range(64):
        p = v.producer
        if p is None or not is_pass_through(p):
            return None
        if v is not p.outputs[0] and p.op not in _SPLITS:  # max-pool's indices are not values of x
            return None
        u = p.inputs[0]
        if u is None or u.const is not None:
            return None
        if u.name in quantized:
            return u.name
        v = u
    return None


class ScaleGroups:
    """Union-find over activation names: members of one group get one scale and zero point."""

    def __init__(self, names):
        self.parent = {n: n for n in names}

    def find(self, a: str) -> str:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # deterministic root: the smaller name

    def ranges(self, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        """Each name's group range: the union of its members' ranges."""
        acc: dict[str, tuple[float, float]] = {}
        for n in self.parent:
            r = self.find(n)
            lo, hi = ranges[n]
            if r in acc:
                lo, hi = min(lo, acc[r][0]), max(hi, acc[r][1])
            acc[r] = (lo, hi)
        return {n: acc[self.find(n)] for n in self.parent}

    def shared(self) -> int:
        """How many groups hold more than one activation."""
        sizes: dict[str, int] = {}
        for n in self.parent:
            sizes[self.find(n)] = sizes.get(self.find(n), 0) + 1
        return sum(1 for s in sizes.values() if s > 1)
