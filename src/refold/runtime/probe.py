"""Probe inputs made from a graph's input types, and the error measure the numeric check uses."""
from __future__ import annotations

import numpy as np

from refold.errors import UnsupportedError
from refold.ir.dtypes import DType
from refold.ir.graph import Model


_BATCH, _SEQUENCE, _SPATIAL = 2, 32, 64


def probe_dims(model: Model, dims: dict[str, int] | None = None) -> dict[str, int]:
    """Sizes for the symbolic input dims that exercise the model, not the degenerate 1x1.

    ``dims`` (the user's ``--dim``) first; then the name's hint (batch, seq / sequence / length,
    height / width); then the position: the first axis is a batch (2), later axes of an image
    (rank 4-5) are spatial (64), of a sequence (rank 2-3) are a length (32).

    >>> # PP-OCR det x: [N, 3, H, W]  ->  {N: 2, H: 64, W: 64}
    """
    out = dict(dims or {})
    for v in model.graph.inputs:
        if v.const is not None or not v.shape:
            continue
        rank = len(v.shape)
        for axis, d in enumerate(v.shape):
            if isinstance(d, int) and d >= 0:
                continue
            if not isinstance(d, str):  # -1 or unknown: keyed by position
                d = f"{v.name}:{axis}"
            if d in out:
                continue
            low = d.lower() if ":" not in d else ""
            if "batch" in low or low in ("n", "b", "bs"):
                out[d] = _BATCH
            elif any(k in low for k in ("seq", "len", "token", "time")):
                out[d] = _SEQUENCE
            elif any(k in low for k in ("height", "width")) or low in ("h", "w"):
                out[d] = _SPATIAL
            elif axis == 0:
                out[d] = _BATCH
            else:
                out[d] = _SPATIAL if rank >= 4 else _SEQUENCE
    return out


def describe_feeds(feeds: dict) -> str:
    """``x: 2x3x64x64`` for the check line."""
    return ", ".join(f"{k}: {'x'.join(map(str, getattr(a, 'shape', ()))) or 'scalar'}" for k, a in feeds.items())


def probe_inputs(model: Model, *, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs from the graph's input types; symbolic dims take ``dims[name]`` or 1.

    Floats are standard normal, integers lie in [0, 4) (safe as indices and sizes), bools random.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in model.graph.inputs:
        if v.const is not None:
            continue
        if v.dtype is None or v.shape is None:
            raise UnsupportedError(f"input '{v.name}' has no type or shape; pass probe inputs")
        # static dims as they are; symbolic ones from ``dims`` (default 1); -1 or unknown ones
        # from ``dims["input:axis"]`` (default 1)
        sizes = dims or {}
        shape = tuple(d if isinstance(d, int) and d >= 0 else sizes.get(d, 1) if isinstance(d, str)
                      else sizes.get(f"{v.name}:{axis}", 1) for axis, d in enumerate(v.shape))
        dt = v.dtype
        if max(shape, default=0) > 1 << 31 or np.prod(shape, dtype=object) * max(1, dt.itemsize_bits // 8) > 1 << 28:
            raise UnsupportedError(f"input '{v.name}' of shape {list(shape)} is too large to probe (over 256 MiB)")
        if dt.is_float:
            arr = rng.standard_normal(shape).astype(dt.numpy())
        elif dt == DType.BOOL:
            arr = rng.random(shape) < 0.5
        elif dt == DType.STRING:
            arr = np.array(["a"] * int(np.prod(shape)), dtype=object).reshape(shape)
        else:
            arr = rng.integers(0, 4, shape).astype(dt.numpy())
        feeds[v.name] = np.asarray(arr)
    return feeds


def max_errors(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[float, float, str | None]:
    """(max abs error, max relative error, worst output name) over common outputs."""
    worst_abs, worst_rel, worst = 0.0, 0.0, None
    for k, a in ref.items():
        if k not in got:
            continue
        b = got[k]
        a = np.asarray(a)
        b = np.asarray(b)
        if a.shape != b.shape:
            return float("inf"), float("inf"), k
        if a.dtype == object or a.size == 0:
            if not np.array_equal(a, b):
                return float("inf"), float("inf"), k
            continue
        af, bf = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(af) & np.isnan(bf)
        same_inf = np.isinf(af) & (af == bf)
        diff = np.where(both_nan | same_inf, 0.0, np.abs(af - bf))
        diff = np.where(np.isnan(diff), np.inf, diff)
        e_abs = float(diff.max())
        scale = float(np.abs(np.where(np.isfinite(af), af, 0)).max())
        e_rel = e_abs / scale if scale > 0 else e_abs
        if e_abs > worst_abs or worst is None:
            worst_abs, worst = e_abs, k
        worst_rel = max(worst_rel, e_rel)
    return worst_abs, worst_rel, worst
