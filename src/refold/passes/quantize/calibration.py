"""Calibration statistics that stream: each batch updates them, nothing else is kept.

A ``TensorStats`` holds, for one tensor, its running min / max and a histogram whose range widens
as batches arrive (counts re-binned into the wider range), so peak memory is a fixed 32 kB per
tensor (two 2048-bin histograms) whatever the number of samples or their shapes (sequence length
and batch may vary).

The range a quantizer uses comes from one of four methods:

- ``minmax``: the observed extremes.
- ``percentile``: the value below which ``percentile`` % of |x| lies (99.999 by default).
- ``entropy``: TensorRT's KL-divergence threshold: the clip point whose quantized histogram
  loses least information relative to the observed one (on the quantizer's real grid: signed
  for an asymmetric type; exact zeros, which every grid holds, excluded).
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
    (adjacent bins merge, so existing counts move exactly, without interpolation). ``neg`` is the
    part of it that came from negative values and ``zeros`` the number of exact zeros, so the
    entropy search can see the signed distribution an asymmetric quantizer spans.
    """

    __slots__ = ("min", "max", "count", "hist", "neg", "zeros", "edge", "bins")

    def __init__(self, bins: int = BINS):
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.zeros = 0
        self.bins = bins
        self.hist = np.zeros(bins, np.int64)
        self.neg = np.zeros(bins, np.int64)  # counts of hist from x < 0 (same bins)
        self.edge = 0.0  # upper end of the histogram range; 0 until a non-zero value arrives

    def update(self, x) -> None:
        a = np.asarray(x, dtype=np.float32).reshape(-1)
        if a.size == 0:
            return
        lo, hi = float(a.min()), float(a.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # a NaN or an inf: keep the finite values
            a = a[np.isfinite(a)]
            if a.size == 0:
                return
            lo, hi = float(a.min()), float(a.max())
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.count += int(a.size)
        self.zeros += int(np.count_nonzero(a == 0))
        top = max(-lo, hi)
        if top > 0:
            if self.edge == 0.0:
                self.edge = top * (1 + 1e-6)
            while top >= self.edge:  # widen by 2: pairs of bins merge into the lower half
                self.hist, self.neg = _widened(self.hist), _widened(self.neg)
                self.edge *= 2
        if not self.edge:
            self.hist[0] += a.size
            return
        idx = (np.abs(a) / self.edge * self.bins).astype(np.int64)
        np.minimum(idx, self.bins - 1, out=idx)
        if lo < 0:  # negative values count in bins + |x| bin: one bincount gives both sides
            idx += (a < 0) * self.bins
            both = np.bincount(idx, minlength=2 * self.bins)
            self.hist += both[:self.bins] + both[self.bins:]
            self.neg += both[self.bins:]
        else:
            self.hist += np.bincount(idx, minlength=self.bins)

    def merge(self, other: "TensorStats") -> None:
        """Fold another tensor's statistics into these (e.g. from a second worker)."""
        if other.count == 0:
            return
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        self.zeros += other.zeros
        a, b = self, other
        if b.edge > a.edge:
            a.hist, a.neg, b_hist, b_neg, a.edge, b_edge = b.hist.copy(), b.neg.copy(), a.hist, a.neg, b.edge, a.edge
        else:
            b_hist, b_neg, b_edge = b.hist, b.neg, b.edge
        while b_edge and b_edge < a.edge:  # widen the narrower one to the same edge
            b_hist, b_neg = _widened(b_hist), _widened(b_neg)
            b_edge *= 2
        a.hist = a.hist + b_hist
        a.neg = a.neg + b_neg

    @property
    def sparse(self) -> bool:
        """Too few values for a histogram method (they fall back to min / max)."""
        return self.count < MIN_SAMPLES

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    def range(self, method: str = "minmax", *, percentile: float = 99.999, levels: int = 127,
              span_levels: int | None = None) -> tuple[float, float]:
        """(lo, hi) to quantize with. ``minmax`` keeps the observed extremes; the others give a
        clip threshold t and return (max(min, -t), min(max, t)). ``levels``: quantization steps
        over [0, t]; ``span_levels``: for an asymmetric quantizer, the steps spanning [lo, hi]
        (the entropy search then works on that grid)."""
        if self.count == 0:
            return 0.0, 0.0
        if method == "minmax" or (method in METHODS and self.sparse):
            return self.min, self.max
        if method == "percentile":
            t = self._percentile(percentile)
        elif method == "entropy":
            t = self._entropy(levels, span_levels)
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

    def _entropy(self, levels: int, span_levels: int | None = None) -> float:
        """TensorRT's threshold search: the clip point t minimising KL(P || Q), P the histogram
        clipped to t (outliers into its end bins), Q that merged into the quantizer's cells and
        spread back over their non-zero bins.

        Symmetric (``span_levels`` None): |x| folded, ``levels`` cells over [0, t]. Asymmetric: the
        signed histogram over [max(min, -t), min(max, t)], ``span_levels`` cells across it, as the
        zero point places them (folding would put a cliff at |min| inside the cells and count a
        nearly one-sided tensor's 255 steps as 127).
        """
        w = self._width()
        neg = self.neg.astype(np.float64)
        pos = (self.hist - self.neg).astype(np.float64)
        # KL = sum over cells of mass * (log non-zero bins - entropy inside): z exact zeros (ReLU, a
        # gate) add z * log(bins a cell), rising with t, yet zero is on every grid: they lose nothing
        pos[0] -= self.zeros
        if span_levels is None:
            pos, neg, cells = pos + neg, np.zeros(0), levels
        else:
            cells = span_levels
        n_pos, n_neg = _extent(pos), _extent(neg)
        last = max(n_pos, n_neg)
        t = np.arange(1, last + 1)  # candidate t (in bins): [lo, hi] spans below + above bins
        below, above = np.minimum(t, n_neg), np.minimum(t, n_pos)
        kept = np.concatenate([[0.0], np.cumsum(neg)])[below] + np.concatenate([[0.0], np.cumsum(pos)])[above]
        # a candidate needs a bin per cell (else the histogram cannot see rounding) and must keep
        # most values: with the bulk clipped onto t, P and Q are both ~one bin and KL ~ 0 whatever
        # t (a degenerate minimum: BERT's softmax outputs, all far from 0, collapsed to their min)
        ok = np.nonzero((below + above > cells) & (kept > (pos.sum() + neg.sum()) / 2))[0]
        if ok.size == 0:
            return self.amax
        start = int(t[ok[0]])
        best_i, best_kl = last, math.inf
        step = max(1, (last - start) // 256)  # at most ~256 candidates
        for i in [*range(start, last, step), last]:  # the full range is always a candidate
            j, k = min(i, n_neg), min(i, n_pos)
            clipped = np.concatenate([neg[:j][::-1], pos[:k]])
            p = clipped.copy()
            p[0] += neg[j:].sum()  # outliers clipped into the end bins
            p[-1] += pos[k:].sum()
            kl = _kl(p, _quantized(clipped, cells))
            if kl <= best_kl:  # a tie keeps the wider range: no more information lost, less clipped
                best_kl, best_i = kl, i
        return min(self.amax, best_i * w)

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
        return self.hist.nbytes + self.neg.nbytes + 64


def _widened(hist: np.ndarray) -> np.ndarray:
    """A histogram over twice the range: pairs of bins merge into the lower half."""
    merged = hist.reshape(-1, 2).sum(axis=1)
    return np.concatenate([merged, np.zeros(hist.size - merged.size, hist.dtype)])


def _extent(hist: np.ndarray) -> int:
    """Bins up to and including the last non-zero one."""
    nonzero = np.nonzero(hist > 0)[0]
    return int(nonzero[-1]) + 1 if nonzero.size else 0


def _quantized(p: np.ndarray, levels: int) -> np.ndarray:
    """P squeezed into ``levels`` cells of equal width (source bin j in cell floor(j * levels / n),
    as NVIDIA's pytorch-quantization does) and spread back evenly over the non-zero source bins of
    each. Not TensorRT's n // levels bins a cell with the remainder in the last: below 2 * levels
    bins that keeps all cells but one a single bin, so Q = P, the KL is blind to rounding and the
    search lands just under a multiple of ``levels`` (PP-OCRv4 rec at 127: 251, 252, 253, 379)."""
    n = p.size
    cell = np.arange(n) * levels // n
    nonzero = p != 0
    sums = np.bincount(cell, p, levels)
    counts = np.bincount(cell, nonzero, levels)
    per_bin = np.divide(sums, counts, out=np.zeros(levels), where=counts > 0)
    return per_bin[cell] * nonzero


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
        has 255, a signed one 127 per side. A type with more unsigned levels than a signed side
        has is asymmetric (uint8 with a zero point): its ``unsigned_levels`` steps span [lo, hi]
        whatever the sign, the grid the entropy search then uses."""
        if method not in METHODS:
            raise UsageError(f"calibration method '{method}': choose one of {', '.join(METHODS)}")
        span = unsigned_levels if unsigned_levels > signed_levels else None
        return {n: s.range(method, levels=unsigned_levels if s.min >= 0 else signed_levels, span_levels=span,
                           **kwargs) for n, s in self.stats.items()}

    def sparse(self) -> list[str]:
        """Tensors with too few values for a histogram method: they were given min / max."""
        return [n for n, s in self.stats.items() if 0 < s.count < MIN_SAMPLES]
