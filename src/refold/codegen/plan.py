"""A model's kernels: its fused blocks built (or taken from the cache), each checked against the
core reference on probe inputs; a block whose build fails or whose output disagrees falls back to
running its ops one by one, with the reason kept.

>>> plan = build_plan(model, target="llvm")          # doctest: +SKIP
>>> [(p.block.name, p.kernel is not None, p.reason) for p in plan]   # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import statistics
import time

from refold.codegen.cache import cached_build
from refold.codegen.tvm_block import Kernel, gpu_present
from refold.errors import UsageError, one_line
from refold.ir.graph import Model
from refold.lowering.partition import Block, partition

TOLERANCE = 1e-4
SELECT = ("kernels", "fastest")


@dataclasses.dataclass
class Planned:
    block: Block
    kernel: Kernel | None
    reason: str = ""  # why the block falls back ("" when it has a kernel)
    cached: bool = False


def build_plan(model: Model, target: str = "llvm", *, cache: bool = True, shapes: dict[str, tuple] | None = None,
               sizes: int = 3, sabotage: str | None = None, cache_folder: str | None = None,
               tune_trials: int = 0, select: str = "kernels") -> list[Planned]:
    """Every fused block of ``model`` with its kernel or the reason it has none. ``shapes``: the
    values' shapes on one run (the probe inputs' sizes for symbolic dims), else ``sizes`` for
    each. ``sabotage`` names a block whose kernel is built wrong on purpose (the fallback's test).
    ``tune_trials``: each kernel tuned (MetaSchedule) at the sizes in ``shapes``. ``select``:
    ``kernels`` (every block that builds and checks out runs its kernel) or ``fastest`` (a kernel
    slower than the block's ops in torch, timed on the probe inputs, is left out, and says so)."""
    if select not in SELECT:
        raise UsageError(f"select must be one of {', '.join(SELECT)}, not '{select}'")
    device = "cpu" if target == "llvm" else ("cuda" if gpu_present() else None)  # None: no check here
    plan = []
    for block in partition(model):
        if not block.outputs:
            continue  # dead code: nothing reads it
        try:
            kernel, hit = cached_build(block, target, cache=cache, folder=cache_folder, tune_trials=tune_trials,
                                       shapes=shapes)
        except Exception as e:  # a TVM build error is any exception
            plan.append(Planned(block, None, f"build failed: {one_line(e)}"))
            continue
        if sabotage == block.name:
            kernel = _Wrong(kernel)
        why = ""
        if device:
            args = _probe_args(block, sizes, shapes or {}, device)
            why = args if isinstance(args, str) else _verify(block, kernel, args)
            if not why and select == "fastest":
                why = _slower(block, kernel, args, device)
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


def _probe_args(block: Block, size: int, shapes: dict[str, tuple], device: str = "cpu") -> list | str:
    """Random inputs for ``block`` on ``device`` (symbolic dims at their ``shapes`` size, else
    ``size``), or why there are none."""
    import torch

    gen = torch.Generator().manual_seed(0)
    args = []
    for v in block.inputs:
        if v.const is not None:
            args.append(v.const.torch())
            continue
        shape = list(shapes.get(v.name) or [d if isinstance(d, int) and d >= 0 else size for d in v.shape])
        if v.dtype is not None and v.dtype.is_float:
            args.append(torch.randn(shape, generator=gen).to(v.dtype.torch()))
        elif v.dtype is not None and v.dtype.numpy().kind in "iu":
            # 8-bit (quantized levels): its whole range; wider integers (ids, positions): a byte's
            info = torch.iinfo(v.dtype.torch())
            lo, hi = max(info.min, -128), min(info.max, 255 if info.min == 0 else 127)
            args.append(torch.randint(lo, hi + 1, shape, generator=gen, dtype=v.dtype.torch()))
        else:
            return f"input '{v.name}' has no probe values ({v.dtype})"
    return [a.to(device) for a in args]


def _verify(block: Block, kernel, args: list) -> str:
    """'' if the kernel equals the core reference on the probe inputs ``args``, else why not."""
    import torch

    with torch.no_grad():
        try:
            ref = block.reference(args)
        except Exception as e:  # e.g. integer division by a probe zero: no check, no kernel
            return f"the reference failed on probe inputs: {one_line(e)}"
        try:
            got = kernel(*args)
        except Exception as e:
            return f"the kernel failed on probe inputs: {one_line(e)}"
    if got.shape != ref.shape:
        return f"the kernel's output is {list(got.shape)}, the reference's {list(ref.shape)}"
    err = float((got - ref).abs().max())
    if err > TOLERANCE * max(1.0, float(ref.abs().max())):
        return f"the kernel disagrees with the reference by {err:.3g} on probe inputs"
    return ""


def _slower(block: Block, kernel, args: list, device: str) -> str:
    """'' if the kernel is about as fast as the block's ops in torch on ``args`` or faster, else
    the two times."""
    k, t = median_times([lambda: kernel(*args), lambda: block.reference(args)], device)
    # within 10% the kernel stays: a tie in time still saves the intermediates' memory traffic
    return f"torch is faster here: kernel {k * 1e3:.3g} ms, torch {t * 1e3:.3g} ms" if k > 1.1 * t else ""


def median_times(fns: list, device: str = "cpu", runs: int = 7) -> list[float]:
    """Seconds per call of each of ``fns``: medians of ``runs`` interleaved calls, after two
    warm-up rounds (CUDA work synchronised around each call)."""
    import torch

    def timed(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    with torch.no_grad():
        for _ in range(2):
            for fn in fns:
                fn()
        samples: list[list[float]] = [[] for _ in fns]
        for _ in range(runs):
            for fn, got in zip(fns, samples):
                got.append(timed(fn))
    return [statistics.median(got) for got in samples]
