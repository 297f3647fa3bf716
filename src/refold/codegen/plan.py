"""A model's kernels: its fused blocks built (or taken from the cache), each checked against the
core reference on probe inputs; a block whose build fails or whose output disagrees falls back to
running its ops one by one, with the reason kept.

>>> plan = build_plan(model, target="llvm")          # doctest: +SKIP
>>> [(p.block.name, p.kernel is not None, p.reason) for p in plan]   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses

from refold.codegen.cache import cached_build
from refold.codegen.tvm_block import Kernel, gpu_present
from refold.errors import RefoldError
from refold.ir.graph import Model
from refold.lowering.partition import Block, partition

TOLERANCE = 1e-4


@dataclasses.dataclass
class Planned:
    block: Block
    kernel: Kernel | None
    reason: str = ""  # why the block falls back ("" when it has a kernel)
    cached: bool = False


def build_plan(model: Model, target: str = "llvm", *, cache: bool = True, shapes: dict[str, tuple] | None = None,
               sizes: int = 3, sabotage: str | None = None, cache_folder: str | None = None,
               tune_trials: int = 0) -> list[Planned]:
    """Every fused block of ``model`` with its kernel or the reason it has none. ``shapes``: the
    values' shapes on one run (the probe inputs' sizes for symbolic dims), else ``sizes`` for
    each. ``sabotage`` names a block whose kernel is built wrong on purpose (the fallback's test).
    ``tune_trials``: each kernel tuned (MetaSchedule) at the sizes in ``shapes``."""
    device = "cpu" if target == "llvm" else ("cuda" if gpu_present() else None)  # None: no check here
    plan = []
    for block in partition(model):
        if not block.outputs:
            continue  # dead code: nothing reads it
        try:
            kernel, hit = cached_build(block, target, cache=cache, folder=cache_folder, tune_trials=tune_trials,
                                       shapes=shapes)
        except (RefoldError, Exception) as e:  # a TVM build error is any exception
            plan.append(Planned(block, None, f"build failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            continue
        if sabotage == block.name:
            kernel = _Wrong(kernel)
        why = _verify(block, kernel, sizes, shapes or {}, device) if device else ""
        plan.append(Planned(block, None if why else kernel, why, hit))
    for p in plan:  # what `refold show` / the viewer display: which kernel each node became
        info = {"block": p.block.name, "kind": p.block.kind, "status": "kernel" if p.kernel else "torch",
                "detail": p.kernel.schedule if p.kernel else p.reason}
        for n in p.block.nodes:
            n.meta["kernel"] = info
    return plan


class _Wrong:
    """A kernel that answers wrong (testing the fallback)."""

    def __init__(self, kernel: Kernel):
        self.kernel = kernel

    def __call__(self, *args):
        return self.kernel(*args) + 1.0


def _verify(block: Block, kernel, size: int, shapes: dict[str, tuple], device: str = "cpu") -> str:
    """'' if the kernel equals the core reference on random inputs (on ``device``), else why not."""
    import torch

    gen = torch.Generator().manual_seed(0)
    args = []
    for v in block.inputs:
        if v.const is not None:
            args.append(v.const.torch())
        elif v.dtype is not None and v.dtype.is_float:
            shape = shapes.get(v.name) or [d if isinstance(d, int) and d >= 0 else size for d in v.shape]
            args.append(torch.randn(list(shape), generator=gen).to(v.dtype.torch()))
        elif v.dtype is not None and v.dtype.numpy().kind in "iu":
            # 8-bit (quantized levels): its whole range; wider integers (ids, positions): a byte's
            info = torch.iinfo(v.dtype.torch())
            lo, hi = max(info.min, -128), min(info.max, 255 if info.min == 0 else 127)
            shape = shapes.get(v.name) or [d if isinstance(d, int) and d >= 0 else size for d in v.shape]
            args.append(torch.randint(lo, hi + 1, list(shape), generator=gen, dtype=v.dtype.torch()))
        else:
            return f"input '{v.name}' has no probe values ({v.dtype})"
    args = [a.to(device) for a in args]
    with torch.no_grad():
        try:
            ref = block.reference(args)
        except Exception as e:  # e.g. integer division by a probe zero: no check, no kernel
            return f"the reference failed on probe inputs: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        try:
            got = kernel(*args)
        except Exception as e:
            return f"the kernel failed on probe inputs: {type(e).__name__}: {e}"
    if got.shape != ref.shape:
        return f"the kernel's output is {list(got.shape)}, the reference's {list(ref.shape)}"
    err = float((got - ref).abs().max())
    if err > TOLERANCE * max(1.0, float(ref.abs().max())):
        return f"the kernel disagrees with the reference by {err:.3g} on probe inputs"
    return ""
