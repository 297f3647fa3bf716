"""The reference runner: core ops' reference implementations, onnx's reference evaluator for ONNX
ops, ATen ops through torch. Slow and exact: for the ops ONNX Runtime and the torch runner lack,
and for constant folding, which evaluates one node at a time.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx

from refold.ir.graph import CORE, Model, Node, Value
from refold.runtime.base import Runner
from refold.runtime.interpreter import interpret


def node_model(node: Node, opsets: dict[str, int], inputs: list | None = None) -> onnx.ModelProto:
    """A one-node ModelProto: constant inputs as initializers, others (``inputs``) as graph inputs."""
    from refold.frontends.onnx.exporter import _Exporter, inline_tensor
    from refold.ir.graph import Graph as _G

    inits, graph_inputs = [], []
    for i, v in enumerate(node.inputs):
        if v is None:
            continue
        if inputs is None:
            inits.append(inline_tensor(v.name, v.const))
        else:
            arr = np.asarray(inputs[i])
            graph_inputs.append(onnx.helper.make_tensor_value_info(
                v.name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape))
    n = onnx.helper.make_node(node.op, ["" if v is None else v.name for v in node.inputs],
                              [v.name if v.kind != "omitted" else "" for v in node.outputs],
                              domain=node.domain or None)
    exp = _Exporter(Model(_G()), lambda name, t: inline_tensor(name, t))
    for k, val in node.attrs.items():
        n.attribute.append(exp.attribute(k, val, node.attr_types.get(k), "", None))
    outs = [onnx.ValueInfoProto(name=v.name) for v in node.outputs if v.kind != "omitted"]
    g = onnx.helper.make_graph([n], "node", graph_inputs, outs, initializer=inits)
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                    for d, v in opsets.items()])


def inferred_output_bytes(mini: onnx.ModelProto) -> int | None:
    """Bytes of a one-node model's outputs by onnx shape inference, or None when unknown."""
    try:
        inf = onnx.shape_inference.infer_shapes(mini, data_prop=True)
    except Exception:
        return None
    total = 0
    for o in inf.graph.output:
        tt = o.type.tensor_type
        if not tt.elem_type or not tt.HasField("shape"):
            return None
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if any(d is None or d < 0 for d in dims):
            return None
        total += math.prod(dims) * max(1, onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize)
    return total


def evaluate_onnx_node(mini: onnx.ModelProto, feeds: dict[str, Any] | None = None) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return [np.asarray(o) for o in ReferenceEvaluator(mini).run(None, feeds or {})]


class ReferenceRunner(Runner):
    """Exact, op by op. Outputs are numpy arrays.

    Graphs with control flow (If / Loop / Scan bodies reading outer values) run whole in onnx's
    reference evaluator; the rest run node by node in refold's interpreter.
    """

    engine = "reference"

    def __init__(self, model: Model):
        super().__init__(model)
        self._evaluators: dict[int, Any] = {}
        self._whole = None
        self._consts: dict[int, Any] = {}
        if model.source != "onnx":
            return
        from refold.frontends.onnx.exporter import to_onnx

        if any(n.subgraphs() for n in model.graph):
            from onnx.reference import ReferenceEvaluator

            self._proto = to_onnx(model)
            self._whole = ReferenceEvaluator
            return
        # ONNX ops with an exact core equivalent run the core reference (onnx's evaluator has its
        # own bugs: BatchNormalization before opset 14 uses batch statistics, for one). Raising
        # 1:1 keeps every value's name, so everything stays capturable. On a private copy.
        from refold.frontends.onnx.importer import load_onnx
        from refold.frontends.onnx.raise_core import raise_nodes

        self.model = load_onnx(to_onnx(model))
        self.model.base_dir = model.base_dir
        raise_nodes(self.model.graph, self.model.opset_imports, {})

    def _const(self, v: Value):
        a = self._consts.get(id(v))
        if a is None:
            a = self._consts[id(v)] = v.const.numpy()
        return a

    def _run(self, feeds: dict[str, Any], capture: list[str]) -> dict[str, Any]:
        feeds = {k: _np(x) for k, x in feeds.items()}
        if self._whole is not None:
            from refold.runtime.ort import with_outputs

            proto = with_outputs(self._proto, capture) if capture else self._proto
            names = [o.name for o in proto.graph.output]
            return dict(zip(names, self._whole(proto).run(names, feeds)))
        return interpret(self.model.graph, feeds, self._evaluate, self._const, capture)

    def _evaluate(self, node: Node, ins: list) -> list:
        if node.domain == CORE or node.dialect not in ("onnx",):
            import torch

            from refold.runtime.torch_runner import evaluate_torch, to_numpy, to_torch

            with torch.no_grad():
                outs = evaluate_torch(node, [to_torch(x) for x in ins], self.model.opset_imports)
            return [to_numpy(o) for o in outs]
        from onnx.reference import ReferenceEvaluator

        ev = self._evaluators.get(id(node))
        if ev is None:
            ev = self._evaluators[id(node)] = ReferenceEvaluator(
                node_model(node, self.model.opset_imports, ins))
        feeds = {v.name: np.asarray(x) for v, x in zip(node.inputs, ins) if v is not None}
        outs = ev.run(None, feeds)
        it = iter(outs)
        return [None if o.kind == "omitted" else np.asarray(next(it)) for o in node.outputs]


def _np(x: Any) -> Any:
    if hasattr(x, "detach"):
        from refold.runtime.torch_runner import to_numpy

        return to_numpy(x)
    return np.asarray(x)


