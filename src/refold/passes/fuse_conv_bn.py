"""Conv + BatchNorm folding, in Deploy and Tune modes ("Efficient ConvBN Blocks for Transfer
Learning and Beyond").

Deploy folds BN into the producer's weight and bias once. Tune keeps W, gamma and beta as the
trainable parameters and computes the folded weight in the graph, every forward: training it
matches the original model with BN in eval mode.

Written as rewrite rules on core ops, so graphs from ONNX and torch.export are handled alike.
BN statistics: ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s`` (so ``BN(y) = y*s + t``).
"""
from __future__ import annotations

import numpy as np

from refold.errors import UnsupportedError
from refold.ir.dtypes import DType
from refold.ir.graph import CORE, Model, Node, Value
from refold.ir.rewrite import Builder, Const, Match, Rule, Var, apply_rules, op
from refold.ir.tensor import Tensor
from refold.passes.base import RAISED, Option, Pass, PassResult, Reason

_LOW_PRECISION = (DType.FLOAT16, DType.BFLOAT16)


def _f64(v: Value) -> np.ndarray:
    return np.asarray(v.const.numpy(), dtype=np.float64)


def _bn_stats(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (s, t) with BN(y) = y * s + t, in float64."""
    bn = m.node("bn")
    eps = float(bn.attrs.get("epsilon", 1e-5))
    gamma, beta, mean, var = (_f64(m[k]) for k in ("bn_scale", "bn_bias", "bn_mean", "bn_var"))
    s = gamma / np.sqrt(var + eps)
    return s, beta - mean * s


def _recording(fold, forward: bool = False):
    """The fold, leaving the BN's statistics on the new output (s * z + t for the BN input z):
    data-free calibration (quantize's ZeroQ) matches them after the BN is gone."""
    def fold_and_record(b: Builder, m: Match):
        new = out = fold(b, m)
        if out is not None:
            bn = m.node("bn")
            s, t = _bn_stats(m)
            if forward:  # BN before the op: its input z is still there, unscaled
                out, s, t = m["x"], np.ones_like(s), np.zeros_like(t)
            out.meta["bn_statistics"] = {"mean": _f64(m["bn_mean"]).tolist(),
                                         "std": np.sqrt(np.maximum(_f64(m["bn_var"]), 0)).tolist(),
                                         "scale": s.tolist(), "shift": t.tolist(),
                                         "source": bn.name or bn.outputs[0].name}
        return new
    fold_and_record.__name__ = fold.__name__
    return fold_and_record


def _bn_why_not(m: Match) -> str | None:
    bn = m.node("bn")
    eps = float(bn.attrs.get("epsilon", 1e-5))
    var = _f64(m["bn_var"])
    if not np.all(np.isfinite(var)):
        return "running_var is not finite (overflowed its type?)"
    bad = np.nonzero(var + eps <= 0)[0]
    if bad.size:
        return f"var + eps <= 0 for channels {bad[:8].tolist()} (eps={eps})"
    return None


def _weight_why_not(m: Match, *names: str) -> str | None:
    for name in names:
        v = m.get(name)
        if v is not None and v.const is None:
            return f"'{v.name}' is not constant"
        if v is not None and v.dtype is not None and not v.dtype.is_float:
            return f"'{v.name}' is {v.dtype.name}, not floating point"
    return None


def _cast_all(b: Builder, *pairs) -> list[np.ndarray] | None:
    """Cast each (array, like, what) back to its weight's type; None (reason on ``b``) on overflow."""
    out = []
    for arr, like, what in pairs:
        r = _cast_back(np.asarray(arr, np.float64), like, what)
        if isinstance(r, str):
            b.reason = r
            return None
        out.append(r)
    return out


def _cast_back(arr: np.ndarray, like: Value, what: str) -> np.ndarray | str:
    """Folded values go back to the weight's type; fp16/bf16 overflow is a reason not to fold."""
    dt = like.dtype or DType.FLOAT
    if dt in _LOW_PRECISION:
        limit = float(np.finfo(np.float16).max) if dt == DType.FLOAT16 else 3.38e38
        if np.abs(arr).max(initial=0) > limit:
            return f"folded {what} overflows {dt.name}"
    return arr.astype(dt.numpy())


def _new_weight(b: Builder, arr: np.ndarray, like: Value | None, role: str,
                weight: Value | None = None) -> Value:
    """A folded weight or bias. In torch graphs it is a parameter again, named after the one it
    replaces (a new bias after the weight: ``conv.weight`` -> ``conv.bias``)."""
    src = like if like is not None else weight
    v = b.const(Tensor.from_array(np.ascontiguousarray(arr)), prefix=f"{src.name}_bnfolded_{role}")
    v.kind = "param" if src.kind == "param" else "const"
    if "torch.target" in src.meta:  # the exporter settles clashes with originals still in use
        target = src.meta["torch.target"]
        if like is None:
            target = target[: -len("weight")] + "bias" if target.endswith("weight") else target + "_bias"
        v.meta["torch.target"] = target
        v.meta["requires_grad"] = True
    return v


def _channel_shape(rank: int, axis: int) -> list[int]:
    shape = [1] * rank
    shape[axis] = -1
    return shape


# -- Deploy: BN after a producer ------------------------------------------------------------

def _fold_conv(b: Builder, m: Match):
    # BN(Conv(x, W, b))  ==>  Conv(x, W * s[o], (b - mean) * s + beta)      W: [Cout, Cin/g, k...]
    s, t = _bn_stats(m)
    w, bias = m["w"], m.get("b")
    W = _f64(w) * s.reshape(_channel_shape(len(w.shape), 0))
    B = (_f64(bias) * s if bias is not None else 0.0) + t
    return _emit(b, m, "conv", W, B, w, bias)


def _fold_conv_transpose(b: Builder, m: Match):
    # BN(ConvT(x, W, b))  ==>  ConvT(x, W * s[g, o], ...)   W: [Cin, Cout/g, k...], out channel g*Cout/g + o
    s, t = _bn_stats(m)
    w, bias = m["w"], m.get("b")
    g = int(m.node("conv").attrs.get("group", 1))
    Wf = _f64(w)
    cin, cout_g = Wf.shape[0], Wf.shape[1]
    grouped = Wf.reshape((g, cin // g, cout_g) + Wf.shape[2:])
    grouped = grouped * s.reshape((g, 1, cout_g) + (1,) * (Wf.ndim - 2))
    B = (_f64(bias) * s if bias is not None else 0.0) + t
    return _emit(b, m, "conv_transpose", grouped.reshape(Wf.shape), B, w, bias)


def _emit(b: Builder, m: Match, op_name: str, W, B, w: Value, bias: Value | None):
    cast = _cast_all(b, (W, w, "weight"), (B, w, "bias"))
    if cast is None:
        return None
    W, B = cast
    conv = m.node("conv")
    new_w = _new_weight(b, W, w, "weight")
    new_b = _new_weight(b, B, bias, "bias", w)
    return b.op(f"core.{op_name}", m["x"], new_w, new_b, **conv.attrs)


def _fold_linear(b: Builder, m: Match):
    # BN1d(Linear(x, W, b))  ==>  Linear(x, W * s[:, None], (b - mean) * s + beta)   W: [out, in]
    s, t = _bn_stats(m)
    w, bias = m["w"], m.get("b")
    cast = _cast_all(b, (_f64(w) * s[:, None], w, "weight"),
                     ((_f64(bias) * s if bias is not None else 0.0) + t, w, "bias"))
    if cast is None:
        return None
    W, B = cast
    return b.op.core.linear(m["x"], _new_weight(b, W, w, "weight"), _new_weight(b, B, bias, "bias", w))


def _fold_gemm(b: Builder, m: Match):
    # BN1d(alpha*A@op(B) + beta*C)  ==>  alpha*A@op(B*s) + (s*(beta*C - mean) + beta_bn)
    s, t = _bn_stats(m)
    gemm = m.node("conv")
    w, c = m["w"], m.get("b")
    Wf = _f64(w)
    Wf = Wf * (s[:, None] if gemm.attrs.get("transB", 0) else s[None, :])
    C = (float(gemm.attrs.get("beta", 1.0)) * _f64(c) * s if c is not None else 0.0) + t
    cast = _cast_all(b, (Wf, w, "weight"), (C, w, "bias"))
    if cast is None:
        return None
    W, C = cast
    attrs = dict(gemm.attrs, beta=1.0)
    return b.op.core.gemm(m["x"], _new_weight(b, W, w, "weight"), _new_weight(b, C, c, "bias", w), **attrs)


def _fold_matmul(b: Builder, m: Match):
    # BN1d(A @ B)  ==>  A @ (B * s[None, :]) + t          B: [K, N], output [M, N]
    s, t = _bn_stats(m)
    w = m["w"]
    cast = _cast_all(b, (_f64(w) * s[None, :], w, "weight"), (t, w, "bias"))
    if cast is None:
        return None
    W, T = cast
    y = b.op.core.matmul(m["x"], _new_weight(b, W, w, "weight"))
    return b.op.core.add(y, _new_weight(b, T, None, "bias", w))


def _rank2_output(m: Match) -> str | None:
    y = m.node("conv").outputs[0]
    if y.rank != 2:
        return f"output rank {y.rank}: BatchNorm1d channels are not the linear's output features"
    return None


# -- Deploy: BN before a consumer (exact only without zero padding) ---------------------------

def _forward_why_not(m: Match) -> str | None:
    bn_out = m.node("bn").outputs[0]
    if len(bn_out.uses()) != 1 or m.node("bn").graph.is_output(bn_out):
        return "the BatchNorm output is read elsewhere too"
    conv = m.node("conv")
    if conv.op in ("conv",) and any(conv.attrs.get("pads") or []):
        return "zero padding between BatchNorm and conv makes a forward fold inexact"
    return _bn_why_not(m) or _weight_why_not(m, "w", "b")


def _fold_forward_conv(b: Builder, m: Match):
    # Conv(x*s + t, W, b), no padding  ==>  Conv(x, W * s[cin], b + sum_{ci,k} W[o,ci,k] t[cin])
    s, t = _bn_stats(m)
    conv = m.node("conv")
    w, bias = m["w"], m.get("b")
    g = int(conv.attrs.get("group", 1))
    Wf = _f64(w)
    cout, cin_g = Wf.shape[0], Wf.shape[1]
    s_in = s.reshape(g, 1, cin_g)  # input channel of (group(o), ci)
    t_in = t.reshape(g, 1, cin_g)
    Wg = Wf.reshape((g, cout // g, cin_g, -1))
    W = (Wg * s_in[..., None]).reshape(Wf.shape)
    shift = (Wg * t_in[..., None]).sum(axis=(2, 3)).reshape(cout)
    B = (_f64(bias) if bias is not None else 0.0) + shift
    return _emit(b, m, "conv", W, B, w, bias)


def _fold_forward_linear(b: Builder, m: Match):
    # Linear(x*s + t, W, b)  ==>  Linear(x, W * s[None, :], W @ t + b)     (x: [N, C])
    s, t = _bn_stats(m)
    w, bias = m["w"], m.get("b")
    Wf = _f64(w)
    cast = _cast_all(b, (Wf * s[None, :], w, "weight"),
                     (Wf @ t + (_f64(bias) if bias is not None else 0.0), w, "bias"))
    if cast is None:
        return None
    W, B = cast
    return b.op.core.linear(m["x"], _new_weight(b, W, w, "weight"), _new_weight(b, B, bias, "bias", w))


# -- Tune: fold on the fly, from the trainable parameters -------------------------------------

def _tune_scale(b: Builder, m: Match) -> tuple[Value, Value]:
    """Graph nodes for s = gamma / sqrt(var + eps) and t = beta - mean * s, every forward."""
    bn = m.node("bn")
    eps = b.const(np.array(bn.attrs.get("epsilon", 1e-5), dtype=m["bn_var"].dtype.numpy()), "bn_eps")
    s = b.op.core.div(m["bn_scale"], b.op.core.sqrt(b.op.core.add(m["bn_var"], eps)))
    t = b.op.core.sub(m["bn_bias"], b.op.core.mul(m["bn_mean"], s))
    return s, t


def _tune_conv(b: Builder, m: Match):
    # Conv(x, W * s[o], b*s + t) with s, t computed from gamma, beta, mean, var in the graph
    conv = m.node("conv")
    w, bias = m["w"], m.get("b")
    s, t = _tune_scale(b, m)
    rank = len(w.shape)
    if conv.op == "conv_transpose":
        if conv.attrs.get("group", 1) != 1:
            return None
        shape = _channel_shape(rank, 1)
    else:
        shape = _channel_shape(rank, 0)
    s_w = b.op.core.reshape(s, b.const(np.array(shape, np.int64), "bn_shape"))
    new_w = b.op.core.mul(w, s_w)
    new_b = b.op.core.add(b.op.core.mul(bias, s), t) if bias is not None else t
    return b.op(f"core.{conv.op}", m["x"], new_w, new_b, **conv.attrs)


def _tune_linear(b: Builder, m: Match):
    # Linear(x, W * s[:, None], b*s + t), s and t computed in the graph
    w, bias = m["w"], m.get("b")
    s, t = _tune_scale(b, m)
    s_w = b.op.core.reshape(s, b.const(np.array([-1, 1], np.int64), "bn_shape"))
    new_b = b.op.core.add(b.op.core.mul(bias, s), t) if bias is not None else t
    return b.op.core.linear(m["x"], b.op.core.mul(w, s_w), new_b)


def _bn(inner) -> object:
    return op.core.batch_norm(inner, Const("bn_scale"), Const("bn_bias"), Const("bn_mean"),
                              Const("bn_var"), _name="bn")


def _rules(mode: str) -> list[Rule]:
    x, w, bias = Var("x"), Const("w"), Var("b", optional=True)

    def why(*extra):
        def check(m: Match) -> str | None:
            for f in (_bn_why_not, lambda mm: _weight_why_not(mm, "w", "b")) + extra:
                r = f(m)
                if r:
                    return r
            return None
        return check

    conv = op.core.conv(x, w, bias, _name="conv")
    convt = op.core.conv_transpose(x, w, bias, _name="conv")
    linear = op.core.linear(x, w, bias, _name="conv")
    if mode == "tune":
        return [Rule("fuse-conv-bn-tune", _bn(conv), _tune_conv, why()),
                Rule("fuse-convtranspose-bn-tune", _bn(convt), _tune_conv, why()),
                Rule("fuse-linear-bn-tune", _bn(linear), _tune_linear, why(_rank2_output))]
    bn_x = op.core.batch_norm(x, Const("bn_scale"), Const("bn_bias"), Const("bn_mean"), Const("bn_var"),
                              _name="bn")
    return [
        Rule("fuse-conv-bn", _bn(conv), _recording(_fold_conv), why()),
        Rule("fuse-convtranspose-bn", _bn(convt), _recording(_fold_conv_transpose), why()),
        Rule("fuse-linear-bn", _bn(linear), _recording(_fold_linear), why(_rank2_output)),
        Rule("fuse-gemm-bn", _bn(op.core.gemm(x, w, Var("b", optional=True), _name="conv", transA=0)),
             _recording(_fold_gemm), why(_rank2_output)),
        Rule("fuse-matmul-bn", _bn(op.core.matmul(x, w, _name="conv")), _recording(_fold_matmul),
             why(_rank2_output, lambda m: None if m["w"].rank == 2 else "weight is not a matrix")),
        Rule("fuse-bn-conv", op.core.conv(bn_x, w, bias, _name="conv"), _recording(_fold_forward_conv, True),
             _forward_why_not),
        Rule("fuse-bn-linear", op.core.linear(bn_x, w, bias, _name="conv"), _recording(_fold_forward_linear, True),
             lambda m: _forward_why_not(m) or (None if m["x"].rank == 2 else
                                               "BatchNorm1d over a rank-3 input is not over the linear's features")),
    ]


_BN_OPS = ("BatchNormalization", "batch_norm", "_native_batch_norm_legit_no_training",
           "native_batch_norm", "_native_batch_norm_legit")


def _to_affine(model: Model) -> int:
    """A BN left alone becomes y = x * s + t (two per-channel ops, no sqrt at run time)."""
    count = 0
    for g in model.graph.all_graphs():
        for bn in g:
            if bn.op != "batch_norm" or bn.domain != CORE:
                continue
            x, gamma, beta, mean, var = bn.inputs
            if any(v.const is None for v in (gamma, beta, mean, var)) or x.rank is None or x.rank < 2:
                continue
            eps = float(bn.attrs.get("epsilon", 1e-5))
            s = _f64(gamma) / np.sqrt(_f64(var) + eps)
            t = _f64(beta) - _f64(mean) * s
            shape = _channel_shape(x.rank, 1)
            x.meta.setdefault("bn_statistics", {  # for data-free calibration, as _recording
                "mean": _f64(mean).tolist(), "std": np.sqrt(np.maximum(_f64(var), 0)).tolist(),
                "scale": np.ones_like(s).tolist(), "shift": np.zeros_like(t).tolist(),
                "source": bn.name or bn.outputs[0].name})
            b = Builder(g, bn)
            dt = (x.dtype or DType.FLOAT).numpy()
            # BN(x) = x * s + t, s = gamma / sqrt(var + eps), t = beta - mean * s
            y = b.op.core.add(b.op.core.mul(x, b.const(s.reshape(shape).astype(dt), "bn_s")),
                     b.const(t.reshape(shape).astype(dt), "bn_t"))
            for n in b.created:
                n.meta["provenance"] = {"rule": "bn-to-affine", "sources": [bn.name or bn.outputs[0].name]}
            g.substitute(bn.outputs[0], y)
            g.remove(bn)
            count += 1
    return count


class FuseConvBN(Pass):
    """Fold BatchNorm into the Conv / ConvTranspose / Linear / Gemm / MatMul next to it.

    >>> FuseConvBN(mode="deploy").name
    'fuse-conv-bn'
    """

    name = "fuse-conv-bn"
    description = "fold BatchNorm into adjacent conv/linear weights (deploy), or on the fly each forward (tune)"
    requires = frozenset({RAISED})

    options = (
        Option("mode", str, "deploy", "deploy folds BN into the weights; tune refolds them from "
               "trainable W, gamma, beta on every forward (torch only)", choices=("deploy", "tune")),
        Option("affine", bool, False, "turn BatchNorms that cannot fold into x*s+t"),
    )

    def call(self, model: Model) -> PassResult:
        if self.mode == "tune" and model.source == "onnx":
            raise UnsupportedError(
                "fuse-conv-bn: Tune mode recomputes folded weights from trainable parameters on every "
                "forward, which only pays off while training; an ONNX graph is an inference graph, "
                "where Deploy mode gives the same outputs and costs nothing at run time: use mode='deploy'")
        stats = apply_rules(model.graph, _rules(self.mode))
        not_raised = model.meta.get("refold.not_raised", {})
        not_folded: dict[str, str] = {}
        for g in model.graph.all_graphs():
            for n in g:  # a BatchNorm the frontend could not raise (training mode, extra outputs)
                key = n.name or n.outputs[0].name
                if n.domain != CORE and n.op in _BN_OPS and key in not_raised:
                    not_folded[key] = Reason(not_raised[key], "not-raised")
        reasons = {node: why for r in stats.skipped.values() for node, why in r.items()}

        def reason_for(bn: Node) -> str | None:
            # forward-fold rules are rooted at the consumer; their reasons are keyed by it
            for key in [bn.name or bn.outputs[0].name] + [u.name for u in bn.outputs[0].users]:
                if key in reasons:
                    return reasons[key]
            return None

        for g in model.graph.all_graphs():
            for n in g:
                if n.domain == CORE and n.op == "batch_norm":
                    key = n.name or n.outputs[0].name
                    prod = n.inputs[0].producer
                    why_prod = not_raised.get(prod.name) if prod else None
                    rule_why = reason_for(n)
                    not_folded[key] = (
                        Reason(rule_why, "rule-rejected") if rule_why else
                        Reason(f"its producer {prod.qualified_op} could not be raised ({why_prod})",
                               "producer-not-raised") if why_prod else
                        Reason(f"input comes from {prod.qualified_op if prod else 'a graph input'}, not a "
                               f"conv or linear; no conv or linear without padding reads it alone",
                               "no-partner"))
        affine = _to_affine(model) if self.affine else 0
        folded = stats.total
        changed = bool(folded or affine)
        return PassResult(model, changed, {
            "folded": folded, "affine": affine, "rewrites": folded + affine, "mode": self.mode,
            "by_rule": dict(stats.applied), "not_folded": not_folded,
            "left_exact": len(not_folded) - affine})
