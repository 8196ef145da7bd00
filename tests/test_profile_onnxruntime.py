"""ONNX Runtime runner and measurement statistics, on tiny ONNX models built with onnx.helper."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.core.config import ProfileConfig
from pipeline.core.errors import PipelineError
from pipeline.core.measurement import Measurement, achieved, latency_stats, percentile
from pipeline.ort import measure_onnxruntime, ort_session, run_onnxruntime


def _matmul_add_model(path: Path, batch: int | str = "N") -> Path:
    """y = x @ W + b with x: [batch, 4] float32, W: 4x3, b: 3 (known values for checking outputs)."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.array([1.0, -1.0, 0.5], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
        initializer=[onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    return _matmul_add_model(tmp_path / "tiny.onnx")


# ---------------------------------------------------------------- statistics


def test_latency_stats_hand_computed() -> None:
    # 1..10 shuffled: median 5.5; p90 at index 8.1 -> 9.1; p99 at index 8.91 -> 9.91;
    # population variance of 1..10 = (n^2 - 1) / 12 = 8.25.
    s = latency_stats([7, 3, 10, 1, 9, 2, 8, 4, 6, 5])
    assert s["median"] == pytest.approx(5.5)
    assert s["p90"] == pytest.approx(9.1)
    assert s["p99"] == pytest.approx(9.91)
    assert s["mean"] == pytest.approx(5.5)
    assert (s["min"], s["max"]) == (1.0, 10.0)
    assert s["std"] == pytest.approx(math.sqrt(8.25))
    assert set(s) == {"median", "p90", "p99", "mean", "min", "max", "std"}


def test_latency_stats_matches_numpy_linear_and_edge_cases() -> None:
    xs = np.random.default_rng(0).exponential(2.0, size=257)
    s = latency_stats(xs.tolist())
    assert s["p99"] == pytest.approx(np.percentile(xs, 99))
    assert s["median"] == pytest.approx(np.median(xs))
    assert s["std"] == pytest.approx(np.std(xs))
    one = latency_stats([2.5])
    assert one["median"] == one["p99"] == 2.5 and one["std"] == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    with pytest.raises(ValueError):
        latency_stats([])
    with pytest.raises(ValueError):
        latency_stats([1.0, float("nan")])


def test_achieved() -> None:
    r = achieved(ops=3.6e9, latency_s=2e-3, peak_ops_per_s=3.6e12)
    assert r["achieved_ops_per_s"] == pytest.approx(1.8e12)
    assert r["pct_of_peak"] == pytest.approx(50.0)
    assert achieved(1e9, 1e-3, 0.0)["pct_of_peak"] is None
    with pytest.raises(ValueError):
        achieved(1e9, 0.0, 1e12)


# ---------------------------------------------------------------- sessions and runs


def test_run_onnxruntime_outputs_are_correct(tiny: Path) -> None:
    x = np.array([[1, 0, 0, 0], [0, 1, 2, 0]], dtype=np.float32)
    (y,) = run_onnxruntime(tiny, {"x": x})
    expected = x @ np.arange(12, dtype=np.float32).reshape(4, 3) + np.array([1.0, -1.0, 0.5], dtype=np.float32)
    np.testing.assert_allclose(y, expected, rtol=1e-6)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not found") as ei:
        ort_session(tmp_path / "nope.onnx")
    assert ei.value.hint and "export" in ei.value.hint


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00this is not a protobuf\xff" * 3)
    with pytest.raises(PipelineError, match="corrupt") as ei:
        ort_session(bad)
    assert ei.value.hint and isinstance(ei.value.__cause__, Exception)


def test_operator_ort_cannot_run(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(PipelineError, match="cannot run an operator") as ei:
        ort_session(path)
    assert "FancyOp" in str(ei.value)


def test_unavailable_provider_is_an_error_not_a_silent_fallback(tiny: Path) -> None:
    with pytest.raises(PipelineError, match="NoSuchExecutionProvider"):
        ort_session(tiny, providers=["NoSuchExecutionProvider"])


def test_wrong_inputs_name_the_expected_ones(tmp_path: Path) -> None:
    fixed = _matmul_add_model(tmp_path / "fixed.onnx", batch=2)
    cfg = ProfileConfig(warmup_s=0.0, duration_s=0.0, min_iterations=1)
    with pytest.raises(PipelineError, match="wrong shapes") as ei:
        measure_onnxruntime(fixed, {"x": np.zeros((2, 5), np.float32)}, cfg)
    assert "x: float32[2, 4]" in ei.value.hint
    with pytest.raises(PipelineError, match="wrong shapes"):  # fixed batch dim is checked too
        run_onnxruntime(fixed, {"x": np.zeros((3, 4), np.float32)})
    with pytest.raises(PipelineError, match="wrong dtype"):
        run_onnxruntime(fixed, {"x": np.zeros((2, 4), np.float64)})
    with pytest.raises(PipelineError, match=r"missing inputs \['x'\].*unexpected inputs \['input'\]"):
        run_onnxruntime(fixed, {"input": np.zeros((2, 4), np.float32)})


# ---------------------------------------------------------------- measurement


def test_measure_honours_min_iterations_and_duration(tiny: Path) -> None:
    x = np.ones((8, 4), np.float32)
    cfg = ProfileConfig(warmup_s=0.05, duration_s=0.2, min_iterations=25, threads=1)
    m = measure_onnxruntime(tiny, {"x": x}, cfg)
    assert isinstance(m, Measurement)
    assert m.backend == "onnxruntime" and m.providers == ["CPUExecutionProvider"]
    assert m.iterations >= 25 and m.duration_s >= 0.2
    assert m.warmup_s >= 0.05 and m.warmup_iterations >= 3
    assert m.batch_size == 8 and m.threads == 1 and m.precision_executed == "fp32"
    lat = m.latency_ms
    assert 0 < lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # sequential runs: throughput cannot exceed batch / mean latency (loop overhead only lowers it)
    assert m.throughput_samples_s == pytest.approx(8 * m.iterations / m.duration_s)
    assert m.throughput_samples_s <= 8 / (lat["mean"] / 1e3) * 1.0001
    d = m.to_dict()
    assert d["latency_ms"]["median"] == lat["median"] and d["device"] == m.device and m.device


def test_measure_min_iterations_dominates_zero_duration(tiny: Path) -> None:
    cfg = ProfileConfig(warmup_s=0.0, duration_s=0.0, min_iterations=7)
    m = measure_onnxruntime(tiny, {"x": np.ones((1, 4), np.float32)}, cfg, precision_executed="fp32")
    assert m.iterations == 7 and m.warmup_iterations == 3


def test_invalid_profile_settings(tiny: Path) -> None:
    with pytest.raises(PipelineError, match="min_iterations"):
        measure_onnxruntime(tiny, {"x": np.ones((1, 4), np.float32)}, ProfileConfig(min_iterations=0))


def test_import_is_light() -> None:
    code = (
        "import sys, pipeline.profile, pipeline.ort, pipeline.report\n"
        "heavy = [m for m in ('onnxruntime', 'torch', 'tensorrt', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
