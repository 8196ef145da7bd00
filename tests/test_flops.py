"""FLOP and byte counts of ONNX nodes, checked against numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_models import attention, conv, depthwise_separable, make_model, mlp, single_node, weights
from pipeline.analyze.flops import Cost, graph_costs, layer_costs
from pipeline.core.config import PrecisionConfig
from pipeline.core.errors import PipelineError

FP32 = PrecisionConfig("fp32", 4.0, 4.0, "fp32_cuda")
FP16 = PrecisionConfig("fp16", 2.0, 2.0, "fp16_tensor")
INT8 = PrecisionConfig("int8", 1.0, 1.0, "int8_tensor")


def only(model, batch_size=1, precision=FP32, **kw):
    layers = [layer for layer in layer_costs(model, batch_size, precision, **kw) if layer.category != "constant"]
    assert len(layers) == 1, layers
    return layers[0]


# --- convolutions -------------------------------------------------------------------------------

def test_conv3x3_64_to_64_56x56_with_batch():
    layer = only(conv(batch="N"), batch_size=2)
    assert layer.macs == 2 * 64 * 64 * 9 * 56 * 56
    assert layer.flops == 2 * 2 * 64 * 64 * 9 * 56 * 56 == 462_422_016
    assert layer.category == "conv"
    # fp32: weights 64*64*9*4 B; activations = input + output, both 2x64x56x56 floats
    assert layer.weight_bytes == 64 * 64 * 9 * 4 == 147_456
    assert layer.activation_bytes == 2 * (2 * 64 * 56 * 56) * 4 == 3_211_264
    assert layer.bytes == 147_456 + 3_211_264
    assert layer.intensity == pytest.approx(462_422_016 / (147_456 + 3_211_264))


def test_conv_bytes_scale_with_precision():
    fp32, int8 = only(conv(), precision=FP32), only(conv(), precision=INT8)
    assert int8.flops == fp32.flops
    assert int8.weight_bytes == 64 * 64 * 9 == 36_864
    assert int8.activation_bytes == 2 * 64 * 56 * 56 == 401_408
    assert fp32.bytes == 4 * int8.bytes
    assert only(conv(), precision=FP16).bytes == 2 * int8.bytes


def test_conv_bias_adds_one_flop_per_output():
    layer = only(conv(bias=True))
    assert layer.flops == 2 * 64 * 64 * 9 * 56 * 56 + 64 * 56 * 56
    assert layer.weight_bytes == (64 * 64 * 9 + 64) * 4


def test_depthwise_conv():
    layer = only(conv(c_in=32, c_out=32, group=32))
    assert layer.category == "conv_depthwise"
    assert layer.macs == 32 * 56 * 56 * 9 == 903_168
    assert layer.weight_bytes == 32 * 9 * 4


def test_grouped_conv_is_not_depthwise():
    layer = only(conv(group=4))
    assert layer.category == "conv"
    assert layer.macs == 64 * 56 * 56 * (64 // 4) * 9


def test_pointwise_conv_category():
    layer = only(conv(c_in=32, c_out=64, k=1))
    assert layer.category == "conv_1x1"
    assert layer.macs == 64 * 56 * 56 * 32


@pytest.mark.parametrize(
    "stride, dilation, pad, out_hw",
    [
        (2, 1, 1, 28),  # (56 + 2 - 3) // 2 + 1
        (2, 1, 0, 27),  # (56 - 3) // 2 + 1
        (1, 2, 2, 56),  # dilated 3x3 spans 5: 56 + 4 - 5 + 1
        (1, 2, 0, 52),  # 56 - 5 + 1
    ],
)
def test_conv_strides_dilations_pads(stride, dilation, pad, out_hw):
    layer = only(conv(stride=stride, dilation=dilation, pad=pad))
    assert layer.macs == 64 * out_hw * out_hw * 64 * 9


def test_conv1d_and_conv3d():
    c1 = single_node("Conv", [("x", [1, 8, 100])], {"w": weights(16, 8, 5)}, {"kernel_shape": [5]})
    assert only(c1).macs == 16 * 96 * 8 * 5 == 61_440
    c3 = single_node("Conv", [("x", [1, 4, 8, 8, 8])], {"w": weights(8, 4, 3, 3, 3)},
                     {"kernel_shape": [3, 3, 3], "pads": [1] * 6})
    assert only(c3).macs == 8 * 512 * 4 * 27 == 442_368


def test_conv_transpose():
    model = single_node("ConvTranspose", [("x", [1, 16, 8, 8])], {"w": weights(16, 8, 4, 4)},
                        {"kernel_shape": [4, 4], "strides": [2, 2], "pads": [1, 1, 1, 1]})
    layer = only(model)
    assert layer.category == "conv_transpose"
    # each of 16*8*8 inputs scatters into 8 output channels x 16 taps
    assert layer.macs == 16 * 8 * 8 * 8 * 16 == 131_072
    assert layer.activation_bytes == (16 * 64 + 8 * 16 * 16) * 4  # output 1x8x16x16
    grouped = single_node("ConvTranspose", [("x", [1, 16, 8, 8])], {"w": weights(16, 4, 4, 4)},
                          {"kernel_shape": [4, 4], "strides": [2, 2], "pads": [1, 1, 1, 1], "group": 2})
    assert only(grouped).macs == 1024 * 4 * 16 == 65_536


# --- gemm / matmul / einsum -------------------------------------------------------------------

def test_gemm_trans_b_with_bias():
    model = single_node("Gemm", [("a", [4, 16])], {"b": weights(32, 16), "c": weights(32)}, {"transB": 1})
    layer = only(model)
    assert layer.category == "gemm"
    assert layer.macs == 4 * 32 * 16 == 2048
    assert layer.flops == 2 * 2048 + 4 * 32 == 4224
    assert layer.weight_bytes == (32 * 16 + 32) * 4
    assert layer.activation_bytes == (4 * 16 + 4 * 32) * 4


def test_gemm_trans_a_without_bias():
    model = single_node("Gemm", [("a", [16, 4])], {"b": weights(16, 32)}, {"transA": 1})
    assert only(model).flops == 2 * 4 * 32 * 16 == 4096


@pytest.mark.parametrize(
    "a, b, macs",
    [
        ([2, 1, 8, 16], [3, 16, 4], 2 * 3 * 8 * 4 * 16),  # batch dims broadcast to [2, 3]
        ([16], [16, 4], 4 * 16),  # 1-D lhs: a vector-matrix product
        ([2, 8, 16], [16], 2 * 8 * 16),  # 1-D rhs
        ([5, 7], [7, 3], 5 * 3 * 7),
    ],
)
def test_matmul_batched_and_broadcasting(a, b, macs):
    layer = only(single_node("MatMul", [("a", a), ("b", b)]))
    assert layer.category == "matmul"
    assert layer.macs == macs
    assert layer.flops == 2 * macs
    assert layer.weight_bytes == 0  # both operands are activations (attention-style)


def test_matmul_with_constant_weight_counts_weight_bytes():
    layer = only(single_node("MatMul", [("a", [2, 16])], {"w": weights(16, 8)}), precision=INT8)
    assert layer.weight_bytes == 16 * 8
    assert layer.activation_bytes == 2 * 16 + 2 * 8


@pytest.mark.parametrize("equation", ["bij,bjk->bik", "...ij,...jk->...ik"])
def test_einsum_batched_matmul(equation):
    model = single_node("Einsum", [("a", [2, 3, 4]), ("b", [2, 4, 5])], attrs={"equation": equation})
    layer = only(model)
    assert layer.macs == 2 * 3 * 4 * 5 == 120
    assert layer.category == "matmul"


def test_attention_pieces():
    layers = {layer.name: layer for layer in layer_costs(attention(heads=2, seq=8, head_dim=4))}
    assert layers["qk"].macs == 2 * 8 * 8 * 4 == 512
    assert layers["av"].macs == 2 * 8 * 4 * 8 == 512
    assert layers["softmax"].flops == 5 * 2 * 8 * 8  # max, sub, exp, sum, div per element
    assert layers["softmax"].category == "softmax"
    assert layers["k_transpose"].flops == 0
    assert layers["k_transpose"].bytes == 2 * 2 * 8 * 4 * 4  # read + write, fp32
    assert layers["scale"].flops == 128 and layers["scale"].weight_bytes == 4


# --- norms, elementwise, pooling, resize, softmax, reduce ---------------------------------------

def test_batchnorm_two_flops_per_element():
    inits = {k: np.ones(4, np.float32) for k in ("s", "b", "m", "v")}
    layer = only(single_node("BatchNormalization", [("x", [2, 4, 5, 5])], inits))
    assert layer.flops == 2 * 200
    assert layer.category == "norm"
    assert layer.weight_bytes == 4 * 4 * 4


@pytest.mark.parametrize("bias, per_element", [(True, 7), (False, 6)])
def test_layernorm(bias, per_element):
    inits = {"scale": np.ones(16, np.float32)}
    names = ["x", "scale"]
    if bias:
        inits["bias"] = np.zeros(16, np.float32)
        names.append("bias")
    model = single_node("LayerNormalization", [("x", [2, 8, 16])], inits, {"axis": -1}, node_inputs=names)
    assert only(model).flops == per_element * 2 * 8 * 16


def test_instance_and_group_norm():
    inits = {"s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}
    assert only(single_node("InstanceNormalization", [("x", [1, 4, 5, 5])], inits)).flops == 7 * 100
    gn = single_node("GroupNormalization", [("x", [1, 4, 5, 5])], inits, {"num_groups": 2}, opset=21)
    assert only(gn).flops == 7 * 100


@pytest.mark.parametrize(
    "op, attrs, per_element",
    [
        ("Relu", {}, 1), ("Sigmoid", {}, 3), ("Tanh", {}, 1), ("Erf", {}, 1), ("Exp", {}, 1),
        ("Sqrt", {}, 1), ("HardSwish", {}, 5), ("HardSigmoid", {}, 4), ("LeakyRelu", {}, 2),
        ("Softplus", {}, 3), ("Neg", {}, 1),
    ],
)
def test_unary_elementwise(op, attrs, per_element):
    layer = only(single_node(op, [("x", [2, 3, 4])], attrs=attrs))
    assert layer.category == "elementwise"
    assert layer.flops == per_element * 24
    assert layer.activation_bytes == 2 * 24 * 4


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow"])
def test_binary_elementwise_broadcast(op):
    layer = only(single_node(op, [("a", [2, 3, 4]), ("b", [4])]))
    assert layer.flops == 24  # one per output element
    assert layer.activation_bytes == (24 + 4 + 24) * 4


def test_variadic_and_clip_and_gelu():
    three = [("a", [2, 5]), ("b", [2, 5]), ("c", [2, 5])]
    assert only(single_node("Max", three)).flops == 2 * 10
    assert only(single_node("Mean", three)).flops == 3 * 10  # two adds and a divide
    clip = single_node("Clip", [("x", [2, 5])], {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)})
    assert only(clip).flops == 2 * 10
    assert only(single_node("Gelu", [("x", [2, 5])], opset=20)).flops == 5 * 10
    assert only(single_node("Gelu", [("x", [2, 5])], attrs={"approximate": "tanh"}, opset=20)).flops == 8 * 10


def test_pooling():
    mp = single_node("MaxPool", [("x", [1, 8, 16, 16])], attrs={"kernel_shape": [2, 2], "strides": [2, 2]})
    assert only(mp).flops == 8 * 8 * 8 * 4 == 2048
    assert only(mp).category == "pool"
    ap = single_node("AveragePool", [("x", [1, 2, 4, 4])], attrs={"kernel_shape": [3, 3], "pads": [1] * 4})
    assert only(ap).flops == 32 * 9
    assert only(single_node("GlobalAveragePool", [("x", [1, 8, 4, 4])])).flops == 128


@pytest.mark.parametrize("mode, flops", [("nearest", 0), ("linear", 2 * 64 * 2 * 4)])
def test_resize(mode, flops):
    scales = np.array([1, 1, 2, 2], np.float32)
    model = single_node("Resize", [("x", [1, 2, 4, 4])], {"scales": scales}, {"mode": mode},
                        node_inputs=["x", "", "scales"])
    layer = only(model)
    assert layer.category == "resize"
    assert layer.flops == flops  # linear: 2 taps per resized axis, 2 axes -> 4 taps x (mul + add)
    assert layer.activation_bytes == (32 + 128) * 4


def test_softmax_and_reduce():
    assert only(single_node("Softmax", [("x", [2, 10])])).flops == 5 * 20
    axes = {"axes": np.array([2], np.int64)}
    mean = single_node("ReduceMean", [("x", [2, 8, 4])], axes, opset=18)
    assert only(mean).flops == 64 + 16  # one add per input, one divide per output
    assert only(mean).category == "reduce"
    assert only(single_node("ReduceSum", [("x", [2, 8, 4])], axes, opset=18)).flops == 64


# --- quantization, data movement, constants ------------------------------------------------------

def test_quantize_linear_bytes_use_int8_output_size():
    inits = {"scale": np.array(0.1, np.float32), "zp": np.array(0, np.int8)}
    model = single_node("QuantizeLinear", [("x", [2, 8])], inits, output_types={"y": TensorProto.INT8})
    layer = only(model)
    assert layer.category == "quantize"
    assert layer.flops == 4 * 16
    # fp32 input at 4 B, int8 output keeps its 1-byte size; scale (float) 4 B + zero point (int8) 1 B
    assert layer.activation_bytes == 16 * 4 + 16 * 1
    assert layer.weight_bytes == 4 + 1


def test_weight_dequantize_is_folded_into_the_conv():
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1] * 4),
    ]
    inits = {"w_q": np.ones((8, 4, 3, 3), np.int8), "w_scale": np.array(0.1, np.float32),
             "w_zp": np.array(0, np.int8)}
    model = make_model(nodes, [("x", [1, 4, 10, 10])], [("y", [1, 8, 10, 10])], inits)
    layers = {layer.name: layer for layer in layer_costs(model, precision=INT8)}
    assert layers["dq_w"].category == "constant" and layers["dq_w"].bytes == 0
    assert layers["conv"].weight_bytes == 8 * 4 * 9  # the folded float weight at 1 byte (int8)
    assert layers["conv"].macs == 8 * 100 * 4 * 9


def test_views_move_nothing_copies_move_bytes():
    reshape = single_node("Reshape", [("x", [2, 12])], {"shape": np.array([4, 6], np.int64)})
    layer = only(reshape)
    assert (layer.flops, layer.bytes, layer.category) == (0, 0, "data_movement")
    transpose = only(single_node("Transpose", [("x", [2, 3, 4])], attrs={"perm": [2, 0, 1]}))
    assert transpose.flops == 0 and transpose.activation_bytes == 2 * 24 * 4
    concat = only(single_node("Concat", [("a", [2, 3]), ("b", [2, 5])], attrs={"axis": 1}))
    assert concat.activation_bytes == (6 + 10 + 16) * 4


def test_gather_from_embedding_table_reads_only_rows():
    model = single_node("Gather", [("ids", [2, 5])], {"table": weights(1000, 64)},
                        node_inputs=["table", "ids"], input_types={"ids": TensorProto.INT64})
    layer = only(model)
    assert layer.weight_bytes == 2 * 5 * 64 * 4  # 10 rows of 64 floats, not the 1000-row table
    assert layer.activation_bytes == 10 * 8 + 640 * 4  # int64 ids keep 8 bytes


def test_static_shape_chain_is_constant_folded():
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], name="take_n", axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "minus1"], ["new_shape"], name="cat", axis=0),
        helper.make_node("Reshape", ["x", "new_shape"], ["y"], name="reshape"),
    ]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "minus1": np.array([-1], np.int64)}
    model = make_model(nodes, [("x", ["batch", 3, 4])], [("y", None)], inits)
    layers = {layer.name: layer for layer in layer_costs(model, batch_size=2)}
    assert [layers[n].category for n in ("shape", "take_n", "unsq", "cat")] == ["constant"] * 4
    assert layers["reshape"].category == "data_movement" and layers["reshape"].bytes == 0


def test_unsupported_op_is_listed_not_fatal():
    model = single_node("TopK", [("x", [2, 10])], {"k": np.array([3], np.int64)}, n_outputs=2,
                        output_types={"y1": TensorProto.INT64})
    costs = graph_costs(model)
    (layer,) = costs.layers
    assert layer.category == "unknown" and layer.flops == 0
    assert costs.unsupported_ops == {"TopK": 1}
    assert layer.activation_bytes == (20 + 6) * 4 + 6 * 8  # still reads and writes its tensors
    custom = single_node("Frobnicate", [("x", [2, 10])], domain="com.example")
    assert graph_costs(custom).unsupported_ops == {"Frobnicate": 1}


# --- batch, symbolic dims, totals --------------------------------------------------------------

def test_symbolic_batch_is_substituted():
    costs = graph_costs(mlp(in_features=16, hidden=32, classes=10), batch_size=3)
    layers = {layer.name: layer for layer in costs.layers}
    assert layers["fc1"].macs == 3 * 32 * 16
    assert layers["fc2"].flops == 2 * 3 * 10 * 32 + 3 * 10
    assert costs.io_bytes == (3 * 16 + 3 * 10) * 4
    assert costs.batch_size == 3 and not costs.unknown_shape_nodes


def test_fixed_batch_is_kept_and_noted():
    costs = graph_costs(conv(batch=1), batch_size=4)
    assert costs.batch_size == 1
    assert any("fixed batch of 1" in n for n in costs.notes)


def test_unknown_symbolic_dim_marks_node_until_given():
    model = single_node("MatMul", [("x", ["batch", "seq", 16])], {"w": weights(16, 8)})
    costs = graph_costs(model, batch_size=2)
    assert costs.unknown_shape_nodes == ["matmul0"]
    assert costs.layers[0].flops == 0 and costs.layers[0].note.startswith("shape unknown")
    known = graph_costs(model, batch_size=2, dims={"seq": 5})
    assert known.layers[0].macs == 2 * 5 * 16 * 8 and not known.unknown_shape_nodes


def test_layer_costs_sum_to_model_total():
    costs = graph_costs(depthwise_separable(), precision=FP16)
    total = sum((layer.cost for layer in costs.layers), Cost())
    assert total == costs.total
    assert costs.total.flops == 2 * 32 * 3136 * 9 + 32 * 3136 + 2 * 64 * 3136 * 32
    assert costs.unique_weight_bytes == (32 * 9 + 64 * 32) * 2


def test_cost_addition_and_intensity():
    a, b = Cost(10, 5, 2.0, 3.0), Cost(6, 3, 1.0, 0.0)
    assert a + b == Cost(16, 8, 3.0, 3.0)
    assert sum([a, b]) == a + b
    assert (a + b).bytes == 6.0 and (a + b).intensity == pytest.approx(16 / 6)
    assert Cost().intensity == 0.0


def test_path_input_and_bad_path(tmp_path):
    path = tmp_path / "c.onnx"
    onnx.save(conv(), str(path))
    assert layer_costs(path)[0].macs == 64 * 64 * 9 * 56 * 56
    with pytest.raises(PipelineError, match="cannot read ONNX model"):
        layer_costs(tmp_path / "missing.onnx")
    with pytest.raises(PipelineError, match="batch_size"):
        layer_costs(conv(), batch_size=0)


def test_shape_arithmetic_that_onnx_inference_cannot_follow_is_folded():
    """Shape -> Gather -> Div -> Concat -> Reshape: onnx data propagation leaves the Reshape
    output unknown (unk__ dim); evaluating the small constant chain makes it static."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "i0"], ["b"], name="g0", axis=0),
        helper.make_node("Gather", ["s", "i2"], ["d"], name="g2", axis=0),
        helper.make_node("Div", ["d", "two"], ["h"], name="half"),
        helper.make_node("Unsqueeze", ["b", "ax"], ["b1"], name="u0"),
        helper.make_node("Unsqueeze", ["h", "ax"], ["h1"], name="u1"),
        helper.make_node("Concat", ["b1", "six", "h1", "two1"], ["ns"], name="cat", axis=0),
        helper.make_node("Reshape", ["x", "ns"], ["r"], name="reshape"),
        helper.make_node("MatMul", ["r", "w"], ["y"], name="mm"),
    ]
    inits = {"i0": np.array(0, np.int64), "i2": np.array(2, np.int64), "two": np.array(2, np.int64),
             "ax": np.array([0], np.int64), "six": np.array([6], np.int64), "two1": np.array([2], np.int64),
             "w": weights(2, 3)}
    model = make_model(nodes, [("x", ["batch", 6, 8])], [("y", None)], inits)
    plain = onnx.shape_inference.infer_shapes(model, data_prop=True)
    r_dims = next(v for v in plain.graph.value_info if v.name == "r").type.tensor_type.shape.dim
    assert not r_dims[2].HasField("dim_value")  # what ONNX alone gives
    costs = graph_costs(model, batch_size=3)
    layers = {layer.name: layer for layer in costs.layers}
    assert layers["mm"].macs == 3 * 6 * 4 * 3 * 2  # r = [3, 6, 4, 2] @ [2, 3]
    assert {layers[n].category for n in ("shape", "g0", "g2", "half", "u0", "u1", "cat")} == {"constant"}
    assert not costs.unknown_shape_nodes


@pytest.mark.filterwarnings("ignore:Converting a tensor to a Python boolean")
def test_torch_exported_multihead_attention_has_no_unknown_shapes(tmp_path):
    torch = pytest.importorskip("torch")
    mha = torch.nn.MultiheadAttention(embed_dim=16, num_heads=2, batch_first=True).eval()

    class SelfAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):
            return self.mha(x, x, x, need_weights=False)[0]

    path = tmp_path / "mha.onnx"
    torch.onnx.export(SelfAttention(), (torch.randn(1, 5, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch", 1: "seq"}}, opset_version=17, dynamo=False)
    costs = graph_costs(path, batch_size=4, dims={"seq": 5})
    assert costs.unknown_shape_nodes == [] and costs.unsupported_ops == {}
    macs = 4 * 5 * 16 * 48 + 4 * 2 * 5 * 5 * 8 * 2 + 4 * 5 * 16 * 16  # in-proj, QK^T and AV, out-proj
    assert costs.total.macs == macs
