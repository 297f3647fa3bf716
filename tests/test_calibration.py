"""Streaming calibration statistics: ranges from batches of any shape, memory that does not grow
with the data, and thresholds that match their definitions."""
from __future__ import annotations

import numpy as np
import pytest

import refold
import zoo
from refold.errors import UsageError
from refold.passes.quantize.calibration import Calibrator, TensorStats, _quantized
from refold.runtime.ort import OrtRunner


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    # variable batch and sequence length, as calibration data comes (onnxruntime#18792, optimum#409)
    return [rng.standard_normal((b, s, 16)).astype(np.float32) for b, s in ((1, 7), (4, 13), (2, 31), (8, 5))]


def test_minmax_and_percentile_match_their_definitions_on_mixed_shapes():
    s = TensorStats()
    xs = _batches() + [np.random.default_rng(9).standard_normal(200_000).astype(np.float32)]
    for x in xs:
        s.update(x)
    allx = np.concatenate([x.reshape(-1) for x in xs])
    assert s.range("minmax") == (float(allx.min()), float(allx.max()))
    lo, hi = s.range("percentile", percentile=99.9)
    expect = np.percentile(np.abs(allx), 99.9)
    assert abs(hi - expect) <= 3 * s.edge / s.bins and lo == -hi


def test_streamed_statistics_equal_one_shot_and_merge_is_associative():
    xs = _batches(1)
    one = TensorStats()
    one.update(np.concatenate([x.reshape(-1) for x in xs]))
    streamed = TensorStats()
    for x in sorted(xs, key=lambda a: np.abs(a).max()):  # the range widens batch after batch
        streamed.update(x)
    assert streamed.count == one.count and streamed.hist.sum() == one.hist.sum()
    for method in ("percentile", "mse"):
        a, b = streamed.range(method), one.range(method)
        assert abs(a[1] - b[1]) <= 4 * max(one.edge, streamed.edge) / one.bins, (method, a, b)
    left, right = TensorStats(), TensorStats()
    for x in xs[:2]:
        left.update(x)
    for x in xs[2:]:
        right.update(x)
    left.merge(right)
    assert left.count == one.count and left.range("minmax") == one.range("minmax")
    assert left.hist.sum() == one.hist.sum()
    extra = np.array([0.0, -0.0, -1.5, 0.0, 2.0], np.float32)  # -0.0 is a zero, not a negative
    for s in (one, streamed, left):
        s.update(extra)
    allx = np.concatenate([x.reshape(-1) for x in xs] + [extra])
    for s in (one, streamed, left):  # the signed split the entropy search reads streams and merges too
        assert s.neg.sum() == np.count_nonzero(allx < 0) and np.all(s.neg <= s.hist)
    assert left.zeros == one.zeros == streamed.zeros == np.count_nonzero(allx == 0)


def test_clipping_methods_clip_heavy_tails_and_keep_light_ones():
    rng = np.random.default_rng(0)
    gauss, heavy = TensorStats(), TensorStats()
    gauss.update(rng.standard_normal(200_000))
    heavy.update(np.concatenate([rng.standard_normal(200_000), [80.0, -75.0]]))  # two outliers
    # MSE-optimal int8 clipping of a unit Gaussian lies near 4 sigma
    assert 3.3 < gauss.range("mse")[1] < 4.6
    for method in ("percentile", "entropy"):
        assert heavy.range(method)[1] < 10, method  # two outliers do not set the scale
    assert heavy.range("minmax")[1] == 80.0
    # MSE weighs what clipping costs: two values clipped by ~75 cost more than coarser rounding,
    # so it keeps them; on a Laplace tail (many moderate outliers) it clips
    lap = TensorStats()
    lap.update(rng.laplace(size=200_000))
    assert lap.range("mse")[1] < 0.95 * lap.amax and lap.range("entropy")[1] < 0.8 * lap.amax
    assert 3.0 < gauss.range("entropy")[1] < 4.6


def _clipped(x, lo_hi):
    lo, hi = lo_hi
    return float(np.mean((x < lo) | (x > hi)))


def test_entropy_does_not_clip_to_buy_resolution_for_exact_zeros():
    # Exact zeros (ReLU, a hard gate) are one code on every grid. TensorRT's Q spreads them over the
    # first cell: a phantom loss z * log(bins per cell) growing with t, which the search paid for
    # by clipping: a ReLU'd Gaussian at 1.4-1.8 sigma (4-8% of the values clipped)
    for seed in range(3):
        relu = np.maximum(np.random.default_rng(seed).standard_normal(400_000), 0).astype(np.float32)
        s = TensorStats()
        s.update(relu)
        lo, hi = s.range("entropy", levels=255)
        assert lo == 0.0 and 3.0 < hi <= s.amax and _clipped(relu, (lo, hi)) < 2e-3, (seed, hi)


def test_entropy_keeps_the_tail_of_a_gated_signed_tensor():
    # Shaped like PP-OCRv4 rec's p2o.Mul.141 (a HardSwish output times a squeeze-excitation gate,
    # min -0.92, max 2.68): 16% exact zeros, a narrow signed core, and ~1% of the values in two
    # clusters at 1.0 and 2.5 that carry the signal. The old search clipped at 0.3 (the
    # clusters, 1.2% of the values, onto t). It is rec's only tensor with exact zeros: leaving
    # them out of the KL moves only its range and is worth 8 dB of output SQNR (-0.7 -> 7.4).
    rng = np.random.default_rng(0)
    n = 400_000
    x = np.concatenate([np.zeros(int(n * 0.16)), rng.laplace(0, 0.05, int(n * 0.83)),
                        rng.normal(1.0, 0.03, int(n * 0.006)), rng.normal(2.5, 0.05, int(n * 0.004))])
    x = rng.permutation(x).astype(np.float32)
    cal = Calibrator(["t"])
    for part in np.array_split(x, 8):
        cal.update(0, {"t": part})
    lo, hi = cal.ranges("entropy")["t"]  # uint8 asymmetric: the search runs on its signed grid
    assert hi > 2.4 and _clipped(x, (lo, hi)) < 1e-3, (lo, hi)


def test_entropy_does_not_collapse_onto_a_stray_value():
    # Values far from 0 (softmax of a near-uniform attention: all ~1/64) with a stray one below:
    # at the candidate whose last bin holds only the stray, P (the bulk clipped onto it) and Q are
    # the same single bin, KL = 0, and the old search clipped every value (BERT's layer-0 softmax
    # at 512 samples: [0.0117, 0.0117], output SQNR 41.9 dB instead of 52)
    rng = np.random.default_rng(0)
    for stray_bin in (261, 268):
        x = np.concatenate([rng.uniform(0.5, 1.0, 100_000), [1.0, (stray_bin + 0.5) / 2048]]).astype(np.float32)
        s = TensorStats()
        s.update(x)
        for kw in ({"levels": 255}, {"levels": 255, "span_levels": 255}):
            lo, hi = s.range("entropy", **kw)
            assert hi > 0.9 and _clipped(x, (lo, hi)) < 0.05, (stray_bin, kw, lo, hi)


def test_quantized_cells_have_equal_width():
    # n // levels source bins a cell with the remainder in the last (TensorRT's) keeps, for
    # levels <= n < 2 * levels, all cells but one a single bin: Q = P there, rounding is invisible
    # and the search stopped just under 2 * levels bins (rec: 251, 252, 253 at 127 levels)
    p = np.linspace(2.0, 1.0, 250)
    q = _quantized(p, 127)
    assert np.isclose(q.sum(), p.sum())
    assert np.count_nonzero(~np.isclose(q, p)) >= 240  # 123 cells of 2 bins, 4 of 1
    q = _quantized(np.linspace(3.0, 1.0, 1000), 127)  # 7.87 bins a cell: 7 or 8, never 111
    assert max(np.diff(np.nonzero(np.diff(q))[0])) <= 8


def test_memory_is_constant_in_the_number_of_batches():
    s = TensorStats()
    s.update(np.ones(10))
    size = s.nbytes()
    for x in _batches() * 50:
        s.update(x * 3)
    assert s.nbytes() == size and s.count == 10 + 50 * sum(x.size for x in _batches())


def test_degenerate_inputs():
    s = TensorStats()
    assert s.range("entropy") == (0.0, 0.0)
    s.update(np.zeros(100))
    s.update(np.array([np.nan, np.inf, -np.inf]))
    assert s.range("minmax") == (0.0, 0.0) and s.range("percentile") == (0.0, 0.0)
    with pytest.raises(UsageError, match="choose one of"):
        s.range("kl")


def test_calibrator_streams_a_real_model_through_the_runner():
    m = refold.load(zoo.ppocr_path("cls"))
    names = [n.outputs[0].name for n in m.graph if n.op == "Conv"][:5]
    cal = Calibrator(names)
    rng = np.random.default_rng(0)
    data = ({"x": rng.standard_normal((b, 3, 48, 192)).astype(np.float32)} for b in (1, 3, 2))
    OrtRunner(m).stream(data, cal.update, capture=names, outputs=False)
    assert cal.batches == 3
    ranges = cal.ranges("percentile")
    for n in names:
        lo, hi = ranges[n]
        mn, mx = cal.ranges("minmax")[n]
        assert mn <= lo <= hi <= mx and (lo, hi) != (0.0, 0.0)
