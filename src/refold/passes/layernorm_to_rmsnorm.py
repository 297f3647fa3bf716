"""LayerNorm -> RMSNorm, losslessly ("Pre-RMSNorm and Pre-CRMSNorm Transformers").

LN(x) = RMSNorm(x - mean(x)). If every writer to the residual stream produces zero-mean vectors,
the stream stays zero-mean and each LayerNorm reading it is an RMSNorm with the same gain.

For each LayerNorm the analysis walks its input back through the stream: additions, layout ops
that keep the normalized axis whole (reshape, transpose, flatten, concat along another axis,
dropout in eval, expand), down to the writers, which must be linear in constants: linear / gemm /
matmul / conv weights and biases, embedding tables, constants (position embeddings, class tokens).
Each constant is recentred along the axis that becomes the normalized one. Every value whose
content changes may be read only by LayerNorms (mean-invariant) or by the stream itself; anything
else (a raw-stream reader, a graph output, a non-linear writer, a Post-LN block) stops the
conversion for that LayerNorm, and the report says why.

With ``compress=True`` (CRMSNorm) the stream is also stored in d-1 coordinates: a zero-mean
d-vector is its first d-1 coordinates, the last being minus their sum. Each writer drops its last
output feature, every shape vector that spells the width says d-1 (``stream_width``), and each
LayerNorm becomes ``crms_norm``, which recovers the norm and the dropped coordinate.

The op each converted norm runs as is the fastest exact one measured on the model's runtime
(``target=auto``; benchmarks/layernorm_rmsnorm.py; the report's ``emitted`` says which): in ONNX,
RMSNormalization at opset 23 and below it a decomposed form ONNX Runtime fuses into its
SimplifiedLayerNormalization kernel; in torch graphs of a CPU module the LayerNorm kernel itself,
which on the now zero-mean stream computes the RMSNorm and on CPU beats ``aten.rms_norm`` (1.4-3x
its time), so there the pass recentres the stream and folds biases and never slows the model down;
for a module on CUDA (``model.meta["torch.device"]``) ``aten.rms_norm``. ``target=rms`` asks for the
RMSNorm op in every world (``aten.rms_norm``; RMSNormalization, written out below opset 23), for a
GPU or for a GraphModule exported onward; with ``compress`` each ``crms_norm`` then runs as that op
on the d-vector it recovers. ``target=ort`` is ONNX Runtime's SimplifiedLayerNormalization.
"""
from __future__ import annotations

import numpy as np

from refold.ir.graph import CORE, Graph, Model, Node, Value
from refold.ir.rewrite import Builder
from refold.ir.tensor import Tensor
from refold.passes.analysis.residual_stream import ResidualStream, StreamPlan
from refold.passes.analysis.stream_width import set_elements
from refold.errors import UsageError
from refold.passes.base import RAISED, Option, Pass, PassResult, Reason
from refold.runtime.shapes import infer_shapes


def _new_const(graph: Graph, arr: np.ndarray, like: Value | None, prefix: str, sources: list[str]) -> Value:
    """A constant replacing ``like``: a parameter or buffer again (same torch name) if it was one."""
    new = graph.add_const(Tensor.from_array(np.asarray(arr, order="C")), prefix=prefix)  # keeps 0-d scalars 0-d
    if like is not None:
        new.kind = like.kind
        for k in ("torch.target", "requires_grad", "torch.persistent"):
            if k in like.meta:
                new.meta[k] = like.meta[k]
    new.meta["provenance"] = {"rule": "layernorm-to-rmsnorm", "sources": sources}
    return new


def _recentre(arr: np.ndarray, axis: int) -> np.ndarray:
    a = np.asarray(arr, np.float64)
    return (a - a.mean(axis=axis, keepdims=True)).astype(arr.dtype)


class LayerNormToRMSNorm(Pass):
    """Turn LayerNorms that read a provably zero-mean stream into RMSNorms, exactly.

    >>> LayerNormToRMSNorm().name
    'layernorm-to-rmsnorm'
    """

    name = "layernorm-to-rmsnorm"
    description = "recentre residual-stream writers so Pre-LN LayerNorms become RMSNorms, exactly"
    requires = frozenset({RAISED})

    options = (
        Option("compress", bool, False, "CRMSNorm: store the zero-mean stream in d-1 coordinates"),
        Option("target", str, "auto", "auto: the fastest exact form measured on the model's runtime "
               "(RMSNormalization at opset 23, below it a decomposed form ONNX Runtime fuses; in torch "
               "graphs aten.rms_norm for a module on CUDA, on CPU the LayerNorm kernel on the now zero-mean "
               "stream, faster there than aten.rms_norm); ort: ONNX Runtime's SimplifiedLayerNormalization; "
               "rms: the RMSNorm op in every world (aten.rms_norm, RMSNormalization at opset 23, written "
               "out below it)", choices=("auto", "ort", "rms")),
    )

    def validate(self) -> None:
        if self.compress and self.target == "ort":
            raise UsageError("layernorm-to-rmsnorm: compress=true and target=ort contradict each other: "
                             "ONNX Runtime has no CRMSNorm op; choose one")

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        lns = [n for n in graph if n.domain == CORE and n.op == "layer_norm"]
        if model.source == "onnx" and any(ln.inputs[0].rank is None for ln in lns):
            infer_shapes(model, probe=True)  # the stream analysis needs ranks onnx alone may not give
        analysis = ResidualStream(graph)
        plans: dict[Node, StreamPlan] = {}
        reasons: dict[str, str] = {}
        for ln in lns:
            if ln.attrs.get("axis", -1) != -1:
                reasons[ln.name] = Reason(f"normalizes over axes from {ln.attrs['axis']}, not only the last",
                                          "axis-not-last")
                continue
            skip = analysis.post_ln(ln)
            if skip is not None:
                reasons[ln.name] = Reason(f"its output is the residual stream itself, read by {skip.label()} "
                                          f"(Post-LN placement): the model is left as it is", "post-ln")
                continue
            plan = StreamPlan()
            why = analysis.center(ln.inputs[0], ln.inputs[0].rank - 1 if ln.inputs[0].rank else -1, plan)
            if why:
                reasons[ln.name] = Reason(why, "stream-not-zero-mean")
            else:
                plans[ln] = plan
        # Readers are checked against everything that changes; a failing plan is dropped, which can
        # make others fail in turn: iterate to a fixed point.
        changed = True
        while changed:
            changed = False
            allowed: dict[int, Value] = {}
            axes: dict[int, int] = {}
            for p in plans.values():
                allowed.update(p.values)
                axes.update(p.axes)
            converted = {id(ln) for ln in plans} if self.compress else None
            for ln, p in list(plans.items()):
                why = analysis.readers_ok(p, allowed, converted)
                if why is not None:
                    why = Reason(why, "raw-stream-reader")
                elif self.compress:
                    why = analysis.compress_ok(ln, p, axes)
                    why = Reason(why, "compress-refused") if why else None
                if why:
                    reasons[ln.name] = why
                    del plans[ln]
                    changed = True
        self._lower_to, emitted = self._emitted(model)
        already = 0
        if self._lower_to == "layer_norm":  # e.g. its own output read back: LayerNorms on a zero-mean
            for ln, p in list(plans.items()):  # stream, no bias left to fold: nothing would change
                if _centred(p) and not _can_fold(graph, ln):
                    del plans[ln]
                    already += 1
        if not plans:  # raising to core ops alone is exact and not a change worth reporting
            return PassResult(model, False, {"converted": 0, "rewrites": 0, "layer_norms": len(lns),
                                             **({"already_zero_mean": already} if already else {}),
                                             "not_converted": reasons})
        total = StreamPlan()
        for p in plans.values():
            total.merge(p)
        width = None
        if self.compress:
            width = plans[next(iter(plans))].width
            self._compress_layout(graph, total, width)
        self._apply_edits(graph, total, width)
        self._folded = 0
        rewrites = sum(self._replace(graph, ln, model) for ln in plans)
        if self.target == "ort":
            model.meta["target_runtime"] = "onnxruntime"  # ORT-only ops: checked with ORT on save
        return PassResult(model, True, {"converted": len(plans), "rewrites": rewrites, "layer_norms": len(lns),
                                        "emitted": emitted, **({"already_zero_mean": already} if already else {}),
                                        "recentred_constants": len(total.edits), "compressed": self.compress,
                                        "biases_folded_into_linears": self._folded,
                                        "not_converted": reasons})

    @staticmethod
    def _compress_layout(graph: Graph, plan: StreamPlan, d: int) -> None:
        """Shape vectors and sizes that spell the width now say d-1; stream values are d-1 wide."""
        positions: dict[tuple[int, int], tuple[Node, int, set[int]]] = {}
        for node, i, j in plan.shape_edits:
            positions.setdefault((id(node), i), (node, i, set()))[2].add(j)
        for node, i, pos in positions.values():
            old = node.inputs[i]
            node.set_input(i, _new_const(graph, set_elements(old.const.numpy(), pos, d - 1), old,
                                         f"{old.name}_compressed", [old.name]))
            graph.release_const(old)
        for node, axis in plan.arg_edits:
            args = list(node.attrs["args"])
            args[1] = [d - 1 if k == axis else s for k, s in enumerate(args[1])]
            node.attrs["args"] = tuple(args)
        for v, axis in [(v, plan.axes[k]) for k, v in plan.values.items()] + list(plan.derived.values()):
            if v.shape is not None and v.shape[axis] == d:
                v.shape = tuple(d - 1 if k == axis else s for k, s in enumerate(v.shape))

    @staticmethod
    def _apply_edits(graph: Graph, plan: StreamPlan, width: int | None = None) -> None:
        """Recentre each planned constant; with ``width`` also drop its last stream coordinate."""
        made: dict[tuple[int, int], Value] = {}
        replaced: list[Value] = []
        for node, i, axis in plan.edits.values():
            old = node.inputs[i]
            replaced.append(old)
            key = (id(old), axis)
            if key not in made:
                arr = _recentre(old.const.numpy(), axis)
                if width is not None:  # a zero-mean vector is its first d-1 coordinates
                    arr = np.take(arr, np.arange(width - 1), axis=axis)
                made[key] = _new_const(graph, arr, old, f"{old.name}_centered", [old.name])
            node.set_input(i, made[key])
        for old in replaced:  # originals nothing reads any more (parameters stay: the exporter decides)
            graph.release_const(old)

    def _emitted(self, model: Model) -> tuple[str | None, str]:
        """(the rms_norm nodes' ``lower_to``, what the report says is emitted), chosen by measurement
        (benchmarks/layernorm_rmsnorm.py, CPU): where no RMSNorm op beats the LayerNorm kernel, the
        LayerNorm kernel it is, on the zero-mean stream, where it computes the RMSNorm exactly."""
        torch_world = model.source == "torch"
        if self.compress:
            if self.target == "rms" and (torch_world or model.opset >= 23):
                # CRMSNorm(x) = RMSNorm([x, -sum x]) * gamma: the dropped coordinate, then the op
                return "rms_norm", "crms_norm as " + ("aten.rms_norm" if torch_world else "RMSNormalization")
            return None, "crms_norm"
        if self.target == "ort":
            return "ort", "SimplifiedLayerNormalization"
        if torch_world:
            device = model.meta.get("torch.device", "cpu")
            if self.target == "rms":
                return None, "aten.rms_norm"
            if device == "cuda":  # on CUDA aten.rms_norm runs a fused kernel (_fused_rms_norm; not timed here)
                return None, "aten.rms_norm (the module is on CUDA)"
            # aten.rms_norm measured 1.4-3x the LayerNorm kernel on CPU; other devices are unmeasured
            return "layer_norm", f"layer_norm (fastest exact form on torch {device.upper()})"
        if model.opset >= 23:
            return None, "RMSNormalization"
        # Pow/ReduceMean/Add/Sqrt/Div/Mul, which ONNX Runtime fuses into SimplifiedLayerNormalization
        return None, "decomposed rms_norm (ORT fuses it)"

    def _replace(self, graph: Graph, ln: Node, model: Model) -> bool:
        # LN(x) = RMSNorm(x) * gamma + beta  when mean(x) = 0 along the normalized axis
        x, scale, bias = (list(ln.inputs) + [None, None])[:3]
        if self._lower_to == "layer_norm" and bias is not None and not _can_fold(graph, ln):
            return False  # the LayerNorm kernel, bias included, is the fastest exact form: keep the node
        b = Builder(graph, ln)
        ins = [x] + ([scale] if scale is not None else [])
        op = "core.crms_norm" if self.compress else "core.rms_norm"
        y = b.op(op, *ins, axis=-1, epsilon=ln.attrs.get("epsilon", 1e-5))
        rms = y.producer
        if self._lower_to is not None:
            rms.meta["lower_to"] = self._lower_to
        if bias is not None:
            y = b.op.core.add(y, bias)
        for n in b.created:
            n.meta["provenance"] = {"rule": "layernorm-to-rmsnorm", "sources": [ln.name]}
        if y.dtype is None:
            y.dtype, y.shape = ln.outputs[0].dtype, ln.outputs[0].shape
        graph.substitute(ln.outputs[0], y)
        graph.remove(ln)
        if bias is not None and _fold_shift(graph, y.producer, ln.name):
            self._folded += 1
        return True


def _centred(plan: StreamPlan) -> bool:
    """Every constant the plan would recentre is zero-mean already (to float rounding)."""
    for node, i, axis in plan.edits.values():
        a = node.inputs[i].const.numpy().astype(np.float64)
        if a.size and np.abs(a.mean(axis=axis)).max() > 1e-6 * max(float(np.abs(a).max()), 1e-30):
            return False
    return True


def _can_fold(graph: Graph, ln: Node) -> bool:
    """Whether _fold_shift would fold this LayerNorm's bias into the linears reading it."""
    beta = ln.inputs[2] if len(ln.inputs) > 2 else None
    y = ln.outputs[0]
    if beta is None or beta.const is None or beta.rank != 1 or graph.is_output(y):
        return False
    targets: list[Node] = []
    return _shift_targets(y, beta.shape[0], targets) and bool(targets)


def _shift_targets(v: Value, d: int, out: list[Node]) -> bool:
    """Collect the linear readers of ``v`` (through reshapes keeping the last axis) a constant shift
    of ``v`` along its last axis can fold into; False if any reader is something else."""
    for u in v.users:
        if u.domain != CORE or u.inputs[0] is not v or any(x is v for x in u.inputs[1:]):
            return False
        o = u.outputs[0]
        if u.op == "reshape":
            if o.shape is None or not o.shape or o.shape[-1] != d or o.users == [] or not _shift_targets(o, d, out):
                return False
        elif u.op == "linear" and u.inputs[1].const is not None:
            out.append(u)
        elif (u.op == "gemm" and u.inputs[1].const is not None and not u.attrs.get("transA")
              and u.attrs.get("alpha", 1.0) == 1.0 and u.attrs.get("beta", 1.0) == 1.0
              and (len(u.inputs) < 3 or u.inputs[2] is None or u.inputs[2].const is not None)):
            out.append(u)
        elif u.op == "matmul" and u.inputs[1].const is not None and u.inputs[1].rank == 2 and len(o.users) == 1:
            add = o.users[0]
            if not (add.domain == CORE and add.op == "add" and any(x.const is not None and x.rank == 1 for x in add.inputs)):
                return False
            out.append(u)
        else:
            return False
    return True


def _fold_shift(graph: Graph, add: Node, source: str) -> bool:
    """(x + beta) @ W + b  ==>  x @ W + (b + beta @ W): the LayerNorm bias joins the next linear's."""
    x, beta = add.inputs
    y = add.outputs[0]
    if beta.const is None or beta.rank != 1 or graph.is_output(y):
        return False
    targets: list[Node] = []
    if not _shift_targets(y, beta.shape[0], targets) or not targets:
        return False
    bvec = beta.const.numpy().astype(np.float64)
    for t in targets:
        w = t.inputs[1].const.numpy().astype(np.float64)
        if t.op == "linear" or (t.op == "gemm" and t.attrs.get("transB")):
            shift, node, i = w @ bvec, t, 2   # W is [out, in]
        else:
            shift, node, i = bvec @ w, t, 2   # W is [in, out]
        if t.op == "matmul":
            node = t.outputs[0].users[0]
            i = next(k for k, v in enumerate(node.inputs) if v.const is not None and v.rank == 1)
        old = node.inputs[i] if len(node.inputs) > i else None
        base = old.const.numpy() if old is not None else np.zeros_like(shift)
        dtype = base.dtype if old is not None else beta.const.numpy().dtype
        node.set_input(i, _new_const(graph, (base.astype(np.float64) + shift).astype(dtype), old,
                                     f"{old.name if old is not None else t.name}_shifted", [source, beta.name]))
        if old is not None:
            graph.release_const(old)
    graph.substitute(y, x)
    graph.remove(add)
    graph.release_const(beta)
    return True
