"""A Myelin ("ForeignNode") layer: its ONNX nodes inferred when TensorRT reports none, and its work split by kind
node by node, so a transformer engine timed as one layer still says what INT8 can and cannot speed up."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.analyze.flops import graph_costs
from pipeline.core.config import precision_config
from pipeline.explain.gap import Rates, infer_myelin_nodes, is_myelin, layer_gaps, myelin_breakdown

H, B, S = 64, 2, 8


def _encoder(qdq: bool):
    """x[B,S,H] -> MatMul(W) -> Add(x) -> Softmax -> out; with ``qdq`` a Q/DQ pair before the MatMul's input."""
    inits = [numpy_helper.from_array(np.ones((H, H), np.float32), "w"),
             numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes, x = [], "x"
    if qdq:
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq")]
        x = "xd"
    nodes += [helper.make_node("MatMul", [x, "w"], ["m"], name="mm"),
              helper.make_node("Add", ["m", "x"], ["a"], name="add"),
              helper.make_node("Softmax", ["a"], ["y"], name="softmax", axis=-1)]
    g = helper.make_graph(nodes, "enc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, S, H])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, S, H])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_lone_myelin_layer_gets_every_compute_node_no_other_layer_claims():
    costs = graph_costs(_encoder(qdq=True), B, precision_config("int8"))
    rows = [{"name": "input reformat", "layer_type": "Reformat", "measured_ms": 0.001, "onnx_nodes": []},
            {"name": "{ForeignNode[w...(Unnamed Layer* 9) [Softmax]]}", "layer_type": "Myelin", "measured_ms": 0.02,
             "onnx_nodes": ["mm"]}]
    out = infer_myelin_nodes(rows, costs)
    assert out[1]["onnx_nodes"] == ["mm", "add", "softmax"] and out[1]["onnx_nodes_inferred"]  # Q/DQ: no work
    assert rows[1]["onnx_nodes"] == ["mm"]  # the input is not modified
    two = rows + [{"name": "{ForeignNode[a...b]}", "layer_type": "Myelin", "measured_ms": 0.01, "onnx_nodes": []}]
    assert infer_myelin_nodes(two, costs)[1]["onnx_nodes"] == ["mm"]  # two Myelin layers: nothing to infer
    assert is_myelin(rows[1]) and not is_myelin(rows[0])


def test_the_breakdown_counts_planned_int8_matmuls_at_the_int8_rate_and_the_rest_at_theirs():
    rates = Rates(peak_ops_s=2e15, bandwidth_bytes_s=4e12, vector_ops_s=6e13)
    half = 1e15
    bounds = {}
    for qdq in (False, True):
        costs = graph_costs(_encoder(qdq), B, precision_config("int8" if qdq else "fp16"))
        rows = infer_myelin_nodes([{"name": "{ForeignNode[x]}", "layer_type": "Myelin", "measured_ms": 0.02,
                                    "onnx_nodes": []}], costs)
        (gap,) = layer_gaps(rows, costs, rates)
        m = myelin_breakdown(gap, costs, rates, half)
        mm = costs.layers[[ly.name for ly in costs.layers].index("mm")]
        kind = "matmul, INT8 in the plan" if qdq else "matmul, 16-bit"
        k = m["kinds"][kind]
        assert k["nodes"] == 1 and k["flops"] == 2 * B * S * H * H == 2 * mm.macs
        assert k["compute_s"] == pytest.approx(2 * mm.macs / (2e15 if qdq else half))
        assert k["bound_s"] == pytest.approx(max(k["compute_s"], mm.bytes / 4e12))
        assert set(m["kinds"]) == {kind, "elementwise", "softmax"}
        assert m["unfused_bound_s"] == pytest.approx(sum(v["bound_s"] for v in m["kinds"].values()))
        assert m["measured_s"] == pytest.approx(2e-5) and m["nodes"] == 3
        bounds[qdq] = m["unfused_bound_s"]
    assert bounds[True] < bounds[False]  # INT8 math and 1-byte activations can only lower the bound
