"""Pass, PassResult and the PassManager that times, verifies and numerically checks every pass.

>>> from refold.passes import DeadCodeElimination
>>> pm = PassManager([DeadCodeElimination()], check=False)
>>> # report = pm.run(model); print(report.format())
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any, Callable

from refold.errors import InvalidModelError, PassFailedError, RefoldError, UsageError
from refold.ir.gcpause import gc_paused
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


class Reason(str):
    """Why a node was left alone: readable text, plus a stable ``code`` to test and group by.

    >>> r = Reason("BatchNormalization has training_mode=1", code="training-mode")
    >>> r.code, "training" in r
    ('training-mode', True)
    """

    code: str

    def __new__(cls, text: str, code: str = "other"):
        self = super().__new__(cls, text)
        self.code = code
        return self

    def __reduce__(self):
        return (Reason, (str(self), self.code))


# Model properties a pass can require or ensure. The PassManager establishes a required one by
# running the step that ensures it (and records, verifies and checks that step like any pass).
RAISED = "core"  # dialect ops with a core equivalent have been raised to core ops
_PROVIDERS: dict[str, type] = {}


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option a pass takes: ``-p NAME:key=value`` on the command line, ``key=`` in Python.

    >>> Option("affine", bool, False, "turn BNs that cannot fold into x*s+t").parse("yes")
    True
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple = ()

    def parse(self, text: str, where: str = "") -> Any:
        """The value a command-line string spells, or a UsageError naming what is allowed."""
        low = text.strip().lower()
        if self.type is bool:
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            raise UsageError(f"{where}option {self.name}={text!r}: expected true or false")
        try:
            value = self.type(text.strip())
        except ValueError:
            raise UsageError(f"{where}option {self.name}={text!r}: expected {self.type.__name__}") from None
        return self.check(value, where)

    def check(self, value: Any, where: str = "") -> Any:
        """A Python value, validated (bools must be bools: ``"maybe"`` is not true)."""
        if self.type is bool and not isinstance(value, bool):
            raise UsageError(f"{where}option {self.name}={value!r}: expected True or False")
        if self.type in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{where}option {self.name}={value!r}: expected {self.type.__name__}")
        if self.type is str and not isinstance(value, str):
            raise UsageError(f"{where}option {self.name}={value!r}: expected a string")
        if self.choices and value not in self.choices:
            raise UsageError(f"{where}option {self.name}={value!r}: choose one of "
                             f"{', '.join(map(str, self.choices))}")
        return self.type(value) if self.type in (int, float) else value

    def describe(self) -> str:
        kind = "|".join(map(str, self.choices)) if self.choices else self.type.__name__
        return f"{self.name}={kind} (default {self.default}): {self.help}"


class Pass:
    """A whole-model transformation. Subclasses set ``name`` and ``description`` and implement
    ``call``. Passes are idempotent: a second run reports ``modified=False``.

    ``requires``: properties the model must have before ``call`` (``{"core"}``: ops raised to core);
    ``ensures``: properties it has after. Called directly (``pass_(model)``), a pass establishes
    what it requires itself; under a PassManager, the manager does, as a recorded step.
    """

    name = "pass"
    description = ""
    requires: frozenset[str] = frozenset()
    ensures: frozenset[str] = frozenset()
    options: tuple[Option, ...] = ()
    exact = True  # False for passes that change outputs by design (quantization): checked, not failed

    def __init__(self, *args, **kwargs):
        """Options by keyword, or positionally in declaration order; each is validated."""
        where = f"{self.name}: "
        if len(args) > len(self.options):
            raise UsageError(f"{where}takes at most {len(self.options)} options, got {len(args)}")
        given = dict(zip((o.name for o in self.options), args))
        for k, v in kwargs.items():
            if k in given:
                raise UsageError(f"{where}option {k} given twice")
            given[k] = v
        known = {o.name: o for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise UsageError(f"{where}unknown option(s) {', '.join(unknown)}; options: {allowed}")
        for o in self.options:
            setattr(self, o.name, o.check(given[o.name], where) if o.name in given else o.default)
        self.validate()

    def validate(self) -> None:
        """Refuse contradictory options (a UsageError saying which)."""

    def call(self, model: Model) -> PassResult:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for prop in cls.__dict__.get("ensures", ()):
            _PROVIDERS.setdefault(prop, cls)  # the step the manager runs to establish ``prop``

    def __call__(self, model: Model) -> PassResult:
        for prop in sorted(self.requires):
            call_tidy(provider(prop), model)
        return call_tidy(self, model)

    def __repr__(self) -> str:
        opts = ", ".join(f"{o.name}={getattr(self, o.name, o.default)!r}" for o in self.options)
        return f"{type(self).__name__}({opts})"


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
    check_seconds: float = 0.0  # the numeric check after this step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Report:
    """What a pipeline did: one record per pass, plus the check's setup."""

    passes: list[PassRecord] = dataclasses.field(default_factory=list)
    check_engine: str = ""
    check_note: str = ""
    check_seconds: float = 0.0  # the reference run before the first step
    before: Any = None  # a data-free snapshot of the input, when the caller kept one
    model: Any = None   # the model after the last pass

    def record(self, name: str) -> PassRecord:
        """The record of the (last) step called ``name``."""
        for r in reversed(self.passes):
            if r.name == name:
                return r
        raise KeyError(f"no pass '{name}' in this report; ran {[r.name for r in self.passes]}")

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
            changes = ", ".join(f"{k}={v}" for k, v in r.stats.items() if not isinstance(v, (dict, list, tuple)))
            left = [_reason_counts(k, v) for k, v in r.stats.items() if _is_reasons(v)]
            changes = "; ".join(filter(None, [changes] + left))
            lines.append(f"{r.name:<22} {_ms(r.seconds)} {r.nodes_before:>6} -> {r.nodes_after:<6}"
                         f" {err:>12} {rel:>12}  {changes}")
            for title, rows in (r.stats.get("tables") or {}).items():
                lines += _table(title, rows)
        checked = self.check_seconds + sum(r.check_seconds for r in self.passes)
        if self.check_engine:
            lines.append(f"{'(numeric check)':<22} {_ms(checked)} {'':>15} {'':>12} {'':>12}  "
                         f"{self.check_engine}, before and after every step")
        if self.check_note:
            lines.append(f"check: {self.check_note}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"passes": [r.to_dict() for r in self.passes], "check_engine": self.check_engine,
                "check_note": self.check_note}


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:>6.1f}ms" if seconds < 10 else f"{seconds:>7.1f}s"


def _table(title: str, rows: list[list]) -> list[str]:
    """A pass's table under its row: ``rows[0]`` the header, the rest aligned columns."""
    text = [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text if i < len(r)) for i in range(max(map(len, text)))]
    out = [f"    {title}:"]
    for row in text:
        out.append("      " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return out


def _is_reasons(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(x, str) for x in v.values())


def _reason_counts(key: str, reasons: dict[str, str]) -> str:
    """``not_folded: 3 (no-partner 2, not-raised 1)``: why nodes were left alone, by reason code."""
    codes = Counter(getattr(why, "code", "other") for why in reasons.values())
    return f"{key}: {len(reasons)} (" + ", ".join(f"{c} {n}" for c, n in codes.most_common()) + ")"


def call_tidy(p: Pass, model: Model) -> PassResult:
    """``p.call(model)``, then drop what the pass stopped reading: every constant, weight and node
    that something read before the pass and nothing reads after it (so a replaced weight is not
    written out beside its replacement). Constants the input itself left unread stay: that is the
    model's business, and ``dce`` removes them when asked. A torch model keeps its parameters and
    buffers (their names are its state_dict's)."""
    live_nodes = {id(n) for n in model.graph.all_nodes() if _is_read(n.graph, n.outputs)}
    live_consts = [(g, v) for g in model.graph.all_graphs() for v in g.initializers.values()
                   if _is_read(g, (v,))]
    result = p.call(model)
    for g in list(result.model.graph.all_graphs()):
        for n in reversed(g.nodes):  # consumers first, so a dead chain goes in one sweep
            if id(n) in live_nodes and n.outputs and not n.meta.get("side_effect") \
                    and not _is_read(g, n.outputs):
                g.remove(n)
    keep_state = result.model.source == "torch"
    for g, v in live_consts:
        if g.initializers.get(v.name) is v and not _is_read(g, (v,)) and not any(i is v for i in g.inputs) \
                and (v.kind == "const" or not keep_state):
            g.remove_const(v)
    return result


def _is_read(g, values) -> bool:
    return any(v.users or g.is_output(v) for v in values)


def count_nodes(model: Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


class PassManager:
    """Run passes in order; before each, establish what it ``requires`` (raising to core is such a
    step); after each step: verify the IR, then (``check``) compare outputs with the graph before
    it. A step over tolerance fails, naming the first node whose output diverges.

    ``checker`` is anything with ``compare(model, pass_name)``; by default one from
    ``refold.runtime.check`` on ``probe`` inputs (a dict or list of dicts; generated from the input
    types if omitted). ``count`` counts a model's nodes for the report (the CLI counts them as the
    written file will have them). ``progress(i, n, name)`` is called before each step.
    """

    def __init__(self, passes: list[Pass], *, check: bool = True, probe=None, atol: float = 1e-4,
                 rtol: float = 1e-4, dims: dict[str, int] | None = None,
                 check_limit_bytes: int = 512 << 20, verify: bool = True, checker=None,
                 count: Callable[[Model], int] | None = None,
                 progress: Callable[[int, int, str], None] | None = None):
        self.passes = list(passes)
        self.count = count or count_nodes
        self.progress = progress
        self.check = check
        self.checker = checker
        self.probe = probe
        self.atol, self.rtol = atol, rtol
        self.dims = dims
        self.check_limit_bytes = check_limit_bytes
        self.verify = verify

    def run(self, model: Model, report: Report | None = None) -> Report:
        report = report if report is not None else Report()
        steps: list[Pass] = []
        have: set[str] = set()
        for p in self.passes:  # the plan: each pass, after the steps that establish its requirements
            for prop in sorted(p.requires - have):
                steps.append(provider(prop))
                have.add(prop)
            steps.append(p)
            have |= p.ensures
        if self.verify:  # an invalid input is the input's fault, not the first pass's
            try:
                verify(model.graph)
            except VerifyError as e:
                where = model.meta.get("path") or "model"
                raise InvalidModelError(f"{where}: the input graph is not valid: {e}") from None
        if self.progress and steps:
            self.progress(0, len(steps), "numeric check: reference run" if self.check else steps[0].name)
        t0 = time.perf_counter()
        checker = self._make_checker(model) if self.check else None
        report.check_seconds = time.perf_counter() - t0
        if checker is not None:
            report.check_engine, report.check_note = checker.engine, checker.note
        nodes = self.count(model)  # each step's count after is the next one's before
        for i, p in enumerate(steps):
            if self.progress:
                self.progress(i, len(steps), p.name)
            model, nodes = self._step(p, model, checker, report, nodes)
        if self.progress:
            self.progress(len(steps), len(steps), "done")
        report.model = model
        return report

    def _step(self, p: Pass, model: Model, checker, report: Report, before: int) -> tuple[Model, int]:
        t0 = time.perf_counter()
        try:
            with gc_paused():  # graph-wide passes allocate much and free little
                result = call_tidy(p, model)
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
        after = self.count(model)
        rec = PassRecord(p.name, seconds, before, after, result.modified, dict(result.stats))
        t0 = time.perf_counter()
        if checker is not None and result.modified:
            rec.max_abs, rec.max_rel = checker.compare(model, p.name, strict=p.exact)
        elif checker is not None and checker.engine:
            rec.max_abs, rec.max_rel = 0.0, 0.0
        rec.check_seconds = time.perf_counter() - t0
        report.passes.append(rec)
        return model, after

    def _make_checker(self, model: Model):
        if self.checker is not None:
            return self.checker
        from refold.runtime.check import CheckSettings, make_checker

        return make_checker(model, CheckSettings(self.atol, self.rtol, self.probe, self.dims,
                                                 self.check_limit_bytes))


def provider(prop: str) -> Pass:
    """The step that establishes ``prop``: the first Pass class that ``ensures`` it."""
    try:
        return _PROVIDERS[prop]()
    except KeyError:
        raise UsageError(f"no pass establishes the property '{prop}'") from None
