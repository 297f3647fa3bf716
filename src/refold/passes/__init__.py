"""Passes over refold IR, and the registry the CLI and ``refold.optimize`` use by name."""
from __future__ import annotations

from typing import Callable

from refold.errors import UsageError
from refold.passes.base import Pass, PassManager, PassRecord, PassResult, Report
from refold.passes.cse import CommonSubexpressionElimination
from refold.passes.dce import DeadCodeElimination
from refold.passes.fold_constants import FoldConstants
from refold.passes.fuse_conv_bn import FuseConvBN
from refold.passes.layernorm_to_rmsnorm import LayerNormToRMSNorm
from refold.passes.raise_core import RaiseToCore
from refold.passes.shape_inference import InferShapes

PASSES: dict[str, Callable[[], Pass]] = {
    p.name: p for p in (DeadCodeElimination, CommonSubexpressionElimination, FoldConstants,
                        InferShapes, RaiseToCore, FuseConvBN, LayerNormToRMSNorm)
}


def _option(text: str):
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def get_pass(spec: str | Pass) -> Pass:
    """A pass from a registered name with optional options, or an instance.

    >>> get_pass("fuse-conv-bn:mode=deploy,affine=true").affine
    True
    """
    if isinstance(spec, Pass):
        return spec
    name, _, opts = spec.partition(":")
    if name not in PASSES:
        raise UsageError(f"unknown pass '{name}'; `refold passes` lists them: {', '.join(sorted(PASSES))}")
    kwargs = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"pass option '{item}' in '{spec}' is not KEY=VALUE")
        kwargs[key.strip().replace("-", "_")] = _option(value.strip())
    try:
        return PASSES[name](**kwargs)
    except TypeError as e:
        raise UsageError(f"pass '{name}' does not take options {sorted(kwargs)} ({e})") from None


__all__ = ["Pass", "PassManager", "PassRecord", "PassResult", "Report", "PASSES", "get_pass",
           "CommonSubexpressionElimination", "DeadCodeElimination", "FoldConstants", "FuseConvBN", "InferShapes", "LayerNormToRMSNorm",
           "RaiseToCore"]
