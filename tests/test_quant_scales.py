"""Scales, zero points and error metrics, hand-computed and checked against ONNX Runtime's Q/DQ."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.quantize.scales import (
    activation_qparams,
    asymmetric_qparams,
    dequantize,
    fake_quantize,
    quant_error_of_hist,
    quant_error_of_values,
    quantize,
    symmetric_qparams,
    weight_qparams,
)


def test_symmetric_int8_rounds_half_to_even_and_saturates():
    qp = symmetric_qparams(127.0)  # scale 1
    assert float(qp.scale) == 1.0 and int(qp.zero_point) == 0
    q = quantize(np.array([1.4, -200, 0.5, 1.5, 2.5, 126.6], dtype=np.float32), qp)
    assert q.tolist() == [1, -128, 0, 2, 2, 127]
    assert dequantize(q, qp).tolist() == [1, -128, 0, 2, 2, 127]


def test_asymmetric_uint8_hand_computed():
    qp = asymmetric_qparams(-1.0, 3.0)
    assert float(qp.scale) == pytest.approx(4 / 255)
    assert int(qp.zero_point) == 64  # round(1 / (4/255)) = round(63.75)
    assert quantize(np.array([-1.0, 0.0, 3.0], dtype=np.float32), qp).tolist() == [0, 64, 255]
    # a range that excludes 0 is widened to contain it, so that zero stays exact
    qp2 = asymmetric_qparams(0.5, 2.0)
    assert int(qp2.zero_point) == 0 and float(qp2.scale) == pytest.approx(2 / 255)
    # activation_qparams clips the observed range by the calibrated threshold
    qp3 = activation_qparams(amax=1.0, lo=-5.0, hi=0.5, symmetric=False)
    assert float(qp3.scale) == pytest.approx(1.5 / 255)


def test_per_channel_weight_scales_follow_the_axis():
    w = np.array([[1.0, -0.5], [-4.0, 2.0], [0.25, 0.0]], dtype=np.float32)  # MatMul [K=3, N=2]
    qp = weight_qparams(w, axis=1)
    np.testing.assert_allclose(qp.scale, [4 / 127, 2 / 127])
    assert qp.axis == 1
    qpt = weight_qparams(w, axis=None)
    assert float(qpt.scale) == pytest.approx(4 / 127) and qpt.axis is None


def test_fake_quantize_matches_onnxruntime_per_channel():
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4, 3, 2, 2)) * np.array([1, 10, 0.1])[None, :, None, None]).astype(np.float32)
    qp = symmetric_qparams(np.array([1.5, 12.0, 0.08], dtype=np.float32), axis=1)
    g = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
        [numpy_helper.from_array(qp.scale, "s"), numpy_helper.from_array(qp.zero_point, "z")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], fake_quantize(x, qp))


def test_error_split_clipping_vs_rounding_hand_computed():
    qp = symmetric_qparams(1.0)
    e = quant_error_of_values(np.array([0.2, 5.0], dtype=np.float32), qp)
    # 5.0 saturates at 127 * (1/127) = 1.0: (5 - 1)^2 / 2 elements
    assert e.clip_mse == pytest.approx(8.0, rel=1e-6)
    # 0.2 / (1/127) = 25.4 -> 25 -> 0.19685...; error 0.2 - 25/127 squared, over 2 elements
    assert e.round_mse == pytest.approx((0.2 - 25 / 127) ** 2 / 2, rel=1e-4)
    assert e.clipped_fraction == 0.5


def test_histogram_error_estimate_hand_computed():
    hist = np.array([0, 0, 1, 1])  # centres 0.25, 0.75, 1.25, 1.75 with width 0.5
    edges = np.array([0, 0.5, 1.0, 1.5, 2.0])
    e = quant_error_of_hist(hist, edges, amax=1.27)  # scale 0.01: 1.25 exact, 1.75 clips to 1.27
    assert e.round_mse == pytest.approx(0.0, abs=1e-12)
    assert e.clip_mse == pytest.approx((1.75 - 1.27) ** 2 / 2)
    assert e.clipped_fraction == 0.5
