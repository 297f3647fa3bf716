"""Types without running: onnx's shape inference (with data propagation) over the exported graph,
results copied back onto the IR's values, and for what it cannot type, one probe run in ONNX
Runtime. Known dims are never replaced by unknown ones."""
from __future__ import annotations

import onnx

from refold.frontends.onnx.exporter import stub_tensor, to_onnx
from refold.frontends.onnx.importer import type_from_proto
from refold.ir.graph import Model, Value



def _merge(v: Value, dtype, shape) -> bool:
    changed = False
    if dtype is not None and v.dtype is None:
        v.dtype, changed = dtype, True
    if shape is not None:
        if v.shape is None or len(v.shape) != len(shape):
            if v.shape is None:
                v.shape, changed = shape, True
        else:
            merged = tuple(a if isinstance(a, int) and a >= 0 else (b if b is not None else a)
                           for a, b in zip(v.shape, shape))
            if merged != v.shape:
                v.shape, changed = merged, True
    return changed


def infer_shapes(model: Model, max_rounds: int = 4, *, probe: bool = False) -> int:
    """Fill in dtypes and shapes, to a fixed point; returns how many values gained information.

    Rounds repeat because each one can resolve what the last left symbolic (onnx names unknown
    dims ``unk__N`` first and resolves them once the values upstream are typed). With ``probe``,
    what onnx cannot type is taken from one ONNX Runtime run (see ``_probe_fill``)."""
    total = 0
    for _ in range(max_rounds):
        n = _infer_round(model) + (_probe_fill(model) if probe else 0)
        total += n
        if not n:
            break
    return total


def _infer_round(model: Model) -> int:
    proto = to_onnx(model, stub_tensor)
    inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    found: dict[str, tuple] = {}

    def collect(gp):
        for vi in list(gp.value_info) + list(gp.output):
            found[vi.name] = type_from_proto(vi.type)
        for n in gp.node:
            for a in n.attribute:
                if a.HasField("g"):
                    collect(a.g)
                for sg in a.graphs:
                    collect(sg)

    collect(inferred.graph)
    changed = 0
    for g in model.graph.all_graphs():
        for n in g:
            for v in n.outputs:
                if v.kind != "omitted" and v.name in found:
                    changed += _merge(v, *found[v.name])
    return changed


def _probe_fill(model: Model, max_weight_bytes: int = 256 << 20) -> int:
    """Values onnx could not type (computed reshapes, custom ops) get the type they have in one
    ONNX Runtime run on probe inputs: the full shape when every graph input is static, else only
    the rank (the dims would belong to the probe, not the model)."""
    from refold.runtime.ort import OrtRunner
    from refold.runtime.probe import probe_inputs

    missing = [v for n in model.graph for v in n.outputs
               if v.kind != "omitted" and (v.shape is None or v.dtype is None)]
    if not missing or model.source != "onnx" or model.weight_bytes() > max_weight_bytes:
        return 0
    static = all(v.shape is not None and all(isinstance(d, int) and d >= 0 for d in v.shape)
                 for v in model.graph.inputs if v.const is None)
    try:
        got = OrtRunner(to_onnx(model)).run(probe_inputs(model), capture=[v.name for v in missing])
    except Exception:  # no runtime can run it: leave the types unknown
        return 0
    from refold.ir.dtypes import DType

    changed = 0
    for v in missing:
        a = got.get(v.name)
        if a is None or not hasattr(a, "shape"):
            continue
        shape = tuple(a.shape) if static else tuple([None] * a.ndim)
        try:
            dtype = DType.from_numpy(a.dtype)
        except Exception:
            dtype = None
        changed += _merge(v, dtype, shape)
    return changed
