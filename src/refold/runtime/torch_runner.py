"""The torch runner: any refold graph as a torch program, with autograd.

Core ops run their reference implementations (torch code), ATen ops call ``torch.ops.aten``, and
ONNX ops run through ``onnx_torch.ONNX_TORCH``, so a pass can differentiate through a model that
came from an ONNX file as easily as through one from torch.export.

>>> runner = TorchRunner(model, trainable=True)                        # doctest: +SKIP
>>> x = torch.randn(1, 3, 32, 32, requires_grad=True)                   # doctest: +SKIP
>>> loss = runner.run({"input": x})["logits"].square().sum()            # doctest: +SKIP
>>> loss.backward(); x.grad, runner.parameters()["conv1.weight"].grad   # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from refold.errors import UnsupportedError
from refold.ir.graph import CORE, Model, Node, Value
from refold.runtime.base import Runner
from refold.runtime.interpreter import interpret

ONNX_DIALECTS = ("onnx", "com.microsoft")  # ONNX ops and ONNX Runtime's contrib ops (MatMulNBits)


def onnx_torch_key(node: Node) -> str:
    """``node``'s key in ONNX_TORCH: the op for ONNX, ``domain.op`` for contrib ops (whose names
    may mean something else in ONNX)."""
    return node.op if node.dialect == "onnx" else f"{node.domain}.{node.op}"


def to_torch(x: Any) -> Any:
    if x is None or isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray) or np.isscalar(x):
        arr = np.asarray(x)
        if arr.dtype == object:
            return arr
        arr = np.ascontiguousarray(arr)
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    return x


def to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(t) for t in x)
    return x


class TorchRunner(Runner):
    """Runs the IR in torch. Outputs are torch tensors that keep their autograd history.

    ``trainable``: constants become leaf tensors with ``requires_grad`` (floating ones), reachable
    through ``parameters()`` by value name; True marks all float constants, a list marks those names.
    ``dtype``: run every floating constant and feed in this dtype (``torch.float64`` for gradcheck).
    """

    engine = "torch"

    def __init__(self, model: Model, *, trainable: bool | list[str] = False, device: str = "cpu",
                 dtype: torch.dtype | None = None):
        super().__init__(model)
        self.device = torch.device(device)
        self.dtype = dtype
        self._consts: dict[int, torch.Tensor] = {}
        self._params: dict[str, torch.Tensor] = {}
        names = None if trainable is True else set(trainable or ())
        for v in model.graph.initializers.values():
            if v.const is None or not (trainable is True or v.name in (names or ())):
                continue
            t = self._cast(v.const.torch().detach().to(self.device))
            if t.is_floating_point():
                t = t.clone().requires_grad_(True)
                self._params[v.name] = t
                self._consts[id(v)] = t
        missing = sorted((names or set()) - set(self._params))
        if missing:
            raise UnsupportedError(f"cannot mark {missing} trainable: not float constants of the graph")
        self._check_ops()

    def parameters(self) -> dict[str, torch.Tensor]:
        """The trainable leaf tensors, by value name."""
        return dict(self._params)

    def _check_ops(self) -> None:
        from refold.runtime.onnx_torch import ONNX_TORCH

        lacking = sorted({n.qualified_op for n in self.model.graph
                          if n.dialect in ONNX_DIALECTS and onnx_torch_key(n) not in ONNX_TORCH})
        if lacking:
            raise UnsupportedError(f"the torch runner has no implementation of {lacking}; "
                                   f"use the reference or ORT runner for this graph")

    def _cast(self, t):
        if self.dtype is not None and isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.to(self.dtype)
        return t

    def _const(self, v: Value) -> torch.Tensor:
        t = self._consts.get(id(v))
        if t is None:
            t = self._cast(v.const.torch().to(self.device))
            self._consts[id(v)] = t
        return t

    def _run(self, feeds: dict[str, Any], capture: list[str]) -> dict[str, Any]:
        feeds = {k: self._cast(t.to(self.device)) if isinstance(t, torch.Tensor) else t
                 for k, t in ((k, to_torch(x)) for k, x in feeds.items())}
        return interpret(self.model.graph, feeds, self._evaluate, self._const, capture)

    def _evaluate(self, node: Node, ins: list) -> list:
        return evaluate_torch(node, ins, self.model.opset_imports)


def evaluate_torch(node: Node, ins: list, opsets: dict[str, int]) -> list:
    """One node in torch: core reference, ATen op, or ONNX op."""
    if node.domain == CORE:
        from refold.ir.ops import evaluate

        return list(evaluate(node.op, ins, node.attrs, len(node.outputs)))
    if node.dialect in ONNX_DIALECTS:
        from refold.runtime.onnx_torch import ONNX_TORCH

        fn = ONNX_TORCH.get(onnx_torch_key(node))
        if fn is None:
            raise UnsupportedError(f"{node.label()}: the torch runner has no implementation of "
                                   f"{node.qualified_op}")
        attrs = node.attrs
        if node.op == "Split" and not attrs.get("num_outputs"):
            attrs = {**attrs, "num_outputs": len(node.outputs)}
        if node.subgraphs():
            raise UnsupportedError(f"{node.label()}: control flow ({node.op}) does not run in the "
                                   f"torch runner; use the reference or ORT runner")
        opset = opsets.get(node.domain, opsets.get("", opsets.get("ai.onnx", 1)))
        return list(fn(ins, attrs, opset))
    from refold.frontends.torch.exporter import _rebuild, _target

    out = _target(node)(*_rebuild(node.attrs["args"], ins), **_rebuild(node.attrs["kwargs"], ins))
    if node.meta.get("torch.returns_sequence") or len(node.outputs) > 1:
        return list(out)
    return [out]


def example_shapes(model: Model, names: list[str] | None = None, *, strict: bool = False) -> dict[str, tuple]:
    """Shapes of ``names`` (default: every node output) on one torch run of the example inputs
    (a torch model's own, else probe inputs); {} when the model cannot run (``strict``: the
    error). What a symbolic dim is where an analysis needs numbers."""
    from refold.runtime.probe import probe_dims, probe_inputs

    feeds = model.meta.get("torch.example_inputs")
    if feeds is None:
        feeds = probe_inputs(model, dims=probe_dims(model))
    if names is None:
        names = [o.name for n in model.graph for o in n.outputs]
    try:
        with torch.no_grad():
            got = TorchRunner(model).run(feeds, capture=names)
    except Exception:
        if strict:
            raise
        return {}
    shapes = {k: tuple(t.shape) for k, t in got.items() if hasattr(t, "shape")}
    if isinstance(feeds, dict):  # the inputs' own sizes, where a block reads an input
        shapes.update({k: tuple(t.shape) for k, t in feeds.items() if hasattr(t, "shape") and k not in shapes})
    else:
        ins = [v for v in model.graph.inputs if v.const is None]
        shapes.update({v.name: tuple(t.shape) for v, t in zip(ins, feeds) if hasattr(t, "shape") and v.name not in shapes})
    return shapes
