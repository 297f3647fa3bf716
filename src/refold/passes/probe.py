"""Running a graph on probe inputs: ONNX Runtime for ONNX graphs, onnx's reference evaluator where
ONNX Runtime lacks an op. Used by the PassManager's numeric check."""
from __future__ import annotations

import numpy as np
import onnx

from refold.errors import UnsupportedError
from refold.ir.dtypes import DType
from refold.ir.graph import Model


def probe_inputs(model: Model, *, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs from the graph's input types; symbolic dims take ``dims[name]`` or 1.

    Floats are standard normal, integers lie in [0, 4) (safe as indices and sizes), bools random.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.inputs:
        if v.const is not None:
            continue
        if v.dtype is None or v.shape is None:
            raise UnsupportedError(f"input '{v.name}' has no type or shape; pass probe inputs")
        # static dims as they are; symbolic ones from ``dims`` (default 1); -1 or unknown: 1
        shape = tuple(d if isinstance(d, int) and d >= 0 else (dims or {}).get(d, 1) if isinstance(d, str)
                      else 1 for d in v.shape)
        dt = v.dtype
        if dt.is_float:
            arr = rng.standard_normal(shape).astype(dt.numpy())
        elif dt == DType.BOOL:
            arr = rng.random(shape) < 0.5
        elif dt == DType.STRING:
            arr = np.array(["a"] * int(np.prod(shape)), dtype=object).reshape(shape)
        else:
            arr = rng.integers(0, 4, shape).astype(dt.numpy())
        feeds[v.name] = np.asarray(arr)
    return feeds


class OnnxRunner:
    """Runs an exported ModelProto; remembers which engine worked."""

    def __init__(self, proto: onnx.ModelProto, *, extra_outputs: list[str] = ()):
        self.proto = proto
        self.engine = None
        self._sess = None
        if extra_outputs:
            proto = _with_outputs(proto, extra_outputs)
            self.proto = proto
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        try:
            self._sess = ort.InferenceSession(proto.SerializeToString(), so,
                                              providers=["CPUExecutionProvider"])
            self.engine = "onnxruntime"
        except Exception as e:  # ORT lacks an op, or rejects the model
            self.ort_error = str(e).splitlines()[0][:300]
            from onnx.reference import ReferenceEvaluator

            try:
                self._ref = ReferenceEvaluator(proto)
                self.engine = "onnx.reference"
            except Exception as e2:
                raise UnsupportedError(f"cannot run model for the numeric check: ONNX Runtime: "
                                       f"{self.ort_error}; reference evaluator: "
                                       f"{str(e2).splitlines()[0][:200]}") from None

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.proto.graph.output]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.output_names
        if self._sess is not None:
            outs = self._sess.run(names, feeds)
        else:
            outs = self._ref.run(names, feeds)
        return dict(zip(names, outs))


def _with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output}
    types = {vi.name: vi for vi in m.graph.value_info}
    for n in names:
        if n in have:
            continue
        vi = types.get(n)
        if vi is not None:
            m.graph.output.append(vi)
        else:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    return m


def max_errors(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, float, str | None]:
    """(max abs error, max relative error, worst output name) over common outputs."""
    worst_abs, worst_rel, worst = 0.0, 0.0, None
    for k, a in ref.items():
        if k not in got:
            continue
        b = got[k]
        a = np.asarray(a)
        b = np.asarray(b)
        if a.shape != b.shape:
            return float("inf"), float("inf"), k
        if a.dtype == object or a.size == 0:
            if not np.array_equal(a, b):
                return float("inf"), float("inf"), k
            continue
        af, bf = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(af) & np.isnan(bf)
        same_inf = np.isinf(af) & (af == bf)
        diff = np.where(both_nan | same_inf, 0.0, np.abs(af - bf))
        diff = np.where(np.isnan(diff), np.inf, diff)
        e_abs = float(diff.max())
        scale = float(np.abs(np.where(np.isfinite(af), af, 0)).max())
        e_rel = e_abs / scale if scale > 0 else e_abs
        if e_abs > worst_abs or worst is None:
            worst_abs, worst = e_abs, k
        worst_rel = max(worst_rel, e_rel)
    return worst_abs, worst_rel, worst
