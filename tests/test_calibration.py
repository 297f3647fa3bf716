"""Streaming calibration statistics: ranges from batches of any shape, memory that does not grow
with the data, and thresholds that match their definitions."""
from __future__ import annotations

import numpy as np
import pytest

import refold
import zoo
from refold.errors import UsageError
from refold.passes.quantize.calibration import Calibrator, TensorStats
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
