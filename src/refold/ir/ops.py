"""The ``core`` dialect: the ops passes reason about, each with one schema.

A schema names inputs (``?`` optional, ``*`` variadic) and attributes with defaults, and carries a
reference implementation on torch tensors. The reference is what constant folding evaluates and
what shape inference runs on meta tensors, so the three can never disagree.

>>> s = CORE_OPS["conv"]; s.inputs, sorted(s.attrs)
(('x', 'w', 'b?'), ['dilations', 'group', 'pads', 'strides'])
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

from refold.errors import UnsupportedError

REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class OpSchema:
    name: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]
    reference: Callable[..., list[torch.Tensor]]
    num_outputs: int | None = 1  # None: as many as the node has
    doc: str = ""
    # input positions whose *values* (not just shapes) the op needs, e.g. reshape's shape
    control_inputs: tuple[int, ...] = ()

    def resolve_attrs(self, attrs: dict[str, Any], where: str = "") -> dict[str, Any]:
        out = {}
        for k, default in self.attrs.items():
            if k in attrs and attrs[k] is not None:
                out[k] = attrs[k]
            elif default is REQUIRED:
                raise UnsupportedError(f"{where}core.{self.name} needs attribute '{k}'")
            else:
                out[k] = default
        extra = sorted(set(attrs) - set(self.attrs))
        if extra:
            raise UnsupportedError(f"{where}core.{self.name} has unknown attributes {extra}")
        return out

    def arity_ok(self, n: int) -> bool:
        if any(i.endswith("*") for i in self.inputs):
            return n >= len(self.inputs) - 1
        required = sum(not i.endswith("?") for i in self.inputs)
        return required <= n <= len(self.inputs)


CORE_OPS: dict[str, OpSchema] = {}


def core_op(name: str, inputs: str, *, n_outputs: int | None = 1, control: tuple[int, ...] = (),
            **attrs):
    """Register a core op whose reference is the decorated function ``(inputs, attrs) -> outputs``."""

    def wrap(fn):
        CORE_OPS[name] = OpSchema(name, tuple(inputs.split()) if inputs else (), attrs,
                                  fn, n_outputs, (fn.__doc__ or "").strip(), control)
        return fn

    return wrap


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _sym_pads(pads: list[int], rank: int) -> list[int] | None:
    if not pads:
        return [0] * rank
    if pads[:rank] == pads[rank:]:
        return pads[:rank]
    return None


def _padded(x, pads):
    """Apply ONNX-style [begin..., end...] zero padding explicitly (for asymmetric pads)."""
    n = len(pads) // 2
    torch_pads = []
    for i in reversed(range(n)):
        torch_pads += [pads[i], pads[i + n]]
    return F.pad(x, torch_pads)


@core_op("conv", "x w b?", strides=None, pads=None, dilations=None, group=1)
def _conv(ins, a):
    """N-d convolution, ONNX semantics (pads as [begin..., end...])."""
    x, w, b = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    k = w.dim() - 2
    strides, dil = a["strides"] or [1] * k, a["dilations"] or [1] * k
    pads = _sym_pads(a["pads"] or [], k)
    if pads is None:
        x, pads = _padded(x, a["pads"]), [0] * k
    fn = (F.conv1d, F.conv2d, F.conv3d)[k - 1]
    return [fn(x, w, b, strides, pads, dil, a["group"])]


@core_op("conv_transpose", "x w b?", strides=None, pads=None, dilations=None, group=1,
         output_padding=None)
def _conv_transpose(ins, a):
    """N-d transposed convolution; weight is [Cin, Cout/group, k...]."""
    x, w, b = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    k = w.dim() - 2
    pads = _sym_pads(a["pads"] or [], k)
    if pads is None:
        raise UnsupportedError("core.conv_transpose with asymmetric pads")
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[k - 1]
    return [fn(x, w, b, a["strides"] or [1] * k, pads, a["output_padding"] or [0] * k,
               a["group"], a["dilations"] or [1] * k)]


@core_op("batch_norm", "x scale bias mean var", epsilon=1e-5)
def _batch_norm(ins, a):
    """Inference batch norm over axis 1: (x - mean) / sqrt(var + eps) * scale + bias."""
    x, s, b, m, v = ins
    if m.requires_grad or v.requires_grad:  # F.batch_norm cannot differentiate running statistics
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return [(x - m.view(shape)) / torch.sqrt(v.view(shape) + a["epsilon"]) * s.view(shape) + b.view(shape)]
    return [F.batch_norm(x, m, v, s, b, False, 0.0, a["epsilon"])]


def _norm_axes(x, axis):
    axis = axis % x.dim()
    return list(range(axis, x.dim()))


@core_op("layer_norm", "x scale? bias?", axis=-1, epsilon=1e-5)
def _layer_norm(ins, a):
    """(x - mean) / sqrt(var + eps) * scale + bias over dims axis..-1, statistics in fp32."""
    x = ins[0]
    dims = _norm_axes(x, a["axis"])
    xf = x.float()
    mu = xf.mean(dims, keepdim=True)
    var = (xf - mu).pow(2).mean(dims, keepdim=True)
    y = ((xf - mu) / torch.sqrt(var + a["epsilon"])).to(x.dtype)
    if len(ins) > 1 and ins[1] is not None:
        y = y * ins[1]
    if len(ins) > 2 and ins[2] is not None:
        y = y + ins[2]
    return [y]


@core_op("rms_norm", "x scale?", axis=-1, epsilon=1e-5)
def _rms_norm(ins, a):
    """x / sqrt(mean(x^2) + eps) * scale over dims axis..-1, statistics in fp32."""
    x = ins[0]
    dims = _norm_axes(x, a["axis"])
    xf = x.float()
    y = (xf / torch.sqrt(xf.pow(2).mean(dims, keepdim=True) + a["epsilon"])).to(x.dtype)
    if len(ins) > 1 and ins[1] is not None:
        y = y * ins[1]
    return [y]


@core_op("crms_norm", "x scale?", axis=-1, epsilon=1e-5)
def _crms_norm(ins, a):
    """CRMSNorm: x holds the first d-1 coords of a zero-mean d-vector (the last is -sum x);
    y = [x, -sum x] / sqrt((sum x^2 + (sum x)^2) / d + eps) * scale, statistics in fp32."""
    if a["axis"] not in (-1, ins[0].dim() - 1):
        raise ValueError("crms_norm normalizes the last axis only")
    xf = ins[0].float()
    s = xf.sum(-1, keepdim=True)
    ms = (xf.pow(2).sum(-1, keepdim=True) + s * s) / (xf.shape[-1] + 1)
    y = (torch.cat([xf, -s], -1) / torch.sqrt(ms + a["epsilon"])).to(ins[0].dtype)
    if len(ins) > 1 and ins[1] is not None:
        y = y * ins[1]
    return [y]


@core_op("gemm", "a b c?", alpha=1.0, beta=1.0, transA=0, transB=0)
def _gemm(ins, a):
    """alpha * op(A) @ op(B) + beta * C, op = transpose when trans* = 1."""
    A = ins[0].t() if a["transA"] else ins[0]
    B = ins[1].t() if a["transB"] else ins[1]
    y = a["alpha"] * (A @ B) if a["alpha"] != 1.0 else A @ B
    if len(ins) > 2 and ins[2] is not None:
        y = y + (a["beta"] * ins[2] if a["beta"] != 1.0 else ins[2])
    return [y]


@core_op("linear", "x w b?")
def _linear(ins, a):
    """x @ w.T + b, w is [out, in] (torch.nn.Linear)."""
    return [F.linear(ins[0], ins[1], ins[2] if len(ins) > 2 else None)]


@core_op("matmul", "a b")
def _matmul(ins, a):
    """numpy-style matmul with broadcasting batch dims."""
    return [torch.matmul(ins[0], ins[1])]


def _div(x, y):
    if x.dtype.is_floating_point or x.dtype.is_complex:
        return x / y
    return torch.div(x, y, rounding_mode="trunc")


for _name, _fn, _alg in (("add", torch.add, "x + y"), ("sub", torch.sub, "x - y"),
                         ("mul", torch.mul, "x * y"), ("div", _div, "x / y (ints truncate)")):
    core_op(_name, "x y")(lambda ins, a, f=_fn: [f(ins[0], ins[1])]).__doc__ = _alg
    CORE_OPS[_name] = dataclasses.replace(CORE_OPS[_name], doc=f"{_alg}, numpy broadcasting")


for _name, _fn, _alg in (("relu", F.relu, "max(x, 0)"), ("sigmoid", torch.sigmoid, "1 / (1 + e^-x)"),
                         ("sqrt", torch.sqrt, "x ** 0.5"),
                         ("tanh", torch.tanh, "tanh(x)"), ("silu", F.silu, "x * sigmoid(x)"),
                         ("hardswish", F.hardswish, "x * relu6(x + 3) / 6")):
    core_op(_name, "x")(lambda ins, a, f=_fn: [f(ins[0])])
    CORE_OPS[_name] = dataclasses.replace(CORE_OPS[_name], doc=_alg)


@core_op("gelu", "x", approximate="none")
def _gelu(ins, a):
    """x * Phi(x); approximate='tanh' uses the tanh form."""
    return [F.gelu(ins[0], approximate=a["approximate"])]


@core_op("reshape", "x shape", allowzero=0, control=(1,))
def _reshape(ins, a):
    """ONNX Reshape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    x, shape = ins[0], _ints(ins[1])
    if not a["allowzero"]:
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@core_op("transpose", "x", perm=None)
def _transpose(ins, a):
    """Permute dims (reverse them when perm is absent)."""
    perm = a["perm"] if a["perm"] is not None else list(reversed(range(ins[0].dim())))
    return [ins[0].permute(perm)]


@core_op("flatten", "x", axis=1)
def _flatten(ins, a):
    """Reshape to 2-D: [prod(dims[:axis]), prod(dims[axis:])]."""
    x, ax = ins[0], a["axis"] % (ins[0].dim() + 1) if ins[0].dim() else 0
    return [x.reshape(math.prod(x.shape[:ax]), math.prod(x.shape[ax:]))]


@core_op("concat", "xs*", axis=REQUIRED)
def _concat(ins, a):
    """Join along axis."""
    return [torch.cat(list(ins), a["axis"])]


@core_op("split", "x split?", n_outputs=None, control=(1,), axis=0, num_outputs=None)
def _split(ins, a, n_out=None):
    """Split along axis by sizes, or into equal parts (last one smaller)."""
    x = ins[0]
    axis = a["axis"]
    if len(ins) > 1 and ins[1] is not None:
        sizes = _ints(ins[1])
    else:
        n = a["num_outputs"] or n_out
        size = -(-x.shape[axis] // n)
        sizes = [min(size, x.shape[axis] - i * size) for i in range(n)]
    return list(torch.split(x, sizes, axis))


@core_op("slice", "x starts ends axes? steps?", control=(1, 2, 3, 4))
def _slice(ins, a):
    """ONNX Slice: per-axis start/end/step, clamped, negative indices from the end."""
    x = ins[0]
    starts, ends = _ints(ins[1]), _ints(ins[2])
    axes = _ints(ins[3]) if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = _ints(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    flip = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= x.dim()
        n = x.shape[ax]
        if st > 0:
            s = max(0, min(n, s + n if s < 0 else s))
            e = max(0, min(n, e + n if e < 0 else e))
            idx[ax] = slice(s, max(s, e), st)
        else:  # negative step: flip, then slice with a positive step
            s = max(-1, min(n - 1, s + n if s < 0 else s))
            e = max(-1, min(n - 1, e + n if e < 0 else e))
            flip.append(ax)
            idx[ax] = slice(n - 1 - s, max(n - 1 - s, n - 1 - e), -st)
    if flip:
        x = torch.flip(x, flip)
    return [x[tuple(idx)]]


@core_op("reduce_mean", "x", axes=None, keepdims=1)
def _reduce_mean(ins, a):
    """Mean over axes (all axes when absent)."""
    x = ins[0]
    axes = a["axes"] if a["axes"] else list(range(x.dim()))
    return [x.mean(axes, keepdim=bool(a["keepdims"]))]


def _per_axis(t, x, axis):
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis % x.dim()] = -1
    return t.reshape(shape)


def _blocked(t, x, axis, block_size, what):
    """A blocked scale or zero point (ONNX opset 21) spread over ``x``: the same shape as ``x``
    except along ``axis``, where it holds ceil(dim / block_size) entries, each repeated
    block_size times (the last block may be short)."""
    axis %= x.dim()
    want = [(d + block_size - 1) // block_size if i == axis else d for i, d in enumerate(x.shape)]
    if list(t.shape) != want:
        raise ValueError(f"blocked {what} has shape {list(t.shape)}; input {list(x.shape)} with "
                         f"block_size={block_size} on axis {axis} needs {want}")
    return t.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])


def _params(ins, x, a, zp_default):
    """Scale and zero point shaped to broadcast against ``x``: per tensor, per axis or blocked."""
    s = ins[1]
    zp = ins[2] if len(ins) > 2 and ins[2] is not None else torch.zeros((), dtype=zp_default)
    if a["block_size"]:
        s = _blocked(s, x, a["axis"], a["block_size"], "scale")
        zp = _blocked(zp, x, a["axis"], a["block_size"], "zero point") if zp.dim() else zp
        return s, zp
    return _per_axis(s, x, a["axis"]), _per_axis(zp, x, a["axis"])


@core_op("quantize_linear", "x scale zero_point?", axis=1, block_size=0)
def _quantize(ins, a):
    """saturate(round_half_even(x / scale) + zero_point), type of zero_point (uint8 default);
    block_size > 0: one scale per block of that many elements along axis (opset 21)."""
    x = ins[0]
    s, zp = _params(ins, x, a, torch.uint8)
    info = torch.iinfo(zp.dtype)
    q = torch.round(x.float() / s.float()) + zp.float()
    return [q.clamp(info.min, info.max).to(zp.dtype)]


@core_op("dequantize_linear", "x scale zero_point?", axis=1, block_size=0)
def _dequantize(ins, a):
    """(x - zero_point) * scale; block_size > 0: one scale (and zero point) per block of that
    many elements along axis, ceil(dim / block_size) of them (opset 21). int4 / uint4 inputs
    are held in int8 / uint8."""
    x = ins[0]
    s, zp = _params(ins, x, a, x.dtype)
    return [((x.float() - zp.float()) * s.float()).to(ins[1].dtype)]


def evaluate(op: str, inputs: list, attrs: dict, num_outputs: int = 1) -> list[torch.Tensor]:
    """Run a core op's reference implementation."""
    schema = CORE_OPS.get(op)
    if schema is None:
        raise UnsupportedError(f"core.{op} is not a core op")
    a = schema.resolve_attrs(attrs)
    if op == "split":
        return _split(inputs, a, num_outputs)
    return schema.reference(inputs, a)


def infer_types(node) -> list[tuple] | None:
    """(dtype, shape) of each output of a core node, or None when inputs are not fully known.

    Runs the reference implementation on meta tensors (no data, no compute), with the real values
    of constant control inputs such as reshape's shape; so shapes can never disagree with the
    semantics. Symbolic dims are not propagated (None is returned).
    """
    from refold.ir.dtypes import DType

    schema = CORE_OPS.get(node.op)
    if schema is None:
        raise UnsupportedError(f"{node.label()}: core.{node.op} is not a core op")
    ins = []
    for i, v in enumerate(node.inputs):
        if v is None:
            ins.append(None)
        elif i in schema.control_inputs:
            if v.const is None:
                return None
            ins.append(v.const.torch())
        elif v.dtype is None or v.shape is None or not all(isinstance(d, int) and d >= 0 for d in v.shape):
            return None
        else:
            ins.append(torch.empty(v.shape, dtype=v.dtype.torch(), device="meta"))
    try:
        outs = evaluate(node.op, ins, node.attrs, len(node.outputs))
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise UnsupportedError(f"{node.label()}: core.{node.op} rejects its input types: "
                               f"{str(e).splitlines()[0][:200]}") from None
    return [(DType.from_torch(o.dtype), tuple(o.shape)) for o in outs]
