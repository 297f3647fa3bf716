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


register_raiser("onnx", _raise_onnx)
register_raiser("torch", _raise_torch)
