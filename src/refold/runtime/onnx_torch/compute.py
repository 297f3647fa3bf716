"""Arithmetic, activations, matmul, convolution, pooling, normalization and reductions as torch."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from refold.runtime.onnx_torch.registry import ONNX_TORCH, _ints, _opt, onnx_op


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


def unpack_bits(packed, bits: int, count: int):
    """Unsigned ``bits``-bit values packed along the last axis, lowest bits first (ORT's layout):
    [..., bytes] -> [..., count]."""
    per = 8 // bits
    shifts = torch.arange(0, 8, bits, dtype=torch.int32, device=packed.device)
    vals = (packed.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return vals.reshape(*packed.shape[:-1], packed.shape[-1] * per)[..., :count]


def _int8_blocks(x, block: int, k: int):
    """x with each block of ``block`` values along its last axis rounded to symmetric int8 (scale
    max|x| / 127 per block), and back to float."""
    pad = -k % block
    xb = F.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, block)
    scale = xb.abs().amax(-1, keepdim=True) / 127.0
    q = torch.round(xb * torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale)))
    return (q * scale).reshape(*x.shape[:-1], -1)[..., :k]


@onnx_op("com.microsoft.MatMulNBits")
def _matmul_nbits(ins, a, opset):
    """ONNX Runtime's com.microsoft.MatMulNBits: y = A @ dequant(B).T (+ bias), B [N, k_blocks,
    blob] holding unsigned ``bits``-bit values along K, w = (q - zp) * scale per block of
    block_size; zero points packed like B, 2^(bits-1) when absent."""
    A, B, scales = ins[0], ins[1], ins[2]
    K, N, bits, block = a["K"], a["N"], a.get("bits", 4), a["block_size"]
    if _opt(ins, 4) is not None:
        raise NotImplementedError("MatMulNBits with g_idx")
    k_blocks = (K + block - 1) // block
    q = unpack_bits(B.reshape(N, k_blocks, -1), bits, block).float()
    zp = _opt(ins, 3)
    if zp is None:
        zp = torch.full((N, k_blocks, 1), float(1 << (bits - 1)))
    elif zp.dtype == torch.uint8:
        zp = unpack_bits(zp.reshape(N, -1), bits, k_blocks).float().unsqueeze(-1)
    else:
        raise NotImplementedError("MatMulNBits with float zero points")
    w = ((q - zp) * scales.float().reshape(N, k_blocks, 1)).reshape(N, k_blocks * block)[:, :K]
    x = A.float()
    if a.get("accuracy_level", 0) == 4:  # ORT's CPU kernel rounds A to int8 per block of K
        x = _int8_blocks(x, block, K)
    y = torch.matmul(x, w.t())
    if _opt(ins, 5) is not None:
        y = y + ins[5].float()
    return [y.to(A.dtype)]


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


@onnx_op("LRN")
def _lrn(ins, a, opset):
    # y = x / (bias + alpha / size * sum of x^2 over channels [c - (size-1)//2, c + ceil((size-1)/2)])^beta
    x, size = ins[0], a["size"]
    sq = F.pad((x * x).unsqueeze(1), (0,) * 2 * (x.dim() - 2) + ((size - 1) // 2, size // 2))
    flat = sq.reshape(sq.shape[0], 1, sq.shape[2], -1)  # [N, 1, C + size - 1, spatial]
    window = F.avg_pool2d(flat, (size, 1), stride=1).reshape(x.shape) * size
    return [x / (a.get("bias", 1.0) + a.get("alpha", 1e-4) / size * window) ** a.get("beta", 0.75)]


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
# torch widens integer sums and products to int64; ONNX keeps the input's type
ONNX_TORCH["ReduceSum"] = _reduce(lambda x, d, k: x.sum(dim=d, keepdim=k, dtype=x.dtype), from_opset=13)
ONNX_TORCH["ReduceMax"] = _reduce(lambda x, d, k: x.amax(dim=d, keepdim=k))
ONNX_TORCH["ReduceMin"] = _reduce(lambda x, d, k: x.amin(dim=d, keepdim=k))
ONNX_TORCH["ReduceProd"] = _reduce(lambda x, d, k: _prod(x, d, k))
ONNX_TORCH["ReduceL2"] = _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k).sqrt())
ONNX_TORCH["ReduceSumSquare"] = _reduce(lambda x, d, k: (x * x).sum(dim=d, keepdim=k, dtype=x.dtype))


def _prod(x, dims, keep):
    for d in sorted(dims, reverse=True):
        x = x.prod(dim=d, keepdim=keep, dtype=x.dtype)
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


@onnx_op("Einsum")
def _einsum(ins, a, opset):
    eq = a["equation"]
    return [torch.einsum(eq.decode() if isinstance(eq, bytes) else eq, *ins)]


@onnx_op("PRelu")
def _prelu(ins, a, opset):
    x, slope = ins
    return [torch.where(x >= 0, x, x * slope)]


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

    return evaluate("quantize_linear", list(ins), {"axis": a.get("axis", 1),
                                                   "block_size": a.get("block_size", 0)})


@onnx_op("DequantizeLinear")
def _dequantize(ins, a, opset):
    from refold.ir.ops import evaluate

    return evaluate("dequantize_linear", list(ins), {"axis": a.get("axis", 1),
                                                     "block_size": a.get("block_size", 0)})
