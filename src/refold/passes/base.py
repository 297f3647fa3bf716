"""Pass, PassResult and the PassManager that times, verifies and numerically checks every pass.

>>> from refold.passes import DeadCodeElimination
>>> pm = PassManager([DeadCodeElimination()], check=False)
>>> # report = pm.run(model); print(report.format())
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any


from refold.errors import PassFailedError, RefoldError, UnsupportedError, UsageError
from refold.ir.graph import Model
from refold.ir.verify import VerifyError, verify


@dataclasses.dataclass
class PassResult:
    model: Model
    modified: bool
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def graph(self):
        return self.model.graph


class Pass:
    """A whole-model transformation. Subclasses set ``name`` and ``description`` and implement
    ``call``. Passes are idempotent: a second run reports ``modified=False``."""

    name = "pass"
    description = ""

    def call(self, model: Model) -> PassResult:
        raise NotImplementedError

    def __call__(self, model: Model) -> PassResult:
        return self.call(model)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclasses.dataclass
class PassRecord:
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    modified: bool
    stats: dict[str, Any]
    max_abs: float | None = None
    max_rel: float | None = None
    check: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
    """What a pipeline did: one record per pass, plus the check's setup."""

    passes: list[PassRecord] = dataclasses.field(default_factory=list)
    check_engine: str = ""
    check_note: str = ""
    before: Any = None  # inspect.snapshot.Snapshot of the input, when the manager kept one
    model: Any = None   # the model after the last pass

    def _require_snapshot(self) -> None:
        if self.before is None or self.model is None:
            raise UsageError("this report kept no snapshot of the input: run with PassManager(snapshot=True)")

    def diff(self):
        """Node-by-node diff of the graph before the passes and after them."""
        from refold.inspect.diff import diff

        self._require_snapshot()
        return diff(self.before, self.model, titles=("before", "after"))

    def to_html(self, title: str = "refold report") -> str:
        """A self-contained HTML viewer: before and after side by side, and this pass table."""
        from refold.inspect.html import render

        self._require_snapshot()
        return render(self.before, self.model, titles=("before", "after"), report=self, title=title)

    @property
    def rewrites(self) -> int:
        return sum(int(r.stats.get("rewrites", 0)) for r in self.passes)

    @property
    def modified(self) -> bool:
        return any(r.modified for r in self.passes)

    def format(self) -> str:
        head = f"{'pass':<22} {'time':>8} {'nodes':>15} {'max abs err':>12} {'max rel err':>12}  changes"
        lines = [head]
        for r in self.passes:
            err = "-" if r.max_abs is None else f"{r.max_abs:.3g}"
            rel = "-" if r.max_rel is None else f"{r.max_rel:.3g}"
            changes = ", ".join(f"{k}={v}" for k, v in r.stats.items() if not isinstance(v, (dict, list)))
            lines.append(f"{r.name:<22} {r.seconds * 1000:>6.1f}ms {r.nodes_before:>6} -> {r.nodes_after:<6}"
                         f" {err:>12} {rel:>12}  {changes}")
        if self.check_note:
            lines.append(f"check: {self.check_note}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"passes": [r.to_dict() for r in self.passes], "check_engine": self.check_engine,
                "check_note": self.check_note}


def count_nodes(model: Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


class PassManager:
    """Run passes in order; after each: verify the IR, then (``check``) compare outputs on probe
    inputs with the graph before the pass. A pass over tolerance fails, naming the first node whose
    output diverges.

    ``probe`` is a dict of inputs or a list of such dicts; generated from input types if omitted.
    """

    def __init__(self, passes: list[Pass], *, check: bool = True, probe=None, atol: float = 1e-4,
                 rtol: float = 1e-4, dims: dict[str, int] | None = None,
                 check_limit_bytes: int = 512 << 20, verify: bool = True, snapshot: bool = False):
        self.passes = list(passes)
        self.snapshot = snapshot  # keep a data-free view of the input graph for diffs and to_html()
        self.check = check
        self.probe = probe
        self.atol, self.rtol = atol, rtol
        self.dims = dims
        self.check_limit_bytes = check_limit_bytes
        self.verify = verify

    def run(self, model: Model) -> Report:
        report = Report()
        if self.snapshot:
            from refold.inspect.snapshot import take

            report.before = take(model, "before")
        checker = self._make_checker(model, report) if self.check else None
        for p in self.passes:
            before = count_nodes(model)
            t0 = time.perf_counter()
            try:
                result = p.call(model)
            except RefoldError:
                raise
            except Exception as e:
                raise PassFailedError(f"pass '{p.name}' crashed: {type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - t0
            model = result.model
            if self.verify:
                try:
                    verify(model.graph)
                except VerifyError as e:
                    raise PassFailedError(f"pass '{p.name}' left an invalid graph: {e}") from None
            rec = PassRecord(p.name, seconds, before, count_nodes(model), result.modified,
                             dict(result.stats))
            if checker is not None and result.modified:
                rec.max_abs, rec.max_rel = checker.compare(model, p.name)
            elif checker is not None:
                rec.max_abs, rec.max_rel = 0.0, 0.0
            report.passes.append(rec)
        report.model = model
        return report

    def _make_checker(self, model: Model, report: Report):
        from refold.frontends.onnx_save import weight_bytes

        if model.source == "onnx":
            size = weight_bytes(model)
            if size > self.check_limit_bytes:
                report.check_note = (f"numeric check skipped: {size / 2**20:.0f} MiB of weights is over "
                                     f"the {self.check_limit_bytes / 2**20:.0f} MiB check limit")
                return None
            try:
                return _OnnxChecker(model, self, report)
            except UnsupportedError as e:
                report.check_note = f"numeric check skipped: {e}"
                return None
        from refold.passes.torch_check import TorchChecker  # the torch frontend provides it

        return TorchChecker(model, self, report)


class _OnnxChecker:
    def __init__(self, model: Model, pm: PassManager, report: Report):
        from refold.frontends.onnx_export import to_onnx
        from refold.passes.probe import OnnxRunner, probe_inputs

        self.pm = pm
        probes = pm.probe if pm.probe is not None else probe_inputs(model, dims=pm.dims)
        self.probes = probes if isinstance(probes, list) else [probes]
        self.proto = to_onnx(model)
        runner = OnnxRunner(self.proto)
        report.check_engine = runner.engine
        self.ref = [runner.run(f) for f in self.probes]
        report.check_note = (f"{len(self.probes)} probe input set(s) on {runner.engine}; "
                             f"tolerance atol={pm.atol:g} rtol={pm.rtol:g}")

    def compare(self, model: Model, pass_name: str) -> tuple[float, float]:
        from refold.frontends.onnx_export import to_onnx
        from refold.passes.probe import OnnxRunner, max_errors

        proto = to_onnx(model)
        runner = OnnxRunner(proto)
        worst_abs = worst_rel = 0.0
        for feeds, ref in zip(self.probes, self.ref):
            got = runner.run(feeds)
            missing = [k for k in ref if k not in got]
            if missing:
                raise PassFailedError(f"pass '{pass_name}' lost graph outputs {missing}")
            e_abs, e_rel, where = max_errors(ref, got)
            if e_abs > self.pm.atol and e_rel > self.pm.rtol:
                first = self._first_divergence(proto, feeds)
                raise PassFailedError(f"pass '{pass_name}' changed output '{where}' by {e_abs:.3g} "
                                      f"(relative {e_rel:.3g}); first diverging node: {first}")
            worst_abs, worst_rel = max(worst_abs, e_abs), max(worst_rel, e_rel)
        self.proto, self.ref = proto, [runner.run(f) for f in self.probes]
        return worst_abs, worst_rel

    def _first_divergence(self, proto, feeds) -> str:
        """Run before and after with every shared intermediate exposed; name the first that differs."""
        from refold.passes.probe import OnnxRunner, max_errors

        before = {o for n in self.proto.graph.node for o in n.output if o}
        shared = [(n, o) for n in proto.graph.node for o in n.output if o in before]
        try:
            a = OnnxRunner(self.proto, extra_outputs=[o for _, o in shared]).run(feeds)
            b = OnnxRunner(proto, extra_outputs=[o for _, o in shared]).run(feeds)
        except Exception as e:  # intermediates without types can stop ORT; say so
            return f"unknown ({str(e).splitlines()[0][:120]})"
        for n, o in shared:
            if o in a and o in b:
                e_abs, e_rel, _ = max_errors({o: a[o]}, {o: b[o]})
                if e_abs > self.pm.atol and e_rel > self.pm.rtol:
                    return f"'{n.name or n.op_type}' ({n.op_type}) output '{o}' differs by {e_abs:.3g}"
        return "none of the shared intermediates differ (the change is in new nodes)"
