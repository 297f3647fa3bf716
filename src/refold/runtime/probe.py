"""Probe inputs made from a graph's input types, and the error measure the numeric check uses."""
from __future__ import annotations

import numpy as np

from refold.errors import UnsupportedError
from refold.ir.dtypes import DType
from refold.ir.graph import Model


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
        # static dims as they are; symbolic ones from ``dims`` (default 1); -1 or unknown: 1
        shape = tuple(d if isinstance(d, int) and d >= 0 else (dims or {}).get(d, 1) if isinstance(d, str)
                      else 1 for d in v.shape)
        dt = v.dtype
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
