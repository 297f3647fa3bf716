"""MetaSchedule tuning of one block's kernel: a search over schedules, each candidate built and
timed on this machine, the fastest kept.

MetaSchedule measures a kernel on concrete arrays, so a tuned kernel is specialised to the shapes
it was tuned at (the example inputs'); ``codegen.cache`` keeps the untuned kernel beside it for
other sizes. Injective producers (padding, the bias reshape) are inlined first: MetaSchedule's
multi-level tiling refuses an epilogue whose producer sits outside the tiled loop nest. The cost
model is XGBoost when it is installed, else random (more trials for the same result).

>>> scheduled = tune(mod, "conv_bias_act_0", target, trials=64)   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile

from refold.ir.progress import StepBar


def tune(mod, name: str, target, trials: int, *, work_dir: str | None = None, progress: bool = True):
    """``mod`` with its PrimFunc ``name`` replaced by the best schedule found in ``trials``
    measured candidates (the module unchanged when none built)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    if target.kind.name == "llvm" and "num-cores" not in target.attrs:  # MetaSchedule's thread budget
        target = tvm.target.Target({**{k: v for k, v in target.export().items() if k != "keys"},
                                    "num-cores": _physical_cores()})
    func = _inline_injective(tvm, mod[name])
    single = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    import_intrinsics()
    bar = StepBar("trial") if progress else None
    try:
        with _quiet(), tempfile.TemporaryDirectory(prefix="refold-tune-", dir=work_dir) as wd:
            db = ms.tune_tir(single, target, wd, max_trials_global=trials, num_trials_per_iter=min(16, trials),
                             builder=ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=300),
                             cost_model=_cost_model(),
                             measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                                _Progress(bar, trials, name)] if bar else "default",
                             num_tuning_cores=_physical_cores(), seed=0)
            sch = ms.tir_integration.compile_tir(db, single, target)
    finally:
        if bar is not None:
            bar.close()
    if sch is None:
        return mod, 0
    mod = tvm.IRModule(dict(mod.functions))  # a copy: the caller's module stays untuned
    gv = mod.get_global_var(name)
    mod[gv] = sch.mod["main"].with_attr("global_symbol", name)
    return mod, len(db.get_all_tuning_records())


def import_intrinsics() -> None:
    """``import tvm.s_tir.tensor_intrin`` (MetaSchedule needs it) in 3 s instead of 30: TVMScript
    calls ``inspect.stack()`` for each of its ~500 functions, and inspect resolves every frame's
    module by scanning ``sys.modules``; frames alone are all the parser reads."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    import inspect

    def frames(frame):
        out = []
        while frame is not None:
            out.append(inspect.FrameInfo(frame, frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name,
                                         None, None))
            frame = frame.f_back
        return out

    saved = inspect.stack, inspect.getouterframes
    inspect.stack = lambda context=1: frames(sys._getframe(1))
    inspect.getouterframes = lambda frame, context=1: frames(frame)
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.stack, inspect.getouterframes = saved


def build_candidate(mod, target, _params):
    """MetaSchedule's default build, run in its builder processes, with the fast import above."""
    import_intrinsics()
    from tvm.driver import build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def _physical_cores() -> int:
    try:
        import psutil

        return max(1, psutil.cpu_count(logical=False) or 1)
    except ImportError:
        return max(1, (os.cpu_count() or 2) // 2)


def _inline_injective(tvm, func):
    """Every block but the reduction(s) and the output's inlined into its reader, where the
    schedule allows (pads, reshapes, casts)."""
    from tvm.s_tir import Schedule

    sch = Schedule(tvm.IRModule({"main": func}))
    for block in sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []:
        with contextlib.suppress(Exception):  # a block that cannot be inlined stays
            if not sch.get(block).reads or _is_reduction(sch.get(block)):
                continue
            sch.compute_inline(block)
    return sch.mod["main"]


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:
        return False


def _is_reduction(block) -> bool:
    return any(int(iv.iter_type) == 2 for iv in block.iter_vars)  # CommReduce


def _cost_model() -> str:
    try:
        import xgboost  # noqa: F401

        return "xgb"
    except ImportError:
        return "random"


@contextlib.contextmanager
def _quiet():
    """MetaSchedule's per-round tables go to its log files, not the console."""
    names = ["tvm.s_tir.meta_schedule", "tvm.meta_schedule"]
    old = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for n, level in zip(names, old):
            logging.getLogger(n).setLevel(level)


def _progress_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self, bar, total: int, name: str):
            self.bar, self.total, self.name, self.done = bar, total, name, 0

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
            self.done += len(measure_candidates)
            self.bar(min(self.done, self.total), self.total, f"tuning {self.name}")

    return Progress


def _Progress(bar, total: int, name: str):
    return _progress_class()(bar, total, name)
