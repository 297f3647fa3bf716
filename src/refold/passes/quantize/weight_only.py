"""Weight-only quantization in groups (``quantize:weight_only=true,weights=int4``): each weight
becomes int4 (or int8) with one scale per output channel (``oc``), per block of 32 / 64 / 128
input channels within each output channel (``oc32``...: blocks along K), or per block of 32 / 64 /
128 output channels within each input channel (``ic32``...: AdaDim's per-input-channel groups,
blocks along N), chosen per layer (AdaDim) by the lowest output error on the calibration data, or
the lowest weight error without data. Activations stay float.

    x @ W    ==>  x @ DQ(W_q, s, axis=K|N, block_size=b)             (core; ONNX opset 21, torch
                                                                       dequantize_per_channel_group)
    x @ W    ==>  com.microsoft.MatMulNBits(x, pack(W_q), s)          (profile=ort, ONNX, MatMul with a
                                                                       2-D weight grouped oc / oc32..;
                                                                       x rounded to int8 per block
                                                                       inside ORT's kernel)

MatMulNBits blocks run along K only, so an ``ic`` grouping is always DequantizeLinear + MatMul
(opset 21); ``auto`` takes an ``ic`` grouping only where it beats every MatMulNBits-expressible
one by more than ``PREFER_K`` (1%) of output error, and never where the model cannot reach opset 21
and the MatMulNBits form is there to be had.

Convolutions are quantized per output channel only: their input channels and kernel taps share
one axis pair that a single ONNX block axis cannot cut into K blocks. The float weights a
quantized layer no longer reads are dropped, so a 4-bit file is about 1/8 of the float one plus
its scales (int4 is written packed, two values a byte).

>>> Quantize(weight_only=True, weights="int4", group="auto", data=batches)   # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

import numpy as np

from refold.errors import UnsupportedError, UsageError
from refold.ir.dtypes import DType
from refold.ir.graph import CORE, Model, Node, Value
from refold.ir.tensor import Tensor
from refold.passes.base import Pass, PassResult, Reason
from refold.passes.quantize.groups import (GROUPS, Grouped, Layout, RowSample, activation_rows, as_k_by_n,
                                           group_axis, nbits_expressible, output_error, pack_matmul_nbits,
                                           quantize_grouped, scale_count, weight_error, weight_index,
                                           weight_layout)
from refold.passes.quantize.insert import numpy_of
from refold.passes.quantize.opset import blockers, raise_opset

MAX_ROWS = 1024  # activation rows kept per layer input to measure output error (reservoir sample)
BLOCKED_OPSET = 21  # DequantizeLinear with block_size, and with int4
PER_CHANNEL_OPSET = 13
MS_DOMAIN = "com.microsoft"
TIE = 1e-6  # relative: errors this close are equal, and the grouping with fewer scales wins
# auto keeps the best MatMulNBits-expressible grouping (oc, oc32..) unless an ic grouping's error is
# lower by more than this fraction: those run in ORT's fused 4-bit kernel and in every int4 GEMM
# that blocks along K, and the choice is the same whatever the profile or frontend
PREFER_K = 0.01


class _Plan:
    """One weight and everything decided about it: its readers, layout, grouping and errors."""

    def __init__(self, w: Value, layout: Layout, candidates: list[str]):
        self.w = w
        self.layout = layout
        self.candidates = candidates
        self.readers: list[Node] = []
        self.errors: dict[str, float] = {}
        self.choice = candidates[0]
        self.quantized: dict[str, Grouped] = {}

    def grouped(self, group: str, bits: int) -> Grouped:
        g = self.quantized.get(group)
        if g is None:
            axis, block = group_axis(group, self.layout)
            g = self.quantized[group] = quantize_grouped(self.w.const.numpy(), axis, block, bits)
        return g


def _candidates(layout: Layout, w: Value, group: str) -> tuple[list[str], bool]:
    """Groupings to try for a weight, and whether the asked one could not be had (a convolution)."""
    if layout.ic is None:
        return ["oc"], group not in ("auto", "oc")
    if group != "auto":
        return [group], False
    # a block as wide as its axis is one scale per channel: per output channel (oc) for K blocks,
    # per input channel for N blocks; the same grouping is tried once, under its first name
    across = {"oc": w.shape[layout.ic], "ic": w.shape[layout.oc]}
    seen = {("oc", across["oc"])}
    out = ["oc"]
    for g, (owner, block) in GROUPS.items():
        if block is not None and (owner, min(block, across[owner])) not in seen:
            seen.add((owner, min(block, across[owner])))
            out.append(g)
    return out, False


def quantize_weights(pass_: Pass, model: Model, targets: list[Node],
                     skipped: dict[str, Reason]) -> PassResult:
    """The weight-only grouped path of ``Quantize``: plan each constant weight, choose its
    grouping, then write DequantizeLinear (or MatMulNBits) in place of the float weight."""
    if not pass_.per_channel:
        raise UsageError(f"quantize: weights={pass_.weights},group={pass_.group} quantizes per channel or per "
                         f"group of channels; per_channel=false (one scale per tensor) does not apply")
    bits = 4 if pass_.weights == "int4" else 8
    graph = model.graph
    before = _read_bytes(model)
    notes: list[str] = []
    plans: dict[int, _Plan] = {}
    key_of: dict[Node, str] = {}
    per_oc: list[str] = []  # convolutions asked for input-channel groups
    for n in targets:
        key = key_of[n] = n.name or n.outputs[0].name
        widx = weight_index(n)
        if widx is None:
            skipped[key] = Reason("no constant weight: weight-only quantization leaves it float",
                                  "nothing-to-quantize")
            continue
        w = n.inputs[widx]
        if w.dtype is None or not w.dtype.is_float:
            skipped[key] = Reason(f"weight '{w.name}' is not float", "nothing-to-quantize")
            continue
        layout = weight_layout(n, widx, pass_.profile)
        if isinstance(layout, str):
            skipped[key] = Reason(layout, "layout")
            continue
        plan = plans.get(id(w))
        if plan is None:  # a weight shared by several nodes is quantized once, for all of them
            candidates, note = _candidates(layout, w, pass_.group)
            if note:
                per_oc.append(key)
            plan = plans[id(w)] = _Plan(w, layout, candidates)
        elif plan.layout != layout:
            skipped[key] = Reason(f"weight '{w.name}' is shared with a node that reads it in another "
                                  f"layout", "shared-weight")
            continue
        plan.readers.append(n)

    if per_oc:
        notes.append(f"{len(per_oc)} convolution(s) per output channel ({', '.join(per_oc[:3])}"
                     f"{', ...' if len(per_oc) > 3 else ''}): group={pass_.group} is for linear / gemm / "
                     f"matmul weights")
    nbits = pass_.profile == "ort" and model.source == "onnx"
    if nbits and pass_.group == "auto":
        _keep_nbits_where_opset_is_stuck(model, list(plans.values()), notes)
    measure = _choose(pass_, model, list(plans.values()), bits)
    dq_plans = [p for p in plans.values() if not (nbits and all(_fits_nbits(r, p) for r in p.readers))]
    refused = _opset(model, dq_plans, bits, notes)
    stats_groups: dict[str, str] = {}
    stats_errors: dict[str, dict[str, float]] = {}
    emitted = {"dq": 0, "MatMulNBits": 0}
    made: dict[Any, Any] = {}  # (id(weight), form) -> the constants made for it; "last_dq" -> node
    for plan in plans.values():
        for n in plan.readers:
            key = key_of[n]
            if nbits and _fits_nbits(n, plan):
                _matmul_nbits(model, n, plan, bits, made)
                emitted["MatMulNBits"] += 1
            elif plan in refused:
                skipped[key] = refused[plan]
                continue
            else:
                n.set_input(plan.layout.weight, _dequantized(graph, plan, bits, made))
                n.meta.setdefault("provenance", {"rule": "quantize", "sources": [key]})
                emitted["dq"] += 1
            stats_groups[key] = Reason(plan.choice, plan.choice)  # the report counts them by group
            if len(plan.errors) > 1:
                stats_errors[key] = {g: float(f"{e:.4g}") for g, e in plan.errors.items()}
        if not plan.w.uses():
            graph.release_const(plan.w)
    if refused and not stats_groups:
        raise UnsupportedError(f"quantize: no weight could be quantized: {next(iter(refused.values()))}")
    if emitted["MatMulNBits"]:
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    after = _read_bytes(model)
    stats: dict[str, Any] = {
        "quantized": len(stats_groups), "weights": pass_.weights, "group": pass_.group,
        "profile": pass_.profile, "matmul_nbits": emitted["MatMulNBits"], "dequantize": emitted["dq"],
        "error_measure": measure, "bytes_before": before, "bytes_after": after,
        "weight_groups": stats_groups, "group_errors": stats_errors, "not_quantized": skipped, "notes": notes}
    return PassResult(model, bool(stats_groups), stats)


# -- choosing a grouping ------------------------------------------------------------------------

def _choose(pass_: Pass, model: Model, plans: list[_Plan], bits: int) -> str:
    """Set each plan's ``choice`` to its candidate of least error; returns how error was measured."""
    open_ = [p for p in plans if len(p.candidates) > 1]
    if not open_:
        return "none"  # one grouping per layer: nothing to choose
    rows = _sample_rows(pass_, model, open_) if pass_.data is not None else {}
    measured = set()
    for p in open_:
        w = p.w.const.numpy()
        keys = [(r.inputs[p.layout.act].name, p.layout.rows) for r in p.readers]
        sample = [rows[k] for k in dict.fromkeys(keys) if k in rows and len(rows[k])]
        for g in p.candidates:
            deq = p.grouped(g, bits).dequantized()
            if sample:  # ||X W - X Q(W)||^2, the readers' inputs alike
                w_kn, d_kn = as_k_by_n(w, p.layout), as_k_by_n(deq, p.layout)
                p.errors[g] = sum(output_error(x, w_kn, d_kn) for x in sample) / len(sample)
            else:
                p.errors[g] = weight_error(w, deq)
        measured.add("output" if sample else "weight")
        p.choice = _least_error(p)
        p.quantized = {p.choice: p.quantized[p.choice]}  # let the others go
    # output: ||X W - X Q(W)||^2 on a sample of up to MAX_ROWS calibration rows per layer input;
    # weight: ||W - Q(W)||^2 (no data, or a weight that is not 2-D)
    return "+".join(m for m in ("output", "weight") if m in measured)


def _least_error(p: _Plan) -> str:
    """The grouping of least error; the best MatMulNBits-expressible one (oc, oc32..) where no ic
    grouping beats it by more than PREFER_K; errors equal to rounding (TIE) go to fewer scales."""
    def best_of(groups: list[str]) -> str:
        least = min(p.errors[g] for g in groups)
        tied = [g for g in groups if p.errors[g] <= least * (1 + TIE) + 1e-12]
        return min(tied, key=lambda g: scale_count(g, p.w.shape, p.layout))  # min: the first of equals

    best = best_of(p.candidates)
    k_groups = [g for g in p.candidates if nbits_expressible(g)]
    if nbits_expressible(best) or not k_groups:
        return best
    k_best = best_of(k_groups)
    return k_best if p.errors[k_best] <= p.errors[best] * (1 + PREFER_K) + 1e-12 else best


def _keep_nbits_where_opset_is_stuck(model: Model, plans: list[_Plan], notes: list[str]) -> None:
    """An ic grouping is DequantizeLinear with block_size (opset 21). Where the model cannot be
    raised to 21, weights that MatMulNBits can take try only its groupings, rather than stay float."""
    open_ = [p for p in plans if any(not nbits_expressible(g) for g in p.candidates)
             and all(_fits_nbits(r, p, any_group=True) for r in p.readers)]
    if not open_ or model.opset >= BLOCKED_OPSET:
        return
    found = blockers(model, BLOCKED_OPSET)
    if found:  # ranks decide some of them (softmax axes): type what onnx could not
        from refold.runtime.shapes import infer_shapes

        infer_shapes(model, probe=True)
        found = blockers(model, BLOCKED_OPSET)
    if not found:
        return
    for p in open_:
        p.candidates = [g for g in p.candidates if nbits_expressible(g)]
    notes.append(f"ic groupings not tried for {len(open_)} weight(s): blocked DequantizeLinear needs opset "
                 f"{BLOCKED_OPSET}; {', '.join(found)} change meaning between opset {model.opset} and "
                 f"{BLOCKED_OPSET} (MatMulNBits groupings only)")


def _sample_rows(pass_: Pass, model: Model, plans: list[_Plan]) -> dict[tuple[str, str], np.ndarray]:
    """A bounded sample of each layer input's rows, streamed from the calibration data."""
    from refold.ir.progress import StepBar
    from refold.runtime import runner_for

    wanted: dict[tuple[str, str], tuple[Layout, int]] = {}
    for p in plans:
        if p.w.rank != 2:
            continue
        for r in p.readers:
            x = r.inputs[p.layout.act]
            wanted.setdefault((x.name, p.layout.rows), (p.layout, p.w.shape[p.layout.ic]))
    if not wanted:
        return {}
    samples = {k: RowSample(MAX_ROWS, seed=i) for i, k in enumerate(wanted)}
    names = list(dict.fromkeys(name for name, _ in wanted))

    with StepBar("batch") as bar:
        def update(i: int, values: dict[str, Any]) -> None:
            for (name, how), (layout, k) in wanted.items():
                samples[(name, how)].add(activation_rows(numpy_of(values[name]), layout, k))
            if bar.enabled:
                bar(i + 1, i + 1, "sampling layer inputs")

        count = runner_for(model).stream(pass_.data, update, capture=names, outputs=False)
    if count == 0:
        raise UsageError("quantize: the calibration data is empty")
    return {k: s.rows() for k, s in samples.items()}


def _read_bytes(model: Model) -> int:
    """Bytes of the constants the graph reads (packed int4 at 4 bits): what a file written now
    holds. Torch-born models keep their float parameters unread in the state_dict."""
    g = model.graph
    return sum(v.const.nbytes for v in g.initializers.values()
               if v.const is not None and (v.uses() or g.is_output(v)))


# -- writing the quantized weights --------------------------------------------------------------

def _fits_nbits(n: Node, plan: _Plan, any_group: bool = False) -> bool:
    """MatMulNBits computes x @ W for a 2-D float W [K, N] on input 1 (x of W's float type), in
    blocks along K: 32 / 64 / 128 (oc32..), or one block spanning K for one scale per output
    channel (oc); not in blocks along N (ic32..). ``any_group``: whatever the plan's grouping."""
    w, x = plan.w, n.inputs[0]
    return (n.op == "matmul" and plan.layout.weight == 1 and w.rank == 2
            and w.dtype in (DType.FLOAT, DType.FLOAT16) and x.dtype == w.dtype
            and (any_group or nbits_expressible(plan.choice)))


def _matmul_nbits(model: Model, n: Node, plan: _Plan, bits: int, made: dict) -> None:
    # x @ W  ==>  MatMulNBits(x, B, scales),  B = pack(q + 2^(bits-1)) along K, zero point default
    graph = model.graph
    consts = made.get((id(plan.w), "nbits"))
    if consts is None:
        g = plan.grouped(plan.choice, bits)
        packed, scales, block = pack_matmul_nbits(g, plan.layout)
        name = plan.w.name
        consts = made[(id(plan.w), "nbits")] = (
            graph.add_const(Tensor.from_array(packed), prefix=f"{name}_q{bits}"),
            graph.add_const(Tensor.from_array(scales.astype(plan.w.dtype.numpy())), prefix=f"{name}_scales"),
            block)
        for c in consts[:2]:
            c.meta["provenance"] = {"rule": "quantize", "sources": [name]}
    k, nn = plan.w.shape
    # accuracy_level=4: ORT's CPU kernel may round x to int8 per block (what ORT's own DQ -> MatMul
    # fusion picks): 0.5-0.6x float's latency at one token (benchmarks/weight_only.py), x off by at
    # most 1/254 of its block's max; without it the kernel ran no faster than float MatMul
    graph.replace_op(n, "MatMulNBits", [n.inputs[0], *consts[:2]],
                     {"K": k, "N": nn, "bits": bits, "block_size": consts[2], "accuracy_level": 4},
                     domain=MS_DOMAIN,
                     meta={"provenance": {"rule": "quantize", "sources": [n.name or n.outputs[0].name]}})


def _dequantized(graph, plan: _Plan, bits: int, made: dict) -> Value:
    """DQ(W_q, s) at the top of the graph, made once per weight: symmetric, so no zero point (0 of
    W_q's type, int4 or int8)."""
    cached = made.get((id(plan.w), "dq"))
    if cached is not None:
        return cached
    g = plan.grouped(plan.choice, bits)
    w = plan.w
    q = graph.add_const(Tensor.from_array(g.q, DType.INT4 if bits == 4 else DType.INT8),
                        prefix=f"{w.name}_quantized")
    s = graph.add_const(Tensor.from_array(g.scale.astype(w.dtype.numpy())), prefix=f"{w.name}_scale")
    q.meta["provenance"] = {"rule": "quantize", "sources": [w.name]}
    attrs = {"axis": g.axis} if g.block is None else {"axis": g.axis, "block_size": g.block}
    node = Node("dequantize_linear", [q, s], attrs, domain=CORE,
                name=graph.unique_name(f"{w.name}_dequantize_linear"), outputs=[graph.unique_name(f"{w.name}_dq")])
    node.meta["provenance"] = {"rule": "quantize", "sources": [w.name]}
    last = made.get("last_dq")  # the weights' DQs at the top of the graph, in the order made
    first = next(iter(graph), None)
    if last is not None:
        graph.insert_after(last, node)
    elif first is None:
        graph.append(node)
    else:
        graph.insert_before(first, node)
    made["last_dq"] = node
    out = node.outputs[0]
    out.dtype, out.shape = w.dtype, w.shape
    made[(id(plan.w), "dq")] = out
    return out


def _opset(model: Model, plans: list[_Plan], bits: int, notes: list[str]) -> dict[_Plan, Reason]:
    """Raise an ONNX model's opset to what its DequantizeLinear nodes need (21 for int4 or blocks,
    13 per channel); plans that cannot have it, with why (they stay float)."""
    if model.source != "onnx" or not plans:
        return {}
    need_of = {p: BLOCKED_OPSET if bits == 4 or GROUPS[p.choice][1] is not None else PER_CHANNEL_OPSET
               for p in plans}
    refused: dict[_Plan, Reason] = {}
    for need in sorted(set(need_of.values()), reverse=True):
        if model.opset >= need:
            continue
        found = blockers(model, need)
        if found:  # ranks decide some of them (softmax axes): type what onnx could not
            from refold.runtime.shapes import infer_shapes

            infer_shapes(model, probe=True)
            found = blockers(model, need)
        if found:
            why = Reason(f"{'int4 / blocked' if need == BLOCKED_OPSET else 'per-channel'} DequantizeLinear "
                         f"needs opset {need}; {', '.join(found)} change meaning between opset "
                         f"{model.opset} and {need}: left float", "opset")
            refused.update({p: why for p, n in need_of.items() if n == need})
            continue
        old = model.opset
        raise_opset(model, need)
        what = "int4 / blocked" if need == BLOCKED_OPSET else "per-channel"
        notes.append(f"opset raised from {old} to {need} for {what} DequantizeLinear (no op of the model "
                     f"changes meaning)")
    return refused
