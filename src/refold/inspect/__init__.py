"""Looking at graphs: summaries, node-by-node diffs and a self-contained HTML viewer.

The package is callable: ``refold.inspect(model)`` (or ``refold.inspect(before, after)``) gives a
view that renders in Jupyter and writes the same HTML as ``refold report``.
"""
from __future__ import annotations

import sys
import types
from typing import Any


class _Inspect(types.ModuleType):
    # How to turn a path, ModelProto or nn.Module into a Model: refold's top level hands in
    # ``refold.load`` (inspect itself only reads Models, so it imports nothing above ir/).
    loader = None

    def __call__(self, model: Any, other: Any = None, *, example_inputs: Any = None, **kwargs) -> Any:
        from refold.inspect.snapshot import Snapshot
        from refold.inspect.view import View
        from refold.ir.graph import Graph, Model

        def as_model(x: Any) -> Any:
            if x is None or isinstance(x, (Model, Graph, Snapshot)) or self.loader is None:
                return x
            return self.loader(x, example_inputs)

        return View(as_model(model), as_model(other), **kwargs)


sys.modules[__name__].__class__ = _Inspect
