"""Creating the Q/DQ nodes and quantized constants of the quantize pass, with fresh names and
provenance."""
from __future__ import annotations

import numpy as np

from refold.ir.graph import CORE, Graph, Node, Value
from refold.ir.tensor import Tensor


class Inserter:
    """Creates the Q/DQ nodes and quantized constants, with fresh names and provenance."""

    def __init__(self, graph: Graph):
        self.graph = graph

    def _const(self, arr: np.ndarray, prefix: str) -> Value:
        return self.graph.add_const(Tensor.from_array(np.asarray(arr)), prefix=prefix)

    def _node(self, op: str, inputs: list, anchor: Node | None, axis: int | None, source: str) -> Value:
        attrs = {"axis": axis} if axis is not None else {}
        node = Node(op, inputs, attrs, domain=CORE, name=self.graph.unique_name(f"{source}_{op}"),
                    outputs=[self.graph.unique_name(f"{source}_{'q' if op.startswith('q') else 'dq'}")])
        node.meta["provenance"] = {"rule": "quantize", "sources": [source]}
        if anchor is None:
            self._first(node)
        else:
            self.graph.insert_after(anchor, node)
        return node.outputs[0]

    def _first(self, node: Node) -> None:
        first = next(iter(self.graph), None)
        if first is None:
            self.graph.append(node)
        else:
            self.graph.insert_before(first, node)

    def params(self, scale: np.ndarray, zp: np.ndarray, name: str) -> tuple[Value, Value]:
        """The scale and zero-point constants of one activation group."""
        return self._const(scale, f"{name}_scale"), self._const(zp, f"{name}_zero_point")

    def qdq(self, v: Value, s: Value, z: Value) -> Value:
        """x -> Q -> DQ right after x's producer (or at the top for a graph input)."""
        q = self._node("quantize_linear", [v, s, z], v.producer, None, v.name)
        dq = self._node("dequantize_linear", [q, s, z], q.producer, None, v.name)
        q.dtype, q.shape = _dtype_of(z.const.numpy()), v.shape
        dq.dtype, dq.shape = v.dtype, v.shape
        return dq

    def dequantized_const(self, w: Value, q: np.ndarray, scale: np.ndarray, zp: np.ndarray,
                          axis: int | None, prefix: str = "weight") -> Value:
        """DQ(W_q, s, z) placed at the top of the graph: the int8 weight the file stores."""
        wq = self._const(q, f"{w.name}_quantized")
        s, z = self._const(scale, f"{w.name}_scale"), self._const(zp, f"{w.name}_zero_point")
        wq.meta["provenance"] = {"rule": "quantize", "sources": [w.name]}
        dq = self._node("dequantize_linear", [wq, s, z], None, axis if np.ndim(scale) else None, w.name)
        dq.dtype, dq.shape = w.dtype, w.shape
        return dq

    def tag(self, n: Node, key: str) -> None:
        n.meta.setdefault("provenance", {"rule": "quantize", "sources": [key]})


def numpy_of(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def _dtype_of(arr: np.ndarray):
    from refold.ir.dtypes import DType

    return DType.from_numpy(np.asarray(arr).dtype)
