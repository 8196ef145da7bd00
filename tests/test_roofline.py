"""Roofline bounds, ridge points and the FLOPs-vs-time misconception (seed note 4.2)."""

from __future__ import annotations

import json

import onnx
import pytest

from onnx_models import conv, depthwise_separable, small_cnn
from pipeline.analyze import Analysis, analyze_onnx, load_hardware
from pipeline.analyze.hardware import cpu_spec_from_cpuinfo
from pipeline.analyze.flops import LayerCost
from pipeline.analyze.roofline import bound_layer
from pipeline.core.config import PrecisionConfig
from pipeline.core.errors import PipelineError
from test_hardware import HASWELL

FP16 = PrecisionConfig("fp16", 2.0, 2.0, "fp16_tensor")
INT8 = PrecisionConfig("int8", 1.0, 1.0, "int8_tensor")
FP32 = PrecisionConfig("fp32", 4.0, 4.0, "fp32_cuda")
FP8 = PrecisionConfig("fp8", 1.0, 1.0, "fp8_tensor")

A100_FP16 = 1410e6 * 108 * 4 * 256 * 2  # 311.87 TFLOPS
A100_FP16_CUDA = 1410e6 * 108 * 256 * 2  # 77.97 TFLOPS
A100_BW = 2039e9


@pytest.fixture(scope="module")
def a100():
    return load_hardware("a100_sxm")


def layer(flops, nbytes, macs=1):
    return LayerCost("l", "Conv", "conv", flops, macs, 0.0, nbytes, nbytes, flops / nbytes)


def test_bound_choice_and_ridge_point(a100):
    peak = a100.peaks["fp16_tensor"]
    ridge = a100.ridge_point("fp16_tensor")
    assert ridge == pytest.approx(A100_FP16 / A100_BW) and round(ridge) == 153
    heavy = bound_layer(layer(1e12, 1e9), peak, A100_BW)  # 1000 FLOP/byte > ridge
    assert heavy.bound == "compute"
    assert heavy.compute_s == pytest.approx(1e12 / A100_FP16) and heavy.memory_s == pytest.approx(1e9 / A100_BW)
    assert heavy.bound_s == heavy.compute_s
    light = bound_layer(layer(1e9, 1e9), peak, A100_BW)  # 1 FLOP/byte < ridge
    assert light.bound == "memory" and light.bound_s == pytest.approx(1e9 / A100_BW)
    at_ridge = bound_layer(layer(ridge * 1e6, 1e6), peak, A100_BW)
    assert at_ridge.compute_s == pytest.approx(at_ridge.memory_s)
    nothing = bound_layer(LayerCost("v", "Reshape", "data_movement", 0, 0, 0, 0, 0, 0), peak, A100_BW)
    assert (nothing.bound, nothing.bound_s) == ("none", 0.0)
    sparse = bound_layer(layer(1e12, 1e9), peak, A100_BW, sparse=True)
    assert sparse.compute_s == pytest.approx(heavy.compute_s / 2)


def test_depthwise_small_flops_share_large_time_share(a100):
    """Seed 4.2: FLOPs do not predict speed; the depthwise conv is memory-bound."""
    analysis = analyze_onnx(depthwise_separable(channels=32, out_channels=64, hw=56), a100, FP16, 1)
    rows = {r.category: r for r in analysis.by_category}
    hw = 56 * 56
    dw_flops, relu_flops, pw_flops = 2 * 32 * hw * 9, 32 * hw, 2 * 64 * hw * 32
    dw_bytes = (32 * hw + 32 * hw + 32 * 9) * 2  # in + out + weights, fp16 = 401,984
    relu_bytes = 2 * 32 * hw * 2
    pw_bytes = (32 * hw + 64 * hw + 64 * 32) * 2  # 606,208
    total_flops = dw_flops + relu_flops + pw_flops
    # the Relu fuses into the depthwise conv (TensorRT conv + activation): its FLOPs join the group
    assert rows["conv_depthwise"].flops_share == pytest.approx((dw_flops + relu_flops) / total_flops)  # 12.9%
    # every layer is memory-bound on A100, so time shares are byte shares
    unfused = (dw_bytes + relu_bytes + pw_bytes) / A100_BW
    assert analysis.predicted_latency_unfused_s == pytest.approx(unfused)
    predicted = (dw_bytes + pw_bytes) / A100_BW  # fused: the relu's read + write disappear
    assert analysis.predicted_latency_s == pytest.approx(predicted)
    assert rows["conv_depthwise"].time_share == pytest.approx(dw_bytes / A100_BW / predicted)  # 39.9%
    assert rows["conv_depthwise"].flops_share < 0.15 < 0.28 < rows["conv_depthwise"].time_share
    assert rows["conv_1x1"].flops_share > 0.8 > rows["conv_1x1"].time_share
    assert all(b.bound == "memory" for b in analysis.layers)
    dw = next(b for b in analysis.layers if b.layer.name == "depthwise")
    assert dw.layer.intensity == pytest.approx(dw_flops / dw_bytes)  # ~4.5 FLOP/byte (REFERENCE S22)
    assert round(dw.layer.intensity, 1) == 4.5


def test_non_mac_layers_use_the_cuda_core_peak(a100):
    analysis = analyze_onnx(depthwise_separable(), a100, FP16, 1)
    by_name = {b.layer.name: b for b in analysis.layers}
    assert by_name["relu"].peak_key == "fp16_cuda" and by_name["pointwise"].peak_key == "fp16_tensor"
    assert by_name["relu"].compute_s == pytest.approx(32 * 3136 / A100_FP16_CUDA)
    int8 = analyze_onnx(depthwise_separable(), a100, INT8, 1)
    assert {b.layer.name: b.peak_key for b in int8.layers} == {
        "depthwise": "int8_tensor", "relu": "fp16_cuda", "pointwise": "int8_tensor"}
    assert int8.vector_peak.key == "fp16_cuda" and int8.peak.key == "int8_tensor"


def test_big_conv_is_compute_bound_and_whole_model_bound(a100):
    analysis = analyze_onnx(conv(c_in=256, c_out=256, hw=56), a100, FP16, 1)
    (b,) = analysis.layers
    flops = 2 * 256 * 256 * 9 * 3136
    assert b.bound == "compute" and b.bound_s == pytest.approx(flops / A100_FP16)
    assert analysis.whole_model["bound"] == "compute"
    assert analysis.whole_model["bound_s"] == pytest.approx(flops / A100_FP16)
    assert analysis.predicted_throughput_samples_s == pytest.approx(1 / (flops / A100_FP16))


def test_whole_model_bound_counts_weights_once_and_io(a100):
    analysis = analyze_onnx(depthwise_separable(), a100, FP16, 1)
    min_bytes = (32 * 9 + 64 * 32) * 2 + (32 * 3136 + 64 * 3136) * 2
    assert analysis.whole_model["bytes"] == min_bytes
    assert analysis.whole_model["memory_s"] == pytest.approx(min_bytes / A100_BW)
    assert analysis.whole_model["bound_s"] < analysis.predicted_latency_s


def test_category_table_sums_to_the_prediction(a100):
    analysis = analyze_onnx(small_cnn(), a100, FP32, 4)
    assert sum(r.predicted_s for r in analysis.by_category) == pytest.approx(analysis.predicted_latency_s)
    assert sum(r.flops_share for r in analysis.by_category) == pytest.approx(1.0)
    assert sum(r.time_share for r in analysis.by_category) == pytest.approx(1.0)
    assert analysis.batch_size == 4 and analysis.peak.key == "fp32_cuda"
    times = [r.predicted_s for r in analysis.by_category]
    assert times == sorted(times, reverse=True)


def test_to_dict_is_json_with_report_layer_fields(a100, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_cnn(), str(path))
    analysis = analyze_onnx(path, a100, INT8, 2)
    assert isinstance(analysis, Analysis) and analysis.model_path == str(path)
    data = json.loads(json.dumps(analysis.to_dict(), allow_nan=False))
    for key in ("totals", "predicted_latency_s", "ridge_point", "by_category", "peak_key", "whole_model"):
        assert key in data
    assert data["peak_key"] == "int8_tensor" and data["ridge_point"] == pytest.approx(a100.ridge_point("int8_tensor"))
    row = data["layers"][0]
    for key in ("name", "op_type", "category", "flops", "macs", "weight_bytes", "activation_bytes", "bytes",
                "intensity", "compute_s", "memory_s", "bound_s", "bound"):
        assert key in row
    assert data["totals"]["flops"] == sum(r["flops"] for r in data["layers"])


def test_cpu_analysis_uses_simd_peak():
    cpu = cpu_spec_from_cpuinfo(HASWELL)
    analysis = analyze_onnx(conv(c_in=64, c_out=64, hw=56), cpu, FP32, 1)
    (b,) = analysis.layers
    flops = 2 * 64 * 64 * 9 * 3136
    nbytes = (64 * 64 * 9 + 2 * 64 * 3136) * 4
    assert b.peak_key == "fp32_simd"
    assert b.compute_s == pytest.approx(flops / 768e9) and b.memory_s == pytest.approx(nbytes / 51.2e9)
    assert b.bound == "compute"  # 132 FLOP/byte > 768/51.2 = 15 ridge
    assert analysis.ridge_point == pytest.approx(15.0)
    assert any("assumption" in n for n in analysis.notes)


def test_missing_precision_fails_before_reading_the_model(a100, tmp_path):
    with pytest.raises(PipelineError, match="no fp8 peak"):
        analyze_onnx(tmp_path / "not_there.onnx", a100, FP8, 1)
