"""Streaming statistics: exact re-binning, min/max, and the ORT pass over a small graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.errors import PipelineError
from pipeline.quantize.stats import TensorStats, collect_stats, float_tensor_names


def test_histogram_grows_by_exact_bin_merging():
    s = TensorStats("t", num_bins=4)
    s.update(np.array([0.1, -0.4, 0.6, 1.0], dtype=np.float32))  # range 1.0, bins of 0.25
    assert s.range_max == 1.0
    assert s.hist.tolist() == [1, 1, 1, 1]  # 0.1 | 0.4 | 0.6 | 1.0 (top edge -> last bin)
    s.update(np.array([3.0, -2.2], dtype=np.float32))  # needs range 4.0: merge groups of 4 bins
    assert s.range_max == 4.0
    assert s.hist.tolist() == [4, 0, 1, 1]  # [0,1): 4 old values | [2,3): 2.2 | [3,4]: 3.0
    assert (s.min, s.max, s.count) == (pytest.approx(-2.2), 3.0, 6)
    assert s.amax == 3.0


def test_streaming_equals_one_shot_histogram_on_aligned_data():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal(1000).astype(np.float32) * k for k in (1, 3, 0.5, 7)]
    s = TensorStats("t", num_bins=2048)
    for b in batches:
        s.update(b)
    allv = np.abs(np.concatenate(batches))
    idx = np.minimum((allv / np.float32(s.range_max / 2048)).astype(np.int64), 2047)
    # Float rounding right at a bin edge may put a value one bin over; nothing else may differ.
    diff = s.hist - np.bincount(idx, minlength=2048)
    assert np.abs(diff).sum() <= 4
    assert s.hist.sum() == 4000 and s.count == 4000


def test_all_zero_tensor_then_values():
    s = TensorStats("z", num_bins=8)
    s.update(np.zeros(5, dtype=np.float32))
    assert s.range_max == 0.0 and s.hist[0] == 5
    s.update(np.array([2.0], dtype=np.float32))
    assert s.range_max == 2.0 and s.hist.sum() == 6


def test_nan_raises_pipeline_error():
    s = TensorStats("n")
    with pytest.raises(PipelineError, match="NaN"):
        s.update(np.array([1.0, np.nan], dtype=np.float32))


def _relu_matmul_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_collect_stats_over_batches_matches_numpy():
    model = _relu_matmul_model()
    assert float_tensor_names(model) == ["x", "r", "y"]
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3)]
    stats = collect_stats(model, ({"x": x} for x in xs), progress=False)
    allx = np.concatenate(xs)
    r = np.maximum(allx, 0)
    y = r @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    assert stats["x"].min == pytest.approx(allx.min()) and stats["x"].max == pytest.approx(allx.max())
    assert stats["r"].min == 0.0 and stats["r"].count == r.size
    assert stats["y"].max == pytest.approx(y.max(), rel=1e-5)


def test_collect_stats_rejects_empty_and_wrong_feeds():
    model = _relu_matmul_model()
    with pytest.raises(PipelineError, match="empty"):
        collect_stats(model, iter([]), progress=False)
    with pytest.raises(PipelineError, match="lacks model inputs"):
        collect_stats(model, [{"input": np.zeros((1, 4), np.float32)}], progress=False)
