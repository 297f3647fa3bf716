"""Grouped symmetric weight quantization (int4 / int8), the errors that choose a grouping, and
ONNX Runtime's MatMulNBits packing.

A weight keeps its output channels (N) on one axis and its input channels (K, the axis the layer
sums over) on another. A grouping is named for the channel that owns its scales:

    oc       one scale per output channel (RTN per channel)
    oc32     per output channel, one scale per block of 32 input channels (blocks along K: what
             ONNX Runtime's MatMulNBits and most int4 kernels run); oc64, oc128 alike
    ic32     per input channel, one scale per block of 32 output channels (blocks along N: AdaDim's
             per-IC grouping); ic64, ic128 alike

A few outlier input channels (LLM activations have them, and so, once smoothed into the weights,
do the weights' K rows) inflate every output channel's scale under ``oc``, and every block that
holds one under ``oc32``; under ``ic32`` each outlier input channel has scales of its own, and the
other channels keep theirs (AdaDim, Kim et al. 2024). Every grouping is a DequantizeLinear
``(axis, block_size)``: ``oc`` is (N, none), ``ocB`` is (K, B), ``icB`` is (N, B).

    int4: s = max(hi / 7, -lo / 8)  per group (hi = max(w, 0), lo = min(w, 0)),  q = clip(round(w / s), -8, 7)
    int8: s = max|w| / 127,                                                      q = clip(round(w / s), -127, 127)

int4 uses all 16 levels without ever clipping: the larger side of a group reaches -8 or 7 exactly,
the other stays inside; the zero point is 0, so ONNX's symmetric DequantizeLinear (no zero point)
and MatMulNBits's default zero point (8 on the unsigned nibble) both represent it. int8 keeps the
[-127, 127] range the rest of refold (and TensorRT) uses. The last block along an axis that the
group does not divide is short (ONNX ``block_size`` semantics: ceil(dim / block) scales).

>>> w = np.array([[1.0, -2.0, 0.5, 40.0]], np.float32)       # [N=1, K=4], one outlier input channel
>>> g = quantize_grouped(w, axis=1, block=2, bits=4)          # oc2: blocks of 2 along K
>>> g.scale.shape, g.q.tolist()
((1, 2), [[4, -8, 0, 7]])
>>> w = np.array([[1.0, -2.0], [-1.0, 0.5], [40.0, -30.0]], np.float32)   # [K=3, N=2], row 2 an outlier
>>> group_axis("ic32", Layout(weight=1, ic=0, oc=1, act=0))              # blocks of 32 along N
(1, 32)
>>> quantize_grouped(w, axis=1, block=32, bits=4).q.tolist()             # each row its own scale
[[4, -8], [-8, 4], [7, -5]]
"""
from __future__ import annotations

import dataclasses

import numpy as np

from refold.ir.graph import Node

TINY = float(np.finfo(np.float32).tiny)
# group option -> (the channel owning the scales, block size along the other channel; None: one
# scale per channel)
GROUPS: dict[str, tuple[str, int | None]] = {
    "oc": ("oc", None), "oc32": ("oc", 32), "oc64": ("oc", 64), "oc128": ("oc", 128),
    "ic32": ("ic", 32), "ic64": ("ic", 64), "ic128": ("ic", 128)}


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a node keeps its weight's channels: ``weight`` the input index of the weight, ``ic``
    its input-channel axis (None: only per output channel, as for convolutions), ``oc`` its
    output-channel axis, ``act`` the input index of the activation, and how that activation's
    rows line up with the input channels: ``rows`` 'last' (x[..., K]), 'first' (gemm transA:
    x[K, M]) or 'second-last' (a constant on the left: W @ x, x[..., K, M])."""

    weight: int
    ic: int | None
    oc: int
    act: int
    rows: str = "last"


def weight_index(node: Node) -> int | None:
    """Which input of a conv / linear / gemm / matmul is a constant weight (None: none is)."""
    if node.op in ("conv", "conv_transpose", "linear", "gemm"):
        w = node.inputs[1]
        return 1 if w is not None and w.const is not None else None
    if node.op == "matmul":
        return next((i for i in (1, 0) if node.inputs[i].const is not None), None)
    return None


def weight_layout(node: Node, widx: int, profile: str) -> Layout | str:
    """The layout of ``node``'s constant weight (input ``widx``), or why it has none."""
    w = node.inputs[widx]
    rank = len(w.shape) if w.shape is not None else None
    if rank is None:
        return "weight rank unknown"
    if node.op == "conv":  # [Cout, Cin/g, k...]: one ONNX block axis cannot cut Cin x kernel
        return Layout(widx, None, 0, 0)  # into groups: per output channel only
    if node.op == "conv_transpose":  # [Cin, Cout/g, k...]: ORT quantizes axis 1, TensorRT axis 0
        return Layout(widx, None, 0 if profile == "tensorrt" else 1, 0)
    if node.op == "linear":  # [N, K]
        return Layout(widx, 1, 0, 0)
    if node.op == "gemm":
        t = node.attrs.get("transB", 0)
        return Layout(widx, 1 if t else 0, 0 if t else 1, 0, "first" if node.attrs.get("transA", 0) else "last")
    if node.op == "matmul":
        if rank < 2:
            return "a 1-D matmul weight has no output channels"
        if widx == 1:  # x @ W, W [..., K, N]
            return Layout(1, rank - 2, rank - 1, 0)
        return Layout(0, rank - 1, rank - 2, 1, "second-last")  # W @ x, W [..., M, K]
    return f"core.{node.op} has no weight layout"


@dataclasses.dataclass
class Grouped:
    """One quantized weight: integer values ``q`` (int8, int4 held in int8), ``scale`` shaped as
    DequantizeLinear takes it (per axis: a vector on ``axis``; blocked: the weight's shape with
    ceil(dim / block) on ``axis``), and the float weight it stands for, dequantized."""

    q: np.ndarray
    scale: np.ndarray
    axis: int
    block: int | None
    bits: int

    def dequantized(self) -> np.ndarray:
        return self.q.astype(np.float32) * spread(self.scale, self.q.shape, self.axis, self.block)


def spread(scale: np.ndarray, shape: tuple, axis: int, block: int | None) -> np.ndarray:
    """``scale`` broadcast to a weight of ``shape``: per axis, or each entry over its block."""
    if block is None:
        return scale.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return np.repeat(scale, block, axis=axis).take(np.arange(shape[axis]), axis=axis)


def group_axis(group: str, layout: Layout) -> tuple[int, int | None]:
    """The DequantizeLinear ``(axis, block_size)`` of ``group`` on a weight of ``layout``: one
    scale per output channel on the N axis; blocks of input channels (``ocB``) along K; blocks of
    output channels (``icB``) along N, one run of blocks per input channel."""
    owner, block = GROUPS[group]
    if block is None:
        return layout.oc, None
    if layout.ic is None:
        raise ValueError(f"group {group} needs a weight with an input-channel axis")
    return (layout.ic if owner == "oc" else layout.oc), block


def nbits_expressible(group: str) -> bool:
    """MatMulNBits (and the usual int4 GEMM kernels) take one scale per output channel, or blocks
    along K; blocks along N (``icB``) are DequantizeLinear only."""
    return GROUPS[group][0] == "oc"


def scale_count(group: str, shape: tuple, layout: Layout) -> int:
    """How many scales ``group`` gives a weight of ``shape``."""
    axis, block = group_axis(group, layout)
    if block is None:
        return int(shape[axis])
    return int(np.prod([-(-d // block) if i == axis else d for i, d in enumerate(shape)]))


def quantize_grouped(w: np.ndarray, axis: int, block: int | None, bits: int) -> Grouped:
    """Symmetric round-to-nearest of ``w`` as DequantizeLinear groups it: ``block`` None, one
    scale per index of ``axis`` (per channel); else one scale per block of ``block`` entries along
    ``axis``, for every index of the other axes."""
    w = np.asarray(w, np.float32)
    if block is None:
        moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        hi, lo = moved.max(axis=1, initial=0.0), moved.min(axis=1, initial=0.0)
    else:
        d = w.shape[axis]
        nb = -(-d // block)
        pad = [(0, nb * block - d) if i == axis else (0, 0) for i in range(w.ndim)]
        blocks = np.pad(w, pad).reshape(w.shape[:axis] + (nb, block) + w.shape[axis + 1:])
        hi, lo = blocks.max(axis=axis + 1, initial=0.0), blocks.min(axis=axis + 1, initial=0.0)
    if bits == 4:
        scale, qmin, qmax = np.maximum(hi / 7.0, -lo / 8.0), -8, 7
    else:
        scale, qmin, qmax = np.maximum(hi, -lo) / 127.0, -127, 127
    scale = np.maximum(scale, TINY).astype(np.float32)
    q = np.clip(np.round(w / spread(scale, w.shape, axis, block)), qmin, qmax).astype(np.int8)
    return Grouped(q, scale, axis, block, bits)


def as_k_by_n(w: np.ndarray, layout: Layout) -> np.ndarray:
    """A 2-D weight as the [K, N] matrix the activation rows multiply."""
    return w if layout.ic == 0 else w.T


def activation_rows(x: np.ndarray, layout: Layout, k: int) -> np.ndarray:
    """The activation as rows of K input channels, whatever the op's layout."""
    x = np.asarray(x, np.float32)
    if layout.rows == "first":
        x = x.T
    elif layout.rows == "second-last":
        x = np.swapaxes(x, -1, -2)
    return x.reshape(-1, k)


def output_error(rows: np.ndarray, w_kn: np.ndarray, deq_kn: np.ndarray) -> float:
    """||X W - X Q(W)||^2 / ||X W||^2 over the sampled rows."""
    ref = rows.astype(np.float64) @ w_kn.astype(np.float64)
    err = rows.astype(np.float64) @ (w_kn.astype(np.float64) - deq_kn)
    return float((err ** 2).sum() / max((ref ** 2).sum(), TINY))


def weight_error(w: np.ndarray, deq: np.ndarray) -> float:
    """||W - Q(W)||^2 / ||W||^2, every weight counted alike (no data)."""
    w = np.asarray(w, np.float64)
    return float(((w - deq) ** 2).sum() / max((w ** 2).sum(), TINY))


class RowSample:
    """A uniform sample of at most ``cap`` activation rows over every batch seen (reservoir
    sampling, seeded): memory stays flat however much data streams through.

    >>> s = RowSample(cap=4)
    >>> for i in range(3): s.add(np.full((3, 2), i, np.float32))
    >>> s.rows().shape, s.seen
    ((4, 2), 9)
    """

    def __init__(self, cap: int, seed: int = 0):
        self.cap = cap
        self.seen = 0
        self._rows: np.ndarray | None = None
        self._kept = 0
        self._rng = np.random.default_rng(seed)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float32)
        if self._rows is None:
            self._rows = np.empty((self.cap, rows.shape[1]), np.float32)
        take = min(self.cap - self._kept, len(rows))  # fill first
        self._rows[self._kept:self._kept + take] = rows[:take]
        self._kept += take
        rest = rows[take:]
        if len(rest):  # row t (0-based, over all rows) replaces a random slot with probability cap / (t + 1)
            t = self.seen + take + np.arange(len(rest))
            slot = (self._rng.random(len(rest)) * (t + 1)).astype(np.int64)
            hit = slot < self.cap
            self._rows[slot[hit]] = rest[hit]
        self.seen += len(rows)

    def rows(self) -> np.ndarray:
        return np.zeros((0, 0), np.float32) if self._rows is None else self._rows[:self._kept]


def pack_matmul_nbits(g: Grouped, layout: Layout) -> tuple[np.ndarray, np.ndarray, int]:
    """(B, scales, block_size) for com.microsoft.MatMulNBits from a quantized 2-D weight: B
    [N, k_blocks, block * bits / 8] uint8, the unsigned values q + 2^(bits-1) packed along K,
    lowest bits first (K padded to whole blocks with the zero point); scales [N * k_blocks]. One
    scale per output channel is one block spanning K (the power of two at least K, 16 or more);
    blocks along N (``icB``) have no MatMulNBits form."""
    if g.block is not None and g.axis != layout.ic:
        raise ValueError(f"MatMulNBits blocks run along K (axis {layout.ic}), not axis {g.axis}")
    q_kn = as_k_by_n(g.q, layout).astype(np.int16)
    k, n = q_kn.shape
    if g.block is None:
        block, s_kn = max(16, 1 << (k - 1).bit_length()), g.scale.reshape(1, n)
    else:
        block, s_kn = g.block, as_k_by_n(g.scale, layout)
    kb = s_kn.shape[0]
    u = np.full((kb * block, n), 1 << (g.bits - 1), np.uint16)
    u[:k] = q_kn + (1 << (g.bits - 1))
    per = 8 // g.bits
    u = u.T.reshape(n, kb, block // per, per)
    packed = np.zeros(u.shape[:-1], np.uint16)
    for i in range(per):
        packed |= u[..., i] << (i * g.bits)
    return packed.astype(np.uint8), np.ascontiguousarray(s_kn.T).reshape(-1), block
