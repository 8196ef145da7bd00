"""Per-node times from ONNX Runtime's profiler, mapped back to the ONNX nodes (pipeline/ort/nodes.py): real ORT."""

from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.config import QuantConfig
from pipeline.ort.nodes import _mean_node_times, node_rows, profile_nodes
from pipeline.quantize import quantize_onnx


def _cnn(path):
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 8, 3, 3)).astype(np.float32)
    w2 = rng.normal(size=(16, 16, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["y"], name="relu2")]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 16, 16])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return m


def test_every_onnx_node_is_covered_once_and_layout_copies_cover_none(tmp_path):
    path = tmp_path / "cnn.onnx"
    model = _cnn(path)
    rows = profile_nodes(path, {"x": np.ones((2, 8, 16, 16), np.float32)}, runs=3, warmup=1)
    covered = Counter(n for r in rows for n in r["onnx_nodes"])
    assert set(covered) == {n.name for n in model.graph.node} and max(covered.values()) == 1, covered
    assert all(r["measured_ms"] >= 0 for r in rows) and sum(r["measured_ms"] for r in rows) > 0
    for r in rows:
        if r["layer_type"].startswith("Reorder"):
            assert r["onnx_nodes"] == []
    # the residual add + relu fuse into the second conv's kernel: one row holds conv2, add and relu2
    fused = [r for r in rows if "conv2" in r["onnx_nodes"]]
    assert len(fused) == 1 and {"conv2"} <= set(fused[0]["onnx_nodes"])


def test_a_quantized_model_maps_its_runtime_dequantize_nodes(tmp_path):
    path = tmp_path / "cnn.onnx"
    _cnn(path)
    calib = [{"x": np.random.default_rng(i).normal(size=(2, 8, 16, 16)).astype(np.float32)} for i in range(3)]
    q = quantize_onnx(path, calib, QuantConfig(calib="max"), tmp_path / "cnn.int8.qdq.onnx", progress=False)
    qmodel = onnx.load(q.qdq_onnx_path)
    rows = profile_nodes(q.qdq_onnx_path, calib[0], runs=2, warmup=1)
    names = {n.name for n in qmodel.graph.node}
    assert all(set(r["onnx_nodes"]) <= names for r in rows)
    covered = Counter(n for r in rows for n in r["onnx_nodes"])
    assert max(covered.values()) == 1
    assert any(qmodel.graph.node[[n.name for n in qmodel.graph.node].index(n)].op_type in
               ("QuantizeLinear", "DequantizeLinear") for n in covered)


def test_mean_node_times_leave_out_warmup_runs():
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 50},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
              {"cat": "Node", "name": "a_kernel_time", "ts": 210, "dur": 4000},
              {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
              {"cat": "Node", "name": "a_kernel_time", "ts": 410, "dur": 2000},
              {"cat": "Node", "name": "a_fence_before", "ts": 420, "dur": 7}]
    assert _mean_node_times(events, 1) == {"a": (4000 + 2000) / 2 / 1e3}
    assert _mean_node_times(events, 3) == {}


def test_node_rows_follow_the_main_path_not_the_residual():
    model = _cnn_model_only()
    opt = helper.make_model(helper.make_graph(
        [helper.make_node("FusedConv", ["x", "w1"], ["r1"], name="conv1"),
         helper.make_node("FusedConv", ["r1", "w2", "r1"], ["y"], name="conv2_fused")], "opt", [], []))
    rows = node_rows(model, opt, {"conv1": 1.0, "conv2_fused": 2.0})
    assert rows[0]["onnx_nodes"] == ["relu1", "conv1"]
    assert rows[1]["onnx_nodes"] == ["relu2", "add", "conv2"]  # not back into relu1 through the residual


def _cnn_model_only():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        return _cnn(Path(d) / "m.onnx")


def test_kernel_precision_names_what_the_cpu_computes_in():
    from pipeline.ort.nodes import kernel_precision

    assert kernel_precision("QLinearConv") == "int8" and kernel_precision("MatMulInteger") == "int8"
    assert kernel_precision("DequantizeLinear") == "int8<->fp32" and kernel_precision("FusedConv") == "fp32"
