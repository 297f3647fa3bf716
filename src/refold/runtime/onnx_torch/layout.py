"""Shape, layout, indexing, casts and constants as torch: the ops that move or make values."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from refold.ir.dtypes import DType
from refold.runtime.onnx_torch.registry import _axes, _ints, _opt, onnx_op


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


@onnx_op("Trilu")
def _trilu(ins, a, opset):
    k = int(_opt(ins, 1).item()) if _opt(ins, 1) is not None else 0
    return [torch.triu(ins[0], k) if a.get("upper", 1) else torch.tril(ins[0], k)]


@onnx_op("CumSum")
def _cumsum(ins, a, opset):
    x, axis = ins[0], int(ins[1].item())
    if a.get("reverse", 0):
        x = x.flip(axis)
    y = x.cumsum(axis, dtype=x.dtype)  # torch widens int32 / bool sums to int64; ONNX keeps the type
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
