"""Streaming statistics: exact re-binning, min/max, and the ORT pass over a small graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.errors import PipelineError
from pipeline.quantize.stats import (TensorStats, abs_bin_counts, collect_stats, float_tensor_names, load_stats,
                                     same_value_groups, save_stats)


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


# --- faster binning: bit-identical to the former formula ------------------------------------------------

def _reference_update(s: TensorStats, x: np.ndarray) -> None:
    """The binning of TensorStats.update before it was sped up (kept here as the oracle)."""
    a = np.abs(x.astype(np.float32, copy=False)).ravel()
    lo, hi = float(x.min()), float(x.max())
    s.min, s.max = min(s.min, lo), max(s.max, hi)
    amax = max(abs(lo), abs(hi))
    if s.range_max <= 0.0:
        if amax == 0.0:
            s.hist[0] += a.size
            s.count += a.size
            return
        s.range_max = amax
    if amax > s.range_max:
        s._grow(amax)
    idx = np.minimum((a / np.float32(s.range_max / s.num_bins)).astype(np.int64), s.num_bins - 1)
    s.hist += np.bincount(idx, minlength=s.num_bins)
    s.count += a.size


@pytest.mark.parametrize("seed", range(6))
def test_update_is_bit_identical_to_the_former_binning(seed):
    rng = np.random.default_rng(seed)
    num_bins = [4, 128, 2048][seed % 3]
    new, ref = TensorStats("t", num_bins=num_bins), TensorStats("t", num_bins=num_bins)
    for k in range(5):
        scale = float(10 ** rng.uniform(-4, 3))
        dtype = [np.float32, np.float16, np.float64][(seed + k) % 3]
        kind = (seed + k) % 4
        if kind == 0:
            x = rng.standard_normal((7, 301)) * scale
        elif kind == 1:
            x = rng.standard_cauchy(2000) * scale  # long tails: the range doubles several times
        elif kind == 2:
            x = rng.integers(-8, 9, 999) * (scale / 8)  # values right on bin edges and on the top edge
        else:
            x = np.zeros(50)
        x = np.clip(x, -6e4, 6e4).astype(dtype)
        new.update(x)
        _reference_update(ref, x)
        assert new.hist.tolist() == ref.hist.tolist()
        assert (new.min, new.max, new.range_max, new.count) == (ref.min, ref.max, ref.range_max, ref.count)


def test_abs_bin_counts_exact_numbers_and_top_edge():
    x = np.array([0.0, -0.25, 0.5, 0.99, -1.0, 0.75], dtype=np.float32)
    # bins of 0.25 over [0, 1]: 0 | 0.25 | 0.5 | 0.75, 0.99 and the top edge 1.0
    assert abs_bin_counts(x, 1.0, 4, amax=1.0).tolist() == [1, 1, 1, 3]
    assert abs_bin_counts(x, 1.0, 4).tolist() == [1, 1, 1, 3]  # amax unknown: clamped first
    # Values beyond range_max land in the last bin on both paths.
    far = np.array([5.0, -0.1, 100.0], dtype=np.float32)
    assert abs_bin_counts(far, 1.0, 4).tolist() == [1, 0, 0, 2]
    assert abs_bin_counts(far, 1.0, 4, amax=100.0).tolist() == [1, 0, 0, 2]
    assert abs_bin_counts(far, 1.0, 4, amax=5.0).dtype == np.int64


def test_abs_bin_counts_with_a_bin_width_below_float32():
    # range_max / num_bins underflows float32 to 0: binned in float64 instead of dividing by zero.
    tiny = np.array([7, -14, 0], dtype=np.float32) * np.float32(2.0 ** -149)  # subnormals: 7 and 14 ulps
    top = float(tiny.min() * -1)
    counts = abs_bin_counts(tiny, top, 2048, amax=top)
    assert counts.sum() == 3 and counts[0] == 1 and counts[1024] == 1 and counts[2047] == 1


def test_copy_is_independent_and_renamed():
    s = TensorStats("a", num_bins=4)
    s.update(np.array([0.5, -1.0], dtype=np.float32))
    c = s.copy("b")
    assert (c.name, c.min, c.max, c.range_max, c.count, c.hist.tolist()) == ("b", -1.0, 0.5, 1.0, 2, [0, 0, 1, 1])
    c.update(np.array([0.1], dtype=np.float32))
    assert s.hist.tolist() == [0, 0, 1, 1] and s.count == 2


# --- tensors that only rearrange values are binned once --------------------------------------------------

def _reshape_transpose_model() -> onnx.ModelProto:
    """x (N,6) -> Reshape (N,2,3) -> Transpose (N,3,2) -> Relu; the shape is an initializer."""
    shape = numpy_helper.from_array(np.array([-1, 2, 3], dtype=np.int64), "shape")
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]),
         helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
         helper.make_node("Relu", ["t"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 2])], [shape])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_same_value_groups_follow_reshape_and_transpose_chains():
    model = _reshape_transpose_model()
    assert same_value_groups(model, ["t", "y", "r", "x"]) == {"t": ["t", "r", "x"], "y": ["y"]}
    assert same_value_groups(model, ["y", "t"]) == {"y": ["y"], "t": ["t"]}
    assert same_value_groups(model, ["t", "t"]) == {"t": ["t"]}


def test_collect_stats_shares_exact_stats_within_a_group():
    model = _reshape_transpose_model()
    xs = [np.array([[0.5, -2.0, 1.0, 0.0, 3.0, -0.25]], dtype=np.float32),
          np.array([[8.0, 1.0, -1.0, 0.5, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]], dtype=np.float32),
          np.array([[-4.0, 4.0, 2.0, 2.0, 1.0, 7.9]], dtype=np.float32)]
    stats = collect_stats(model, iter([{"x": x} for x in xs]), ["y", "t", "r", "x"], num_bins=8, progress=False)
    assert list(stats) == ["y", "t", "r", "x"]
    alone = collect_stats(model, [{"x": x} for x in xs], ["x"], num_bins=8, progress=False)["x"]
    # By hand: batch 1 sets range 3 (bins of 0.375): [2, 1, 1, 0, 0, 1, 0, 1]. 8.0 grows it 4x to 12
    # (bins of 1.5; groups of 4 bins merge: [4, 2, 0, ...]), batch 2 adds 11 to bin 0 and 8.0 to bin 5,
    # batch 3 adds 1.0 to bin 0, 2.0 twice to bin 1, 4.0 twice to bin 2, 7.9 to bin 5.
    assert (alone.min, alone.max, alone.range_max, alone.count) == (-4.0, 8.0, 12.0, 24)
    assert alone.hist.tolist() == [16, 4, 2, 0, 0, 2, 0, 0]
    for name in ("t", "r", "x"):
        s = stats[name]
        assert s.name == name
        assert (s.min, s.max, s.range_max, s.count, s.hist.tolist()) == \
            (alone.min, alone.max, alone.range_max, alone.count, alone.hist.tolist())
    stats["t"].hist[0] += 1  # copies, not one shared array
    assert stats["r"].hist[0] == 16
    y = np.maximum(np.concatenate([x.ravel() for x in xs]), 0)
    assert stats["y"].min == 0.0 and stats["y"].max == y.max() and stats["y"].count == 24


def test_collect_stats_many_batches_match_serial_updates():
    model = _relu_matmul_model()
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((3, 4)).astype(np.float32) * (1 + k) for k in range(9)]
    stats = collect_stats(model, [{"x": x} for x in xs], ["x", "r"], num_bins=64, progress=False)
    ref_x, ref_r = TensorStats("x", num_bins=64), TensorStats("r", num_bins=64)
    for x in xs:
        _reference_update(ref_x, x)
        _reference_update(ref_r, np.maximum(x, 0))
    for s, ref in ((stats["x"], ref_x), (stats["r"], ref_r)):
        assert s.hist.tolist() == ref.hist.tolist()
        assert (s.min, s.max, s.range_max, s.count) == (ref.min, ref.max, ref.range_max, ref.count)


def test_collect_stats_wraps_ort_failures_and_nan():
    model = _relu_matmul_model()
    good = {"x": np.ones((2, 4), np.float32)}
    with pytest.raises(PipelineError, match="ONNX Runtime failed on a calibration batch"):
        collect_stats(model, [good, {"x": np.ones((2, 5), np.float32)}, good], progress=False)
    with pytest.raises(PipelineError, match="NaN or Inf"):
        collect_stats(_reshape_transpose_model(), [{"x": np.full((1, 6), np.nan, np.float32)}], ["t", "r"],
                      progress=False)


# --- the ranges file ------------------------------------------------------------------------------------

def _some_stats() -> dict:
    a, b, c = TensorStats("a", num_bins=8), TensorStats("b/with:odd name", num_bins=4), TensorStats("empty")
    a.update(np.array([0.3, -1.7, 2.25e-3], dtype=np.float32))
    a.update(np.array([5.5], dtype=np.float32))
    b.update(np.zeros(3, dtype=np.float32))
    return {s.name: s for s in (a, b, c)}


def test_save_and_load_stats_round_trip_exactly(tmp_path):
    stats = _some_stats()
    path = save_stats(tmp_path / "ranges.npz", stats)
    assert path == tmp_path / "ranges.npz" and sorted(p.name for p in tmp_path.iterdir()) == ["ranges.npz"]
    back = load_stats(path)
    assert list(back) == list(stats)
    for name, s in stats.items():
        r = back[name]
        assert (r.name, r.num_bins, r.min, r.max, r.range_max, r.count) == \
            (s.name, s.num_bins, s.min, s.max, s.range_max, s.count)
        assert r.hist.dtype == np.int64 and r.hist.tolist() == s.hist.tolist()
    # By hand: range float32(1.7), grown 4x by 5.5; 0.3 and 2.25e-3 merge into bin 0, 1.7 into bin 1.
    assert back["a"].range_max == 4 * float(np.float32(1.7)) and back["a"].hist.tolist() == [2, 1, 0, 0, 0, 0, 1, 0]
    assert back["empty"].min == float("inf") and back["empty"].count == 0 and back["empty"].hist.size == 2048
    back["a"].update(np.array([1.0], dtype=np.float32))  # loaded stats keep streaming
    assert back["a"].count == 5
    assert load_stats(save_stats(tmp_path / "none.npz", {})) == {}


def test_save_stats_refuses_mismatched_keys(tmp_path):
    with pytest.raises(ValueError, match="differs"):
        save_stats(tmp_path / "x.npz", {"a": TensorStats("b")})


def test_load_stats_refuses_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        load_stats(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(PipelineError, match="not a readable .npz"):
        load_stats(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", inputs=np.zeros(3))
    with pytest.raises(PipelineError, match="not an activation statistics file"):
        load_stats(tmp_path / "other.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(PipelineError, match="holds one array"):
        load_stats(tmp_path / "one.npy")
    good = save_stats(tmp_path / "good.npz", _some_stats())
    with np.load(good) as f:
        arrays = {k: f[k] for k in f.files}
    for key, bad in (("count", arrays["count"][:2]), ("hist", arrays["hist"][:, :2]),
                     ("names", np.array(["a", "a", "c"])), ("version", np.array(99)),
                     ("version", np.array("1")), ("min", np.array(["x", "y", "z"])),
                     ("num_bins", np.array([8, 4, 0]))):
        np.savez(tmp_path / "bad.npz", **{**arrays, key: bad})
        with pytest.raises(PipelineError, match="corrupt|version"):
            load_stats(tmp_path / "bad.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(PipelineError, match="not a readable .npz"):
        load_stats(truncated)
