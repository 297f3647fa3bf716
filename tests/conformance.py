"""Round-trip the ONNX node conformance suite that ships in the onnx package.

    python tests/conformance.py          # prints the tally and every case that does not pass

Each case's model goes ONNX -> refold IR -> ONNX; the result must be byte-identical, and its
expected outputs must still be reproduced by ONNX Runtime, or by onnx's reference evaluator where
ONNX Runtime cannot run the case.
"""
from __future__ import annotations

import collections
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


def run_suite(limit: int | None = None):
    from onnx.backend.test.case.node import collect_testcases

    from refold.frontends.onnx.exporter import to_onnx
    from refold.frontends.onnx.importer import import_model

    tally = collections.Counter()
    failures = []
    cases = collect_testcases()[:limit]
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


if __name__ == "__main__":
    total, tally, failures = run_suite()
    print(f"{total} cases")
    for k, v in sorted(tally.items()):
        print(f"  {v:5d}  {k}")
    for name, identical, why in failures:
        print(f"- {name} (byte-identical={identical}): {why}")
