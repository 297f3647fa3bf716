"""Passes over refold IR, and the registry the CLI and ``refold.optimize`` use by name."""
from __future__ import annotations

from typing import Callable

from refold.errors import UsageError
from refold.passes.base import Option, Pass, PassManager, PassRecord, PassResult, Report
from refold.passes.cse import CommonSubexpressionElimination
from refold.passes.dce import DeadCodeElimination
from refold.passes.fold_constants import FoldConstants
from refold.passes.fuse_conv_bn import FuseConvBN
from refold.passes.layernorm_to_rmsnorm import LayerNormToRMSNorm
from refold.passes.prune import Prune
from refold.passes.quantize.qdq import Quantize
from refold.passes.raise_core import RaiseToCore
from refold.passes.shape_inference import InferShapes

PASSES: dict[str, Callable[[], Pass]] = {
    p.name: p for p in (DeadCodeElimination, CommonSubexpressionElimination, FoldConstants,
                        InferShapes, RaiseToCore, FuseConvBN, LayerNormToRMSNorm, Quantize, Prune)
}


def get_pass(spec: str | Pass) -> Pass:
    """A pass from a registered name with options (``NAME:key=value,key=value``), or an instance.

    Options are checked against what the pass declares: an unknown key, a value of the wrong type
    or outside the allowed ones, or contradictory options are a UsageError.

    >>> get_pass("fuse-conv-bn:mode=deploy,affine=true").affine
    True
    """
    if isinstance(spec, Pass):
        return spec
    name, _, opts = spec.partition(":")
    if name not in PASSES:
        raise UsageError(f"unknown pass '{name}'; `refold passes` lists them: {', '.join(sorted(PASSES))}")
    cls = PASSES[name]
    declared = {o.name: o for o in cls.options}
    kwargs = {}
    for item in opts.split(",") if opts else []:
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise UsageError(f"pass option '{item}' in '{spec}' is not KEY=VALUE (separate options with ',')")
        if key not in declared:
            raise UsageError(f"{name}: unknown option '{key}'; options: {', '.join(declared) or 'none'} "
                             f"(`refold passes {name}`)")
        if key in kwargs:
            raise UsageError(f"{name}: option '{key}' given twice")
        kwargs[key] = declared[key].parse(value, f"{name}: ")
    return cls(**kwargs)


def describe(name: str) -> str:
    """What ``refold passes NAME`` prints: the description and every option."""
    if name not in PASSES:
        raise UsageError(f"unknown pass '{name}'; `refold passes` lists them: {', '.join(sorted(PASSES))}")
    cls = PASSES[name]
    lines = [f"{name}: {cls.description}"]
    if cls.requires:
        lines.append(f"requires: {', '.join(sorted(cls.requires))} (run first by the pass manager)")
    lines.append("options:" if cls.options else "options: none")
    lines += [f"  {o.describe()}" for o in cls.options]
    return "\n".join(lines)


__all__ = ["Pass", "PassManager", "PassRecord", "PassResult", "Report", "PASSES", "get_pass", "describe", "Option",
           "CommonSubexpressionElimination", "DeadCodeElimination", "FoldConstants", "FuseConvBN", "InferShapes", "LayerNormToRMSNorm",
           "RaiseToCore", "Quantize", "Prune"]
