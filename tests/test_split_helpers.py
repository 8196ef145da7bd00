"""The helpers that roofline, graph_costs, plan_qdq, quantize_onnx and compare_calibrations are made of."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from onnx_models import attention, small_cnn
from pipeline.analyze.flops import _is_folded, graph_costs
from pipeline.analyze.roofline import _bound_kind, _by_category
from pipeline.graph import to_graph
from pipeline.graph.shapes import tensor_info
from pipeline.quantize.qdq import _InputRules
from pipeline.quantize.report import _best, _spread, _variant_jobs


def test_bound_kind_none_only_without_work_and_ties_are_compute():
    assert _bound_kind(0.0, 0.0) == "none"
    assert _bound_kind(2e-6, 2e-6) == "compute"
    assert _bound_kind(1e-6, 3e-6) == "memory"
    assert _bound_kind(0.0, 1e-9) == "memory"


def test_by_category_sums_shares_and_sorts_by_time_then_name():
    groups = [
        {"category": "conv", "nodes": ["a", "b"], "flops": 30.0, "bytes": 8.0, "bound_s": 1.0, "bound": "compute"},
        {"category": "pointwise", "nodes": ["c"], "flops": 10.0, "bytes": 4.0, "bound_s": 2.0, "bound": "memory"},
        {"category": "conv", "nodes": ["d"], "flops": 60.0, "bytes": 2.0, "bound_s": 1.0, "bound": "memory"},
        {"category": "norm", "nodes": ["e"], "flops": 0.0, "bytes": 0.0, "bound_s": 0.0, "bound": "none"},
    ]
    rows = _by_category(groups, total_flops=100.0, predicted=4.0)
    assert [r.category for r in rows] == ["conv", "pointwise", "norm"]  # conv and pointwise tie at 2 s: by name
    conv = rows[0]
    assert (conv.layers, conv.groups, conv.flops, conv.bytes) == (3, 2, 90.0, 10.0)
    assert conv.flops_share == pytest.approx(0.9) and conv.time_share == pytest.approx(0.5)
    assert (conv.memory_bound_groups, conv.compute_bound_groups) == (1, 1)
    assert (rows[2].memory_bound_groups, rows[2].compute_bound_groups) == (0, 0)
    assert _by_category(groups, 0.0, 0.0)[0].flops_share == 0.0


def _shape_then_random() -> onnx.ModelProto:
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("RandomNormalLike", ["x"], ["r"], name="rand"),
             helper.make_node("Add", ["x", "r"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("s", TensorProto.INT64, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shape_of_known_tensor_folds_random_op_never_does():
    model = _shape_then_random()
    g = tensor_info(onnx.shape_inference.infer_shapes(model))
    g.constants = set()
    shape, rand, add = model.graph.node
    assert _is_folded(shape, g)
    assert not _is_folded(rand, g)
    g.constants = {"x"}  # a random op with constant inputs still runs at inference time
    assert not _is_folded(rand, g)
    costs = graph_costs(model)
    assert [layer.category for layer in costs.layers][0] == "constant"
    assert "s" in costs.constants and "r" not in costs.constants


def test_input_rules_exclusion_float_check_and_bmm():
    graph = to_graph(attention())
    qk = next(i for i, n in enumerate(graph.nodes) if n.name == "qk")
    rules = _InputRules({}, None, ["q*"], quantize_bmm=True)
    assert rules.excluded("qk") and not rules.excluded("av")
    assert rules.skip_reason(qk, graph.nodes[qk]) == "excluded by pattern"
    rules = _InputRules({}, None, [], quantize_bmm=False)
    assert "quantize_bmm=false" in rules.skip_reason(qk, graph.nodes[qk])
    rules = _InputRules({}, {"q"}, [], quantize_bmm=True)  # "kt" is not listed as float
    assert rules.skip_reason(qk, graph.nodes[qk]) == "non-float input"
    assert _InputRules({}, None, [], quantize_bmm=True).skip_reason(qk, graph.nodes[qk]) is None


def test_input_rules_weights_are_float_by_data_type():
    model = small_cnn()
    graph = to_graph(model)
    types = {i.name: i.data_type for i in model.graph.initializer}
    conv = next(n for n in graph.nodes if n.op == "Conv")
    rules = _InputRules(types, set(), [], quantize_bmm=True)
    assert rules.is_weight(conv.inputs[1]) and rules.is_float(conv.inputs[1])
    assert not rules.is_weight(conv.inputs[0]) and not rules.is_float(conv.inputs[0])
    assert not rules.from_constant_node(conv.inputs[1])


def test_variant_jobs_add_one_asymmetric_run():
    assert _variant_jobs(["max", "mse"], ["per_channel", "per_tensor"], asymmetric=False) == [
        ("max", "per_channel", True), ("max", "per_tensor", True),
        ("mse", "per_channel", True), ("mse", "per_tensor", True)]
    assert _variant_jobs(["max", "entropy"], ["per_tensor"], asymmetric=True)[-1] == ("entropy", "per_tensor", False)
    assert _variant_jobs(["mse", "max"], ["per_tensor"], asymmetric=True)[-1] == ("mse", "per_tensor", False)


def test_spread_ignores_zero_thresholds_and_best_keeps_the_first_of_ties():
    amaxes = {"max": {"a": 8.0, "b": 0.0}, "mse": {"a": 2.0, "b": 0.0}, "entropy": {"a": 0.0, "b": 0.0}}
    assert _spread(amaxes, "a") == 4.0
    assert _spread(amaxes, "b") == 0.0
    rows = [{"label": k, "granularity": "per_tensor", "scheme": "symmetric int8",
             "metrics": {"output_cosine": v}} for k, v in (("max", 0.9), ("mse", 0.99), ("entropy", 0.99))]
    assert _best(rows, "output_cosine") == {"label": "mse", "granularity": "per_tensor",
                                           "scheme": "symmetric int8", "output_cosine": 0.99}
    assert _best([], "output_cosine") is None
