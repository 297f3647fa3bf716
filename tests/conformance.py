"""Round-trip the ONNX node conformance suite that ships in the onnx package.

    python tests/conformance.py          # prints the tally and every case that does not pass

Each case's model goes ONNX -> refold IR -> ONNX; the result must be byte-identical, and its
expected outputs must still be reproduced by ONNX Runtime, or by onnx's reference evaluator where
ONNX Runtime cannot run the case. Then every model that passes
``onnx.checker.check_model(path, full_check=True)`` must pass it again after ``refold.load`` and
``refold.save`` (which checks on its own), counted and printed separately.
"""
from __future__ import annotations

import collections
import functools
import os
import tempfile
import warnings

import numpy as np

warnings.filterwarnings("ignore")


def _array(x):
    """Data sets hold numpy arrays, or TensorProtos for types numpy lacks (bf16, fp8, int4)."""
    import onnx
    from onnx import numpy_helper

    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, np.generic):  # a few cases feed numpy scalars
        return np.asarray(x)
    return x


def _close(expected, got, rtol, atol) -> bool:
    expected = _array(expected)
    if isinstance(expected, list):
        return isinstance(got, list) and len(expected) == len(got) and all(
            _close(e, g, rtol, atol) for e, g in zip(expected, got))
    if expected is None:
        return got is None
    e, g = np.asarray(expected), np.asarray(got)
    if e.shape != g.shape:
        return False
    if e.dtype == object or e.dtype.kind in "SU" or e.dtype == bool:
        return bool(np.array_equal(e, g))
    try:
        ef, gf = e.astype(np.float64), g.astype(np.float64)
    except (TypeError, ValueError):
        return bool(np.array_equal(e, g))
    return bool(np.allclose(ef, gf, rtol=rtol, atol=atol, equal_nan=True))


def _run(engine: str, model, inputs):
    names = [i.name for i in model.graph.input]
    init = {t.name for t in model.graph.initializer}
    feeds = {n: _array(v) for n, v in zip([n for n in names if n not in init], inputs)}
    if engine == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, feeds)


def reproduces(model, case) -> tuple[str | None, str]:
    """(engine that reproduces every data set, or None; why not)."""
    why = []
    for engine in ("onnxruntime", "onnx.reference"):
        try:
            ok = all(_close(list(outs), _run(engine, model, ins), case.rtol, case.atol)
                     for ins, outs in case.data_sets)
        except Exception as e:  # engine cannot load or run the op
            why.append(f"{engine}: {str(e).splitlines()[0][:100] if str(e) else type(e).__name__}")
            continue
        if ok:
            return engine, ""
        why.append(f"{engine}: outputs differ from the expected ones")
    return None, "; ".join(why)


@functools.lru_cache(maxsize=1)
def node_cases() -> tuple:
    """onnx's node test cases, built once per process (the models are generated, ~6 s)."""
    from onnx.backend.test.case.node import collect_testcases

    return tuple(collect_testcases())


def node_case(name: str):
    for case in node_cases():
        if case.name == name:
            return case
    raise KeyError(f"no onnx node test case named '{name}'")


def run_suite(limit: int | None = None):
    from refold.frontends.onnx.exporter import to_onnx
    from refold.frontends.onnx.importer import import_model

    tally = collections.Counter()
    failures = []
    cases = node_cases()[:limit]
    for case in cases:
        out = to_onnx(import_model(case.model, base_dir=None, where=case.name))
        identical = out.SerializeToString() == case.model.SerializeToString()
        engine, why = reproduces(out, case)
        if engine is None:
            # Same bytes: a runtime limitation, the original fails in the same way.
            tally["not reproduced by any engine (original too)" if identical else "FAILED"] += 1
            failures.append((case.name, identical, why))
        else:
            tally[f"passed on {engine}" + ("" if identical else " (not byte-identical)")] += 1
            if not identical:
                failures.append((case.name, identical, "not byte-identical"))
    return len(cases), tally, failures


def full_check_error(path: str) -> str | None:
    """First line of what ``check_model(path, full_check=True)`` says against the file, or None."""
    import onnx

    try:
        onnx.checker.check_model(path, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None


def full_check_suite(limit: int | None = None):
    """(cases, how many pass the full check before, how many of those pass it after refold's
    load + save, [(case, why) for those that do not], [(case, why) for cases that fail before]).

    Save runs the full check on its staged file; the written file is checked again here, since
    that is what a user of the saved model sees."""
    import refold

    cases = node_cases()[:limit]
    passed_before, passed_after, failures, invalid = 0, 0, [], []
    with tempfile.TemporaryDirectory() as d:
        src, out = os.path.join(d, "model.onnx"), os.path.join(d, "out.onnx")
        for case in cases:
            with open(src, "wb") as f:
                f.write(case.model.SerializeToString())
            why = full_check_error(src)
            if why is not None:
                invalid.append((case.name, why))
                continue
            passed_before += 1
            try:
                refold.save(refold.load(src), out)
            except Exception as e:  # load refused the file, or save's own check the result
                failures.append((case.name, str(e).splitlines()[0]))
                continue
            why = full_check_error(out)
            if why is None:
                passed_after += 1
            else:
                failures.append((case.name, why))
    return len(cases), passed_before, passed_after, failures, invalid


if __name__ == "__main__":
    total, tally, failures = run_suite()
    print(f"{total} cases")
    for k, v in sorted(tally.items()):
        print(f"  {v:5d}  {k}")
    for name, identical, why in failures:
        print(f"- {name} (byte-identical={identical}): {why}")
    total, before, after, failures, invalid = full_check_suite()
    print(f"onnx.checker full check: {before} of {total} models pass before, {after} of those "
          f"after refold load + save")
    for name, why in failures:
        print(f"- {name} fails after the round trip: {why[:300]}")
    for name, why in invalid:
        print(f"- {name} fails before (not counted): {why[:300]}")
