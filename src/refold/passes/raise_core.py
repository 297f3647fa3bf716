"""The raise-to-core step: dialect ops and decomposed patterns become core ops.

The frontend that imported the model does the raising (``refold.ir.dialects``); this pass types
values first (ONNX patterns check ranks and axes) and reports what stayed, with a reason each.
The PassManager runs it before any pass that ``requires`` core ops.
"""
from __future__ import annotations

from refold.ir.dialects import raiser_for
from refold.ir.graph import Model
from refold.passes.base import RAISED, Pass, PassResult, Reason


class RaiseToCore(Pass):
    name = "raise-to-core"
    description = "map ONNX / ATen ops and decomposed patterns (LayerNorm, GELU, SiLU, HardSwish) to core ops"
    ensures = frozenset({RAISED})

    def call(self, model: Model) -> PassResult:
        if model.source == "onnx":
            from refold.runtime.shapes import infer_shapes

            try:
                infer_shapes(model)  # patterns check ranks and axes
            except Exception:  # untyped values only make fewer patterns match
                pass
        result = raiser_for(model)(model)
        not_raised = {node: Reason(why, "not-raised") for node, why in result.not_raised.items()}
        for rule, nodes in result.patterns.skipped.items():
            for node, why in nodes.items():
                not_raised.setdefault(node, Reason(f"{rule}: {why}", "pattern-rejected"))
        model.meta["refold.not_raised"] = dict(not_raised)
        return PassResult(model, bool(result.changed),
                          {"raised": result.raised, "patterns": result.patterns.total,
                           "rewrites": result.changed, "by_rule": dict(result.patterns.applied),
                           "not_raised": not_raised})
