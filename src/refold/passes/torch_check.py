"""The PassManager's numeric check for torch graphs: run the GraphModule before and after a pass on
the example inputs (or probes made from the input types) with torch."""
from __future__ import annotations

import numpy as np
import torch

from refold.errors import PassFailedError
from refold.ir.graph import Model


def _flat_outputs(out) -> list[np.ndarray]:
    leaves, _ = torch.utils._pytree.tree_flatten(out)
    return [t.detach().float().numpy() if t.dtype.is_floating_point else t.detach().numpy()
            for t in leaves if isinstance(t, torch.Tensor)]


class TorchChecker:
    def __init__(self, model: Model, pm, report):
        from refold.frontends.torch_export import to_graph_module

        self.pm = pm
        args = pm.probe if pm.probe is not None else model.meta.get("torch.example_inputs")
        if args is None:
            from refold.passes.probe import probe_inputs

            args = tuple(torch.from_numpy(a) for a in probe_inputs(model, dims=pm.dims).values())
        self.args = tuple(args)
        self.kwargs = model.meta.get("torch.example_kwargs", {})
        self.ref = self._run(to_graph_module(model))
        report.check_engine = "torch"
        report.check_note = f"example inputs on torch; tolerance atol={pm.atol:g} rtol={pm.rtol:g}"

    def _run(self, gm) -> list[np.ndarray]:
        with torch.no_grad():
            return _flat_outputs(gm(*self.args, **self.kwargs))

    def compare(self, model: Model, pass_name: str) -> tuple[float, float]:
        from refold.frontends.torch_export import to_graph_module
        from refold.passes.probe import max_errors

        got = self._run(to_graph_module(model))
        ref = {str(i): a for i, a in enumerate(self.ref)}
        e_abs, e_rel, where = max_errors(ref, {str(i): a for i, a in enumerate(got)})
        if e_abs > self.pm.atol and e_rel > self.pm.rtol:
            raise PassFailedError(f"pass '{pass_name}' changed output {where} by {e_abs:.3g} "
                                  f"(relative {e_rel:.3g})")
        self.ref = got
        return e_abs, e_rel
