"""Calibration statistics that stream: each batch updates them, nothing else is kept.

A ``TensorStats`` holds, for one tensor, its running min / max and a histogram whose range widens
as batches arrive (counts re-binned into the wider range), so peak memory is a few kB per tensor
whatever the number of samples or their shapes (sequence length and batch may vary).

The range a quantizer uses comes from one of four methods:

- ``minmax``: the observed extremes.
- ``percentile``: the value below which ``percentile`` % of |x| lies (99.999 by default).
- ``entropy``: TensorRT's KL-divergence threshold: the clip point whose 128-level quantized
  histogram loses least information relative to the observed one.
- ``mse``: the clip point minimising the expected squared error (clipping plus rounding).

>>> s = TensorStats()
>>> for batch in (np.random.default_rng(i).standard_normal(1000) for i in range(4)):
...     s.update(batch)
>>> lo, hi = s.range("minmax")
"""
from __future__ import annotations

import math

import numpy as np

from refold.errors import UsageError

METHODS = ("minmax", "percentile", "entropy", "mse")
BINS = 2048
# Below this many observed values a histogram is too sparse to pick a clip point from (a
# squeeze-excitation vector seen on 24 images is 192 numbers): such tensors keep min / max.
MIN_SAMPLES = 4096


class TensorStats:
    """Streaming statistics of one tensor: extremes and a widening histogram of |x|.

    The histogram covers [0, edge); a batch with a larger magnitude widens it by a power of two
    (adjacent bins merge, so existing counts move exactly, without interpolation).
    """

    __slots__ = ("min", "max", "count", "hist", "edge", "bins")

    def __init__(self, bins: int = BINS):
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.bins = bins
        self.hist = np.zeros(bins, np.int64)
        self.edge = 0.0  # upper end of the histogram range; 0 until a non-zero value arrives

    def update(self, x) -> None:
        a = np.asarray(x, dtype=np.float32).reshape(-1)
        if a.size == 0:
            return
        finite = a[np.isfinite(a)]
        if finite.size == 0:
            return
        self.min = min(self.min, float(finite.min()))
        self.max = max(self.max, float(finite.max()))
        self.count += int(finite.size)
        mag = np.abs(finite)
        top = float(mag.max())
        if top > 0:
            if self.edge == 0.0:
                self.edge = top * (1 + 1e-6)
            while top >= self.edge:  # widen by 2: pairs of bins merge into the lower half
                merged = self.hist.reshape(-1, 2).sum(axis=1)
                self.hist = np.concatenate([merged, np.zeros(self.bins - merged.size, np.int64)])
                self.edge *= 2
        idx = np.minimum((mag / self.edge * self.bins).astype(np.int64), self.bins - 1) if self.edge else \
            np.zeros(mag.size, np.int64)
        self.hist += np.bincount(idx, minlength=self.bins)

    def merge(self, other: "TensorStats") -> None:
        """Fold another tensor's statistics into these (e.g. from a second worker)."""
        if other.count == 0:
            return
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        a, b = self, other
        if b.edge > a.edge:
            a.hist, b_hist, a.edge, b_edge = b.hist.copy(), a.hist, b.edge, a.edge
        else:
            b_hist, b_edge = b.hist, b.edge
        while b_edge and b_edge < a.edge:  # widen the narrower one to the same edge
            merged = b_hist.reshape(-1, 2).sum(axis=1)
            b_hist = np.concatenate([merged, np.zeros(self.bins - merged.size, np.int64)])
            b_edge *= 2
        a.hist = a.hist + b_hist

    @property
    def sparse(self) -> bool:
        """Too few values for a histogram method (they fall back to min / max)."""
        return self.count < MIN_SAMPLES

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    def range(self, method: str = "minmax", *, percentile: float = 99.999, levels: int = 127) -> tuple[float, float]:
        """(lo, hi) to quantize with. ``minmax`` keeps the observed extremes; the others give a
        clip threshold t and return (max(min, -t), min(max, t))."""
        if self.count == 0:
            return 0.0, 0.0
        if method == "minmax" or (method in METHODS and self.sparse):
            return self.min, self.max
        if method == "percentile":
            t = self._percentile(percentile)
        elif method == "entropy":
            t = self._entropy(levels)
        elif method == "mse":
            t = self._mse(levels)
        else:
            raise UsageError(f"calibration method '{method}': choose one of {', '.join(METHODS)}")
        return max(self.min, -t), min(self.max, t)

    def _width(self) -> float:
        return self.edge / self.bins

    def _percentile(self, p: float) -> float:
        if not 0 < p <= 100:
            raise UsageError(f"percentile must be in (0, 100], not {p}")
        cdf = np.cumsum(self.hist)
        i = int(np.searchsorted(cdf, cdf[-1] * p / 100.0))
        return min(self.amax, (i + 1) * self._width())

    def _entropy(self, levels: int) -> float:
        """TensorRT's threshold search: minimise KL(P || Q) over clip points (bin indices)."""
        hist = self.hist.astype(np.float64)
        nonzero = np.nonzero(hist)[0]
        if nonzero.size == 0:
            return self.amax
        last = int(nonzero[-1]) + 1
        if last <= levels:
            return min(self.amax, last * self._width())
        best_i, best_kl = last, math.inf
        step = max(1, (last - levels) // 256)  # at most ~256 candidates
        for i in [*range(levels, last, step), last]:  # the full range is always a candidate
            p = hist[:i].copy()
            p[i - 1] += hist[i:].sum()  # outliers clipped into the last bin
            q = _quantized(hist[:i], levels)
            kl = _kl(p, q)
            if kl < best_kl:
                best_kl, best_i = kl, i
        return min(self.amax, best_i * self._width())

    def _mse(self, levels: int) -> float:
        """The clip threshold t minimising E[(x - q(x))^2]: clipping error of |x| > t plus the
        rounding error (step^2 / 12) of the rest, with step = t / levels."""
        w = self._width()
        centers = (np.arange(self.bins) + 0.5) * w
        hist = self.hist.astype(np.float64)
        total = hist.sum()
        cdf = np.cumsum(hist)
        best_t, best = self.amax, math.inf
        nonzero = np.nonzero(hist)[0]
        last = int(nonzero[-1]) + 1 if nonzero.size else self.bins
        for i in [*range(max(1, last // 64), last, max(1, last // 512)), last]:
            t = i * w
            clipped = hist[i:]
            clip_err = float((clipped * (centers[i:] - t) ** 2).sum())
            round_err = float(cdf[i - 1]) * (t / levels) ** 2 / 12.0
            err = (clip_err + round_err) / total
            if err < best:
                best, best_t = err, t
        return min(self.amax, best_t)

    def nbytes(self) -> int:
        return self.hist.nbytes + 64


def _quantized(p: np.ndarray, levels: int) -> np.ndarray:
    """P squeezed into ``levels`` bins (``len(p) // levels`` source bins each, the remainder in the
    last, as TensorRT does) and spread back evenly over the non-zero source bins of each."""
    n = p.size
    width = n // levels
    starts = np.arange(levels) * width
    lengths = np.full(levels, width)
    lengths[-1] = n - starts[-1]
    sums = np.add.reduceat(p, starts)
    nonzero = p != 0
    counts = np.add.reduceat(nonzero.astype(np.int64), starts)
    per_bin = np.divide(sums, counts, out=np.zeros(levels), where=counts > 0)
    return np.repeat(per_bin, lengths) * nonzero


def _smooth(d: np.ndarray, eps: float = 1e-4) -> np.ndarray | None:
    """A distribution with its zero bins given ``eps`` mass, taken from the non-zero ones (as
    MXNet's and ONNX Runtime's entropy calibrators do): a clipped candidate whose quantized form
    is zero where the reference is not is then far, not infinitely far."""
    zeros = d == 0
    n_zero, n_nonzero = int(zeros.sum()), int(d.size - zeros.sum())
    if n_nonzero == 0:
        return None
    eps1 = eps * n_zero / n_nonzero
    if eps1 >= 1.0:
        return None
    return d + eps * zeros - eps1 * ~zeros


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    if p.sum() == 0 or q.sum() == 0:
        return math.inf
    p, q = _smooth(p / p.sum()), _smooth(q / q.sum())
    if p is None or q is None:
        return math.inf
    mask = p > 0
    q = np.maximum(q, 1e-12)  # smoothing can push a tiny bin to zero or below
    return float((p[mask] * np.log(p[mask] / q[mask])).sum())


class Calibrator:
    """Statistics for many tensors at once, fed batch by batch (``runner.stream``'s callback).

    >>> cal = Calibrator(["conv1_out", "fc_out"])
    >>> # runner.stream(data, cal.update, capture=cal.names, outputs=False)
    >>> # cal.ranges("entropy") -> {"conv1_out": (lo, hi), ...}
    """

    def __init__(self, names: list[str], bins: int = BINS):
        self.names = list(names)
        self.stats = {n: TensorStats(bins) for n in self.names}
        self.batches = 0

    def update(self, index: int, values: dict) -> None:
        for n in self.names:
            if n in values:
                v = values[n]
                self.stats[n].update(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        self.batches += 1

    def ranges(self, method: str = "minmax", *, unsigned_levels: int = 255, signed_levels: int = 127,
               **kwargs) -> dict[str, tuple[float, float]]:
        """Ranges per tensor. Clip points are searched with the number of levels the quantized
        type gives the tensor's side(s): a non-negative tensor (after ReLU) in an unsigned type
        has 255, a signed one 127 per side."""
        if method not in METHODS:
            raise UsageError(f"calibration method '{method}': choose one of {', '.join(METHODS)}")
        return {n: s.range(method, levels=unsigned_levels if s.min >= 0 else signed_levels, **kwargs)
                for n, s in self.stats.items()}

    def sparse(self) -> list[str]:
        """Tensors with too few values for a histogram method: they were given min / max."""
        return [n for n, s in self.stats.items() if 0 < s.count < MIN_SAMPLES]
