"""Run a model with a TVM kernel per fused block and torch for everything else.

Blocks come from ``codegen.build_plan``: built (or taken from the on-disk cache) and checked on
probe inputs; a block without a kernel runs node by node in torch, and ``fallbacks`` says why.
Kernels take torch tensors directly (no copy; non-contiguous inputs are made contiguous).

>>> runner = TvmRunner(model)                # doctest: +SKIP
>>> runner.run({"x": x})["logits"]           # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

from refold.ir.graph import Model
from refold.runtime.torch_runner import TorchRunner, example_shapes, to_torch


class TvmRunner(TorchRunner):
    engine = "tvm"

    def __init__(self, model: Model, *, target: str = "llvm", cache: bool = True, sabotage: str | None = None,
                 cache_folder: str | None = None, tune_trials: int = 0, select: str = "kernels"):
        from refold.codegen.plan import build_plan
        from refold.codegen.tvm_block import gpu_present

        super().__init__(model, device="cuda" if target == "cuda" and gpu_present() else "cpu")

        self._final, self._inside = {}, set()
        self.target = target
        self.plan = build_plan(model, target, cache=cache, shapes=example_shapes(model), sabotage=sabotage,
                               cache_folder=cache_folder, tune_trials=tune_trials, select=select)
        self.tune_trials, self.select = tune_trials, select
        for p in self.plan:
            if p.kernel is None:
                continue
            self._final[p.block.nodes[-1]] = p
            self._inside.update(n for n in p.block.computed if n is not p.block.nodes[-1])

    @property
    def fallbacks(self) -> dict[str, str]:
        """Block name -> why it runs op by op in torch."""
        return {p.block.name: p.reason for p in self.plan if p.kernel is None}

    @property
    def kernels(self) -> int:
        return sum(1 for p in self.plan if p.kernel is not None)

    def _run(self, feeds: dict[str, Any], capture: list[str]) -> dict[str, Any]:
        graph = self.model.graph
        env: dict[int, Any] = {}
        for v in graph.inputs:
            if v.const is None:
                t = to_torch(feeds[v.name])
                env[id(v)] = self._cast(t.to(self.device)) if hasattr(t, "to") else t

        def value(v):
            if v is None:
                return None
            if id(v) in env:
                return env[id(v)]
            if v.const is not None:
                return self._const(v)
            raise KeyError(v.name)

        for node in graph:
            planned = self._final.get(node)
            if planned is not None:
                env[id(planned.block.outputs[0])] = planned.kernel(*[value(v) for v in planned.block.inputs])
                continue
            if node in self._inside:
                continue  # computed inside its block's kernel
            results = self._evaluate(node, [value(v) for v in node.inputs])
            for o, r in zip(node.outputs, results):
                env[id(o)] = r
        wanted = {v.name: v for v in graph.outputs}
        for n in graph:
            for o in n.outputs:
                if o.name in capture:
                    wanted[o.name] = o
        missing = [k for k, v in wanted.items() if id(v) not in env and v.const is None]
        if missing:
            raise KeyError(f"{missing[0]} is computed inside a fused kernel; capture needs the torch runner")
        return {k: value(v) for k, v in wanted.items()}
