"""ONNX ops as torch functions, so an ONNX-born graph runs (and differentiates) in torch.

Each entry is ``fn(inputs, attrs, opset) -> list of outputs``; ``inputs`` are torch tensors (None
for an omitted optional input). Attribute-vs-input changes across opsets (Squeeze axes, Split
sizes, Reduce axes, Clip bounds, Pad pads) are read both ways. Ops refold cannot run in torch are
named in the error the runner raises; the reference runner covers them.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from refold.ir.dtypes import DType

OnnxTorchFn = Callable[[list, dict, int], list]
ONNX_TORCH: dict[str, OnnxTorchFn] = {}


def onnx_op(*names: str):
    def register(fn):
        for n in names:
            ONNX_TORCH[n] = fn
        return fn
    return register


def _ints(t) -> list[int]:
    return [int(x) for x in t.reshape(-1).tolist()]


def _opt(ins: list, i: int):
    return ins[i] if len(ins) > i else None


def _axes(ins: list, a: dict, i: int = 1) -> list[int] | None:
    """Axes from the attribute (older opsets) or input ``i`` (newer ones)."""
    if a.get("axes") is not None:
        return list(a["axes"])
    t = _opt(ins, i)
    return None if t is None else _ints(t)


def _binary(fn):
    return lambda ins, a, opset: [fn(ins[0], ins[1])]


def _unary(fn):
    return lambda ins, a, opset: [fn(ins[0])]


for _name, _fn in {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow,
                   "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
                   "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
                   "Xor": torch.logical_xor}.items():
    ONNX_TORCH[_name] = _binary(_fn)

for _name, _fn in {"Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg,
                   "Abs": torch.abs, "Reciprocal": torch.reciprocal, "Relu": torch.relu,
                   "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Erf": torch.erf, "Sin": torch.sin,
                   "Cos": torch.cos, "Floor": torch.floor, "Ceil": torch.ceil, "Not": torch.logical_not,
                   "Sign": torch.sign, "Softplus": F.softplus, "Softsign": F.softsign,
                   "IsNaN": torch.isnan, "Round": torch.round, "Identity": lambda x: x,
                   "Mish": F.mish}.items():
    ONNX_TORCH[_name] = _unary(_fn)


@onnx_op("Div")
def _div(ins, a, opset):
    x, y = ins
    if not x.dtype.is_floating_point and not y.dtype.is_floating_point:
        return [torch.div(x, y, rounding_mode="trunc")]
    return [x / y]


@onnx_op("Mod")
def _mod(ins, a, opset):
    return [torch.fmod(*ins) if a.get("fmod", 0) else torch.remainder(*ins)]


def _fold(fn):
    def run(ins, a, opset):
        out = ins[0]
        for t in ins[1:]:
            out = fn(out, t)
        return [out]
    return run


ONNX_TORCH["Max"] = _fold(torch.maximum)
ONNX_TORCH["Min"] = _fold(torch.minimum)
ONNX_TORCH["Sum"] = _fold(torch.add)
ONNX_TORCH["Mean"] = lambda ins, a, opset: [_fold(torch.add)(ins, a, opset)[0] / len(ins)]


@onnx_op("LeakyRelu")
def _leaky(ins, a, opset):
    return [F.leaky_relu(ins[0], a.get("alpha", 0.01))]


@onnx_op("Elu")
def _elu(ins, a, opset):
    return [F.elu(ins[0], a.get("alpha", 1.0))]


@onnx_op("HardSigmoid")
def _hard_sigmoid(ins, a, opset):
    return [torch.clamp(ins[0] * a.get("alpha", 0.2) + a.get("beta", 0.5), 0, 1)]


@onnx_op("HardSwish")
def _hard_swish(ins, a, opset):
    return [F.hardswish(ins[0])]


@onnx_op("Gelu")
def _gelu(ins, a, opset):
    return [F.gelu(ins[0], approximate=a.get("approximate", "none"))]


@onnx_op("Clip")
def _clip(ins, a, opset):
    lo = a.get("min") if opset < 11 else _opt(ins, 1)
    hi = a.get("max") if opset < 11 else _opt(ins, 2)
    x = ins[0]
    if lo is not None:
        x = torch.maximum(x, torch.as_tensor(lo, dtype=x.dtype))
    if hi is not None:
        x = torch.minimum(x, torch.as_tensor(hi, dtype=x.dtype))
    return [x]


def _softmax_like(fn):
    def run(ins, a, opset):
        x = ins[0]
        axis = a.get("axis", -1 if opset >= 13 else 1)
        if opset >= 13:
            return [fn(x, dim=axis)]
        axis = axis % x.dim()  # before 13: over the flattened trailing dims
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return [fn(flat, dim=1).reshape(x.shape)]
    return run


ONNX_TORCH["Softmax"] = _softmax_like(torch.softmax)
ONNX_TORCH["LogSoftmax"] = _softmax_like(torch.log_softmax)


@onnx_op("MatMul")
def _matmul(ins, a, opset):
    return [torch.matmul(ins[0], ins[1])]


@onnx_op("Gemm")
def _gemm(ins, a, opset):
    A = ins[0].t() if a.get("transA", 0) else ins[0]
    B = ins[1].t() if a.get("transB", 0) else ins[1]
    y = a.get("alpha", 1.0) * (A @ B)
    c = _opt(ins, 2)
    return [y + a.get("beta", 1.0) * c if c is not None else y]


def _conv_pads(a: dict, x, w, transpose=False) -> tuple[list[int], list[int]]:
    k = list(a.get("kernel_shape") or w.shape[2:])
    nd = len(k)
    strides = list(a.get("strides") or [1] * nd)
    dil = list(a.get("dilations") or [1] * nd)
    auto = a.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    pads = list(a.get("pads") or [0] * (2 * nd))
    if auto in ("SAME_UPPER", "SAME_LOWER") and not transpose:
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + (k[i] - 1) * dil[i] + 1 - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + nd] = lo, total - lo
    return pads, strides


def _pad_explicit(x, pads: list[int], value=0.0):
    nd = len(pads) // 2
    spec = []
    for i in reversed(range(nd)):
        spec += [pads[i], pads[i + nd]]
    return F.pad(x, spec, value=value)


@onnx_op("Conv")
def _conv(ins, a, opset):
    x, w, b = ins[0], ins[1], _opt(ins, 2)
    pads, strides = _conv_pads(a, x, w)
    nd = len(pads) // 2
    dil = list(a.get("dilations") or [1] * nd)
    sym = pads[:nd] == pads[nd:]
    if not sym:
        x = _pad_explicit(x, pads)
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return [conv(x, w, b, strides, pads[:nd] if sym else 0, dil, a.get("group", 1))]


@onnx_op("ConvTranspose")
def _conv_transpose(ins, a, opset):
    x, w, b = ins[0], ins[1], _opt(ins, 2)
    nd = w.dim() - 2
    pads = list(a.get("pads") or [0] * (2 * nd))
    if pads[:nd] != pads[nd:] or a.get("output_shape"):
        raise NotImplementedError("ConvTranspose with asymmetric pads or output_shape")
    strides = list(a.get("strides") or [1] * nd)
    dil = list(a.get("dilations") or [1] * nd)
    outpad = list(a.get("output_padding") or [0] * nd)
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    return [conv(x, w, b, strides, pads[:nd], outpad, a.get("group", 1), dil)]


@onnx_op("BatchNormalization")
def _batch_norm(ins, a, opset):
    if a.get("training_mode", 0):
        raise NotImplementedError("BatchNormalization with training_mode=1")
    from refold.ir.ops import evaluate

    return evaluate("batch_norm", list(ins[:5]), {"epsilon": a.get("epsilon", 1e-5)})


@onnx_op("InstanceNormalization")
def _instance_norm(ins, a, opset):
    return [F.instance_norm(ins[0], weight=ins[1], bias=ins[2], eps=a.get("epsilon", 1e-5))]


@onnx_op("LayerNormalization")
def _layer_norm(ins, a, opset):
    x = ins[0]
    axis = a.get("axis", -1) % x.dim()
    y = F.layer_norm(x.float(), x.shape[axis:], None, None, a.get("epsilon", 1e-5)).to(x.dtype)
    if _opt(ins, 1) is not None:
        y = y * ins[1]
    if _opt(ins, 2) is not None:
        y = y + ins[2]
    return [y]


def _pool_args(a: dict, x):
    k = list(a["kernel_shape"])
    nd = len(k)
    strides = list(a.get("strides") or [1] * nd)
    pads = list(a.get("pads") or [0] * (2 * nd))
    auto = a.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nd)
        for i in range(nd):
            size = x.shape[2 + i]
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + k[i] - size)
            lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
            pads[i], pads[i + nd] = lo, total - lo
    return k, strides, pads, nd


@onnx_op("MaxPool")
def _max_pool(ins, a, opset):
    x = ins[0]
    k, strides, pads, nd = _pool_args(a, x)
    dil = list(a.get("dilations") or [1] * nd)
    sym = pads[:nd] == pads[nd:] and all(p <= kk // 2 for p, kk in zip(pads[:nd], k))
    if not sym:
        x = _pad_explicit(x, pads, value=-math.inf)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    return [pool(x, k, strides, pads[:nd] if sym else 0, dil, bool(a.get("ceil_mode", 0)))]


@onnx_op("AveragePool")
def _avg_pool(ins, a, opset):
    x = ins[0]
    k, strides, pads, nd = _pool_args(a, x)
    include = bool(a.get("count_include_pad", 0))
    sym = pads[:nd] == pads[nd:] and all(p <= kk // 2 for p, kk in zip(pads[:nd], k))
    if not sym:
        if not include:
            raise NotImplementedError("AveragePool with asymmetric pads excluding padding")
        x = _pad_explicit(x, pads)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    kw = {} if nd == 1 else {"divisor_override": None}
    return [pool(x, k, strides, pads[:nd] if sym else 0, bool(a.get("ceil_mode", 0)), include, **kw)]


@onnx_op("GlobalAveragePool")
def _gap(ins, a, opset):
    return [ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)]


@onnx_op("GlobalMaxPool")
def _gmp(ins, a, opset):
    return [ins[0].amax(dim=tuple(range(2, ins[0].dim())), keepdim=True)]


@onnx_op("Reshape")
def _reshape(ins, a, opset):
    x = ins[0]
    shape = _ints(ins[1]) if opset >= 5 else list(a["shape"])
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return [x.reshape(shape)]


@onnx_op("Flatten")
def _flatten(ins, a, opset):
    x = ins[0]
    axis = a.get("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


@onnx_op("Transpose")
def _transpose(ins, a, opset):
    perm = a.get("perm") or list(reversed(range(ins[0].dim())))
    return [ins[0].permute(*perm)]


@onnx_op("Squeeze")
def _squeeze(ins, a, opset):
    axes = _axes(ins, a)
    x = ins[0]
    if axes is None:
        return [x.squeeze()]
    return [x.squeeze(tuple(ax % x.dim() for ax in axes))] if axes else [x]


@onnx_op("Unsqueeze")
def _unsqueeze(ins, a, opset):
    x = ins[0]
    axes = _axes(ins, a)
    rank = x.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        x = x.unsqueeze(ax)
    return [x]


@onnx_op("Concat")
def _concat(ins, a, opset):
    ts = [t for t in ins if t is not None]
    return [torch.cat(ts, dim=a["axis"])]


@onnx_op("Split")
def _split(ins, a, opset, n_out: int = 1):
    x = ins[0]
    axis = a.get("axis", 0)
    sizes = a.get("split") if opset < 13 else (_ints(ins[1]) if _opt(ins, 1) is not None else None)
    if sizes is None:
        n = a.get("num_outputs") or n_out
        size = -(-x.shape[axis] // n)
        return list(torch.split(x, size, dim=axis))
    return list(torch.split(x, list(sizes), dim=axis))


@onnx_op("Slice")
def _slice(ins, a, opset):
    from refold.ir.ops import evaluate

    if opset < 10:  # starts / ends / axes were attributes
        ins = [ins[0]] + [torch.tensor(a[k], dtype=torch.int64) if a.get(k) is not None else None
                          for k in ("starts", "ends", "axes")]
    return evaluate("slice", list(ins), {})


@onnx_op("Gather")
def _gather(ins, a, opset):
    x, idx = ins
    axis = a.get("axis", 0) % x.dim()
    idx = idx.long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return [out.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))]


@onnx_op("GatherElements")
def _gather_elements(ins, a, opset):
    x, idx = ins
    axis = a.get("axis", 0)
    idx = idx.long()
    return [torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))]


@onnx_op("Shape")
def _shape(ins, a, opset):
    dims = list(ins[0].shape)
    start, end = a.get("start", 0), a.get("end")
    return [torch.tensor(dims[start:end] if end is not None else dims[start:], dtype=torch.int64)]


@onnx_op("Size")
def _size(ins, a, opset):
    return [torch.tensor(ins[0].numel(), dtype=torch.int64)]


@onnx_op("Cast")
def _cast(ins, a, opset):
    return [ins[0].to(DType(a["to"]).torch())]


@onnx_op("CastLike")
def _cast_like(ins, a, opset):
    return [ins[0].to(ins[1].dtype)]


@onnx_op("Constant")
def _constant(ins, a, opset):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            v = a[key]
            if hasattr(v, "torch"):
                return [v.torch()]
            return [torch.tensor(v, dtype=torch.float32 if "float" in key else torch.int64)]
    raise NotImplementedError("Constant without a numeric value")


@onnx_op("ConstantOfShape")
def _constant_of_shape(ins, a, opset):
    v = a.get("value")
    fill = v.torch().reshape(-1) if v is not None else torch.zeros(1)
    return [torch.full(_ints(ins[0]), fill[0].item(), dtype=fill.dtype)]


@onnx_op("Expand")
def _expand(ins, a, opset):
    x, shape = ins[0], _ints(ins[1])
    target = torch.broadcast_shapes(tuple(x.shape), tuple(shape))
    return [x.expand(target)]


@onnx_op("Tile")
def _tile(ins, a, opset):
    return [ins[0].repeat(*_ints(ins[1]))]


@onnx_op("Where")
def _where(ins, a, opset):
    return [torch.where(ins[0].bool(), ins[1], ins[2])]


@onnx_op("Range")
def _range(ins, a, opset):
    start, limit, delta = (t.item() for t in ins)
    return [torch.arange(start, limit, delta, dtype=ins[0].dtype)]


def _reduce(fn, *, from_opset: int = 18):
    def run(ins, a, opset):
        x = ins[0]
        axes = list(a["axes"]) if a.get("axes") is not None else (
            _ints(ins[1]) if opset >= from_opset and _opt(ins, 1) is not None else None)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0) and axes is not None or (
                    a.get("noop_with_empty_axes", 0) and axes is None):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, tuple(ax % x.dim() for ax in axes), keep)]
    return run


ONNX_TORCH["ReduceMean"] = _reduce(lambda x, d, k: x.mean(dim=d, keepdim=k))
ONNX_TORCH["ReduceSum"] = _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k), from_opset=13)
ONNX_TORCH["ReduceMax"] = _reduce(lambda x, d, k: x.amax(dim=d, keepdim=k))
ONNX_TORCH["ReduceMin"] = _reduce(lambda x, d, k: x.amin(dim=d, keepdim=k))
ONNX_TORCH["ReduceProd"] = _reduce(lambda x, d, k: _prod(x, d, k))
ONNX_TORCH["ReduceL2"] = _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k).sqrt())
ONNX_TORCH["ReduceSumSquare"] = _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k))


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d, keepdim=keep)
    return x


def _argx(fn):
    def run(ins, a, opset):
        x = ins[0]
        axis = a.get("axis", 0)
        if a.get("select_last_index", 0):
            n = x.shape[axis]
            return [n - 1 - fn(x.flip(axis), dim=axis, keepdim=bool(a.get("keepdims", 1)))]
        return [fn(x, dim=axis, keepdim=bool(a.get("keepdims", 1)))]
    return run


ONNX_TORCH["ArgMax"] = _argx(torch.argmax)
ONNX_TORCH["ArgMin"] = _argx(torch.argmin)


@onnx_op("Dropout")
def _dropout(ins, a, opset):
    return [ins[0], torch.ones_like(ins[0], dtype=torch.bool)]


@onnx_op("Pad")
def _pad(ins, a, opset):
    x = ins[0]
    pads = list(a["pads"]) if opset < 11 else _ints(ins[1])
    value = a.get("value", 0.0) if opset < 11 else (_opt(ins, 2).item() if _opt(ins, 2) is not None else 0)
    mode = a.get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    axes = _ints(ins[3]) if opset >= 18 and _opt(ins, 3) is not None else list(range(x.dim()))
    full = [0] * (2 * x.dim())
    for i, ax in enumerate(axes):
        full[ax % x.dim()], full[ax % x.dim() + x.dim()] = pads[i], pads[i + len(axes)]
    spec = []
    for i in reversed(range(x.dim())):
        spec += [full[i], full[i + x.dim()]]
    while len(spec) > 2 and spec[-2:] == [0, 0]:  # torch pads the trailing dims only
        spec = spec[:-2]
    if mode == "constant":
        return [F.pad(x, spec, value=value)]
    return [F.pad(x, spec, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])]


@onnx_op("Einsum")
def _einsum(ins, a, opset):
    eq = a["equation"]
    return [torch.einsum(eq.decode() if isinstance(eq, bytes) else eq, *ins)]


@onnx_op("Trilu")
def _trilu(ins, a, opset):
    k = int(_opt(ins, 1).item()) if _opt(ins, 1) is not None else 0
    return [torch.triu(ins[0], k) if a.get("upper", 1) else torch.tril(ins[0], k)]


@onnx_op("CumSum")
def _cumsum(ins, a, opset):
    x, axis = ins[0], int(ins[1].item())
    if a.get("reverse", 0):
        x = x.flip(axis)
    y = x.cumsum(axis)
    if a.get("exclusive", 0):
        y = y - x
    return [y.flip(axis) if a.get("reverse", 0) else y]


@onnx_op("Resize")
def _resize(ins, a, opset):
    x = ins[0]
    mode = a.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
    scales = _opt(ins, 2)
    sizes = _opt(ins, 3)
    if sizes is not None and sizes.numel():
        size = _ints(sizes)[2:]
        kw = {"size": size}
    elif scales is not None and scales.numel():
        sc = [float(s) for s in scales.reshape(-1).tolist()][2:]
        kw = {"scale_factor": sc, "recompute_scale_factor": False}
    else:
        raise NotImplementedError("Resize without scales or sizes")
    if mode == "nearest":
        nearest = a.get("nearest_mode", "round_prefer_floor")
        nearest = nearest.decode() if isinstance(nearest, bytes) else nearest
        if ctm == "asymmetric" and nearest == "floor":
            return [F.interpolate(x, mode="nearest", **kw)]
        if ctm in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn") and nearest in (
                "round_prefer_ceil", "round_prefer_floor"):
            return [F.interpolate(x, mode="nearest-exact", **kw)]
        raise NotImplementedError(f"Resize nearest with {ctm}/{nearest}")
    interp = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2] if mode == "linear" else "bicubic"
    if ctm == "align_corners":
        return [F.interpolate(x, mode=interp, align_corners=True, **kw)]
    if ctm in ("half_pixel", "pytorch_half_pixel"):
        return [F.interpolate(x, mode=interp, align_corners=False, **kw)]
    raise NotImplementedError(f"Resize {mode} with {ctm}")


@onnx_op("OneHot")
def _one_hot(ins, a, opset):
    idx, depth, values = ins
    d = int(depth.reshape(-1)[0].item())
    idx = idx.long()
    idx = torch.where(idx < 0, idx + d, idx)
    hot = F.one_hot(idx, d)
    axis = a.get("axis", -1)
    if axis != -1:
        hot = hot.movedim(-1, axis)
    return [torch.where(hot.bool(), values[1], values[0])]


@onnx_op("TopK")
def _topk(ins, a, opset):
    k = int(ins[1].reshape(-1)[0].item())
    v, i = torch.topk(ins[0], k, dim=a.get("axis", -1), largest=bool(a.get("largest", 1)),
                      sorted=bool(a.get("sorted", 1)))
    return [v, i]


@onnx_op("PRelu")
def _prelu(ins, a, opset):
    x, slope = ins
    return [torch.where(x >= 0, x, x * slope)]


@onnx_op("DepthToSpace")
def _depth_to_space(ins, a, opset):
    x, b = ins[0], a["blocksize"]
    n, c, h, w = x.shape
    mode = a.get("mode", "DCR")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@onnx_op("SimplifiedLayerNormalization")
def _simplified_ln(ins, a, opset):
    x = ins[0]
    axis = a.get("axis", -1) % x.dim()
    dims = tuple(range(axis, x.dim()))
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + a.get("epsilon", 1e-5))).to(x.dtype)
    return [y * ins[1] if _opt(ins, 1) is not None else y]


@onnx_op("RMSNormalization")
def _rms_normalization(ins, a, opset):
    return _simplified_ln(ins, a, opset)


@onnx_op("QuantizeLinear")
def _quantize(ins, a, opset):
    from refold.ir.ops import evaluate

    return evaluate("quantize_linear", list(ins), {"axis": a.get("axis", 1)})


@onnx_op("DequantizeLinear")
def _dequantize(ins, a, opset):
    from refold.ir.ops import evaluate

    return evaluate("dequantize_linear", list(ins), {"axis": a.get("axis", 1)})
