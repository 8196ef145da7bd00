"""Per-layer mapping (engine layer -> ONNX nodes), time splitting, efficiency; runner accuracy math and loop."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.accuracy import TOLERANCES
from pipeline.core.accuracy import precision_check as compare_outputs
from pipeline.trt.layers import (OnnxGraphIndex, engine_layers, graph_index, layer_rows, onnx_graph_index,
                                 onnx_layer_times, onnx_nodes_of_layer)
from pipeline.trt.profiler import timed_loop

_spec = importlib.util.spec_from_file_location("build_engine_tests", Path(__file__).parent / "test_trt_build.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)


@pytest.fixture
def index(tmp_path):
    return onnx_graph_index(_mod.tiny_onnx(tmp_path / "tiny.qdq.onnx", qdq=True))


def test_fused_names_86_style(index):
    # TensorRT 8.6 names fused layers by joining node names with " + "; Q/DQ fold into the conv.
    layer = {"Name": "/q/QuantizeLinear + /conv/Conv + /relu/Relu", "LayerType": "CaskConvolution"}
    assert onnx_nodes_of_layer(layer, index) == ["/q/QuantizeLinear", "/conv/Conv", "/relu/Relu"]
    assert onnx_nodes_of_layer({"Name": "PWN(/relu/Relu)"}, index) == ["/relu/Relu"]
    assert onnx_nodes_of_layer({"Name": "Reformatting CopyNode for Input Tensor 0 to /conv/Conv"}, index) == []


def test_foreign_node_range_metadata_and_output_fallback(index):
    myelin = {"Name": "{ForeignNode[/pool/GlobalAveragePool.../softmax/Softmax]}"}
    assert onnx_nodes_of_layer(myelin, index) == ["/pool/GlobalAveragePool", "/flatten/Flatten", "/fc/Gemm",
                                                  "/softmax/Softmax"]
    # TensorRT 10 metadata (unit-separator joined) wins over the name.
    meta = {"Name": "conv_fused_0", "Metadata": "[ONNX Layer: /conv/Conv]\x1f[ONNX Layer: /relu/Relu]"}
    assert onnx_nodes_of_layer(meta, index) == ["/conv/Conv", "/relu/Relu"]
    anon = {"Name": "layer_7", "Outputs": [{"Name": "g", "Dimensions": [2, 5]}]}
    assert onnx_nodes_of_layer(anon, index) == ["/fc/Gemm"]
    assert engine_layers({"Layers": ["a", {"Name": "b"}]}) == [{"Name": "a"}, {"Name": "b"}]


def test_index_labels_unnamed_nodes_by_position_and_maps_producers(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from pipeline.graph import to_graph

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"], name="/neg/Neg"),
             helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "unnamed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    index = onnx_graph_index(path)
    assert index.order == ["Relu_0", "/neg/Neg", "Relu_2"]
    assert index.producer == {"a": "Relu_0", "b": "/neg/Neg", "y": "Relu_2"}  # graph inputs have none
    assert index.op_type == {"Relu_0": "Relu", "/neg/Neg": "Neg", "Relu_2": "Relu"}
    assert index.position == {"Relu_0": 0, "/neg/Neg": 1, "Relu_2": 2}
    assert graph_index(to_graph(onnx.load(str(path)))) == index
    assert onnx_nodes_of_layer({"Name": "{ForeignNode[Relu_2...Relu_0]}"}, index) == index.order
    # An index built by hand (no positions) still expands ranges in graph order.
    manual = OnnxGraphIndex(order=index.order, producer=index.producer, op_type=index.op_type)
    assert onnx_nodes_of_layer({"Name": "{ForeignNode[/neg/Neg...Relu_2]}"}, manual) == ["/neg/Neg", "Relu_2"]


def test_rows_efficiency_and_node_time_split(index):
    costs = [
        {"name": "/conv/Conv", "flops": 2e9, "bytes": 1e6, "compute_s": 2e-6, "memory_s": 1e-6, "bound_s": 2e-6},
        {"name": "/relu/Relu", "flops": 1e6, "bytes": 2e6, "compute_s": 1e-9, "memory_s": 2e-6, "bound_s": 2e-6},
        {"name": "/fc/Gemm", "flops": 4e6, "bytes": 4e3, "compute_s": 4e-9, "memory_s": 4e-9, "bound_s": 4e-9},
    ]
    mean_ms = {"/conv/Conv + /relu/Relu": 0.008, "/fc/Gemm": 0.002}
    rows = layer_rows(mean_ms, [], index, costs, peak_ops_per_s=1e15)
    conv = rows[0]
    assert conv["onnx_nodes"] == ["/conv/Conv", "/relu/Relu"]
    assert conv["bound_s"] == pytest.approx(3e-6)  # max(sum compute 2.001e-6, sum memory 3e-6)
    assert conv["efficiency"] == pytest.approx(3e-6 / 8e-6)
    assert conv["pct_of_peak"] == pytest.approx(100 * 2.001e9 / 8e-6 / 1e15)
    assert conv["share"] == pytest.approx(0.8)
    times = onnx_layer_times(rows, costs)
    assert times["/conv/Conv"] == pytest.approx(4e-6) and times["/relu/Relu"] == pytest.approx(4e-6)
    assert sum(times.values()) == pytest.approx(1e-5)


def test_compare_outputs_tolerances():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((64, 10)).astype(np.float32)
    close = ref + 1e-3 * rng.standard_normal(ref.shape).astype(np.float32)
    res = compare_outputs(ref, close, "fp16")
    assert res["passed"] and res["top1_agreement"] == 1.0 and res["rel_l2"] < 2e-3
    assert not compare_outputs(ref, close, "fp32")["passed"]  # 1e-3 noise breaks the FP32 limit (1e-4)
    flipped = ref.copy()
    flipped[:8] = -flipped[:8]
    bad = compare_outputs(ref, flipped, "int8")
    assert not bad["passed"] and any(c.startswith("cosine") for c in bad["failed_checks"])
    assert TOLERANCES["int8"]["top1_agreement"] == 0.99


class HostClockCuda:
    """Events stamped with the host clock: checks the loop's bookkeeping, not GPU timing."""

    name = "host-clock"

    def __init__(self):
        self.waits = 0

    def create_event(self):
        return [0.0]

    def record(self, ev, stream):
        ev[0] = time.perf_counter()

    def elapsed_ms(self, a, b):
        return (b[0] - a[0]) * 1e3

    def wait(self, ev):
        self.waits += 1

    def synchronize(self, stream):
        pass


def test_timed_loop_duration_iterations_and_in_flight_bound():
    cuda = HostClockCuda()
    res = timed_loop(lambda: time.sleep(0.002), cuda, 0, warmup_s=0.01, duration_s=0.05, min_iterations=5)
    assert res["iterations"] >= 5 and res["wall_s"] >= 0.05
    assert all(1.5 < x < 50 for x in res["latencies_ms"])
    assert res["gpu_span_ms"] >= sum(res["latencies_ms"]) * 0.99
    assert cuda.waits == res["iterations"] - 3  # waits once per run beyond the first three in flight
    few = timed_loop(lambda: None, HostClockCuda(), 0, 0.0, 0.0, min_iterations=40)
    assert few["iterations"] == 40 and few["warmup_iterations"] >= 1


class StreamClockCuda(HostClockCuda):
    """Host-clock events that also remember their stream."""

    def __init__(self):
        super().__init__()
        self.recorded = []

    def record(self, ev, stream):
        super().record(ev, stream)
        self.recorded.append(stream)


def test_timed_streams_round_robin_counts_every_stream():
    from pipeline.trt.profiler import timed_streams

    cuda = StreamClockCuda()
    calls = {0: 0, 1: 0}

    def run(i):
        def enqueue():
            calls[i] += 1
            time.sleep(0.001)
        return enqueue

    res = timed_streams([run(0), run(1)], [10, 11], cuda, warmup_s=0.005, duration_s=0.03, min_iterations=6)
    assert res["streams"] == 2 and res["iterations"] % 2 == 0 and res["iterations"] >= 6
    assert cuda.recorded[0::2] == [10, 11] * (res["iterations"] // 2)  # start events alternate between streams
    assert cuda.waits == 2 * (res["iterations"] // 2 - 3)  # three runs in flight per stream
    assert res["gpu_span_ms"] >= max(res["latencies_ms"])
    assert calls[0] == calls[1] == res["iterations"] // 2 + res["warmup_iterations"]
