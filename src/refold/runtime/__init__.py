"""One way to run refold IR: ``Runner.run(feeds, capture=[...])`` and ``Runner.stream(batches, cb)``.

- ``OrtRunner``: ONNX Runtime (exported in memory; by path over 2 GiB).
- ``TorchRunner``: the IR as a torch program with autograd, ONNX-born graphs too.
- ``ReferenceRunner``: core reference implementations and onnx's reference evaluator.

``runner_for(model)`` picks the natural engine. The per-pass numeric check (``check``), probe
inputs (``probe``) and type inference without running (``shapes``) live here too.

>>> from refold.runtime import runner_for
>>> out = runner_for(model).run({"x": x}, capture=["h"])    # doctest: +SKIP
"""
from __future__ import annotations

from refold.ir.graph import Model
from refold.runtime.base import Runner
from refold.runtime.probe import max_errors, probe_inputs


def runner_for(model: Model, engine: str = "auto", **options) -> Runner:
    """A runner for ``model``: ``engine`` is 'ort', 'torch', 'reference' or 'auto' (ORT for an
    ONNX-born model, torch for a torch-born one)."""
    from refold.errors import UsageError

    if engine == "auto":
        engine = "torch" if model.source == "torch" else "ort"
    if engine == "ort":
        from refold.runtime.ort import OrtRunner

        return OrtRunner(model, **options)
    if engine == "torch":
        from refold.runtime.torch_runner import TorchRunner

        return TorchRunner(model, **options)
    if engine == "reference":
        from refold.runtime.reference import ReferenceRunner

        return ReferenceRunner(model, **options)
    raise UsageError(f"unknown engine '{engine}'; choose ort, torch or reference")


def __getattr__(name: str):
    # the runners import onnxruntime / torch: load them on first use
    if name == "OrtRunner":
        from refold.runtime.ort import OrtRunner

        return OrtRunner
    if name == "TorchRunner":
        from refold.runtime.torch_runner import TorchRunner

        return TorchRunner
    if name == "ReferenceRunner":
        from refold.runtime.reference import ReferenceRunner

        return ReferenceRunner
    raise AttributeError(name)


__all__ = ["Runner", "runner_for", "probe_inputs", "max_errors", "OrtRunner", "TorchRunner",
           "ReferenceRunner"]
