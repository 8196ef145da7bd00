"""Outlier channel splitting (pipeline/quantize/split.py): exact in FP32, narrower INT8 ranges, same graph rebuilt
from the statistics file."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.config import QuantConfig
from pipeline.core.errors import PipelineError
from pipeline.ort import ort_session, run_first_output
from pipeline.quantize import quantize_onnx
from pipeline.quantize.split import (SPLIT_SUFFIX, channel_maxima, split_counts, split_for_placement,
                                     split_outlier_channels)
from pipeline.quantize.stats import load_channel_maxima, load_stats

K, N = 48, 16


def _model(gemm_trans_b: bool = False) -> onnx.ModelProto:
    """x[B,K] -> LayerNorm-free projection (MatMul, or Gemm with transB) -> Relu -> MatMul; x also feeds a
    residual-like Add through a second projection, so x has a non-projection consumer."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(K, N)).astype(np.float32)
    w2 = rng.normal(size=(N, K)).astype(np.float32)
    inits = [numpy_helper.from_array(w2, "w2")]
    if gemm_trans_b:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w1.T), "w1"))
        proj = helper.make_node("Gemm", ["x", "w1"], ["h"], name="proj", transB=1)
    else:
        inits.append(numpy_helper.from_array(w1, "w1"))
        proj = helper.make_node("MatMul", ["x", "w1"], ["h"], name="proj")
    nodes = [proj, helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["back"], name="down"),
             helper.make_node("Add", ["back", "x"], ["y"], name="residual")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", K])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _data(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, K)).astype(np.float32)
    x[:, 5] *= 40.0  # one outlier channel, as in a transformer's LayerNorm output
    x[:, 9] *= 12.0
    return x


def test_split_counts_exact_numbers():
    m = np.array([1.0, 2.0, 3.0, 10.0])
    # quantile 0.5 of the maxima = 2.5: ceil([0.4, 0.8, 1.2, 4.0]) copies
    assert split_counts(m, 0.5).tolist() == [1, 1, 2, 4]
    assert split_counts(np.ones(8), 0.9).tolist() == [1] * 8  # nothing above the threshold
    with pytest.raises(PipelineError, match="outside"):
        split_counts(m, 1.5)


@pytest.mark.parametrize("trans_b", [False, True])
def test_split_is_exact_and_narrows_the_range(trans_b):
    model = _model(trans_b)
    calib = [{"x": _data(16, s)} for s in range(3)]
    maxima = channel_maxima(model, ["x", "r"], calib)
    assert maxima["x"].shape == (K,) and np.isclose(maxima["x"][5], max(np.abs(b["x"][:, 5]).max() for b in calib))
    split, records = split_outlier_channels(model, {"x": maxima["x"]}, 0.9)
    onnx.checker.check_model(split)
    (rec,) = records
    k = split_counts(maxima["x"], 0.9)
    assert rec.tensor == "x" and rec.split_tensor == "x" + SPLIT_SUFFIX and rec.consumers == ["proj"]
    assert rec.split_channels == int((k > 1).sum()) >= 2  # channels 5 and 9 at least
    assert (K + rec.extra_channels) % 32 == 0  # padded with zero channels to the INT8 contraction multiple
    assert rec.amax_before == pytest.approx(float(maxima["x"].max()))
    assert rec.amax_after == pytest.approx(float((maxima["x"] / k).max())) and rec.amax_after < rec.amax_before / 3
    ev = [{"x": _data(8, 11)}]
    np.testing.assert_allclose(run_first_output(ort_session(split), ev), run_first_output(ort_session(model), ev),
                               rtol=1e-5, atol=1e-4)
    adds = [n for n in split.graph.node if n.op_type == "Add"]
    assert adds[0].input[1] == "x"  # the residual consumer still reads the unsplit tensor
    w = {i.name: numpy_helper.to_array(i) for i in split.graph.initializer}
    proj = next(n for n in split.graph.node if n.name == "proj")
    assert w[proj.input[1]].shape == ((N, K + rec.extra_channels) if trans_b else (K + rec.extra_channels, N))


def test_nothing_to_split_returns_the_model_itself():
    model = _model()
    flat = {"x": np.ones(K, np.float32)}
    same, records = split_outlier_channels(model, flat, 0.99)
    assert same is model and records == []


def test_quantize_with_split_beats_without_and_saves_the_maxima(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    calib = [{"x": _data(16, s)} for s in range(4)]
    ev = [{"x": _data(32, 20)}]
    ref = run_first_output(ort_session(onnx.load(path)), ev)
    errs = {}
    for q in (None, 0.95):
        stats = tmp_path / f"s{q}.npz"
        res = quantize_onnx(path, calib, QuantConfig(calib="max", split_outliers=q), tmp_path / f"q{q}.onnx",
                            progress=False, stats_path=stats)
        y = run_first_output(ort_session(onnx.load(res.qdq_onnx_path), optimize=False), ev)
        errs[q] = float(np.abs(y - ref).mean())
        if q is None:
            assert res.splits == [] and load_channel_maxima(stats) == {}
        else:
            assert [s["tensor"] for s in res.splits][0] == "x"
            back = load_channel_maxima(stats)
            assert set(back) == {"x", "r"}  # every projection input the placement quantizes
            st = load_stats(stats)
            assert "x" + SPLIT_SUFFIX in st and "x" in st  # the split input and the original (implicit path)
            assert st["x" + SPLIT_SUFFIX].max <= res.splits[0]["amax_after"] * (1 + 1e-6)
            from pipeline.quantize.api import split_rule

            rebuilt, _ = split_outlier_channels(onnx.load(path), back, split_rule(QuantConfig(split_outliers=q)))
            assert [n.op_type for n in rebuilt.graph.node] == [n.op_type for n in onnx.load(tmp_path / f"q{q}.onnx").graph.node
                                                               if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    assert errs[0.95] < errs[None] / 2, errs


def test_split_for_placement_measures_only_projection_inputs():
    model = _model()
    _, records, maxima = split_for_placement(model, ["x", "r", "back"], [{"x": _data(8, 1)}], 0.9)
    assert set(maxima) == {"x", "r"}  # "back" feeds an Add, not a projection
    assert [r.tensor for r in records][0] == "x"


def test_a_plan_decides_the_split():
    from pipeline.quantize.api import split_rule
    from pipeline.quantize.split import SplitRule

    assert split_rule(QuantConfig()) == SplitRule(0.99, 2.0) and split_rule(QuantConfig(split_outliers=None)) is None
    assert split_rule(QuantConfig(split_outliers=None), {"split_outliers": 0.95, "split_min_gain": 3}) == SplitRule(0.95, 3.0)
    assert split_rule(QuantConfig(), {"split_outliers": 0.95}) == SplitRule(0.95, 1.0)  # a plan from before min_gain
    assert split_rule(QuantConfig(), {"float_layers": []}) is None  # a plan made on the unsplit graph


def test_min_gain_leaves_activations_that_would_shrink_little():
    from pipeline.quantize.split import SplitRule

    model = _model()
    m = np.ones(K, np.float32)
    m[5] = 1.5  # the range would shrink 1.5x only
    assert split_outlier_channels(model, {"x": m}, SplitRule(0.9, 2.0))[1] == []
    (rec,) = split_outlier_channels(model, {"x": m}, SplitRule(0.9, 1.0))[1]
    assert rec.amax_before == pytest.approx(1.5) and rec.amax_after == pytest.approx(1.0)
    m[5] = 9.0  # 9x
    (rec,) = split_outlier_channels(model, {"x": m}, SplitRule(0.9, 2.0))[1]
    assert rec.amax_before / rec.amax_after == pytest.approx(9.0)
