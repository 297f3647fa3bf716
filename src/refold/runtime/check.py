"""The numeric check the PassManager runs after every pass: the model before and after, on the same
probe inputs, must agree within a tolerance; when they do not, the first diverging node is named.

ONNX-born models run in ONNX Runtime (the reference runner where ORT lacks an op); torch-born ones
run as the GraphModule the user gets back, on the example inputs. A model whose weights pass
``refold.runtime.ort.BY_PATH_BYTES`` is snapshotted as a file with external data (byte ranges
copied, weights never in Python memory) and ONNX Runtime opens it by path.

>>> checker = make_checker(model, CheckSettings(atol=1e-5))          # doctest: +SKIP
>>> checker.compare(model_after_pass, "fuse-conv-bn")  # -> (max abs, max rel) or PassFailedError
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from refold.errors import PassFailedError, UnsupportedError
from refold.ir.graph import Model
from refold.runtime.probe import describe_feeds, max_errors, probe_dims, probe_inputs


@dataclasses.dataclass
class CheckSettings:
    atol: float = 1e-4
    rtol: float = 1e-4
    probe: Any = None  # a dict of inputs, a list of them, or torch example args
    dims: dict[str, int] | None = None
    limit_bytes: int = 512 << 20


class Checker:
    """What the PassManager holds: ``engine``, ``note`` and ``compare(model, pass_name)``."""

    engine = ""
    note = ""

    def compare(self, model: Model, pass_name: str, strict: bool = True) -> tuple[float, float]:
        """Max abs / rel error of ``model`` against the last accepted one; over tolerance a
        PassFailedError when ``strict`` (a lossy pass, such as quantization, is measured only)."""
        raise NotImplementedError


class Skipped(Checker):
    """No check could run; ``note`` says why."""

    def __init__(self, note: str):
        self.note = note

    def compare(self, model: Model, pass_name: str, strict: bool = True) -> tuple[float, float] | tuple[None, None]:
        return None, None


def make_checker(model: Model, settings: CheckSettings) -> Checker:
    """The checker for ``model``'s world, holding its outputs before any pass."""
    if model.source == "torch":
        return TorchChecker(model, settings)
    size = model.weight_bytes()
    if size > settings.limit_bytes:
        return Skipped(f"numeric check skipped: {size / 2**20:.0f} MiB of weights is over "
                       f"the {settings.limit_bytes / 2**20:.0f} MiB check limit")
    try:
        return OnnxChecker(model, settings)
    except UnsupportedError as e:
        return Skipped(f"numeric check skipped: {e}")


def onnx_runner(proto):
    """ONNX Runtime, or the reference runner for a model ORT cannot load (``proto``: a ModelProto
    or a FrozenFile, which goes by path)."""
    from refold.runtime.ort import OrtRunner
    from refold.runtime.reference import ReferenceRunner

    src = proto.path if isinstance(proto, FrozenFile) else proto
    try:
        return OrtRunner(src)
    except UnsupportedError as ort_error:
        try:
            import onnx.checker

            from refold.frontends.onnx.importer import load_onnx

            onnx.checker.check_model(src, full_check=True)  # onnx's evaluator trusts its input (hangs, huge lists)
            runner = ReferenceRunner(load_onnx(src))
        except Exception as e:
            raise UnsupportedError(f"cannot run model for the numeric check: {ort_error}; reference "
                                   f"runner: {(str(e).splitlines() or [type(e).__name__])[0][:200]}") from None
        runner.ort_error = str(ort_error)
        return runner


class OnnxChecker(Checker):
    def __init__(self, model: Model, settings: CheckSettings):
        self.settings = settings
        sized = settings.probe is None
        probes = settings.probe if not sized else probe_inputs(model, dims=probe_dims(model, settings.dims))
        self.probes = probes if isinstance(probes, list) else [probes]
        self.before = _frozen(model)
        runner = onnx_runner(self.before)
        self.engine = runner.engine
        fallback = ""
        try:
            self.ref = [_run(runner, f) for f in self.probes]
        except UnsupportedError as e:
            if not sized:
                raise
            # a model that only runs at the sizes it was exported with (hard-coded reshapes):
            # probe with 1 for every symbolic dim not given with --dim, and say so
            self.probes = [probe_inputs(model, dims=settings.dims)]
            self.ref = [_run(runner, f) for f in self.probes]
            fallback = f" (the model failed at {describe_feeds(probes)}: {str(e)[:120]}; probed at 1)"
        self.note = (f"{len(self.probes)} probe input set(s) [{describe_feeds(self.probes[0])}] on "
                     f"{runner.engine}{fallback}; tolerance atol={settings.atol:g} rtol={settings.rtol:g}")

    def compare(self, model: Model, pass_name: str, strict: bool = True) -> tuple[float, float]:
        after = _frozen(model)
        runner = onnx_runner(after)
        worst_abs = worst_rel = 0.0
        got_all = []
        for feeds, ref in zip(self.probes, self.ref):
            got = _run(runner, feeds)
            missing = [k for k in ref if k not in got]
            if missing:
                raise PassFailedError(f"pass '{pass_name}' lost graph outputs {missing}")
            e_abs, e_rel, where = max_errors(ref, got)
            if strict and e_abs > self.settings.atol and e_rel > self.settings.rtol:
                first = first_divergence(self.before, after, feeds, self.settings)
                raise PassFailedError(f"pass '{pass_name}' changed output '{where}' by {e_abs:.3g} "
                                      f"(relative {e_rel:.3g}); first diverging node: {first}")
            worst_abs, worst_rel = max(worst_abs, e_abs), max(worst_rel, e_rel)
            got_all.append(got)
        self.before, self.ref = after, got_all
        return worst_abs, worst_rel


def _frozen(model: Model):
    """The model as it is now (passes rewrite the live one in place): a ModelProto, or past ONNX
    Runtime's by-path size a FrozenFile, so that no copy of the weights is held in memory."""
    from refold.runtime import ort

    if model.weight_bytes() > ort.BY_PATH_BYTES:
        return FrozenFile(model)
    from refold.frontends.onnx.exporter import to_onnx

    return to_onnx(model)


class FrozenFile:
    """A snapshot of a model written with external data to a private temporary folder (tensors
    that are external already are copied by byte range). ``graph`` is its structure (tensors as
    external references); the folder goes with the snapshot, or on ``close()``."""

    def __init__(self, model: Model):
        import os
        import shutil
        import tempfile
        import weakref

        import onnx

        from refold.frontends.onnx.save import save_onnx

        self.folder = tempfile.mkdtemp(prefix="refold-check-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.path = os.path.join(self.folder, "model.onnx")
        save_onnx(model, self.path, external_data=True, check=False, durable=False)
        self.proto = onnx.load(self.path, load_external_data=False)

    @property
    def graph(self):
        return self.proto.graph

    def close(self) -> None:
        self._cleanup()


def _run(runner, feeds) -> dict[str, np.ndarray]:
    try:
        return runner.run(feeds)
    except UnsupportedError:
        raise
    except Exception as e:
        raise UnsupportedError(f"{runner.engine} failed on the probe inputs: "
                               f"{(str(e).splitlines() or [type(e).__name__])[0][:300]}") from None


def first_divergence(before, after, feeds: dict, settings: CheckSettings) -> str:
    """Run before and after (ModelProtos) capturing every value both have; name the first (in the
    after graph's order) that differs beyond the tolerance."""
    names_before = {o for n in before.graph.node for o in n.output if o}
    shared = [(n, o) for n in after.graph.node for o in n.output if o in names_before]
    capture = [name for _, name in shared]
    try:
        a = onnx_runner(before).run(feeds, capture=capture)
        b = onnx_runner(after).run(feeds, capture=capture)
    except Exception as e:  # intermediates without types can stop ORT; say so
        return f"unknown ({(str(e).splitlines() or [type(e).__name__])[0][:120]})"
    for n, name in shared:
        if name in a and name in b:
            e_abs, e_rel, _ = max_errors({name: a[name]}, {name: b[name]})
            if e_abs > settings.atol and e_rel > settings.rtol:
                return f"'{n.name or n.op_type}' ({n.op_type}) output '{name}' differs by {e_abs:.3g}"
    return "none of the shared intermediates differ (the change is in new nodes)"


class TorchChecker(Checker):
    """Runs the GraphModule refold would return, on the example inputs (or probes)."""

    engine = "torch"

    def __init__(self, model: Model, settings: CheckSettings):
        import torch

        self.settings = settings
        args = settings.probe if settings.probe is not None else model.meta.get("torch.example_inputs")
        if args is None:
            args = tuple(torch.from_numpy(a) for a in probe_inputs(model, dims=settings.dims).values())
        self.args = tuple(args)
        self.kwargs = model.meta.get("torch.example_kwargs", {})
        self.ref = self._run(model)
        self.note = f"example inputs on torch; tolerance atol={settings.atol:g} rtol={settings.rtol:g}"

    def _run(self, model: Model) -> list[np.ndarray]:
        import torch

        from refold.frontends.torch.exporter import to_graph_module

        gm = to_graph_module(model)
        with torch.no_grad():
            out = gm(*self.args, **self.kwargs)
        leaves, _ = torch.utils._pytree.tree_flatten(out)
        return [t.detach().float().numpy() if t.dtype.is_floating_point else t.detach().numpy()
                for t in leaves if isinstance(t, torch.Tensor)]

    def compare(self, model: Model, pass_name: str, strict: bool = True) -> tuple[float, float]:
        got = self._run(model)
        ref = {str(i): a for i, a in enumerate(self.ref)}
        e_abs, e_rel, where = max_errors(ref, {str(i): a for i, a in enumerate(got)})
        if strict and e_abs > self.settings.atol and e_rel > self.settings.rtol:
            raise PassFailedError(f"pass '{pass_name}' changed output {where} by {e_abs:.3g} "
                                  f"(relative {e_rel:.3g})")
        self.ref = got
        return e_abs, e_rel
