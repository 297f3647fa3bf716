"""Looking at graphs: summaries, node-by-node diffs and a self-contained HTML viewer.

The package is callable: ``refold.inspect(model)`` (or ``refold.inspect(before, after)``) gives a
view that renders in Jupyter and writes the same HTML as ``refold report``.
"""
from __future__ import annotations

import sys
import types
from typing import Any


class _Inspect(types.ModuleType):
    def __call__(self, model: Any, other: Any = None, **kwargs) -> Any:
        from refold.inspect.view import View

        return View(model, other, **kwargs)


sys.modules[__name__].__class__ = _Inspect
