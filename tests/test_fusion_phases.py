"""Each phase of pipeline.analyze.fusion.groups_from_costs on a graph made to exercise it: splitting a
group where a tensor is materialised, placing views and folded shape reads, pointwise ops after ops that take
no epilogue, and GraphCosts without connectivity."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnx_models import make_model, weights
from pipeline.analyze.flops import Cost, GraphCosts, LayerCost
from pipeline.analyze.fusion import fusion_groups, groups_from_costs
from pipeline.core.config import PrecisionConfig

FP16 = PrecisionConfig("fp16", 2.0, 2.0, "fp16_tensor")


def _conv(x, w, y, name):
    return helper.make_node("Conv", [x, w], [y], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def test_group_is_split_when_a_later_reader_lands_elsewhere():
    """tanh joins conv (its sibling sigmoid, later in graph order, might still join); sigmoid cannot
    (conv's last output is then tanh's), so ``a`` is written after all and conv + tanh splits."""
    nodes = [
        _conv("x", "w", "a", "conv"),
        helper.make_node("Tanh", ["a"], ["t"], name="tanh"),
        helper.make_node("Sigmoid", ["a"], ["s"], name="sigmoid"),
    ]
    model = make_model(nodes, [("x", [1, 8, 8, 8])], [("t", [1, 8, 8, 8]), ("s", [1, 8, 8, 8])],
                       {"w": weights(8, 8, 3, 3)})
    groups = fusion_groups(model, FP16)
    assert [g.name for g in groups] == ["conv", "tanh", "sigmoid"]
    assert [(g.inputs, g.outputs) for g in groups] == [(("x",), ("a",)), (("a",), ("t",)), (("a",), ("s",))]
    assert [g.category for g in groups] == ["conv", "elementwise", "elementwise"]
    assert [g.activation_bytes for g in groups] == [2048, 2048, 2048]  # 512 elements in + 512 out, fp16


def test_folded_shape_read_does_not_materialise_and_stands_alone():
    """Shape(c) of a known shape is folded to a constant: it reads no data, so conv + relu still fuse
    (c stays on chip); read by nothing real, the Shape node is a zero-byte group of its own."""
    nodes = [
        _conv("x", "w", "c", "conv"),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
        helper.make_node("Shape", ["c"], ["shp"], name="shape"),
    ]
    model = make_model(nodes, [("x", [1, 8, 8, 8])], [("y", [1, 8, 8, 8])], {"w": weights(8, 8, 3, 3)})
    model.graph.output.append(helper.make_tensor_value_info("shp", TensorProto.INT64, [4]))
    fused, shape = fusion_groups(model, FP16)
    assert fused.name == "conv + relu" and fused.nodes == ("conv", "relu")
    assert (fused.inputs, fused.outputs) == (("x",), ("y",))
    assert fused.activation_bytes == (512 + 512) * 2 == 2048
    assert (shape.name, shape.category, shape.node_indices) == ("shape", "constant", (2,))
    assert (shape.inputs, shape.outputs, shape.bytes) == ((), (), 0)


def test_views_of_a_graph_input_join_their_first_real_reader():
    """Reshape -> Flatten -> Gemm on a graph input: the views have no producer to join, so they look
    through each other to the Gemm; the group reads x once (the views' root) and writes y."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w", "b"], ["y"], name="gemm", transB=1),
    ]
    inits = {"shape": np.array([2, 4, 8], np.int64), "w": weights(10, 32), "b": weights(10, seed=1)}
    model = make_model(nodes, [("x", [2, 32])], [("y", [2, 10])], inits)
    (g,) = fusion_groups(model, FP16)
    assert g.name == "reshape + flatten + gemm" and g.anchor == "gemm" and g.category == "gemm"
    assert (g.inputs, g.outputs) == (("x",), ("y",))
    assert g.activation_bytes == (64 + 20) * 2 == 168
    assert g.macs == 2 * 10 * 32


def test_pointwise_after_an_op_without_epilogue_fusion_is_its_own_kernel():
    """MaxPool takes no pointwise epilogue here: the pool writes p and the Relu reads it back."""
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Relu", ["p"], ["y"], name="relu"),
    ]
    model = make_model(nodes, [("x", [1, 4, 8, 8])], [("y", [1, 4, 4, 4])], {})
    pool, relu = fusion_groups(model, FP16)
    assert (pool.name, pool.inputs, pool.outputs) == ("pool", ("x",), ("p",))
    assert (relu.name, relu.inputs, relu.outputs) == ("relu", ("p",), ("y",))
    assert (pool.activation_bytes, relu.activation_bytes) == ((256 + 64) * 2, (64 + 64) * 2)


def test_costs_without_connectivity_give_one_group_per_layer():
    layers = [LayerCost("conv", "Conv", "conv", 100.0, 50.0, 8.0, 16.0, 24.0, 100 / 24),
              LayerCost("relu", "Relu", "elementwise", 4.0, 0.0, 0.0, 32.0, 32.0, 4 / 32)]
    groups = groups_from_costs(GraphCosts(layers, Cost(), 8.0, 48.0))
    assert [(g.index, g.name, g.nodes, g.node_indices, g.anchor_op) for g in groups] == [
        (0, "conv", ("conv",), (0,), "Conv"), (1, "relu", ("relu",), (1,), "Relu")]
    assert [(g.flops, g.macs, g.weight_bytes, g.activation_bytes) for g in groups] == [
        (100.0, 50.0, 8.0, 16.0), (4.0, 0.0, 0.0, 32.0)]
