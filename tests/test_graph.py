"""The ONNX graph layer (pipeline.graph): io, edges, shapes, folding, patterns and edits, on tiny
graphs built with onnx.helper; folding results checked against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.errors import PipelineError
from pipeline.graph import (
    Constness,
    attention_blocks,
    attention_matmuls,
    consumer_slots,
    consumers_of,
    conv_chains,
    conv_residual_adds,
    edges_of,
    ffn_blocks,
    first_compute_node,
    gelu_activations,
    last_compute_node,
    load_model,
    node_positions,
    producer_of,
    save_model,
    to_graph,
    to_model,
)
from pipeline.graph.edit import NameSource, insert_qdq_pair
from pipeline.graph.fold import fold_constants, fold_initializer_identities
from pipeline.graph.shapes import infer_shapes, infer_with_folding, substitute_dims, tensor_info
from tests.onnx_models import attention, make_model, mlp, small_cnn, weights
from tests.test_quant_placement import transformer_block

mk = helper.make_node


def _run(model: onnx.ModelProto, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _names(nodes):
    return [n.name for n in nodes]


# --- io -------------------------------------------------------------------------------------------

def test_save_with_external_data_and_load_with_or_without_weights(tmp_path):
    model = small_cnn(channels=64)
    path = save_model(model, tmp_path / "m.onnx", external_data=True)
    assert (tmp_path / "m.onnx.data").is_file()
    assert model.graph.initializer[0].raw_data  # the caller's model keeps its data
    full = load_model(path)
    assert numpy_helper.to_array(full.graph.initializer[0]).shape == (64, 3, 3, 3)
    bare = load_model(path, load_weights=False)
    w = next(t for t in bare.graph.initializer if t.name == "w")
    assert w.data_location == TensorProto.EXTERNAL and list(w.dims) == [64, 3, 3, 3]
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(full, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-6)


def test_load_of_a_missing_file_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match="cannot read ONNX model"):
        load_model(tmp_path / "nope.onnx")


def test_graph_round_trip_keeps_node_order_and_model_fields():
    model = small_cnn()
    model.producer_name = "tests"
    model.ir_version = 8
    back = to_model(to_graph(model), like=model)
    assert [n.name for n in back.graph.node] == [n.name for n in model.graph.node]
    assert (back.ir_version, back.producer_name) == (8, "tests")
    onnx.checker.check_model(back)


def test_export_keeps_big_weights_exact_and_the_graph_intact():
    big = weights(128, 160)  # above the size exported as a stub and filled in afterwards
    nodes = [mk("MatMul", ["x", "w"], ["m"]), mk("Transpose", ["w"], ["wt"]), mk("MatMul", ["m", "wt"], ["y"])]
    model = make_model(nodes, [("x", [2, 128])], [("y", [2, 128])], {"w": big})
    graph = to_graph(model)
    back = to_model(graph)
    (w,) = [t for t in back.graph.initializer if t.name == "w"]
    np.testing.assert_array_equal(numpy_helper.to_array(w), big)
    np.testing.assert_array_equal(graph.tensors()["w"].values, big)  # the graph still holds the data
    x = weights(2, 128, seed=3)
    np.testing.assert_allclose(_run(back, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-6)


# --- edges ----------------------------------------------------------------------------------------

def test_producers_consumers_and_positions():
    graph = to_graph(small_cnn())
    t = graph.tensors()
    assert producer_of(t["bn"]).name == "bn" and producer_of(t["x"]) is None
    assert _names(consumers_of(t["r"])) == ["pool"]
    assert [(n.name, k) for n, k in consumer_slots(t["f"])] == [("fc", 0)]
    pos = node_positions(graph)
    assert [pos[id(n)] for n in graph.nodes] == list(range(7))


def test_constness_follows_weights_not_shapes():
    nodes = [mk("DequantizeLinear", ["wq", "s"], ["w"]), mk("Transpose", ["w"], ["wt"]),
             mk("MatMul", ["x", "wt"], ["y0"]), mk("Shape", ["x"], ["shp"]),
             mk("Concat", ["shp"], ["shp2"], axis=0), mk("Reshape", ["y0", "shp2"], ["y"])]
    model = make_model(nodes, [("x", [2, 4])], [("y", None)],
                       {"wq": np.ones((4, 4), np.int8), "s": np.array(0.5, np.float32)}, check=False)
    t = to_graph(model).tensors()
    const = Constness()
    assert const(t["w"]) and const(t["wt"])
    assert not const(t["shp"]) and not const(t["shp2"]) and not const(t["x"]) and not const(t["y0"])


def test_edges_of_name_lists():
    e = edges_of([(("x",), ("a",)), (("a", "", "a"), ("b",)), (("b",), ("y", ""))])
    assert e.producer == {"a": 0, "b": 1, "y": 2}
    assert e.consumers == {"x": [0], "a": [1, 1], "b": [2]}


# --- shapes and folding ---------------------------------------------------------------------------

def _runtime_reshape_model() -> onnx.ModelProto:
    """x[batch, 4, 6] -> Reshape(x, Concat(Shape(x)[0], -1)) -> y[batch, 24]: the target is computed at run time."""
    nodes = [mk("Shape", ["x"], ["s"]), mk("Gather", ["s", "zero"], ["b"], axis=0),
             mk("Unsqueeze", ["b", "axes"], ["b1"]), mk("Concat", ["b1", "minus1"], ["target"], axis=0),
             mk("Reshape", ["x", "target"], ["y"]), mk("Size", ["y"], ["n"])]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    return make_model(nodes, [("x", ["batch", 4, 6])], [("y", None), ("n", None)], inits,
                      output_types={"n": TensorProto.INT64})


def test_folding_makes_run_time_shapes_static():
    model = _runtime_reshape_model()
    effective, notes = substitute_dims(model, 3, {})
    assert effective == 3 and notes == []
    plain = tensor_info(infer_shapes(model))
    inferred, weights_ = infer_with_folding(model)
    info = tensor_info(inferred)
    assert info.shape("y") == (3, 24) and not weights_
    assert plain.shapes.get("y") in (None, (3, 24))  # what onnx alone gets; folding must get it
    # The folded Size of y is a constant with ONNX Runtime's value.
    value = numpy_helper.to_array(next(t for t in inferred.graph.initializer if t.name == "n"))
    x = np.zeros((3, 4, 6), np.float32)
    assert int(value) == int(_run(model, {"x": x})[1])


def test_symbolic_dims_without_values_are_reported():
    model = make_model([mk("Relu", ["x"], ["y"])], [("x", ["batch", "seq"])], [("y", ["batch", "seq"])])
    _, notes = substitute_dims(model, 2, {})
    assert "seq" in notes[0]
    info = tensor_info(infer_with_folding(model)[0])
    assert info.shapes.get("y") is None
    model = make_model([mk("Relu", ["x"], ["y"])], [("x", ["batch", "seq"])], [("y", ["batch", "seq"])])
    substitute_dims(model, 2, {"seq": 5})
    assert tensor_info(infer_with_folding(model)[0]).shape("y") == (2, 5)


def test_fold_constants_matches_onnx_runtime_and_keeps_random_ops():
    nodes = [mk("Add", ["c1", "c2"], ["c3"]), mk("Sqrt", ["c3"], ["c4"]), mk("Mul", ["x", "c4"], ["m"]),
             mk("RandomUniform", [], ["r"], shape=[4], dtype=1, seed=1.0), mk("Add", ["m", "r"], ["y"])]
    inits = {"c1": weights(4, seed=1) ** 2, "c2": np.full(4, 2.0, np.float32)}
    model = make_model(nodes, [("x", [4])], [("y", [4])], inits)
    folded_model, folded = fold_constants(model)
    assert "c4" in folded and "r" not in folded
    np.testing.assert_allclose(folded["c4"], np.sqrt(inits["c1"] + inits["c2"]), rtol=1e-6)
    assert [n.op_type for n in folded_model.graph.node] == ["Mul", "RandomUniform", "Add"]
    # Same graph apart from the random term: outputs equal ONNX Runtime's on the unfolded model.
    det = make_model(nodes[:3], [("x", [4])], [("m", [4])], inits)
    det_folded, _ = fold_constants(det)
    x = weights(4, seed=5)
    np.testing.assert_allclose(_run(det_folded, {"x": x})[0], _run(det, {"x": x})[0], rtol=1e-6)


def test_fold_constants_respects_the_size_threshold():
    nodes = [mk("Tile", ["c", "reps"], ["big"]), mk("Add", ["x", "big"], ["y"])]
    inits = {"c": np.ones((1, 4), np.float32), "reps": np.array([64, 1], np.int64)}
    model = make_model(nodes, [("x", [64, 4])], [("y", [64, 4])], inits)
    _, folded = fold_constants(infer_shapes(model), size_threshold=128)
    assert "big" not in folded
    _, folded = fold_constants(infer_shapes(model))
    assert folded["big"].shape == (64, 4)


def test_identity_folding_gives_each_copy_its_own_initializer():
    w = np.arange(3, dtype=np.float32)
    nodes = [mk("Identity", ["w"], ["w2"]), mk("Identity", ["w"], ["w3"]), mk("Add", ["x", "w2"], ["a"]),
             mk("Add", ["a", "w3"], ["y"])]
    model = make_model(nodes, [("x", [3])], [("y", [3])], {"w": w})
    x = np.ones(3, np.float32)
    before = _run(model, {"x": x})[0]
    assert fold_initializer_identities(model) == 2
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert sorted(inits) == ["w2", "w3"]  # "w" had no other reader
    np.testing.assert_array_equal(inits["w2"], w)
    np.testing.assert_array_equal(inits["w3"], w)
    np.testing.assert_array_equal(_run(model, {"x": x})[0], before)
    # An Identity producing a graph output stays.
    out = make_model([mk("Identity", ["w"], ["y"])], [], [("y", [3])], {"w": w})
    assert fold_initializer_identities(out) == 0 and out.graph.node[0].op_type == "Identity"


# --- patterns -------------------------------------------------------------------------------------

@pytest.mark.parametrize("act,kind", [("erf", "GELU (Erf)"), ("erf_half_first", "GELU (Erf)"),
                                      ("tanh", "GELU (Tanh approximation)"), ("gelu_op", "Gelu op"),
                                      ("fastgelu", "FastGelu op")])
def test_gelu_and_ffn_found_for_every_form(act, kind):
    graph = to_graph(transformer_block(act))
    acts = gelu_activations(graph)
    assert [(a.x.name, a.y.name, a.kind) for a in acts] == [("up", "a", kind)]
    (block,) = ffn_blocks(graph)
    assert block.up.name == "ffn_up" and _names(block.down) == ["ffn_down"] and block.activation == kind


def test_relu_ffn_needs_the_residual():
    (block,) = ffn_blocks(to_graph(transformer_block("relu")))
    assert (block.up.name, _names(block.down), block.residual) == ("ffn_up", ["ffn_down"], True)
    assert ffn_blocks(to_graph(transformer_block("relu", residual=False))) == []
    assert ffn_blocks(to_graph(mlp())) == [] and gelu_activations(to_graph(mlp())) == []


def test_erf_without_the_gelu_tail_is_not_a_gelu():
    nodes = [mk("Div", ["x", "c"], ["d"]), mk("Erf", ["d"], ["y"])]
    model = make_model(nodes, [("x", [4])], [("y", [4])], {"c": np.array(1.4, np.float32)})
    assert gelu_activations(to_graph(model)) == []


def test_attention_matmuls_and_blocks():
    graph = to_graph(transformer_block("erf"))
    assert [(m.node.name, m.role) for m in attention_matmuls(graph)] == [("qk", "scores"), ("pv", "context")]
    (block,) = attention_blocks(graph)
    assert (block.scores.name, block.softmax.name, block.context.name) == ("qk", "softmax", "pv")
    (core,) = attention_blocks(to_graph(attention()))
    assert (core.scores.name, core.context.name) == ("qk", "av")
    assert attention_matmuls(to_graph(mlp())) == [] and attention_blocks(to_graph(mlp())) == []


def test_conv_chains():
    (chain,) = conv_chains(to_graph(small_cnn()))
    assert (chain.conv.name, chain.bn.name, chain.act.name) == ("conv", "bn", "relu")
    # A conv whose output is read twice ends its chain.
    nodes = [mk("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]), mk("Relu", ["c"], ["r"]),
             mk("Add", ["r", "c"], ["y"])]
    model = make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 2, 4, 4])], {"w": weights(2, 2, 1, 1)})
    (chain,) = conv_chains(to_graph(model))
    assert chain.bn is None and chain.act is None


def _residual_model(shortcut_conv: bool) -> onnx.ModelProto:
    nodes = [mk("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[1, 1]), mk("Relu", ["c1"], ["r1"]),
             mk("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[1, 1]),
             mk("BatchNormalization", ["c2", "g", "b", "m", "v"], ["bn2"], name="bn2")]
    skip = "x"
    if shortcut_conv:
        nodes.append(mk("Conv", ["x", "w3"], ["c3"], name="down", kernel_shape=[1, 1]))
        skip = "c3"
    nodes += [mk("Add", ["bn2", skip], ["s"], name="add"), mk("Add", ["s", "bias"], ["y"], name="bias_add")]
    ones, zeros = np.ones(2, np.float32), np.zeros(2, np.float32)
    inits = {"w1": weights(2, 2, 1, 1), "w2": weights(2, 2, 1, 1, seed=1), "w3": weights(2, 2, 1, 1, seed=2),
             "g": ones, "b": zeros, "m": zeros, "v": ones, "bias": np.ones((1, 2, 1, 1), np.float32)}
    inits = {k: v for k, v in inits.items() if shortcut_conv or k != "w3"}
    return make_model(nodes, [("x", [1, 2, 4, 4])], [("y", [1, 2, 4, 4])], inits)


def test_conv_residual_adds_find_the_skip_input():
    (res,) = conv_residual_adds(to_graph(_residual_model(False)))
    assert (res.node.name, res.skip) == ("add", 1)
    (res,) = conv_residual_adds(to_graph(_residual_model(True)))
    assert (res.node.name, res.skip) == ("add", 1)  # the one-conv shortcut is shorter than conv-relu-conv-bn
    assert conv_residual_adds(to_graph(transformer_block("erf"))) == []


def test_first_and_last_compute_nodes():
    graph = to_graph(transformer_block("erf"))
    assert first_compute_node(graph, ("MatMul", "Gemm")).name == "q_proj"
    assert last_compute_node(graph, ("MatMul", "Gemm")).name == "ffn_down"
    const = Constness()
    weighted = lambda n: any(const(t) for t in n.inputs)  # noqa: E731
    assert last_compute_node(to_graph(attention()), ("MatMul",), weighted) is None
    assert first_compute_node(to_graph(small_cnn()), ("Conv", "Gemm")).name == "conv"


def test_patterns_ignore_names():
    model = transformer_block("tanh")
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
    graph = to_graph(model)
    pos = node_positions(graph)
    (block,) = ffn_blocks(graph)
    original = [n.name for n in transformer_block("tanh").graph.node]
    assert original[pos[id(block.up)]] == "ffn_up" and original[pos[id(block.down[0])]] == "ffn_down"


# --- edits ----------------------------------------------------------------------------------------

def test_insert_qdq_pair_rewires_only_the_given_slots():
    graph = to_graph(attention())
    t = graph.tensors()
    names = NameSource(t)
    (qk,) = [n for n in graph.nodes if n.name == "qk"]
    scale = np.float32(0.05)
    pair = insert_qdq_pair(t["q"], [(qk, 0)], scale, np.int8(0), None, names)
    assert [n.op for n in pair] == ["QuantizeLinear", "DequantizeLinear"]
    assert qk.inputs[0].name == "q_DequantizeLinear_Output" and pair[0].inputs[0] is t["q"]
    graph.nodes = pair + list(graph.nodes)
    model = to_model(graph)
    onnx.checker.check_model(model)
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((1, 2, 8, 4)).astype(np.float32) for k in "qkv"}
    # Equal to the float model fed the fake-quantized q (k and v untouched).
    fake = dict(feeds, q=np.clip(np.round(feeds["q"] / scale), -128, 127).astype(np.float32) * scale)
    np.testing.assert_allclose(_run(model, feeds)[0], _run(attention(), fake)[0], rtol=1e-5, atol=1e-6)
    assert names("q_scale") == "q_scale_1"  # names given out are remembered


def test_qdq_plan_and_insertion_use_graph_positions():
    from pipeline.quantize.qdq import plan_qdq, qdq_onnx_from_onnx
    from pipeline.quantize.scales import QParams

    model = small_cnn()
    plan = plan_qdq(model)
    assert plan.activations == {"x": [(0, 0)], "r": [(3, 0)], "p": [(4, 0)], "f": [(6, 0)]}
    qp = {a: QParams(np.float32(0.05), np.int8(0)) for a in plan.activations}
    q = qdq_onnx_from_onnx(model, plan, qp)
    ops = [n.op_type for n in q.graph.node]
    assert ops[:4] == ["QuantizeLinear", "DequantizeLinear"] * 2  # the two weights first
    assert isinstance(to_graph(q), gs.Graph)


def test_insert_cast_and_cleanup():
    from pipeline.graph import cleanup, insert_cast

    model = make_model([mk("Relu", ["x"], ["r"]), mk("Neg", ["x"], ["n"]), mk("Add", ["r", "x"], ["y"])],
                       [("x", [3])], [("y", [3])])
    graph = to_graph(model)
    t = graph.tensors()
    (add,) = [n for n in graph.nodes if n.op == "Add"]
    down = insert_cast(t["x"], [(add, 1)], TensorProto.FLOAT16, NameSource(t))
    up = insert_cast(down.outputs[0], [(add, 1)], TensorProto.FLOAT, NameSource(graph.tensors()))
    graph.nodes.extend([down, up])  # appended out of order: cleanup sorts them
    cleanup(graph)
    assert [n.op for n in graph.nodes if n.op != "Cast"] == ["Relu", "Add"]  # the unread Neg is gone
    out = to_model(graph)
    onnx.checker.check_model(out)
    x = np.array([0.1, -2.0, 3.3333], np.float32)
    np.testing.assert_allclose(_run(out, {"x": x})[0], np.maximum(x, 0) + x.astype(np.float16).astype(np.float32))


def test_elem_type_of_graphsurgeon_tensors():
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from pipeline.graph import elem_type, to_graph

    bf16 = helper.make_tensor("bf", TensorProto.BFLOAT16, [2], np.array([1, 2], np.uint16).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16), helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Relu", ["y"], ["u"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("u", TensorProto.FLOAT16, [2]),
         helper.make_tensor_value_info("s", TensorProto.INT64, [1])],
        [numpy_helper.from_array(np.ones(2, np.float32), "w")])
    g = to_graph(onnx.shape_inference.infer_shapes(helper.make_model(graph)))
    t = g.tensors()
    assert elem_type(t["x"]) == TensorProto.FLOAT and elem_type(t["y"]) == TensorProto.FLOAT16
    assert elem_type(t["s"]) == TensorProto.INT64
    assert elem_type(gs.Variable("untyped")) is None
    assert elem_type(gs.Constant("w", np.ones(2, np.float32))) == TensorProto.FLOAT
    assert elem_type(gs.Constant("bf", LazyValues(bf16))) == TensorProto.BFLOAT16  # from the proto, not numpy
