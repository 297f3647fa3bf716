"""Frontends turn ONNX files and torch programs into refold IR, and IR back into them.

``frontends/onnx/`` and ``frontends/torch/`` each hold import, export, raising to core ops and
lowering from them for their world. Importing this package registers both raisers with
``refold.ir.dialects``; neither pulls in torch until a torch model is raised.
"""
from __future__ import annotations

from refold.ir.dialects import RaiseResult, register_raiser


def _raise_onnx(model) -> RaiseResult:
    from refold.frontends.onnx.raise_core import raise_to_core

    return raise_to_core(model)


def _raise_torch(model) -> RaiseResult:
    from refold.frontends.torch.raise_core import raise_to_core

    return raise_to_core(model)


def written_node_count(model) -> int:
    """The node count of ``model`` as it is given back: ONNX nodes of the file it exports to
    (Constant nodes included), or the call nodes of the GraphModule for a torch model."""
    if model.source == "torch":
        from refold.frontends.torch.exporter import exported_node_count
    else:
        from refold.frontends.onnx.exporter import exported_node_count
    return exported_node_count(model)


register_raiser("onnx", _raise_onnx)
register_raiser("torch", _raise_torch)
