"""refold: compiler-style graph rewriting for neural networks.

One IR for ONNX files and PyTorch programs, passes written once against it, each checked
numerically against the graph before it.

>>> import refold
>>> proto, report = refold.optimize(refold.example_path())
>>> print(report.format())  # doctest: +SKIP
"""
from __future__ import annotations

import refold.inspect as _inspect
from refold.api import compile, example_path, load, load_compiled, optimize, save, save_compiled  # noqa: A004
from refold.errors import RefoldError
from refold.ir.dtypes import DType
from refold.ir.graph import Graph, Model, Node, Value

_inspect.loader = load  # refold.inspect(path_or_module) loads through refold.load

__version__ = "0.1.0"
__all__ = ["load", "save", "optimize", "compile", "save_compiled", "load_compiled", "example_path", "RefoldError", "DType", "Graph", "Model",
           "Node", "Value", "__version__"]
