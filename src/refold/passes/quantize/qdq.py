"""The quantize pass: QuantizeLinear / DequantizeLinear pairs around conv, conv-transpose, gemm,
linear and matmul, calibrated on streamed data, in the QDQ form ONNX Runtime and TensorRT consume.

    x -> conv(x, W, b)   ==>   x -> Q(s_x, z_x) -> DQ(s_x, z_x) -> conv(., DQ(W_q, s_w), DQ(b_q, s_x*s_w))

Weights are quantized here (int8, symmetric, restricted to [-127, 127], per output channel on the
axis the profile gives); activations get a Q/DQ pair per tensor, shared by every quantized reader;
biases become int32 with scale s_x * s_w where that fits. Every emitted pair is checked
(``params.check_pair``). The report lists each quantized node's output SQNR against the float
model on the calibration data, worst first.

>>> Quantize(calibration="entropy", profile="tensorrt", data=batches)   # doctest: +SKIP
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from refold.errors import UnsupportedError, UsageError
from refold.ir.graph import CORE, Graph, Model, Node, Value
from refold.passes.base import RAISED, Option, Pass, PassResult, Reason
from refold.passes.quantize.calibration import METHODS, MIN_SAMPLES, Calibrator
from refold.passes.quantize.insert import Inserter, numpy_of
from refold.passes.quantize.opset import blockers, raise_opset
from refold.passes.quantize.params import (activation_params, check_pair, quantize_bias, quantize_weight,
                                           weight_params)
from refold.passes.quantize.sharing import ScaleGroups, is_pool, is_relu, pass_through_source

TARGETS = ("conv", "conv_transpose", "gemm", "linear", "matmul")
PER_CHANNEL_OPSET = 13
WIDE_OPSET = 21  # QuantizeLinear with int16 / uint16
GROUPS = ("auto", "oc", "oc32", "oc64", "oc128", "ic32", "ic64", "ic128")
SQNR_BATCHES = 4  # calibration batches kept to measure each layer's error afterwards


def _weight_axis(node: Node, w: Value, profile: str) -> int | None:
    """The output-channel axis of ``node``'s weight, by op and layout (and profile)."""
    rank = len(w.shape) if w.shape is not None else None
    if node.op == "conv":
        return 0
    if node.op == "conv_transpose":  # [Cin, Cout/g, k...]: ORT quantizes axis 1, TensorRT axis 0
        return 0 if profile == "tensorrt" else 1
    if node.op == "gemm":
        return 0 if node.attrs.get("transB", 0) else 1
    if node.op == "linear":
        return 0
    if node.op == "matmul" and rank is not None and rank >= 2:
        return rank - 1 if node.inputs[1] is w else rank - 2
    return None


def _weight_index(node: Node) -> int | None:
    """Which input is the constant weight (None: activations only)."""
    if node.op in ("conv", "conv_transpose", "linear", "gemm"):
        w = node.inputs[1]
        return 1 if w is not None and w.const is not None else None
    if node.op == "matmul":
        for i in (1, 0):
            if node.inputs[i].const is not None:
                return i
    return None


def _activation_inputs(node: Node) -> list[int]:
    widx = _weight_index(node)
    n = len(node.inputs) if node.op == "concat" else 2 if node.op in ("gemm", "matmul", "add") else 1
    return [i for i in range(n) if i != widx and node.inputs[i] is not None
            and node.inputs[i].const is None and node.inputs[i].dtype is not None
            and node.inputs[i].dtype.is_float]


class Quantize(Pass):
    """Insert Q/DQ pairs (static post-training quantization), calibrated on ``data``.

    ``data``: an iterable of feed dicts, tensors or argument tuples, or a DataLoader; each item
    is one batch (shapes may vary). Read once, as a stream.
    """

    name = "quantize"
    description = "insert calibrated QuantizeLinear/DequantizeLinear pairs (int8 QDQ for ONNX Runtime or TensorRT)"
    requires = frozenset({RAISED})
    exact = False  # changes outputs by design: the check reports the error, the report the SQNR
    options = (
        Option("calibration", str, "minmax", "how activation ranges are chosen (zeroq: data-free, on inputs "
               "distilled from the BatchNorm statistics)", choices=METHODS + ("zeroq",)),
        Option("zeroq_batch", int, 32, "calibration=zeroq: inputs distilled"),
        Option("zeroq_iterations", int, 500, "calibration=zeroq: Adam steps"),
        Option("zeroq_save", str, "", "calibration=zeroq: save the distilled batch to this .npz"),
        Option("zeroq_shape", str, "", "calibration=zeroq: input shape without the batch where the model's "
               "is symbolic, e.g. 3x48x192 (several inputs: x=3x48x192+y=...)"),
        Option("percentile", float, 99.999, "for calibration=percentile: the percentile of |x| kept"),
        Option("profile", str, "ort", "ort: uint8 asymmetric activations, what ONNX Runtime fuses; "
               "tensorrt: int8 symmetric, zero point 0, no bias quantization", choices=("ort", "tensorrt")),
        Option("activations", str, "auto", "activation type (auto: uint8 for ort, int8 for tensorrt; "
               "int16 / uint16 need opset 21)", choices=("auto", "uint8", "int8", "int16", "uint16")),
        Option("per_channel", bool, True, "weights per output channel (else per tensor)"),
        Option("weight_only", bool, False, "quantize weights only; no calibration data needed"),
        Option("weights", str, "int8", "weight type", choices=("int8", "int4")),
        Option("bits", str, "uniform", "mixed: weight bits per layer by HAWQ-V2 (Hessian trace sensitivity) "
               "within budget_mb or avg_bits", choices=("uniform", "mixed")),
        Option("bit_choices", str, "4+8", "bits=mixed: the bit-widths a layer may get, '+'-separated"),
        Option("budget_mb", float, 0.0, "bits=mixed: weight size budget in MB (10^6 bytes)"),
        Option("avg_bits", float, 0.0, "bits=mixed: budget as average bits per weight"),
        Option("hessian_iterations", int, 100, "bits=mixed: most Hutchinson steps per trace estimate"),
        Option("group", str, "auto", "weight_only: one scale per output channel (oc), per block of 32/64/128 "
               "input channels within each output channel (oc32, oc64, oc128: what ONNX Runtime's MatMulNBits "
               "runs), or per block of 32/64/128 output channels within each input channel (ic32, ic64, ic128: "
               "AdaDim's per-input-channel groups, which isolate outlier input channels); auto: int8 per "
               "output channel, int4 chosen per layer by the lower output error on the data (weight error "
               "without data)", choices=GROUPS),
        Option("exclude", str, "", "node names or core op types to leave in float, separated by '+'"),
        Option("attention", bool, True, "quantize matmuls of two activations (attention scores and context)"),
        Option("adds", str, "auto", "quantize both inputs of residual adds (auto: for tensorrt, which "
               "wants Q/DQ on the residual branch to fuse conv+add)", choices=("auto", "on", "off")),
        Option("concat", bool, False, "quantize concat: its inputs and output share one scale"),
        Option("pooling", bool, False, "quantize the inputs of max and average pooling (an int8 pool)"),
    )

    def __init__(self, *args, data: Iterable[Any] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.data = data

    def validate(self) -> None:
        if self.profile == "tensorrt" and self.activations not in ("auto", "int8"):
            raise UsageError(f"quantize: profile=tensorrt takes int8 activations (zero point 0), "
                             f"not {self.activations}")
        if self.group not in ("auto", "oc") and not self.weight_only:
            raise UsageError(f"quantize: group={self.group} is for weight_only=true (with activations "
                             f"quantized, weights are per output channel)")
        if not 0 < self.percentile <= 100:
            raise UsageError(f"quantize: percentile={self.percentile} is not in (0, 100]")

    # -- the pass ---------------------------------------------------------------------------
    def _select(self, graph: Graph) -> tuple[list[Node], dict[str, Reason]]:
        """The nodes to quantize, in graph order, and why the others were passed over."""
        excluded = {e.strip() for e in self.exclude.split("+") if e.strip()}
        skipped: dict[str, Reason] = {}
        targets = []
        adds = self.adds == "on" or (self.adds == "auto" and self.profile == "tensorrt")
        for n in graph:
            key = n.name or n.outputs[0].name
            if adds and n.domain == CORE and n.op == "add" and len(_activation_inputs(n)) == 2:
                kind = "add"  # x + f(x): both branches quantized, one scale each
            elif self.concat and n.domain == CORE and n.op == "concat":
                kind = "concat"
            elif self.pooling and is_pool(n):
                kind = "pool"
            elif n.domain == CORE and n.op in TARGETS:
                kind = n.op
            else:
                if n.dialect == "onnx" and n.op in ("QuantizeLinear", "DequantizeLinear", "QLinearConv",
                                                    "QLinearMatMul", "MatMulInteger", "ConvInteger"):
                    skipped[key] = Reason(f"{n.op}: the model is already quantized here; left as it is",
                                          "already-quantized")
                continue
            if key in excluded or n.op in excluded or (kind == "pool" and "pool" in excluded):
                skipped[key] = Reason("excluded by the user", "excluded")
            elif any(v is not None and v.producer is not None and v.producer.op in ("dequantize_linear",
                     "DequantizeLinear") for v in n.inputs):
                skipped[key] = Reason("already reads dequantized values", "already-quantized")
            elif not _activation_inputs(n) and _weight_index(n) is None:
                skipped[key] = Reason("no float input to quantize", "nothing-to-quantize")
            elif kind == "concat" and len(_activation_inputs(n)) != len(n.inputs):
                skipped[key] = Reason("a concat with constant inputs stays float (one scale for all "
                                      "inputs would be fitted to the constant)", "constant-input")
            elif n.op == "matmul" and _weight_index(n) is None and not self.attention:
                skipped[key] = Reason("a matmul of two activations (attention=false)", "excluded")
            else:
                targets.append(n)
        return targets, skipped

    def _opset(self, model: Model, per_channel: bool, act_type: str, notes: list[str]) -> bool:
        """Raise the model's opset where the Q/DQ it needs require it; returns per_channel (False
        where a per-channel pair cannot be had)."""
        wide = act_type in ("int16", "uint16")
        need = WIDE_OPSET if wide else PER_CHANNEL_OPSET if per_channel else 10
        if model.opset >= need:
            return per_channel
        found = blockers(model, need)
        if found:  # ranks decide some of them (softmax axes): type what onnx could not
            from refold.runtime.shapes import infer_shapes

            infer_shapes(model, probe=True)
            found = blockers(model, need)
        if found and wide:
            raise UnsupportedError(f"quantize: {act_type} activations need opset {WIDE_OPSET}; "
                                   f"{', '.join(found)} change meaning between opset {model.opset} and it")
        if found and need == PER_CHANNEL_OPSET:
            notes.append(f"per-tensor weights: per-channel Q/DQ needs opset {PER_CHANNEL_OPSET} and "
                         f"{', '.join(found)} change meaning between opset {model.opset} and it")
            return self._opset(model, False, act_type, notes)
        if found:
            raise UnsupportedError(f"quantize: QuantizeLinear needs opset 10; the model is at {model.opset}")
        old = model.opset
        raise_opset(model, need)
        notes.append(f"opset raised from {old} to {need} for {act_type if wide else 'per-channel'} Q/DQ "
                     f"(no op of the model changes meaning)")
        return per_channel

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        targets, skipped = self._select(graph)
        if not targets:
            return PassResult(model, False, {"quantized": 0, "not_quantized": skipped})

        if self.weight_only and (self.weights == "int4" or self.group not in ("auto", "oc")):
            from refold.passes.quantize.weight_only import quantize_weights

            return quantize_weights(self, model, targets, skipped)
        act_type = self.activations if self.activations != "auto" else (
            "int8" if self.profile == "tensorrt" else "uint8")
        notes: list[str] = []
        per_channel = self._opset(model, self.per_channel, "int8" if self.weight_only else act_type, notes)
        symmetric = self.profile == "tensorrt"
        act_values: dict[str, Value] = {}
        for n in targets:
            for i in _activation_inputs(n):
                act_values.setdefault(n.inputs[i].name, n.inputs[i])
        # ONNX Runtime turns DQ -> conv -> Q into an int8 conv only when the output is quantized
        # too; without the Q it runs a float conv and dequantizes the weight on every run
        # (1.8x slower on PP-OCR rec). A relu in between stays, and its output is the one
        # quantized (ORT fuses conv -> relu -> Q where the zero point allows; the relu is never
        # dropped here, which is wrong for signed activations, onnxruntime#9425). TensorRT wants
        # pairs on inputs only.
        requant: set[str] = set()
        if self.profile == "ort" and not self.weight_only:
            for n in targets:
                out = n.outputs[0]
                readers = [r for r, _ in out.uses()]
                if len(readers) == 1 and is_relu(readers[0]) and not graph.is_output(out):
                    out = readers[0].outputs[0]
                if out.dtype is not None and out.dtype.is_float and not graph.is_output(out) and out.uses():
                    act_values.setdefault(out.name, out)
                    requant.add(out.name)
        groups = ScaleGroups(act_values)
        for name, v in act_values.items():  # pass-through ops keep their input's scale
            src = pass_through_source(v, act_values)
            if src is not None:
                groups.union(name, src)
        for n in targets:  # concat inputs and output: one scale
            if n.op == "concat" and n.domain == CORE:
                for i in range(len(n.inputs)):
                    groups.union(n.inputs[0].name, n.inputs[i].name)
                if n.outputs[0].name in act_values:
                    groups.union(n.inputs[0].name, n.outputs[0].name)

        from refold.runtime import runner_for

        kept: list = []  # (batch, float outputs of every target) for the first few batches
        ranges: dict[str, tuple[float, float]] = {}
        sparse: list[str] = []  # activations with too few values for the method: min / max
        data, distilled = self.data, None
        if not self.weight_only and self.calibration == "zeroq":
            data, distilled = self._distil(model, notes)
        if not self.weight_only:
            if data is None:
                raise UsageError("quantize: calibration needs data: Quantize(data=...) in Python, "
                                 "--data FILE.npz on the command line (or weight_only=true)")
            outs = list(dict.fromkeys(n.outputs[0].name for n in targets))
            ranges, sparse = self._calibrate(runner_for(model), data, list(act_values), outs, kept, act_type)

        weight_bits, mixed = self._weight_bits(model, targets, per_channel, kept)
        sizes = {w.name: w.const.numpy().size for w in _weights(targets)}  # before the weights are replaced
        b = Inserter(graph)
        dq_of: dict[str, Value] = {}
        if not self.weight_only:
            for name, v in act_values.items():  # relu(x) with x >= 0 is x: one scale
                p = v.producer
                if p is not None and is_relu(p) and p.inputs[0].name in act_values and ranges[p.inputs[0].name][0] >= 0:
                    groups.union(name, p.inputs[0].name)
            ranges = groups.ranges(ranges)
        params: dict[str, tuple] = {}  # group -> (scale, zero point) constants, made once
        for name, v in act_values.items():
            if self.weight_only:
                break
            root = groups.find(name)
            if root not in params:
                scale, zp = activation_params(*ranges[name], act_type, symmetric)
                check_pair(name, scale, zp, None, None)
                params[root] = b.params(scale, zp, root)
            dq_of[name] = b.qdq(v, *params[root])
            if name in requant:  # every reader of a quantized op's output reads it requantized
                q_node = dq_of[name].producer.inputs[0].producer
                for reader, i in list(v.uses()):
                    if reader is not q_node:
                        reader.set_input(i, dq_of[name])
        weights: dict[int, Value] = {}
        bias_float: dict[str, Reason] = {}
        quantized = []
        for n in targets:
            key = n.name or n.outputs[0].name
            for i in _activation_inputs(n):
                if n.inputs[i].name in dq_of:
                    n.set_input(i, dq_of[n.inputs[i].name])
            widx = _weight_index(n)
            w_scale = None
            if widx is not None:
                w = n.inputs[widx]
                axis = self._axis(n, w, per_channel)
                cached = weights.get(id(w))  # a weight shared by several nodes is quantized once
                if cached is None:
                    bits = weight_bits.get(w.name, 8)
                    scale, zp = weight_params(w.const.numpy(), axis, bits)
                    scale = self._fit_bias(n, scale, axis)
                    check_pair(w.name, scale, zp, axis, None if axis is None else w.shape[axis])
                    q = quantize_weight(w.const.numpy(), scale, axis, bits)
                    cached = b.dequantized_const(w, q, scale, zp, axis)
                    weights[id(w)] = cached
                n.set_input(widx, cached)
                w_scale = cached.producer.inputs[1].const.numpy()
            self._bias(n, dq_of, w_scale, b, bias_float)
            b.tag(n, key)
            quantized.append(key)

        stats: dict[str, Any] = {"quantized": len(quantized), "activations": len(dq_of),
                                 "activation_type": None if self.weight_only else act_type,
                                 "shared_scales": 0 if self.weight_only else groups.shared(),
                                 "weights": len(weights), "calibration": "weight_only" if self.weight_only
                                 else self.calibration, "profile": self.profile,
                                 "per_channel": per_channel, "not_quantized": skipped,
                                 "bias_kept_float": bias_float, "notes": notes}
        if distilled is not None:
            stats["zeroq"] = distilled
        if weight_bits:
            stats["weight_bits"] = weight_bits
            stats["weights_mb"] = round(sum(n * weight_bits.get(k, 8) for k, n in sizes.items()) / 8e6, 6)
        if mixed:
            stats.update(mixed)
        if sparse:
            notes.append(f"{len(sparse)} activation(s) had under {MIN_SAMPLES} calibration values "
                         f"and use min/max instead of {self.calibration}")
        if kept:
            sqnr = self._sqnr(model, quantized, targets, kept)
            stats["sqnr_db"] = sqnr
            if sqnr:
                stats["worst_sqnr_db"] = round(min(sqnr.values()), 2)
        stats["tables"] = self._tables(stats)
        return PassResult(model, True, stats)

    def _calibrate(self, runner, data: Iterable[Any], names: list[str], outputs: list[str], kept: list,
                   act_type: str) -> tuple[dict[str, tuple[float, float]], list[str]]:
        """Ranges per activation, and those that fell back to min / max for want of values."""
        from refold.ir.progress import StepBar

        cal = Calibrator(names)
        batches: list = []

        def stream():
            for i, batch in enumerate(data):
                if i < SQNR_BATCHES:
                    batches.append(batch)
                yield batch

        with StepBar("batch") as bar:
            def update(i, values):
                cal.update(i, values)
                if i < SQNR_BATCHES:  # the float outputs the quantized model is measured against
                    kept.append((batches[i], {k: numpy_of(values[k]) for k in outputs}))
                if bar.enabled:
                    bar(i + 1, i + 1, f"calibrating ({self.calibration})")

            count = runner.stream(stream(), update, capture=list(dict.fromkeys(names + outputs)),
                                  outputs=False)
        if count == 0:
            raise UsageError("quantize: the calibration data is empty")
        kwargs = {"percentile": self.percentile} if self.calibration == "percentile" else {}
        method = "minmax" if self.calibration == "zeroq" else self.calibration  # ZeroQ's own choice
        if self.profile == "tensorrt":  # symmetric int8: 127 levels a side, whatever the sign
            kwargs["unsigned_levels"] = 127
        elif act_type in ("int16", "uint16"):  # clip points searched at the type's resolution
            kwargs["unsigned_levels"], kwargs["signed_levels"] = 65535, 32767
        sparse = cal.sparse() if method != "minmax" else []
        return cal.ranges(method, **kwargs), sparse

    def _zeroq_shapes(self, model: Model) -> dict[str, tuple] | None:
        """zeroq_shape parsed: input name -> full shape, the batch first."""
        if not self.zeroq_shape:
            return None
        floats = [v.name for v in model.graph.inputs if v.const is None and v.dtype is not None and v.dtype.is_float]
        out = {}
        for entry in self.zeroq_shape.split("+"):
            name, _, dims = entry.rpartition("=")
            if not name:
                if len(floats) != 1:
                    raise UsageError(f"quantize: zeroq_shape '{entry}' names no input, and the model has "
                                     f"{len(floats)} float inputs ({', '.join(floats)}): write name=shape")
                name = floats[0]
            if name not in floats:
                raise UsageError(f"quantize: zeroq_shape names '{name}', not a float input of the model "
                                 f"({', '.join(floats)})")
            try:
                out[name] = (self.zeroq_batch, *(int(d) for d in dims.split("x")))
            except ValueError:
                raise UsageError(f"quantize: zeroq_shape '{entry}' is not NAME=AxBxC") from None
        return out

    def _distil(self, model: Model, notes: list[str]) -> tuple[list[dict], dict[str, Any]]:
        """calibration=zeroq: one batch distilled from the BN statistics (saved if asked), and
        what the distillation did."""
        from refold.ir.fileio import check_writable
        from refold.ir.progress import StepBar
        from refold.passes.quantize.zeroq import distil

        if self.zeroq_save:
            check_writable(self.zeroq_save)
        if self.data is not None:
            notes.append("calibration=zeroq: the given data was not used")
        with StepBar("step") as bar:
            feeds, losses = distil(model, batch=self.zeroq_batch, iterations=self.zeroq_iterations,
                                   shapes=self._zeroq_shapes(model), progress=bar)
        if self.zeroq_save:
            import io

            from refold.ir.fileio import write_bytes_atomic

            buf = io.BytesIO()
            np.savez(buf, **feeds)
            write_bytes_atomic(self.zeroq_save, buf.getvalue())
        notes.append(f"ZeroQ: {self.zeroq_batch} inputs distilled in {len(losses)} steps, BN-statistics "
                     f"loss {losses[0]:.4g} -> {min(losses):.4g}")
        return [feeds], {"batch": self.zeroq_batch, "steps": len(losses), "loss_start": losses[0],
                         "loss_best": min(losses), "saved": self.zeroq_save or None}

    @staticmethod
    def _tables(stats: dict[str, Any]) -> dict[str, list[list]]:
        """What the text report prints under the pass: the worst layers' SQNR, HAWQ's bits per
        layer and its frontier."""
        tables = {}
        if stats.get("sqnr_db"):
            worst = list(stats["sqnr_db"].items())[:10]
            tables["output SQNR per quantized node, worst first"] = [["node", "dB"]] + [list(kv) for kv in worst]
        if stats.get("hessian_trace"):
            bits, trace = stats["weight_bits"], stats["hessian_trace"]
            tables["weight bits by Hessian trace (HAWQ-V2)"] = [["weight", "trace", "bits"]] + [
                [k, trace[k], bits[k]] for k in sorted(trace, key=lambda k: -trace[k])]
            front, chosen = stats["frontier"], stats["chosen"]
            step = max(1, len(front) // 12)
            shown = sorted(set(front[::step] + [front[-1], tuple(chosen)]))
            tables[f"size / sensitivity frontier ({len(front)} points; budget {stats['budget_mb']} MB)"] = \
                [["MB", "sensitivity", ""]] + [[s, c, "<- chosen" if (s, c) == tuple(chosen) else ""]
                                               for s, c in shown]
        return tables

    def _axis(self, n: Node, w: Value, per_channel: bool) -> int | None:
        axis = _weight_axis(n, w, self.profile) if per_channel else None
        if axis is not None and n.op == "conv_transpose" and n.attrs.get("group", 1) != 1 \
                and self.profile != "tensorrt":
            return None  # axis 1 holds Cout/group channels: one scale per output channel is not expressible
        return axis

    def _weight_bits(self, model: Model, targets: list[Node], per_channel: bool,
                     kept: list) -> tuple[dict[str, int], dict[str, Any] | None]:
        """Bits per weight (by value name): 8, uniform 4 (weights=int4), or HAWQ-V2's mixed
        allocation (bits=mixed) within the budget; and, when mixed, what HAWQ measured."""
        if self.bits == "uniform":
            return ({w.name: 4 for w in _weights(targets)} if self.weights == "int4" else {}), None
        choices = self._bit_choices()
        layers = {}
        for n in targets:
            widx = _weight_index(n)
            if widx is not None:
                w = n.inputs[widx]
                layers.setdefault(w.name, (w, self._axis(n, w, per_channel)))
        total = sum(w.const.numpy().size for w, _ in layers.values())
        if self.budget_mb > 0:
            budget = self.budget_mb * 8e6
        elif self.avg_bits > 0:
            budget = self.avg_bits * total
        else:
            raise UsageError("quantize: bits=mixed needs budget_mb= (weights, in MB) or avg_bits=")
        if not kept:
            raise UsageError("quantize: bits=mixed needs data (or calibration=zeroq) for the Hessian traces")
        from refold.ir.progress import StepBar
        from refold.passes.objectives import split_labels
        from refold.passes.quantize.hawq import allocate_bits

        n_in = sum(1 for v in model.graph.inputs if v.const is None)
        batches = [split_labels(batch, n_in) for batch, _ in kept]
        with StepBar("step") as bar:
            bits, info = allocate_bits(model, layers, batches, choices, budget_bits=budget,
                                       iterations=self.hessian_iterations, progress=bar)
        return bits, info

    def _bit_choices(self) -> list[int]:
        try:
            choices = sorted({int(b) for b in self.bit_choices.split("+")})
        except ValueError:
            raise UsageError(f"quantize: bit_choices '{self.bit_choices}' is not like 4+8") from None
        if not choices or any(not 2 <= b <= 8 for b in choices):
            raise UsageError(f"quantize: bit_choices {choices}: each must be 2..8")
        return choices

    def _fit_bias(self, n: Node, w_scale: np.ndarray, axis: int | None) -> np.ndarray:
        """Raise a channel's weight scale where s_x * s_w is too small for its bias in int32 (a dead
        channel with a live bias): |b| / (s_x * s_w) <= 2^31 - 1. An all-zero channel stays exactly
        zero; a tiny one loses what int8 could not hold anyway (ONNX Runtime does the same)."""
        if self.profile == "tensorrt" or n.op not in ("conv", "conv_transpose", "linear", "gemm"):
            return w_scale
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        x = n.inputs[0]
        if bias is None or bias.const is None or x.producer is None or x.producer.op != "dequantize_linear":
            return w_scale
        b = np.abs(bias.const.numpy().astype(np.float64))
        x_scale = float(x.producer.inputs[1].const.numpy())
        need = (b / (x_scale * (2**31 - 1) * 0.5)).astype(np.float32)  # half the range: room for rounding
        if w_scale.ndim == 0:
            need = need.max(initial=0.0)
        elif need.shape != w_scale.shape:
            return w_scale
        return np.maximum(w_scale, need).astype(np.float32)

    def _bias(self, n: Node, dq_of: dict[str, Value], w_scale, b: "Inserter",
              kept_float: dict[str, Reason]) -> None:
        """Bias as int32 with scale s_x * s_w (ORT profile); TensorRT takes the bias in float."""
        bidx = 2 if n.op in ("conv", "conv_transpose", "linear", "gemm") else None
        if bidx is None or len(n.inputs) <= bidx or n.inputs[bidx] is None or w_scale is None:
            return
        bias = n.inputs[bidx]
        key = n.name or n.outputs[0].name
        if self.profile == "tensorrt" or bias.const is None:
            return
        x = n.inputs[0]
        if x.producer is None or x.producer.op != "dequantize_linear":
            return
        if n.op == "gemm" and (n.attrs.get("alpha", 1.0) != 1.0 or n.attrs.get("beta", 1.0) != 1.0
                               or len(bias.shape or ()) != 1):
            kept_float[key] = Reason("gemm bias with alpha/beta or broadcast shape stays float", "bias-layout")
            return
        if n.op == "conv_transpose" and n.attrs.get("group", 1) != 1:
            kept_float[key] = Reason("grouped conv-transpose: bias channels do not follow the weight scale",
                                     "bias-layout")
            return
        x_scale = x.producer.inputs[1].const.numpy()
        res = quantize_bias(bias.const.numpy(), x_scale, w_scale)
        if isinstance(res, str):
            kept_float[key] = Reason(res, "bias-overflow")
            return
        q, scale = res
        check_pair(bias.name, scale, np.zeros(scale.shape, np.int32), 0 if scale.ndim else None,
                   q.shape[0] if scale.ndim else None)
        n.set_input(bidx, b.dequantized_const(bias, q, scale, np.zeros(scale.shape, np.int32),
                                              0 if scale.ndim else None, prefix="bias"))

    def _sqnr(self, model: Model, quantized: list[str], targets: list[Node], kept: list) -> dict[str, float]:
        """Each quantized node's output SQNR (dB) against the float model, worst first."""
        from refold.runtime import runner_for

        names = [n.outputs[0].name for n in targets]
        try:
            q_runner = runner_for(model)
        except Exception:
            return {}
        sig = {k: 0.0 for k in names}
        err = {k: 0.0 for k in names}
        for batch, ref_outs in kept:
            b = q_runner.run(batch, capture=names)
            for k in names:
                ref = np.asarray(ref_outs[k], np.float64)
                got = np.asarray(numpy_of(b[k]), np.float64)
                sig[k] += float((ref ** 2).sum())
                err[k] += float(((ref - got) ** 2).sum())
        out = {}
        for key, k in zip(quantized, names):
            out[key] = round(10 * math.log10(sig[k] / err[k]), 2) if err[k] > 0 and sig[k] > 0 else math.inf
        return dict(sorted(out.items(), key=lambda kv: kv[1]))


def _weights(targets: list[Node]) -> list[Value]:
    """The constant weights of ``targets``, in order, each once."""
    out: dict[str, Value] = {}
    for n in targets:
        i = _weight_index(n)
        if i is not None:
            out.setdefault(n.inputs[i].name, n.inputs[i])
    return list(out.values())
