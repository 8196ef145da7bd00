"""pipeline.explain: per-layer gap to the roofline by cause, the engine diff, the stage and its CLI.

Every expected number is derived by hand from the shapes of tiny ONNX graphs built here:

* ``residual``: x[batch, 4, 8, 8] -> Conv(w[4, 4, 3, 3], pads 1) -> c -> Relu -> r -> Add(r, x) -> z.
  One activation tensor (x, c, r or z) has 2 * 4 * 8 * 8 = 512 elements at batch 2; the weight has
  4 * 4 * 3 * 3 = 144 elements. Conv MACs = 512 outputs x 4 input channels x 9 taps = 18432, FLOPs 36864;
  Relu and Add 1 FLOP per output element = 512 each.
* ``qdq``: x -> QuantizeLinear -> DequantizeLinear -> Relu -> y (scale/zero point constants).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.analyze.flops import graph_costs
from pipeline.analyze.fusion import group_of_nodes
from pipeline.analyze.hardware import load_hardware, load_hardware_config
from pipeline.core.config import PrecisionConfig
from pipeline.core.errors import PipelineError
from pipeline.explain.diff import diff_summary, engine_diff
from pipeline.explain.gap import LAUNCH_S, LayerGap, Rates, breakdown, layer_gaps, run_rates

INT8 = PrecisionConfig("int8", 1.0, 1.0, "int8_tensor")
FP16 = PrecisionConfig("fp16", 2.0, 2.0, "fp16_tensor")
BATCH = 2
ELEMS = BATCH * 4 * 8 * 8  # 512 elements per activation tensor
W_ELEMS = 4 * 4 * 3 * 3  # 144 weight elements
CONV_FLOPS = 2 * ELEMS * 4 * 9  # 36864
RELU_FLOPS = ADD_FLOPS = ELEMS  # 512 each
TIGHT = dict(rel=1e-12, abs=1e-18)


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(
        nodes, "explain_test",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def residual():
    shape = ["batch", 4, 8, 8]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "x"], ["z"], name="add"),
    ]
    w = (np.arange(W_ELEMS, dtype=np.float32).reshape(4, 4, 3, 3) - 72) / 100
    return _model(nodes, [("x", shape)], [("z", shape)], {"w": w})


def qdq():
    shape = ["batch", 4, 8, 8]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="quant"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dequant"),
        helper.make_node("Relu", ["xd"], ["y"], name="relu"),
    ]
    return _model(nodes, [("x", shape)], [("y", shape)],
                  {"s": np.array(0.1, np.float32), "zp": np.array(0, np.int8)})


@pytest.fixture(scope="module")
def costs_int8():
    return graph_costs(residual(), BATCH, INT8)


@pytest.fixture(scope="module")
def costs_fp16():
    return graph_costs(residual(), BATCH, FP16)


# --- group_of_nodes --------------------------------------------------------------------------------

def test_graph_costs_of_the_residual_model_match_the_hand_numbers(costs_int8):
    """Sanity of the inputs the rest relies on (fails loudly if the cost model changed)."""
    by = {ly.name: ly for ly in costs_int8.layers}
    assert by["conv"].flops == CONV_FLOPS == 36864
    assert by["relu"].flops == RELU_FLOPS == 512 and by["add"].flops == ADD_FLOPS == 512
    assert by["conv"].weight_bytes == W_ELEMS * 1 == 144


def test_group_conv_relu_add_int8_counts_only_boundary_tensors(costs_int8):
    g = group_of_nodes(costs_int8, ["conv", "relu", "add"])
    # reads x once (conv and add both read it), writes z once; c and r stay on chip
    assert g.inputs == ("x",) and g.outputs == ("z",)
    assert g.activation_bytes == 2 * ELEMS * 1 == 1024
    assert g.weight_bytes == W_ELEMS * 1 == 144
    assert g.flops == CONV_FLOPS + RELU_FLOPS + ADD_FLOPS == 37888
    by = {ly.name: ly for ly in costs_int8.layers}
    assert g.flops == sum(by[n].flops for n in ("conv", "relu", "add"))
    # the unfused per-node sum would have counted c and r twice each on top
    assert sum(by[n].activation_bytes for n in ("conv", "relu", "add")) == 1024 + 1024 + 1536


def test_group_conv_relu_fp16_writes_relu_output_read_by_the_add_outside(costs_fp16):
    g = group_of_nodes(costs_fp16, ["relu", "conv"])  # order of names does not matter
    assert g.nodes == ("conv", "relu")
    assert g.inputs == ("x",) and g.outputs == ("r",)  # c not counted; r consumed by add outside
    assert g.activation_bytes == (ELEMS + ELEMS) * 2 == 2048
    assert g.weight_bytes == W_ELEMS * 2 == 288
    assert g.flops == CONV_FLOPS + RELU_FLOPS == 37376
    add = group_of_nodes(costs_fp16, ["add"])
    assert set(add.inputs) == {"r", "x"} and add.outputs == ("z",)
    assert add.activation_bytes == 3 * ELEMS * 2 == 3072 and add.weight_bytes == 0


def test_group_conv_alone_writes_its_output(costs_fp16):
    g = group_of_nodes(costs_fp16, ["conv"])
    assert g.activation_bytes == 2 * ELEMS * 2 == 2048 and g.flops == CONV_FLOPS


def test_group_ignores_unknown_names(costs_int8):
    ref = group_of_nodes(costs_int8, ["conv", "relu", "add"])
    g = group_of_nodes(costs_int8, ["ghost", "conv", "relu", "Myelin_123", "add"], index=7)
    assert g.index == 7
    assert (g.nodes, g.flops, g.weight_bytes, g.activation_bytes) == (
        ref.nodes, ref.flops, ref.weight_bytes, ref.activation_bytes)
    empty = group_of_nodes(costs_int8, ["ghost"])
    assert empty.nodes == () and empty.flops == 0 and empty.bytes == 0


def test_group_without_connectivity_sums_the_nodes_own_bytes(costs_int8):
    bare = replace(costs_int8, node_io=[])
    g = group_of_nodes(bare, ["conv", "relu"])
    # conv: reads x 512 + writes c 512; relu: reads c 512 + writes r 512 (int8: 1 byte each)
    assert g.activation_bytes == 4 * ELEMS == 2048
    assert g.weight_bytes == 144 and g.flops == CONV_FLOPS + RELU_FLOPS


# --- run_rates -------------------------------------------------------------------------------------

def test_run_rates_scales_peak_by_median_sm_clock():
    tel = {"sm_clock_mhz": {"median": 1500.0, "max": 1980.0}, "power_w": {"median": 500}}
    r = run_rates(1e15, 1830.0, 4.8e12, tel, "fp16_tensor")
    assert r.peak_ops_s == pytest.approx(1e15 * 1500 / 1830, **TIGHT)
    assert r.bandwidth_bytes_s == 4.8e12 and r.peak_key == "fp16_tensor"
    assert "1500 MHz" in r.clock_note and "1830 MHz" in r.clock_note


@pytest.mark.parametrize("tel", [None, {}, {"sm_clock_mhz": {}}, {"power_w": {"median": 300}}])
def test_run_rates_keeps_the_rated_peak_without_telemetry(tel):
    r = run_rates(1e15, 1830.0, 4.8e12, tel)
    assert r.peak_ops_s == 1e15 and r.bandwidth_bytes_s == 4.8e12
    assert r.clock_note.startswith("rated clocks")


def test_run_rates_without_a_rated_clock_keeps_the_peak():
    r = run_rates(2e14, None, 1e12, {"sm_clock_mhz": {"median": 1200}})
    assert r.peak_ops_s == 2e14


# --- layer_gaps ------------------------------------------------------------------------------------

RATES = Rates(peak_ops_s=1e12, bandwidth_bytes_s=1e11, peak_key="test")


def test_layer_gaps_compute_and_memory_bounds_exact(costs_int8):
    rows = [
        {"name": "conv + relu", "layer_type": "CaskConvolution", "measured_ms": 0.05, "onnx_nodes": ["conv", "relu"]},
        {"name": "add", "layer_type": "PointWiseV2", "measured_ms": 0.02, "onnx_nodes": ["add"]},
    ]
    inspector = {"conv + relu": {"Name": "conv + relu", "Inputs": [{"Format/Datatype": "Int8 NC/32HW32"}],
                                 "TacticName": "sm90_xmma_fprop"}}
    cr, add = layer_gaps(rows, costs_int8, RATES, inspector)

    # conv + relu: 37376 FLOPs; bytes = weights 144 + x 512 + r 512 = 1168
    assert cr.flops == 37376 and cr.bytes == 1168
    assert cr.compute_s == pytest.approx(37376 / 1e12, **TIGHT)
    assert cr.memory_s == pytest.approx(1168 / 1e11, **TIGHT)
    assert cr.bound_s == cr.compute_s and cr.cause == "compute"
    assert cr.measured_s == pytest.approx(5e-5, **TIGHT)
    assert cr.gap_s == pytest.approx(5e-5 - 37376 / 1e12, **TIGHT)
    assert cr.efficiency == pytest.approx((37376 / 1e12) / 5e-5, **TIGHT)
    assert cr.precision == "int8" and cr.tactic == "sm90_xmma_fprop"

    # add: 512 FLOPs; bytes = r 512 + x 512 + z 512 = 1536 -> memory
    assert add.flops == 512 and add.bytes == 1536
    assert add.memory_s == pytest.approx(1536 / 1e11, **TIGHT)
    assert add.compute_s == pytest.approx(512 / 1e12, **TIGHT)
    assert add.bound_s == add.memory_s and add.cause == "memory"
    assert add.precision is None and add.tactic is None


def test_layer_gaps_the_larger_bound_wins_when_rates_change(costs_int8):
    """Same fused layer, bandwidth 100x lower: 1168 B / 1e9 B/s > 37376 / 1e12 -> memory."""
    rows = [{"name": "fused", "layer_type": "CaskConvolution", "measured_ms": 0.5,
             "onnx_nodes": ["conv", "relu", "add"]}]
    (g,) = layer_gaps(rows, costs_int8, Rates(1e12, 1e9))
    assert g.bytes == 144 + 1024
    assert g.bound_s == pytest.approx(1168 / 1e9, **TIGHT) and g.cause == "memory"
    (g,) = layer_gaps(rows, costs_int8, Rates(1e12, 1e12))
    assert g.bound_s == pytest.approx(37888 / 1e12, **TIGHT) and g.cause == "compute"


def test_layer_gaps_reformat_qdq_unmapped_and_launch_overhead():
    costs = graph_costs(qdq(), BATCH, INT8)
    rows = [
        {"name": "Reformatting CopyNode for Input Tensor 0 to quant", "layer_type": "Reformat",
         "measured_ms": 0.01, "onnx_nodes": []},
        {"name": "quant + dequant", "layer_type": "Scale", "measured_ms": 0.02, "onnx_nodes": ["quant", "dequant"]},
        {"name": "myelin_thing", "layer_type": "Myelin", "measured_ms": 0.03, "onnx_nodes": []},
        {"name": "relu", "layer_type": "PointWise", "measured_ms": 0.004, "onnx_nodes": ["relu"]},
        {"name": "copy", "layer_type": "Reformat", "measured_ms": 0.01, "onnx_nodes": ["relu"]},
        {"name": "dequant + relu", "layer_type": "PointWise", "measured_ms": 0.02, "onnx_nodes": ["dequant", "relu"]},
    ]
    ref, qd, unm, relu, ref2, dqr = layer_gaps(rows, costs, Rates(1e12, 1e11))
    assert ref.cause == "overhead" and ref.detail.startswith("reformat")
    assert ref.bound_s == 0 and ref.gap_s == pytest.approx(1e-5, **TIGHT)

    assert qd.cause == "overhead" and qd.detail.startswith("standalone Q/DQ")
    # Q: 4 FLOPs per element, DQ: 2 per element; bytes: scales+zero points 2 x (1 + 1) weights,
    # x read (512 x 1 B) and the int8 xq written (512 x 1 B); xd is a view of xq
    assert qd.flops == 4 * ELEMS + 2 * ELEMS == 3072
    assert qd.bytes == 4 + 1024
    assert qd.bound_s == pytest.approx(1028 / 1e11, **TIGHT)

    assert unm.cause == "unmapped" and unm.flops == 0 and unm.bound_s == 0 and unm.efficiency is None
    assert unm.gap_s == pytest.approx(3e-5, **TIGHT)

    # 4 us < 5 us and bound (relu: 512 FLOPs, 1024 bytes -> 1.024e-8 s) < a tenth of it
    assert 0.004e-3 < LAUNCH_S
    assert relu.bound_s == pytest.approx(1024 / 1e11, **TIGHT)
    assert relu.cause == "overhead" and "launch" in relu.detail

    # a Reformat layer type wins even when a node is attached
    assert ref2.cause == "overhead" and ref2.detail.startswith("reformat")

    # a DQ fused into its consumer is not standalone: 2 + 1 FLOPs per element; bytes = scale + zero point
    # (1 + 1) + the int8 xq read (512) + y written (512) -> memory-bound
    assert dqr.flops == 2 * ELEMS + ELEMS == 1536 and dqr.bytes == 2 + 1024
    assert dqr.cause == "memory" and dqr.bound_s == pytest.approx(1026 / 1e11, **TIGHT)


def test_layer_whose_nodes_are_not_in_the_onnx_is_unmapped(costs_int8):
    rows = [{"name": "{ForeignNode[/enc/a.../enc/b]}", "layer_type": "Myelin", "measured_ms": 0.3,
             "onnx_nodes": ["/enc/a", "/enc/b"]}]
    (g,) = layer_gaps(rows, costs_int8, RATES)
    assert g.flops == 0 and g.bound_s == 0
    assert g.cause == "unmapped"


def test_layer_gap_to_dict_has_gap_and_efficiency():
    g = LayerGap("l", "t", 2e-5, ["n"], bound_s=5e-6, cause="memory")
    d = g.to_dict()
    assert d["gap_s"] == pytest.approx(1.5e-5, **TIGHT) and d["efficiency"] == pytest.approx(0.25, **TIGHT)
    assert LayerGap("l", "t", 1e-5, ["n"], bound_s=2e-5).gap_s == 0.0  # faster than the bound: no gap


# --- breakdown -------------------------------------------------------------------------------------

def _gaps_for_breakdown():
    return [
        LayerGap("a", "Conv", 40e-6, ["a"], bound_s=10e-6, cause="compute"),
        LayerGap("b", "PW", 30e-6, ["b"], bound_s=20e-6, cause="memory"),
        LayerGap("c", "Reformat", 10e-6, [], bound_s=0.0, cause="overhead"),
        LayerGap("d", "Conv", 20e-6, ["d"], bound_s=25e-6, cause="compute"),  # bound above measured: gap 0
    ]


def test_breakdown_sums_per_cause():
    gaps = _gaps_for_breakdown()
    b = breakdown(gaps, None)
    by = b["by_cause"]
    assert set(by) == {"compute", "memory", "overhead"}
    assert by["compute"]["layers"] == 2
    assert by["compute"]["measured_s"] == pytest.approx(60e-6, **TIGHT)
    assert by["compute"]["bound_s"] == pytest.approx(35e-6, **TIGHT)
    assert by["compute"]["gap_s"] == pytest.approx(30e-6, **TIGHT)
    assert by["memory"] == pytest.approx({"layers": 1, "measured_s": 30e-6, "bound_s": 20e-6, "gap_s": 10e-6},
                                         **TIGHT)
    assert by["overhead"] == pytest.approx({"layers": 1, "measured_s": 10e-6, "bound_s": 0.0, "gap_s": 10e-6},
                                           **TIGHT)
    # the per-cause sums are the row sums
    for key in ("measured_s", "bound_s", "gap_s"):
        assert sum(v[key] for v in by.values()) == pytest.approx(
            sum(getattr(g, key) for g in gaps), **TIGHT)
    assert b["layers_sum_s"] == pytest.approx(100e-6, **TIGHT)
    assert b["bound_sum_s"] == pytest.approx(55e-6, **TIGHT)
    assert b["gap_sum_s"] == pytest.approx(50e-6, **TIGHT)
    assert b["share_of_gap"] == pytest.approx({"compute": 0.6, "memory": 0.2, "overhead": 0.2}, **TIGHT)
    assert "adds_up" not in b and "end_to_end_s" not in b


def test_breakdown_adds_up_within_five_percent():
    b = breakdown(_gaps_for_breakdown(), 98e-6)  # |100 - 98| = 2 <= 4.9
    assert b["adds_up"] is True
    assert b["layers_minus_end_to_end_s"] == pytest.approx(2e-6, rel=1e-9)
    assert b["end_to_end_s"] == 98e-6 and "within 5%" in b["note"]
    assert breakdown(_gaps_for_breakdown(), 104e-6)["adds_up"] is True  # |-4| <= 5.2


def test_breakdown_does_not_add_up_and_says_so():
    b = breakdown(_gaps_for_breakdown(), 90e-6)  # |100 - 90| = 10 > 4.5
    assert b["adds_up"] is False
    assert b["layers_minus_end_to_end_s"] == pytest.approx(10e-6, rel=1e-9)
    assert "0.100 ms against 0.090 ms" in b["note"] and "synchronises" in b["note"]
    assert breakdown(_gaps_for_breakdown(), 110e-6)["adds_up"] is False  # |-10| > 5.5


# --- engine_diff / diff_summary --------------------------------------------------------------------

FUSED = "conv + relu"
REFORMAT = f"Reformatting CopyNode for Input Tensor 0 to {FUSED}"


def _engine_a():
    return [
        LayerGap("conv", "CaskConvolution", 30e-6, ["conv"], cause="compute", detail="FLOPs", precision="fp16",
                 tactic="tA"),
        LayerGap("relu", "PointWise", 10e-6, ["relu"], cause="memory", detail="DRAM", precision="fp16"),
        LayerGap("add", "PointWise", 20e-6, ["add"], cause="memory", detail="DRAM", precision="fp16"),
    ]


def _engine_b():
    return [
        LayerGap(REFORMAT, "Reformat", 5e-6, [], cause="overhead",
                 detail="reformat (layout or precision conversion between layers)", precision="fp16"),
        LayerGap(FUSED, "CaskConvolution", 20e-6, ["conv", "relu"], cause="compute", detail="FLOPs",
                 precision="int8", tactic="tB"),
        LayerGap("add", "PointWise", 45e-6, ["add"], cause="memory", detail="DRAM", precision="int8"),
    ]


def test_engine_diff_matches_fused_layers_and_reformat_in_one_row():
    rows = engine_diff(_engine_a(), _engine_b(), ("fp16", "int8"))
    assert len(rows) == 2
    # sorted by |delta|: add (+0.025 ms) before conv+relu (-0.015 ms)
    add, cr = rows
    assert add["nodes"] == ["add"]
    assert add["delta_ms"] == pytest.approx(0.045 - 0.020, **TIGHT)
    assert add["ratio"] == pytest.approx(0.045 / 0.020, **TIGHT)

    assert sorted(cr["nodes"]) == ["conv", "relu"]
    assert cr["fp16"]["layers"] == ["conv", "relu"]
    assert set(cr["int8"]["layers"]) == {REFORMAT, FUSED}
    assert cr["fp16"]["ms"] == pytest.approx(0.040, **TIGHT)
    assert cr["int8"]["ms"] == pytest.approx(0.025, **TIGHT)  # 0.020 fused + 0.005 reformat
    assert cr["delta_ms"] == pytest.approx(-0.015, **TIGHT)
    assert cr["ratio"] == pytest.approx(0.025 / 0.040, **TIGHT)
    assert cr["int8"]["reformats"]["count"] == 1
    assert cr["int8"]["reformats"]["ms"] == pytest.approx(0.005, **TIGHT)
    assert cr["fp16"]["reformats"] == {"count": 0, "ms": 0}
    assert cr["int8"]["precisions"] == ["int8"]  # the reformat's fp16 is not the layer's precision
    assert cr["fp16"]["tactics"] == ["tA"] and cr["int8"]["tactics"] == ["tB"]
    assert abs(rows[0]["delta_ms"]) >= abs(rows[1]["delta_ms"])


def test_engine_diff_reformat_without_named_target_joins_next_mapped_layer():
    b = [LayerGap("Reformatting CopyNode for Output Tensor 0", "Reformat", 7e-6, [], cause="overhead",
                  detail="reformat (x)"),
         LayerGap("add", "PointWise", 1e-6, ["add"], cause="memory", detail="DRAM")]
    a = [LayerGap("add", "PointWise", 2e-6, ["add"], cause="memory", detail="DRAM")]
    (row,) = engine_diff(a, b, ("A", "B"))
    assert row["B"]["ms"] == pytest.approx(0.008, **TIGHT) and row["B"]["reformats"]["count"] == 1
    assert row["delta_ms"] == pytest.approx(0.006, **TIGHT)


def test_engine_diff_reformat_joins_the_layer_it_names_not_the_next_one():
    """A reformat of add's second input that runs before the fused conv belongs to add's row."""
    to_add = "Reformatting CopyNode for Input Tensor 1 to add"
    b = [LayerGap(to_add, "Reformat", 3e-6, [], cause="overhead", detail="reformat (x)")] + _engine_b()
    rows = engine_diff(_engine_a(), b, ("A", "B"))
    by = {tuple(sorted(r["nodes"])): r for r in rows}
    assert set(by) == {("add",), ("conv", "relu")}
    assert by[("add",)]["B"]["layers"] == [to_add, "add"]
    assert by[("add",)]["B"]["reformats"] == pytest.approx({"count": 1, "ms": 0.003}, **TIGHT)
    assert by[("add",)]["B"]["ms"] == pytest.approx(0.048, **TIGHT)
    assert by[("conv", "relu")]["B"]["reformats"]["count"] == 1
    assert by[("conv", "relu")]["B"]["ms"] == pytest.approx(0.025, **TIGHT)


def test_diff_summary_totals_exact():
    labels = ("fp16", "int8")
    rows = engine_diff(_engine_a(), _engine_b(), labels)
    s = diff_summary(rows, labels)
    assert s["rows"] == 2
    assert s["total_ms"] == pytest.approx({"fp16": 0.060, "int8": 0.070}, **TIGHT)
    assert s["reformat_ms"] == pytest.approx({"fp16": 0.0, "int8": 0.005}, **TIGHT)
    assert s["standalone_qdq"] == {"fp16": 0, "int8": 0}
    assert s["rows_where_b_is_slower"] == 1
    assert s["time_lost_where_b_is_slower_ms"] == pytest.approx(0.025, **TIGHT)
    assert s["time_won_where_b_is_faster_ms"] == pytest.approx(0.015, **TIGHT)
    # lost - won is the whole difference when every row has both engines
    assert (s["time_lost_where_b_is_slower_ms"] - s["time_won_where_b_is_faster_ms"]) == pytest.approx(
        s["total_ms"]["int8"] - s["total_ms"]["fp16"], **TIGHT)


def test_diff_counts_standalone_qdq_of_b():
    a = _engine_a()
    b = _engine_b() + [LayerGap("quant", "Scale", 8e-6, ["quant"], cause="overhead",
                                detail="standalone Q/DQ (not fused into a neighbour)")]
    rows = engine_diff(a, b, ("A", "B"))
    (q,) = [r for r in rows if r["nodes"] == ["quant"]]
    assert q["A"]["layers"] == [] and q["A"]["ms"] == 0 and q["ratio"] is None
    assert q["B"]["standalone_qdq"] == 1 and q["delta_ms"] == pytest.approx(0.008, **TIGHT)
    s = diff_summary(rows, ("A", "B"))
    assert s["standalone_qdq"] == {"A": 0, "B": 1}
    assert s["total_ms"]["B"] == pytest.approx(0.078, **TIGHT)


def test_diff_summary_time_lost_includes_pieces_only_b_has():
    a = _engine_a()
    b = _engine_b() + [LayerGap("quant", "Scale", 8e-6, ["quant"], cause="overhead",
                                detail="standalone Q/DQ (not fused into a neighbour)")]
    s = diff_summary(engine_diff(a, b, ("A", "B")), ("A", "B"))
    assert s["rows_where_b_is_slower"] == 2  # add (+0.025) and the B-only quant (+0.008)
    assert s["time_lost_where_b_is_slower_ms"] == pytest.approx(0.033, **TIGHT)
    assert s["time_lost_where_b_is_slower_ms"] - s["time_won_where_b_is_faster_ms"] == pytest.approx(
        s["total_ms"]["B"] - s["total_ms"]["A"], **TIGHT)


# --- the stage, end to end on files ----------------------------------------------------------------

SM_MHZ = 1500.0


def _inspector_layer(name, ltype, fmt):
    return {"Name": name, "LayerType": ltype, "Inputs": [{"Name": "in", "Format/Datatype": fmt}],
            "Outputs": [{"Name": "out", "Format/Datatype": fmt}], "TacticName": f"tactic_{ltype}"}


def _write_engine(folder: Path, rows, e2e_ms, onnx_path=None, sidecar_name="engine.plan.json"):
    folder.mkdir(parents=True, exist_ok=True)
    fp16 = "Row major linear FP16 format"
    meas = {"measured": {"batch_size": BATCH, "latency_ms": {"median": e2e_ms}, "throughput_samples_s": 1234.5,
                         "gpu_telemetry": {"sm_clock_mhz": {"median": SM_MHZ}}},
            "engine_layers": rows}
    side = {"precision": {"name": "fp16", "weight_bytes": 2, "activation_bytes": 2, "peak": "fp16_tensor"},
            "hardware_name": "h200",
            "layers": [_inspector_layer(r["name"], r["layer_type"], fp16) for r in rows]}
    (folder / "measurement.json").write_text(json.dumps(meas))
    (folder / sidecar_name).write_text(json.dumps(side))
    onnx_path = onnx_path or folder / "model.onnx"
    if not Path(onnx_path).exists():
        onnx.save(residual(), str(onnx_path))
    return folder / "measurement.json", folder / sidecar_name, Path(onnx_path)


ROWS_A = [
    {"name": "conv", "layer_type": "CaskConvolution", "measured_ms": 0.030, "onnx_nodes": ["conv"]},
    {"name": "relu", "layer_type": "PointWiseV2", "measured_ms": 0.010, "onnx_nodes": ["relu"]},
    {"name": "add", "layer_type": "PointWiseV2", "measured_ms": 0.020, "onnx_nodes": ["add"]},
]
ROWS_B = [
    {"name": REFORMAT, "layer_type": "Reformat", "measured_ms": 0.005, "onnx_nodes": []},
    {"name": FUSED, "layer_type": "CaskConvolution", "measured_ms": 0.020, "onnx_nodes": ["conv", "relu"]},
    {"name": "add", "layer_type": "PointWiseV2", "measured_ms": 0.045, "onnx_nodes": ["add"]},
]


@pytest.fixture(scope="module")
def h200():
    spec, cfg = load_hardware("h200"), load_hardware_config("h200")
    unit = cfg.units["fp16_tensor"]
    # the loaded peak is the hardware file's formula: clock x SMs x units x FMA/clk x 2
    assert spec.peaks["fp16_tensor"].ops_per_s_dense == pytest.approx(
        unit.clock_mhz * 1e6 * cfg.sm_count * unit.units_per_sm * unit.fma_per_clk_per_unit * 2, rel=1e-12)
    assert spec.memory_bandwidth_bytes_s == pytest.approx(cfg.memory_bandwidth_gbs * 1e9, rel=1e-12)
    return spec, unit.clock_mhz


def test_stage_two_engines_end_to_end(tmp_path, h200):
    from pipeline.explain.stage import EngineRun, ExplainInputs, ExplainSettings, run

    spec, rated_mhz = h200
    onnx_path = tmp_path / "model.onnx"
    ma, sa, _ = _write_engine(tmp_path / "a", ROWS_A, 0.062, onnx_path)
    mb, sb, _ = _write_engine(tmp_path / "b", ROWS_B, 0.069, onnx_path)
    out = run(ExplainInputs(EngineRun(ma, sa, onnx_path, "dense16"), EngineRun(mb, sb, onnx_path, "fused16")),
              ExplainSettings(), tmp_path / "out")

    res = json.loads(out.results.read_text())
    assert out.results == tmp_path / "out" / "explain.json"
    assert [e["label"] for e in res["engines"]] == ["dense16", "fused16"]
    peak = spec.peaks["fp16_tensor"].ops_per_s_dense * SM_MHZ / rated_mhz
    bw = spec.memory_bandwidth_bytes_s
    for e in res["engines"]:
        assert e["hardware"] == "h200" and e["batch_size"] == BATCH
        assert e["rates"]["peak_ops_s"] == pytest.approx(peak, rel=1e-12)
        assert e["rates"]["bandwidth_bytes_s"] == bw and e["rates"]["peak_key"] == "fp16_tensor"
        assert "_gaps" not in e

    a_layers = {ly["name"]: ly for ly in res["engines"][0]["layers"]}
    conv = a_layers["conv"]
    # conv alone in fp16: weights 144 x 2 + x 512 x 2 read + c 512 x 2 written = 2336 bytes
    assert conv["flops"] == CONV_FLOPS and conv["bytes"] == 288 + 1024 + 1024
    assert conv["compute_s"] == pytest.approx(CONV_FLOPS / peak, rel=1e-12)
    assert conv["memory_s"] == pytest.approx(2336 / bw, rel=1e-12)
    assert conv["bound_s"] == pytest.approx(max(CONV_FLOPS / peak, 2336 / bw), rel=1e-12)
    assert conv["cause"] == "memory" and conv["precision"] == "fp16"
    assert conv["tactic"] == "tactic_CaskConvolution"
    assert a_layers["add"]["bytes"] == 3 * ELEMS * 2  # r, x read; z written

    b_layers = {ly["name"]: ly for ly in res["engines"][1]["layers"]}
    fused = b_layers[FUSED]
    # conv + relu fused: weights 288 + x 1024 + r 1024 (read by add outside)
    assert fused["flops"] == CONV_FLOPS + RELU_FLOPS and fused["bytes"] == 288 + 2048
    assert fused["bound_s"] == pytest.approx(max(37376 / peak, 2336 / bw), rel=1e-12)
    assert b_layers[REFORMAT]["cause"] == "overhead" and b_layers[REFORMAT]["detail"].startswith("reformat")

    ba = res["engines"][0]["breakdown"]
    assert ba["layers_sum_s"] == pytest.approx(60e-6, rel=1e-12)
    assert ba["end_to_end_s"] == pytest.approx(62e-6, rel=1e-12) and ba["adds_up"] is True  # 2 <= 3.1
    bb = res["engines"][1]["breakdown"]
    assert bb["layers_sum_s"] == pytest.approx(70e-6, rel=1e-12) and bb["adds_up"] is True  # 1 <= 3.45

    d = res["diff"]
    assert d["labels"] == ["dense16", "fused16"]
    assert d["summary"]["total_ms"] == pytest.approx({"dense16": 0.060, "fused16": 0.070}, rel=1e-12)
    assert d["summary"]["reformat_ms"]["fused16"] == pytest.approx(0.005, rel=1e-12)
    rows = d["rows"]
    assert len(rows) == 2 and rows[0]["nodes"] == ["add"]
    assert rows[0]["delta_ms"] == pytest.approx(0.025, rel=1e-9)
    assert sorted(rows[1]["nodes"]) == ["conv", "relu"]
    assert rows[1]["fused16"]["reformats"]["count"] == 1
    assert rows[1]["delta_ms"] == pytest.approx(-0.015, rel=1e-9)

    md = out.markdown.read_text()
    assert out.markdown == tmp_path / "out" / "explain.md"
    assert "dense16" in md and "fused16" in md and "## fused16 against dense16" in md
    png = tmp_path / "out" / "explain_diff.png"
    assert out.figures == [png] and png.stat().st_size > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stage_same_labels_get_a_and_b(tmp_path):
    from pipeline.explain.stage import EngineRun, ExplainInputs, ExplainSettings, run

    onnx_path = tmp_path / "model.onnx"
    ma, sa, _ = _write_engine(tmp_path / "a", ROWS_A, 0.06, onnx_path)
    mb, sb, _ = _write_engine(tmp_path / "b", ROWS_B, 0.07, onnx_path)
    out = run(ExplainInputs(EngineRun(ma, sa, onnx_path), EngineRun(mb, sb, onnx_path)), ExplainSettings(),
              tmp_path / "out")
    res = json.loads(out.results.read_text())
    assert res["diff"]["labels"] == ["fp16 (A)", "fp16 (B)"]


def test_stage_one_engine_writes_no_diff(tmp_path):
    from pipeline.explain.stage import EngineRun, ExplainInputs, ExplainSettings, run

    m, s, o = _write_engine(tmp_path / "a", ROWS_A, 0.09)
    out = run(ExplainInputs(EngineRun(m, s, o, "only")), ExplainSettings(), tmp_path / "out")
    res = json.loads(out.results.read_text())
    assert len(res["engines"]) == 1 and "diff" not in res and out.figures == []
    assert not (tmp_path / "out" / "explain_diff.png").exists()
    b = res["engines"][0]["breakdown"]
    assert b["adds_up"] is False  # 0.060 ms of layers against 0.090 ms end to end
    assert "0.060 ms against 0.090 ms" in out.markdown.read_text()


def test_stage_missing_measurement_raises(tmp_path):
    from pipeline.explain.stage import EngineRun, ExplainInputs, ExplainSettings, run

    m, s, o = _write_engine(tmp_path / "a", ROWS_A, 0.06)
    with pytest.raises(PipelineError, match="measurement not found"):
        run(ExplainInputs(EngineRun(tmp_path / "nope.json", s, o)), ExplainSettings(), tmp_path / "out")


def test_stage_measurement_without_engine_layers_raises(tmp_path):
    from pipeline.explain.stage import EngineRun, ExplainInputs, ExplainSettings, run

    m, s, o = _write_engine(tmp_path / "a", ROWS_A, 0.06)
    meas = json.loads(m.read_text())
    del meas["engine_layers"]
    m.write_text(json.dumps(meas))
    with pytest.raises(PipelineError, match="no per-layer times"):
        run(ExplainInputs(EngineRun(m, s, o)), ExplainSettings(), tmp_path / "out")
    m.write_text("{not json")
    with pytest.raises(PipelineError, match="not JSON"):
        run(ExplainInputs(EngineRun(m, s, o)), ExplainSettings(), tmp_path / "out")


def test_stage_missing_onnx_and_missing_hardware_raise(tmp_path):
    from pipeline.explain.stage import EngineRun, ExplainInputs, ExplainSettings, run

    m, s, o = _write_engine(tmp_path / "a", ROWS_A, 0.06)
    with pytest.raises(PipelineError, match="ONNX model not found"):
        run(ExplainInputs(EngineRun(m, s, tmp_path / "missing.onnx")), ExplainSettings(), tmp_path / "out")
    side = json.loads(s.read_text())
    del side["hardware_name"]
    s.write_text(json.dumps(side))
    with pytest.raises(PipelineError, match="names no hardware"):
        run(ExplainInputs(EngineRun(m, s, o)), ExplainSettings(), tmp_path / "out")


# --- python -m pipeline.explain --------------------------------------------------------------------

def test_cli_on_run_folders(tmp_path, capsys):
    from pipeline.explain.__main__ import main

    _write_engine(tmp_path / "runA", ROWS_A, 0.06, sidecar_name="x.plan.json")
    _write_engine(tmp_path / "runB", ROWS_B, 0.07, sidecar_name="x.plan.json")
    out = tmp_path / "explained"
    rc = main([str(tmp_path / "runA"), str(tmp_path / "runB"), "--labels", "A16", "B16", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "explain.json").read_text())
    assert [e["label"] for e in res["engines"]] == ["A16", "B16"]
    assert res["engines"][0]["files"]["onnx"] == str(tmp_path / "runA" / "model.onnx")
    assert res["engines"][1]["files"]["sidecar"] == str(tmp_path / "runB" / "x.plan.json")
    assert (out / "explain.md").is_file() and (out / "explain_diff.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


def test_cli_single_run_folder(tmp_path):
    from pipeline.explain.__main__ import main

    _write_engine(tmp_path / "run", ROWS_A, 0.06, sidecar_name="x.plan.json")
    out = tmp_path / "o"
    assert main([str(tmp_path / "run"), "--out", str(out)]) == 0
    res = json.loads((out / "explain.json").read_text())
    assert len(res["engines"]) == 1 and res["engines"][0]["label"] == "fp16"
    assert (out / "explain.md").is_file()


def test_cli_folder_without_measurement_returns_2(tmp_path, capsys):
    from pipeline.explain.__main__ import main

    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "x.plan.json").write_text("{}")
    assert main([str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "no measurement.json" in capsys.readouterr().err
    assert not (tmp_path / "o" / "explain.json").exists()


def test_cli_more_than_two_runs_returns_2(tmp_path):
    from pipeline.explain.__main__ import main

    for n in ("a", "b", "c"):
        _write_engine(tmp_path / n, ROWS_A, 0.06, sidecar_name="x.plan.json")
    assert main([str(tmp_path / n) for n in ("a", "b", "c")] + ["--out", str(tmp_path / "o")]) == 2


def test_qdq_run_as_a_reformat_is_a_standalone_qdq_and_counted_as_conversion():
    from pipeline.explain.gap import Rates, layer_gaps

    costs = graph_costs(_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [("x", ["N", 8])],
                               [("y", ["N", 8])], {}), 2)
    rows = [{"name": "y_QuantizeLinear", "layer_type": "Reformat", "measured_ms": 0.004, "onnx_nodes": []},
            {"name": "relu", "layer_type": "PointWise", "measured_ms": 0.02, "onnx_nodes": ["relu"]}]
    q, relu = layer_gaps(rows, costs, Rates(1e12, 1e7))  # 128 bytes: a 12.8 us memory bound
    assert q.cause == "overhead" and q.detail.startswith("standalone Q/DQ, run as a reformat")
    assert relu.cause == "memory"
    (row,) = engine_diff([relu], [q, relu], ("a", "b"))  # the Q/DQ joins the next mapped layer's piece
    assert row["b"]["reformats"] == {"count": 1, "ms": pytest.approx(0.004)} and row["b"]["standalone_qdq"] == 1
    assert row["delta_ms"] == pytest.approx(0.004)


def test_precision_note_says_when_no_layer_ran_in_int8():
    from pipeline.explain.markdown import _precision_note

    conv = {"cause": "compute", "measured_s": 3e-3, "precision": "fp32", "detail": "FLOPs / peak"}
    dq = {"cause": "overhead", "measured_s": 1e-3, "precision": "int8<->fp32",
          "detail": "standalone Q/DQ (not fused into a neighbour)"}
    (text, _) = _precision_note({"precision": {"name": "int8"}, "layers": [conv, dq]})
    assert "0% of the compute" in text and "1.000 ms" in text and "No layer computed in INT8" in text
    (text, _) = _precision_note({"precision": {"name": "int8"}, "layers": [dict(conv, precision="int8"), dq]})
    assert "100% of the compute" in text and "No layer" not in text
    assert _precision_note({"precision": {"name": "fp16"}, "layers": [conv]}) == []


def test_planned_int8_layers_that_ran_wider_are_flagged():
    from pipeline.explain.gap import Rates, layer_gaps, planned_int8
    from pipeline.explain.markdown import _precision_note

    w = np.ones((4, 4), np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["h"], name="mm_int8"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="mm_float")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                               numpy_helper.from_array(np.array(0, np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    costs = graph_costs(model, 2)
    assert planned_int8(costs) == {"mm_int8"}
    rows = [{"name": "L1", "layer_type": "Gemm", "measured_ms": 0.01, "onnx_nodes": ["dq", "mm_int8"]},
            {"name": "L2", "layer_type": "Gemm", "measured_ms": 0.01, "onnx_nodes": ["mm_float"]}]
    insp = {"L1": {"Inputs": [{"Format/Datatype": "Row major linear FP32"}]},
            "L2": {"Inputs": [{"Format/Datatype": "Row major linear FP16 format"}]}}
    l1, l2 = layer_gaps(rows, costs, Rates(1e12, 1e9), insp)
    assert (l1.planned, l1.precision, l1.fell_back) == ("int8", "fp32", True)
    assert (l2.planned, l2.fell_back) == (None, False)  # never planned INT8: FP16 is no fallback
    text = _precision_note({"precision": {"name": "int8"}, "layers": [l1.to_dict(), l2.to_dict()]})[0]
    assert text.startswith("Planned vs actual: 1 layer(s) planned INT8") and "1 ran wider: L1 (fp32" in text


def test_the_main_command_explains_its_measured_layers_in_the_report(tmp_path):
    from tests.test_pipeline_e2e import FAST, _run

    res = _run(["precision=int8", "model=digits_cnn", "data=digits", "backend=onnxruntime", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    ex = json.loads((run / "explain.json").read_text())["engines"][0]
    assert ex["backend"] == "onnxruntime" and ex["sparsity"] is None  # sparse Tensor Cores are a GPU matter
    covered = {n for ly in ex["layers"] for n in ly["onnx_nodes"]}
    qdq = onnx.load(str(next(run.glob("*.int8.qdq.onnx"))))
    convs = {n.name for n in qdq.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}
    assert convs <= covered  # every compute node of the measured model is tied to a measured row
    report = json.loads((run / "report.json").read_text())
    assert report["explain"]["engines"][0]["planned_int8"] == len(convs)
    assert "Per-layer gap to the roofline" in (run / "report.md").read_text()


def test_profile_compare_to_puts_the_engine_diff_in_the_report(tmp_path):
    from tests.test_pipeline_e2e import FAST, _run

    base = _run(["precision=fp32", "model=digits_cnn", "data=digits", "backend=onnxruntime", *FAST], tmp_path / "a")
    assert base.returncode == 0, base.stderr[-3000:]
    res = _run(["precision=int8", "model=digits_cnn", "data=digits", "backend=onnxruntime", *FAST,
                f"profile.compare_to={tmp_path / 'a' / 'run'}"], tmp_path / "b")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "b" / "run"
    ex = json.loads((run / "explain.json").read_text())
    assert [e["label"] for e in ex["engines"]] == ["fp32", "int8"] and ex["diff"]["labels"] == ["fp32", "int8"]
    rows, summary = ex["diff"]["rows"], ex["diff"]["summary"]
    for i, lab in enumerate(("fp32", "int8")):  # every measured layer of each run lands in exactly one diff row
        assert sum(r[lab]["ms"] for r in rows) == pytest.approx(summary["total_ms"][lab], rel=1e-9)
        assert summary["total_ms"][lab] == pytest.approx(ex["engines"][i]["breakdown"]["layers_sum_s"] * 1e3, rel=1e-6)
    assert (run / "explain_diff.png").is_file()
    report = json.loads((run / "report.json").read_text())["explain"]["diff"]
    assert report["labels"] == ["fp32", "int8"] and 0 < len(report["top"]) <= len(rows)
    assert report["top"][0]["delta_ms"] == pytest.approx(rows[0]["delta_ms"])  # largest difference first
    md = (run / "report.md").read_text()
    assert "Engine diff: int8 against fp32" in md and "largest differences" in md
    # a folder without a profiled engine: this run is explained alone, and the run says why
    bad = _run(["precision=fp32", "model=digits_cnn", "data=digits", "backend=onnxruntime", *FAST,
                f"profile.compare_to={tmp_path / 'nowhere'}"], tmp_path / "c")
    assert bad.returncode == 0, bad.stderr[-3000:]
    assert "profile.compare_to=" in bad.stdout and "left out" in bad.stdout
    assert "diff" not in json.loads((tmp_path / "c" / "run" / "explain.json").read_text())


def test_sparsity_lines_say_what_the_builder_told_and_what_it_did_not():
    from pipeline.explain.markdown import _engine

    def text(sparsity):
        e = {"label": "2:4", "hardware": "h200", "batch_size": 32, "tensorrt": "8.6.0", "end_to_end_ms": 3.1,
             "breakdown": {"layers_sum_s": 3e-3, "bound_sum_s": 1e-3, "by_cause": {}, "share_of_gap": {}},
             "rates": {"peak_ops_s": 1e15, "peak_key": "fp16_tensor", "clock_note": "rated", "bandwidth_bytes_s": 4.8e12},
             "layers": [], "sparsity": sparsity}
        return "\n".join(_engine(e, 5))

    # a Myelin-only engine built with sparse weights: no builder line exists, and the text says so
    myelin = text({"layers": [], "myelin_layers_not_predicted": 1, "built": {"eligible": 0, "picked": [], "picked_ms": 0}})
    assert "not predicted for 1 Myelin layer(s)" in myelin and "printed no sparsity line" in myelin
    assert "timed slower" not in myelin
    # eligible layers, none kept: the builder timed every sparse tactic slower
    kept_none = text({"layers": [], "built": {"eligible": 9, "picked": [], "picked_ms": 0}})
    assert "found 9 layer(s) eligible" in kept_none and "every sparse tactic timed slower" in kept_none
    # nothing eligible (dense weights): no claim about timing
    dense = text({"layers": [], "built": {"eligible": 0, "picked": [], "picked_ms": 0}})
    assert "found 0 layer(s) eligible" in dense and "timed slower" not in dense
    picked = text({"layers": [], "built": {"eligible": 2, "picked": ["conv_a"], "picked_ms": 0.2}})
    assert "kept a sparse tactic in 1, which run 0.200 ms: conv_a" in picked
