"""Passes over refold IR, and the registry the CLI and ``refold.optimize`` use by name."""
from __future__ import annotations

from typing import Callable

from refold.errors import UsageError
from refold.passes.base import Pass, PassManager, PassRecord, PassResult, Report
from refold.passes.cse import CommonSubexpressionElimination
from refold.passes.dce import DeadCodeElimination
from refold.passes.fold_constants import FoldConstants
from refold.passes.fuse_conv_bn import FuseConvBN
from refold.passes.raise_core import RaiseToCore
from refold.passes.shape_inference import InferShapes

PASSES: dict[str, Callable[[], Pass]] = {
    p.name: p for p in (DeadCodeElimination, CommonSubexpressionElimination, FoldConstants,
                        InferShapes, RaiseToCore, FuseConvBN)
}


def get_pass(spec: str | Pass) -> Pass:
    """A pass instance from a registered name (``"dce"``) or an instance."""
    if isinstance(spec, Pass):
        return spec
    try:
        return PASSES[spec]()
    except KeyError:
        raise UsageError(f"unknown pass '{spec}'; `refold passes` lists them: "
                         f"{', '.join(sorted(PASSES))}") from None


__all__ = ["Pass", "PassManager", "PassRecord", "PassResult", "Report", "PASSES", "get_pass",
           "CommonSubexpressionElimination", "DeadCodeElimination", "FoldConstants", "FuseConvBN", "InferShapes",
           "RaiseToCore"]
