"""ONNX sequence ops as torch: a sequence is a Python list of tensors.

The dynamo exporter writes ``torch.split`` / ``chunk`` with data-dependent piece counts as
SplitToSequence + SequenceAt (GPT-2's fused qkv projection, for one). GatherND and ScatterND, the
indexing exporters write for advanced indexing and index assignment, live here too.
"""
from __future__ import annotations

import torch

from refold.runtime.onnx_torch.registry import _ints, _opt, onnx_op


def _index(seq: list, pos, *, insert: bool = False) -> int:
    i = int(pos.reshape(-1)[0]) if pos is not None else (len(seq) if insert else -1)
    return i + len(seq) + (1 if insert else 0) if i < 0 else i


@onnx_op("SplitToSequence")
def _split_to_sequence(ins, a, opset):
    x, split = ins[0], _opt(ins, 1)
    axis, keepdims = a.get("axis", 0), a.get("keepdims", 1)
    if split is None:  # one piece per index along axis
        pieces = list(torch.split(x, 1, dim=axis))
        return [pieces if keepdims else [p.squeeze(axis) for p in pieces]]
    sizes = _ints(split)
    if split.dim() == 0:  # a scalar: pieces of that size, the last one shorter
        return [list(torch.split(x, sizes[0], dim=axis))]
    return [list(torch.split(x, sizes, dim=axis))]


@onnx_op("SequenceAt")
def _sequence_at(ins, a, opset):
    seq, pos = ins
    return [seq[_index(seq, pos)]]


@onnx_op("SequenceConstruct")
def _sequence_construct(ins, a, opset):
    return [list(ins)]


@onnx_op("SequenceEmpty")
def _sequence_empty(ins, a, opset):
    return [[]]


@onnx_op("SequenceLength")
def _sequence_length(ins, a, opset):
    return [torch.tensor(len(ins[0]), dtype=torch.int64)]


@onnx_op("SequenceInsert")
def _sequence_insert(ins, a, opset):
    seq = list(ins[0])
    seq.insert(_index(seq, _opt(ins, 2), insert=True), ins[1])
    return [seq]


@onnx_op("SequenceErase")
def _sequence_erase(ins, a, opset):
    seq = list(ins[0])
    del seq[_index(seq, _opt(ins, 1))]
    return [seq]


@onnx_op("ConcatFromSequence")
def _concat_from_sequence(ins, a, opset):
    axis = a["axis"]
    if a.get("new_axis", 0):
        return [torch.stack(ins[0], dim=axis)]
    return [torch.cat(ins[0], dim=axis)]


@onnx_op("GatherND")
def _gather_nd(ins, a, opset):
    # out[b..., i...] = x[b..., idx[b..., i..., :]]: the last index axis addresses leading data axes
    x, idx = ins
    b = a.get("batch_dims", 0)
    k = idx.shape[-1]
    idx = torch.where(idx < 0, idx + torch.tensor(x.shape[b:b + k], device=idx.device), idx)
    batch = x.shape[:b]
    xf = x.reshape(-1, *x.shape[b:])                      # [B, d_b..., rest]
    idf = idx.reshape(xf.shape[0], -1, k)                 # [B, n, k]
    rows = torch.arange(xf.shape[0], device=x.device).unsqueeze(1).expand(-1, idf.shape[1])
    out = xf[(rows, *idf.unbind(-1))]                     # [B, n, rest after the k axes]
    return [out.reshape((*batch, *idx.shape[b:-1], *x.shape[b + k:]))]


@onnx_op("ScatterND")
def _scatter_nd(ins, a, opset):
    # out = x; out[idx[..., :]] = updates (reduction none / add / mul / max / min)
    x, idx, upd = ins
    k = idx.shape[-1]
    idx = torch.where(idx < 0, idx + torch.tensor(x.shape[:k], device=idx.device), idx)
    where = tuple(idx.reshape(-1, k).unbind(-1))
    upd = upd.reshape(-1, *x.shape[k:])
    out = x.clone()
    how = a.get("reduction", "none")
    how = how.decode() if isinstance(how, bytes) else how
    if how == "none":
        out[where] = upd
    elif how == "add":
        out.index_put_(where, upd, accumulate=True)
    else:
        fn = {"mul": torch.mul, "max": torch.maximum, "min": torch.minimum}[how]
        for i in range(upd.shape[0]):  # duplicates apply in order, as the reference does
            at = tuple(w[i] for w in where)
            out[at] = fn(out[at], upd[i])
    return [out]
