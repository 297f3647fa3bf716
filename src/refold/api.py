"""The Python entry points: load, save, optimize."""
from __future__ import annotations

import os
from typing import Any, Sequence

import refold.frontends  # noqa: F401  (registers the ONNX and torch raisers)
from refold.errors import InvalidModelError, OutputError, UnsupportedError, UsageError
from refold.ir.fileio import write_text_atomic  # noqa: F401  (re-exported)
from refold.ir.graph import Model
from refold.passes import Pass, PassManager, Report, get_pass

DEFAULT_PIPELINE = ("infer-shapes", "fold-constants", "cse", "dce")
EXAMPLES = os.path.join(os.path.dirname(__file__), "examples")


def example_path(name: str = "tiny_cnn") -> str:
    """Path of a model bundled with refold (``refold run example:tiny_cnn`` uses it)."""
    path = os.path.join(EXAMPLES, f"{name}.onnx")
    if not os.path.exists(path):
        have = sorted(f[:-5] for f in os.listdir(EXAMPLES) if f.endswith(".onnx"))
        raise UsageError(f"no bundled example '{name}'; have {have}")
    return path


def resolve_path(src: str) -> str:
    return example_path(src.split(":", 1)[1]) if src.startswith("example:") else src


def load(src: Any, example_inputs: Any = None, *, trust_code: bool = False,
         dynamic_shapes: Any = "auto") -> Model:
    """Load a model into refold IR.

    >>> m = load(example_path())           # an ONNX path or ModelProto
    >>> m.opset >= 13
    True

    Also: an ``nn.Module`` with ``example_inputs``, an ExportedProgram, a ``.pt2`` file; a
    TorchScript file only with ``trust_code=True``; ``.pt`` pickles only as weights.

    An ``nn.Module`` is captured with torch.export, every dim of its tensor inputs dynamic where
    the model allows (``dynamic_shapes="auto"``); ``dynamic_shapes`` as torch.export takes it sets
    them instead, and None, False or ``{}`` pins every dim to the example's.
    """
    import onnx

    if isinstance(src, Model):
        return src
    if isinstance(src, (str, os.PathLike)):
        path = resolve_path(os.fspath(src))
        if path.endswith((".pt", ".pt2", ".pth")):
            from refold.frontends.torch.importer import (
                load_torch_file,  # the torch frontend
            )

            return load_torch_file(path, example_inputs, trust_code=trust_code)
        from refold.frontends.onnx.importer import load_onnx

        return load_onnx(path)
    if isinstance(src, onnx.ModelProto):
        from refold.frontends.onnx.importer import load_onnx

        return load_onnx(src)
    import torch

    if isinstance(src, torch.export.ExportedProgram):
        from refold.frontends.torch.importer import import_exported

        return import_exported(src)
    if isinstance(src, torch.nn.Module):
        if example_inputs is None:
            raise UsageError(f"refold.load: a {type(src).__name__} needs example_inputs to be captured")
        from refold.frontends.torch.importer import import_module

        return import_module(src, example_inputs, dynamic_shapes=dynamic_shapes)
    raise UnsupportedError(f"refold.load: cannot load a {type(src).__name__}; give an ONNX path or "
                           f"ModelProto, an nn.Module with example inputs, or an ExportedProgram")


def save(model: Model, path: str | os.PathLike, *, external_data: bool | None = None,
         check: bool = True) -> None:
    """Write an IR model to an ONNX file atomically (see ``refold.frontends.onnx.save``)."""
    from refold.frontends.onnx.save import save_onnx

    save_onnx(model, path, external_data=external_data, check=check)


class OptimizeReport(Report):
    """The pipeline's report, plus views of what changed (it keeps a data-free snapshot of the input)."""

    def _require_snapshot(self) -> None:
        if self.before is None or self.model is None:
            raise UsageError("this report kept no snapshot of the input: run optimize(..., snapshot=True)")

    def _after(self):
        """The result as the user gets it: for an ONNX model, the ModelProto read back (ONNX op
        names, as in the file), not the IR with its core ops."""
        self._require_snapshot()
        if self.model.source != "onnx":
            return snapshot_of(self.model, "after")
        from refold.frontends.onnx.exporter import to_onnx
        from refold.frontends.onnx.importer import load_onnx

        return snapshot_of(load_onnx(to_onnx(self.model)), "after")

    def diff(self):
        """Node-by-node diff of the graph before the passes and after them."""
        from refold.inspect.diff import diff

        return diff(self.before, self._after(), titles=("before", "after"))

    def to_html(self, title: str = "refold report") -> str:
        """A self-contained HTML viewer: before and after side by side, and this pass table."""
        from refold.inspect.html import render

        return render(self.before, self._after(), titles=("before", "after"), report=self, title=title)


def snapshot_of(model: Model, title: str = "before"):
    """A data-free view of ``model`` whose node count is the model's as the user holds it."""
    from refold.frontends import written_node_count
    from refold.inspect.snapshot import take

    return take(model, title, node_count=written_node_count(model))


def optimize(model: Any, example_inputs: Any = None, passes: Sequence[str | Pass] | None = None, *,
             check: bool = True, atol: float = 1e-4, rtol: float = 1e-4, probe=None,
             dims: dict[str, int] | None = None, snapshot: bool = True,
             dynamic_shapes: Any = "auto") -> tuple[Any, Report]:
    """Run passes and give back the same kind of thing: an ``onnx.ModelProto`` for ONNX input, a
    trainable ``torch.fx.GraphModule`` for an ``nn.Module`` (captured with ``example_inputs``).

    ``passes`` are names from ``refold passes`` or Pass instances; None runs the default pipeline
    (shape inference, constant folding, CSE, DCE; no shape inference for an ``nn.Module``, whose
    values torch.export typed); ``[]`` runs nothing. With ``check`` every pass
    is compared numerically with the graph before it on probe inputs. With ``snapshot`` the
    report keeps a data-free view of the input graph: ``report.diff()`` and ``report.to_html()``.
    ``dynamic_shapes``: for an ``nn.Module``, as in :func:`load` (dims dynamic by default).

    >>> proto, report = optimize(example_path(), passes=["fold-constants", "dce"])
    >>> report.passes[0].name
    'fold-constants'
    """
    ir = load(model, example_inputs, dynamic_shapes=dynamic_shapes)
    names = DEFAULT_PIPELINE if passes is None else passes
    if passes is None and ir.source == "torch":  # torch.export typed every value already
        names = tuple(p for p in DEFAULT_PIPELINE if p != "infer-shapes")
    from refold.ir.progress import StepBar

    from refold.frontends import written_node_count  # counts as the returned model will have them

    with StepBar("pass") as bar:
        pm = PassManager([get_pass(p) for p in names], check=check, atol=atol, rtol=rtol, probe=probe,
                         dims=dims, count=written_node_count, progress=bar if bar.enabled else None)
        report = pm.run(ir, OptimizeReport(before=snapshot_of(ir) if snapshot else None))
    if ir.source == "onnx":
        from refold.frontends.onnx.exporter import to_onnx

        return to_onnx(ir), report
    from refold.frontends.torch.exporter import to_graph_module  # the torch frontend

    return to_graph_module(ir), report


class CompiledModel:
    """``refold.compile``'s result: call it with torch tensors (inputs in order); ``kernels`` is
    how many fused blocks run as TVM kernels, ``fallbacks`` which blocks run op by op and why."""

    def __init__(self, runner, output_names: list[str]):
        self.runner = runner
        self.output_names = output_names

    @property
    def kernels(self) -> int:
        return self.runner.kernels

    @property
    def fallbacks(self) -> dict[str, str]:
        return self.runner.fallbacks

    def __call__(self, *args):
        if self.runner.target != "llvm":
            from refold.codegen.tvm_block import gpu_present

            if not gpu_present():
                raise UnsupportedError(f"{self.runner.target} kernels run on a GPU; this machine has none")
        out = self.runner.run(args if len(args) != 1 else args[0])
        values = [out[k] for k in self.output_names]
        return values[0] if len(values) == 1 else tuple(values)


def compile(model: Any, example_inputs: Any = None, *, target: str = "llvm", cache: bool = True,
            sabotage: str | None = None, cache_dir: str | None = None, tune_trials: int = 0,
            dims: dict[str, int] | None = None, select: str = "kernels") -> CompiledModel:
    """A torch module or ONNX file as a callable that runs each fused block (conv+bias+act,
    linear+act, norms, elementwise chains; BatchNorm folded first) as one TVM kernel and the
    rest with torch. Kernels are cached on disk (``REFOLD_KERNEL_CACHE``). ``tune_trials``:
    each kernel tuned by MetaSchedule (that many measured candidates) at the example inputs'
    sizes (an ONNX file: ``example_inputs``, or its symbolic dims set by ``dims``); other sizes
    run the untuned kernel. ``select="fastest"``: a kernel slower than its block's ops in torch
    (timed at the example's sizes) is left out, and ``fallbacks`` gives both times.

    >>> fast = refold.compile("model.onnx")          # doctest: +SKIP
    >>> y = fast(torch.randn(1, 3, 224, 224))        # doctest: +SKIP
    """
    from refold.codegen import require_tvm
    from refold.runtime.tvm_runner import TvmRunner

    require_tvm()
    m = _for_kernels(model, example_inputs, dims)
    if tune_trials < 0:
        raise UsageError(f"tune_trials must be >= 0, not {tune_trials}")
    from refold.codegen.tvm_block import check_can_tune

    if tune_trials:
        check_can_tune(target)  # here, not as a fallback per block
    runner = TvmRunner(m, target=target, cache=cache, sabotage=sabotage, cache_folder=cache_dir,
                       tune_trials=tune_trials, select=select)
    compiled = CompiledModel(runner, [v.name for v in m.graph.outputs])
    compiled.source = model if isinstance(model, (str, os.PathLike)) else None
    return compiled


def _for_kernels(model: Any, example_inputs: Any = None, dims: dict[str, int] | None = None) -> Model:
    """``model`` as ``compile`` partitions it: core ops, BatchNorms folded, shapes known, the
    example inputs (an ONNX file's given ones, or its symbolic dims set by ``dims``) kept."""
    from refold.passes import FuseConvBN
    from refold.runtime.shapes import infer_shapes

    m = load(model, example_inputs)
    PassManager([FuseConvBN(mode="deploy")], check=False).run(m)
    if m.source == "onnx":
        infer_shapes(m, probe=True)
        feeds = [v for v in m.graph.inputs if v.const is None]
        if example_inputs is not None:  # the sizes kernels are checked and tuned at
            given = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
            m.meta["torch.example_inputs"] = {v.name: t for v, t in zip(feeds, given)}
        elif dims:
            from refold.runtime.probe import probe_dims, probe_inputs

            m.meta["torch.example_inputs"] = probe_inputs(m, dims=probe_dims(m, dims))
    return m


def kernel_map(src: Any) -> tuple[Model, list[dict]]:
    """Which nodes become which kernel. ``src`` a folder ``refold compile`` wrote: its model with
    each block's kernel (or why it runs in torch) from ``plan.json``; else a model: its fused
    blocks as ``compile`` would partition it (nothing built). Each node in a block carries
    ``meta["kernel"]`` (block, kind, status, schedule or reason), which ``refold show`` and the
    HTML viewer display; the list has one row per block."""
    from refold.lowering import partition

    if is_compiled_folder(src):
        plan = read_plan(str(src))
        m = _for_kernels(os.path.join(str(src), plan["model"]), _plan_example(plan))
        rows = [{"block": b["block"], "kind": b["kind"], "nodes": b["nodes"],
                 "status": "kernel" if b["kernel"] else "torch",
                 "detail": (b.get("schedule") or "") if b["kernel"] else (b.get("fallback") or "")}
                for b in plan["blocks"]]
    else:
        m = _for_kernels(src)
        rows = [{"block": b.name, "kind": b.kind, "nodes": [n.name for n in b.nodes], "status": "planned",
                 "detail": ""} for b in partition(m) if b.outputs]
    by_name = {n.name: n for n in m.graph}
    for row in rows:
        for name in row["nodes"]:
            if name in by_name:
                by_name[name].meta["kernel"] = {k: row[k] for k in ("block", "kind", "status", "detail")}
    return m, rows


def save_compiled(compiled: CompiledModel, folder: str) -> dict:
    """Write a compiled ONNX model to ``folder``: the model, its kernels (CPU libraries with what
    calling them needs; CUDA C sources for ``cuda``) and ``plan.json`` (each block: kind, nodes,
    kernel or why it falls back). ``load_compiled(folder)`` builds nothing."""
    import shutil
    import tempfile

    if compiled.source is None:
        raise UsageError("save_compiled: only a model compiled from a file (ONNX or .pt2) can be saved")
    parent = check_compiled_output(folder)
    # written whole into a sibling, then swapped in: a failure leaves nothing at (or of) ``folder``
    stage = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(folder))}.", dir=parent)
    try:
        summary = _write_compiled(compiled, stage)
        old = None
        if os.path.exists(folder):
            old = tempfile.mkdtemp(prefix=".old.", dir=parent)
            os.replace(folder, os.path.join(old, "x"))
        os.replace(stage, folder)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise OutputError(f"cannot write '{folder}': {e.strerror or e}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return summary


def check_compiled_output(folder: str) -> str:
    """The parent of ``folder`` if ``save_compiled`` may write there: a new folder, or one it
    wrote before (replaced whole); never a file or a folder holding anything else."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OutputError(f"output '{folder}' exists and is not a folder")
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.isfile(os.path.join(folder, "plan.json")):
        raise OutputError(f"output '{folder}' holds other files: give a new folder (or one `refold compile` wrote)")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise OutputError(f"output folder '{parent}' does not exist")
    return parent


def _write_compiled(compiled: CompiledModel, folder: str) -> dict:
    import json
    import shutil

    os.makedirs(os.path.join(folder, "kernels"), exist_ok=True)
    source = resolve_path(str(compiled.source))
    name = "model.pt2" if source.endswith(".pt2") else "model.onnx"  # the model as given, in its own format
    shutil.copyfile(source, os.path.join(folder, name))
    plan = []
    for p in compiled.runner.plan:
        entry = {"block": p.block.name, "kind": p.block.kind, "nodes": [n.name for n in p.block.nodes],
                 "kernel": p.kernel is not None, "fallback": p.reason or None}
        if p.kernel is not None and p.kernel.files:
            for path in p.kernel.files + (p.kernel.generic.files if p.kernel.generic else ()):
                sub = os.path.join("kernels", os.path.basename(os.path.dirname(path)))
                os.makedirs(os.path.join(folder, sub), exist_ok=True)
                shutil.copyfile(path, os.path.join(folder, sub, os.path.basename(path)))
                kind = {".cu": "source", ".cubin": "cubin"}.get(os.path.splitext(path)[1])
                if kind:
                    entry[kind] = f"{sub}/{os.path.basename(path)}"
        elif p.kernel is not None and p.kernel.source:
            entry["source"] = f"kernels/{p.block.name}.cu"
            write_text_atomic(os.path.join(folder, entry["source"]), p.kernel.source)
        if p.kernel is not None:
            entry["schedule"] = p.kernel.schedule or None
        plan.append(entry)
    example = compiled.runner.model.meta.get("torch.example_inputs")
    inputs = {k: [list(t.shape), str(t.dtype).replace("torch.", "")] for k, t in example.items()} \
        if isinstance(example, dict) else None  # the sizes checked and tuned at
    summary = {"model": name, "target": compiled.runner.target, "tune_trials": compiled.runner.tune_trials,
               "select": compiled.runner.select, "inputs": inputs,
               "kernels": compiled.kernels, "blocks": plan}
    write_text_atomic(os.path.join(folder, "plan.json"), json.dumps(summary, indent=2))
    return summary


def load_compiled(folder: str) -> CompiledModel:
    """The model ``save_compiled`` wrote, its kernels loaded from ``folder`` (nothing built; CUDA
    kernels from their cubins, callable on a GPU machine)."""
    plan = read_plan(folder)
    return compile(os.path.join(folder, plan["model"]), _plan_example(plan), target=plan["target"],
                   cache_dir=os.path.join(folder, "kernels"), tune_trials=plan.get("tune_trials", 0),
                   select=plan.get("select", "kernels"))


def is_compiled_folder(src: Any) -> bool:
    """Whether ``src`` names a folder ``refold compile`` wrote (it holds a plan.json)."""
    return isinstance(src, (str, os.PathLike)) and os.path.isfile(os.path.join(str(src), "plan.json"))


def read_plan(folder: str) -> dict:
    """``folder``'s plan.json, or one clear error saying what is wrong with the folder."""
    import json

    path = os.path.join(folder, "plan.json")
    if not os.path.isfile(path):
        raise UsageError(f"'{folder}' is not a folder `refold compile` wrote (no plan.json)")
    try:
        with open(path, encoding="utf-8") as f:
            plan = json.load(f)
        if not isinstance(plan, dict) or plan.get("target") not in ("llvm", "cuda") or \
                not isinstance(plan.get("blocks"), list):
            raise ValueError("no target / blocks")
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidModelError(f"{path}: not a refold plan ({e})") from None
    plan.setdefault("model", "model.onnx")
    if plan["model"] not in ("model.onnx", "model.pt2") or not os.path.isfile(os.path.join(folder, plan["model"])):
        raise UsageError(f"'{folder}' has no {plan['model']}: not a whole `refold compile` folder")
    return plan


def _plan_example(plan: dict):
    """Zero inputs of the sizes a compiled folder was checked and tuned at (None if it has none)."""
    if not plan.get("inputs"):
        return None
    import numpy as np

    return tuple(np.zeros(shape, dtype=dtype) for shape, dtype in plan["inputs"].values())
