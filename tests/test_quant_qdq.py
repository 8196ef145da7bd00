"""Q/DQ placement (TensorRT rules) and the writer: the graph checks, runs in ORT and stays close to FP32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.quantize.qdq import plan_qdq, qdq_onnx_from_onnx
from pipeline.quantize.scales import symmetric_qparams


def _init(name, shape, seed):
    return numpy_helper.from_array((np.random.default_rng(seed).standard_normal(shape) * 0.3).astype(np.float32), name)


def resnet_block(opset: int = 17) -> onnx.ModelProto:
    """conv-relu, conv-bn, residual add with the relu output, relu, maxpool, GAP, flatten, Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "g", "b", "m", "v"], ["n2"], name="bn2"),
        helper.make_node("Add", ["n2", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["gp"], name="gap"),
        helper.make_node("Flatten", ["gp"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "Wf", "Bf"], ["y"], name="fc", transB=1),
    ]
    inits = [_init("W1", (8, 3, 3, 3), 1), _init("B1", (8,), 2), _init("W2", (8, 8, 3, 3), 3),
             numpy_helper.from_array(np.ones(8, np.float32), "g"), numpy_helper.from_array(np.zeros(8, np.float32), "b"),
             numpy_helper.from_array(np.zeros(8, np.float32), "m"), numpy_helper.from_array(np.ones(8, np.float32), "v"),
             _init("Wf", (5, 8), 4), _init("Bf", (5,), 5)]
    g = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def attention_like() -> onnx.ModelProto:
    """x @ Wq (weight MatMul), then q @ q^T (activation x activation, like attention scores)."""
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q"], name="proj"),
             helper.make_node("Transpose", ["q"], ["qt"], name="tr", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "qt"], ["s"], name="scores")]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
                          [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 4, 4])], [_init("Wq", (6, 6), 7)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_plan_follows_tensorrt_placement():
    plan = plan_qdq(resnet_block())
    # Compute-op inputs, the residual (skip) input of the add, and pooling inputs.
    assert set(plan.activations) == {"x", "r1", "r2", "p", "f"}
    slots = dict((t, sorted(s)) for t, s in plan.activations.items())
    assert (4, 1) in slots["r1"]       # Add input 1 = the skip branch; the conv/bn side (n2) stays fused
    assert "n2" not in plan.activations
    assert {w: s.axis for w, s in plan.weights.items()} == {"W1": 0, "W2": 0, "Wf": 0}  # transB=1 -> axis 0
    assert "B1" not in plan.weights and "Bf" not in plan.weights
    assert plan_qdq(resnet_block(), per_channel=False).weights["W1"].axis is None
    assert "add" not in plan_qdq(resnet_block(), residual_add=False).nodes
    assert "p" not in plan_qdq(resnet_block(), pooling=False).activations


def test_matmul_weight_axis_bmm_switch_and_exclusion():
    plan = plan_qdq(attention_like())
    assert plan.weights["Wq"].axis == 1  # x @ W: output channels on W's last axis
    assert set(plan.activations) == {"x", "q", "qt"}
    no_bmm = plan_qdq(attention_like(), quantize_bmm=False)
    assert "scores" in no_bmm.skipped and set(no_bmm.activations) == {"x"}
    excl = plan_qdq(attention_like(), exclude_nodes=["pro*"])
    assert "proj" in excl.skipped and "Wq" not in excl.weights


def _qparams(plan, amax=4.0):
    return {t: symmetric_qparams(amax) for t in plan.activations}


def test_written_graph_checks_runs_and_stays_close_to_fp32():
    import onnxruntime as ort

    from pipeline.quantize.stats import collect_stats

    model = resnet_block()
    plan = plan_qdq(model)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    stats = collect_stats(model, [{"x": x}], list(plan.activations), progress=False)
    q = qdq_onnx_from_onnx(model, plan, {t: symmetric_qparams(s.amax) for t, s in stats.items()})
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == len(plan.activations) + len(plan.weights) == 8
    assert ops.count("DequantizeLinear") == 8
    wq = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "W2")
    assert [a.i for a in wq.attribute if a.name == "axis"] == [0]
    add = next(n for n in q.graph.node if n.name == "add")
    assert add.input[0] == "n2" and add.input[1].endswith("DequantizeLinear_Output")
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    out = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    cos = (ref * out).sum() / np.linalg.norm(ref) / np.linalg.norm(out)
    assert cos > 0.995
    assert not np.array_equal(ref, out)  # the Q/DQ pairs really changed the numbers
    assert model.graph.node[0].input[0] == "x"  # input model untouched


def test_old_opset_is_converted_for_per_channel_axis():
    model = resnet_block(opset=11)
    plan = plan_qdq(model)
    q = qdq_onnx_from_onnx(model, plan, _qparams(plan))
    assert next(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) == 17
