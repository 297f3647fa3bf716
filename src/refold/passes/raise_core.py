"""The raise-to-core pass: dialect ops and decomposed patterns become core ops."""
from __future__ import annotations

from refold.ir.graph import Model
from refold.passes.base import Pass, PassResult
from refold.passes.shape_inference import infer_shapes


class RaiseToCore(Pass):
    name = "raise-to-core"
    description = "map ONNX ops and decomposed patterns (LayerNorm, GELU, SiLU, HardSwish) to core ops"

    def call(self, model: Model) -> PassResult:
        if model.source == "onnx":
            from refold.frontends.onnx_raise import raise_to_core

            try:
                infer_shapes(model)  # patterns check ranks and axes
            except Exception:
                pass
            n, stats, skipped = raise_to_core(model)
        else:
            from refold.frontends.torch_raise import raise_to_core  # torch frontend

            n, stats, skipped = raise_to_core(model)
        skipped = dict(skipped)
        for rule, nodes in stats.skipped.items():
            for node, why in nodes.items():
                skipped[node] = f"{rule}: {why}"
        return PassResult(model, bool(n or stats.total),
                          {"raised": n, "patterns": stats.total, "rewrites": n + stats.total,
                           "by_rule": dict(stats.applied), "not_raised": skipped})
