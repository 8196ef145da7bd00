"""2:4 sparsity payoff predicted from shapes and measured layers (pipeline/explain/sparsity.py)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.explain.gap import LayerGap
from pipeline.explain.sparsity import sparsity_payoff, weight_shapes


def _model():
    inits = [numpy_helper.from_array(np.zeros((256, 256, 3, 3), np.float32), "w_wide"),
             numpy_helper.from_array(np.zeros((64, 1, 3, 3), np.float32), "w_dw"),
             numpy_helper.from_array(np.zeros((10, 64), np.float32), "w_fc"),
             numpy_helper.from_array(np.zeros((64, 48), np.float32), "w_mm"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["w_wide", "s", "z"], ["wq"], name="wq"),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], name="wd"),
             helper.make_node("Conv", ["x", "wd"], ["a"], name="wide"),
             helper.make_node("Conv", ["b", "w_dw"], ["c"], name="dw", group=64),
             helper.make_node("Gemm", ["d", "w_fc"], ["e"], name="fc", transB=1),
             helper.make_node("MatMul", ["f", "w_mm"], ["g"], name="mm")]
    g = helper.make_graph(nodes, "g", [], [], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_weight_shapes_read_channels_through_qdq_groups_and_transposes():
    s = weight_shapes(_model())
    assert s["wide"] == {"op": "Conv", "K": 256, "C": 256, "kernel": [3, 3], "group": 1}
    assert s["dw"]["group"] == 64 and s["dw"]["C"] == 64 and s["dw"]["K"] == 64
    assert (s["fc"]["C"], s["fc"]["K"]) == (64, 10)  # transB: W is [K, C]
    assert (s["mm"]["C"], s["mm"]["K"]) == (64, 48)


def test_payoff_halves_the_compute_bound_of_eligible_layers_only():
    shapes = weight_shapes(_model())
    gaps = [LayerGap("wide", "Conv", 1e-3, ["wd", "wide"], compute_s=4e-4, memory_s=1e-4, bound_s=4e-4, cause="compute"),
            LayerGap("dw", "Conv", 5e-4, ["dw"], compute_s=1e-5, memory_s=2e-4, bound_s=2e-4, cause="memory"),
            LayerGap("fc", "Gemm", 1e-4, ["fc"], compute_s=5e-5, memory_s=1e-5, bound_s=5e-5, cause="compute"),
            LayerGap("mm", "Gemm", 2e-4, ["mm"], compute_s=1e-4, memory_s=8e-5, bound_s=1e-4, cause="compute"),
            LayerGap("relu", "PointWise", 3e-4, ["relu"], cause="memory")]
    p = sparsity_payoff(gaps, shapes, end_to_end_s=2.1e-3)
    rows = {r["node"]: r for r in p["layers"]}
    assert set(rows) == {"wide", "dw", "fc", "mm"}  # the pointwise layer has no weight
    assert rows["wide"]["eligible"] and rows["wide"]["likely"]
    assert rows["wide"]["predicted_sparse_ms"] == pytest.approx(1.0 * (2e-4 / 4e-4))  # compute bound halved
    assert not rows["dw"]["eligible"] and rows["dw"]["why"].startswith("grouped/depthwise")
    assert not rows["fc"]["eligible"] and "K=10" in rows["fc"]["why"]  # 10 output channels: not a multiple of 32
    assert not rows["mm"]["eligible"]  # K=48
    assert p["eligible"] == 1 and p["likely"] == 1
    assert p["predicted_saving_ms"] == pytest.approx(0.5)
    assert p["predicted_speedup"] == pytest.approx(2.1 / (2.1 - 0.5))
    # a memory-bound eligible layer gains nothing: its memory bound stays
    mem = LayerGap("wide", "Conv", 1e-3, ["wide"], compute_s=1e-4, memory_s=4e-4, bound_s=4e-4, cause="memory")
    q = sparsity_payoff([mem], shapes, None)
    assert q["layers"][0]["eligible"] and q["predicted_saving_ms"] == pytest.approx(0.0)
    assert q["predicted_speedup"] == 1.0 and "memory-bound" in q["layers"][0]["why"]


def test_what_the_builder_logged_marks_the_layers_that_got_sparse_tactics():
    from pipeline.trt.logger import sparsity_from_log

    log = [("WARNING", "unrelated"),
           ("INFO", "(Sparsity) Layers eligible for sparse math: wide, fc + relu"),
           ("INFO", "(Sparsity) TRT inference plan picked sparse implementation for layers: wide")]
    built = sparsity_from_log(log)
    assert built == {"eligible": ["wide", "fc + relu"], "picked": ["wide"]}
    assert sparsity_from_log([("INFO", "(Sparsity) TRT inference plan picked sparse implementation for layers:")]) \
        == {"picked": []}
    gaps = [LayerGap("wide", "Conv", 1e-3, ["wd", "wide"], compute_s=4e-4, memory_s=1e-4, bound_s=4e-4, cause="compute"),
            LayerGap("fc + relu", "Gemm", 1e-4, ["fc"], compute_s=5e-5, memory_s=1e-5, bound_s=5e-5, cause="compute")]
    p = sparsity_payoff(gaps, weight_shapes(_model()), None, built)
    rows = {r["layer"]: r for r in p["layers"]}
    assert rows["wide"]["picked"] and rows["wide"]["trt_eligible"]
    assert rows["fc + relu"]["trt_eligible"] and not rows["fc + relu"]["picked"]
    assert p["built"] == {"eligible": 2, "picked": ["wide"], "picked_ms": pytest.approx(1.0)}
    assert sparsity_payoff(gaps, weight_shapes(_model()), None)["built"] is None


def test_the_recording_logger_keeps_the_sparsity_lines_but_no_other_info():
    from tests.test_trt_fake import make_fake_trt

    from pipeline.trt.logger import recording_logger

    trt = make_fake_trt("8.6")
    logger = recording_logger(trt, lambda m: None)
    logger.log(trt.ILogger.Severity.INFO, "(Sparsity) Layers eligible for sparse math: conv1")
    logger.log(trt.ILogger.Severity.INFO, "Total Activation Memory: 7864832")
    logger.log(trt.ILogger.Severity.WARNING, "a warning")
    assert [m for _, m in logger.messages] == ["(Sparsity) Layers eligible for sparse math: conv1", "a warning"]
