"""TensorRT-style fusion groups (pipeline.analyze.fusion) and the fused roofline estimate."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnx_models import make_model, weights
from pipeline.analyze import analyze_onnx, load_hardware
from pipeline.analyze.fusion import fusion_groups
from pipeline.core.config import PrecisionConfig

FP16 = PrecisionConfig("fp16", 2.0, 2.0, "fp16_tensor")
A100_FP16 = 1410e6 * 108 * 4 * 256 * 2  # Tensor Core peak, FLOP/s
A100_FP16_CUDA = 1410e6 * 108 * 256 * 2  # CUDA-core peak (pointwise ops)
A100_BW = 2039e9


@pytest.fixture(scope="module")
def a100():
    return load_hardware("a100_sxm")


def _conv(x, w, y, name, **kw):
    return helper.make_node("Conv", [x, w], [y], name=name, kernel_shape=kw.pop("k", [3, 3]),
                            pads=kw.pop("pads", [1, 1, 1, 1]), **kw)


def conv_bn_relu():
    """x[1,8,16,16] -> 3x3 conv (16 out) -> BatchNorm -> Relu -> y[1,16,16,16]."""
    nodes = [
        _conv("x", "w", "c", "conv"),
        helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["y"], name="relu"),
    ]
    inits = {"w": weights(16, 8, 3, 3), "g": np.ones(16, np.float32), "b": np.zeros(16, np.float32),
             "m": np.zeros(16, np.float32), "v": np.ones(16, np.float32)}
    return make_model(nodes, [("x", [1, 8, 16, 16])], [("y", [1, 16, 16, 16])], inits)


def test_conv_bn_relu_is_one_group_reading_input_and_weights_writing_output():
    (g,) = fusion_groups(conv_bn_relu(), FP16)
    assert g.name == "conv + bn + relu" and g.nodes == ("conv", "bn", "relu")
    assert (g.anchor, g.anchor_op, g.category) == ("conv", "Conv", "conv")
    assert (g.inputs, g.outputs) == (("x",), ("y",))
    assert g.activation_bytes == (8 * 256 + 16 * 256) * 2 == 12288  # x + y only, fp16
    assert g.weight_bytes == (16 * 8 * 9 + 4 * 16) * 2 == 2432  # conv weights + 4 BN vectors
    assert g.flops == 2 * 16 * 256 * 72 + 2 * 4096 + 4096 == 602112
    assert g.bytes == 14720 and g.intensity == pytest.approx(602112 / 14720)


def test_relu_with_two_consumers_is_materialised():
    """conv + relu fuse; relu's output feeds two ops, so it is written and each consumer reads it."""
    nodes = [
        _conv("x", "w", "c", "conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Sigmoid", ["r"], ["s"], name="sigmoid"),
        helper.make_node("Tanh", ["r"], ["t"], name="tanh"),
    ]
    model = make_model(nodes, [("x", [1, 8, 8, 8])], [("s", [1, 8, 8, 8]), ("t", [1, 8, 8, 8])],
                       {"w": weights(8, 8, 3, 3)})
    groups = fusion_groups(model, FP16)
    assert [g.name for g in groups] == ["conv + relu", "sigmoid", "tanh"]
    assert groups[0].outputs == ("r",) and groups[1].inputs == ("r",) and groups[2].inputs == ("r",)
    assert [g.activation_bytes for g in groups] == [2048, 2048, 2048]  # 512 elements in + 512 out, fp16


def test_conv_output_with_two_consumers_does_not_fuse():
    nodes = [
        _conv("x", "w", "c", "conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        _conv("c", "w", "y2", "conv2"),
    ]
    model = make_model(nodes, [("x", [1, 8, 8, 8])], [("r", [1, 8, 8, 8]), ("y2", [1, 8, 8, 8])],
                       {"w": weights(8, 8, 3, 3)})
    assert [g.name for g in fusion_groups(model, FP16)] == ["conv", "relu", "conv2"]


def test_residual_conv_add_relu():
    """a = conv1(x); y = relu(conv2(a) + a): the add and relu fuse into conv2, a is read once."""
    nodes = [
        _conv("x", "w1", "a", "conv1"),
        _conv("a", "w2", "b", "conv2"),
        helper.make_node("Add", ["b", "a"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    model = make_model(nodes, [("x", [1, 8, 8, 8])], [("y", [1, 8, 8, 8])],
                       {"w1": weights(8, 8, 3, 3), "w2": weights(8, 8, 3, 3, seed=1)})
    g1, g2 = fusion_groups(model, FP16)
    assert g1.name == "conv1" and g1.outputs == ("a",)  # a has two consumers: conv1 stays alone
    assert g2.name == "conv2 + add + relu" and g2.category == "conv"
    assert (g2.inputs, g2.outputs) == (("a",), ("y",))
    assert g2.activation_bytes == (512 + 512) * 2 == 2048
    assert g2.weight_bytes == 576 * 2
    assert g2.flops == 2 * 512 * 72 + 512 + 512


def test_pointwise_chain_without_anchor_is_one_kernel():
    """tanh((x - c) * k) + x: one pointwise kernel reading x once and writing y."""
    nodes = [
        helper.make_node("Sub", ["x", "c"], ["d"], name="sub"),
        helper.make_node("Mul", ["d", "k"], ["p"], name="mul"),
        helper.make_node("Tanh", ["p"], ["t"], name="tanh"),
        helper.make_node("Add", ["t", "x"], ["y"], name="add"),
    ]
    model = make_model(nodes, [("x", [2, 64])], [("y", [2, 64])],
                       {"c": weights(64), "k": np.array(0.5, np.float32)})
    (g,) = fusion_groups(model, FP16)
    assert g.name == "sub + mul + tanh + add" and g.category == "elementwise" and g.anchor == "sub"
    assert (g.inputs, g.outputs) == (("x",), ("y",))
    assert g.activation_bytes == (128 + 128) * 2 == 512
    assert g.weight_bytes == (64 + 1) * 2 == 130
    assert g.flops == 4 * 128


def test_matmul_bias_and_erf_gelu_fuse():
    """MatMul + bias Add + GELU as exported (x * (1 + erf(x / sqrt2)) * 0.5): one group, although
    the biased output h is read twice inside it."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
        helper.make_node("Add", ["m", "bias"], ["h"], name="bias"),
        helper.make_node("Div", ["h", "sqrt2"], ["d"], name="div"),
        helper.make_node("Erf", ["d"], ["e"], name="erf"),
        helper.make_node("Add", ["e", "one"], ["e1"], name="add1"),
        helper.make_node("Mul", ["h", "e1"], ["g"], name="mul"),
        helper.make_node("Mul", ["g", "half"], ["y"], name="half"),
    ]
    inits = {"w": weights(16, 32), "bias": weights(32, seed=1), "sqrt2": np.array(2**0.5, np.float32),
             "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}
    model = make_model(nodes, [("x", [4, 16])], [("y", [4, 32])], inits)
    (g,) = fusion_groups(model, FP16)
    assert g.name == "matmul + bias + div + erf + add1 + mul + half"
    assert (g.category, g.anchor_op) == ("matmul", "MatMul")
    assert (g.inputs, g.outputs) == (("x",), ("y",))
    assert g.activation_bytes == (64 + 128) * 2 == 384
    assert g.weight_bytes == (16 * 32 + 32 + 3) * 2 == 1094
    assert g.flops == 2 * 4 * 32 * 16 + 6 * 128 == 4864  # matmul + 6 pointwise ops, 1 FLOP per element each
    # the same chain with a third reader of h outside: h is materialised, the GELU becomes its own kernel
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [4, 32]))
    names = [g.name for g in fusion_groups(model, FP16)]
    assert names == ["matmul + bias", "div + erf + add1 + mul + half"]


def test_qdq_absorbed_into_neighbours():
    """x -Q-> xq -DQ-> conv1 -> relu -Q-> rq -DQ-> conv2: DQs join their consumers, Q its producer,
    and 8-bit tensors cross the boundaries (1 byte per element)."""
    i8 = TensorProto.INT8
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q1"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq1"),
        helper.make_node("DequantizeLinear", ["wq", "sw", "z"], ["wd"], name="dqw"),
        _conv("xd", "wd", "c", "conv1", k=[1, 1], pads=[0, 0, 0, 0]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q2"),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"], name="dq2"),
        _conv("rd", "wd", "y", "conv2", k=[1, 1], pads=[0, 0, 0, 0]),
    ]
    inits = {"s": np.array(0.05, np.float32), "z": np.array(0, np.int8), "sw": np.array(0.01, np.float32),
             "wq": np.ones((8, 8, 1, 1), np.int8)}
    model = make_model(nodes, [("x", [1, 8, 8, 8])], [("y", [1, 8, 8, 8])], inits)
    groups = fusion_groups(model, FP16)
    assert [g.name for g in groups] == ["q1", "dq1 + conv1 + relu + q2", "dq2 + conv2"]
    assert groups[1].nodes == ("dq1", "dqw", "conv1", "relu", "q2")  # folded weight DQ sits with conv1
    q, mid, last = groups
    assert q.category == "quantize" and mid.category == "conv_1x1" and last.category == "conv_1x1"
    assert (q.inputs, q.outputs, q.activation_bytes) == (("x",), ("xq",), 512 * 2 + 512)
    assert (mid.inputs, mid.outputs, mid.activation_bytes) == (("xq",), ("rq",), 512 + 512)
    assert (last.inputs, last.outputs, last.activation_bytes) == (("rq",), ("y",), 512 + 512 * 2)
    assert mid.weight_bytes == 3 + 64 * 2 + 3  # (scale fp16 + int8 zero point) x 2 + folded weights


def test_fused_and_unfused_latency_exact(a100):
    analysis = analyze_onnx(conv_bn_relu(), a100, FP16, 1)
    # unfused: conv (x + w + c), bn (c + 4 vectors + n), relu (n + y), all memory-bound
    conv_b, bn_b, relu_b = 4096 + 2304 + 8192, 8192 + 128 + 8192, 8192 + 8192
    assert [b.bound for b in analysis.layers] == ["memory"] * 3
    assert analysis.predicted_latency_unfused_s == pytest.approx((conv_b + bn_b + relu_b) / A100_BW)  # 23.29 ns
    # fused: one group, x + weights + y = 14,720 bytes; compute = conv on Tensor Cores + bn/relu on CUDA cores
    (g,) = analysis.groups
    assert g["compute_s"] == pytest.approx(589824 / A100_FP16 + (8192 + 4096) / A100_FP16_CUDA)
    assert g["memory_s"] == pytest.approx(14720 / A100_BW) and g["bound"] == "memory"
    assert analysis.predicted_latency_s == pytest.approx(14720 / A100_BW)  # 7.22 ns, 3.23x less
    assert analysis.predicted_latency_s == pytest.approx(analysis.whole_model["bound_s"])
    rows = [b.to_dict() for b in analysis.layers]
    assert [(r["group"], r["group_name"]) for r in rows] == [(0, "conv + bn + relu")] * 3
    (cat,) = analysis.by_category
    assert (cat.category, cat.layers, cat.groups, cat.time_share, cat.memory_bound_groups) == ("conv", 3, 1, 1.0, 1)
    d = analysis.to_dict()
    assert d["predicted_latency_unfused_s"] == analysis.predicted_latency_unfused_s
    assert d["groups"][0]["nodes"] == ["conv", "bn", "relu"]


def test_compute_bound_group_adds_epilogue_arithmetic(a100):
    nodes = [_conv("x", "w", "c", "conv"), helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, [("x", [1, 256, 56, 56])], [("y", [1, 256, 56, 56])], {"w": weights(256, 256, 3, 3)})
    analysis = analyze_onnx(model, a100, FP16, 1)
    conv_flops, relu_flops = 2 * 256 * 256 * 9 * 3136, 256 * 3136
    fused = conv_flops / A100_FP16 + relu_flops / A100_FP16_CUDA  # 3.7 ms-scale compute beats 3.5 MB of traffic
    (g,) = analysis.groups
    assert g["bound"] == "compute" and analysis.predicted_latency_s == pytest.approx(fused)
    relu_memory = 2 * 256 * 3136 * 2 / A100_BW  # the unfused relu is memory-bound
    assert analysis.predicted_latency_unfused_s == pytest.approx(conv_flops / A100_FP16 + relu_memory)


def test_mobilenet_v2_elementwise_share_drops_and_depthwise_stays_memory_bound(tmp_path):
    from pipeline.core.config import ModelConfig
    from pipeline.export import export_onnx
    from pipeline.models import build_model

    bundle = build_model(ModelConfig(name="mobilenet_v2", input_shape=[3, 64, 64], num_classes=10))
    path = tmp_path / "mobilenet_v2.onnx"
    export_onnx(bundle, path, batch_size=1)
    analysis = analyze_onnx(path, load_hardware("h100_sxm"), FP16, 32)

    unfused_elementwise = sum(b.bound_s for b in analysis.layers if b.layer.category == "elementwise")
    assert unfused_elementwise / analysis.predicted_latency_unfused_s > 0.3  # the problem being fixed
    shares = {r.category: r.time_share for r in analysis.by_category}
    assert shares.get("elementwise", 0.0) < 0.10
    assert analysis.predicted_latency_s < analysis.predicted_latency_unfused_s
    # every Clip (ReLU6) and residual Add sits in a conv-anchored group
    groups = analysis.groups
    for b in analysis.layers:
        if b.layer.op_type in ("Clip", "Add"):
            assert groups[b.group]["anchor_op"] == "Conv", b.layer.name
    depthwise = [g for g in groups if g["category"] == "conv_depthwise"]
    assert len(depthwise) == 17 and all(g["bound"] == "memory" for g in depthwise)


def test_report_lists_fused_groups_with_measured_sums(tmp_path, a100):
    from test_report import make_report

    from pipeline.report import write_reports

    nodes = [
        _conv("x", "w1", "a", "conv1"),
        _conv("a", "w2", "b", "conv2"),
        helper.make_node("Add", ["b", "a"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["y"], name="relu"),
    ]
    model = make_model(nodes, [("x", [1, 8, 8, 8])], [("y", [1, 8, 8, 8])],
                       {"w1": weights(8, 8, 3, 3), "w2": weights(8, 8, 3, 3, seed=1)})
    analysis = analyze_onnx(model, a100, FP16, 1).to_dict()
    layers = analysis.pop("layers")  # as pipeline.orchestrate.assemble_report does
    times = {"conv1": 1e-6, "conv2": 2e-6, "add": 0.5e-6, "relu": 0.25e-6}
    for layer in layers:
        layer["measured_s"] = times[layer["name"]]
    report = make_report(measured=False)
    report["analysis"], report["layers"] = analysis, layers
    md = write_reports(report, tmp_path)["md"].read_text()
    assert "The 2 slowest of 2 fused groups (4 ONNX nodes)" in md
    row = next(line for line in md.splitlines() if "| conv2 + add + relu |" in line)
    assert "| 2.75 µs |" in row  # measured = 2 + 0.5 + 0.25 µs
    assert "| Predicted latency, unfused (node by node) |" in md
    assert "| category | fused groups | memory-bound fused groups |" in md
