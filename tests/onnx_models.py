"""Tiny ONNX models built with ``onnx.helper``, shared by the tests (as Polygraphy's tests/models/meta.py).

Every builder returns a checked ``onnx.ModelProto`` with deterministic weights (numpy seed 0), so
models run under ONNX Runtime and ``onnx.reference``. Use :func:`single_node` for one-op models
and :data:`MODELS` for the named networks.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DimLike = Union[int, str]


def _value_info(name: str, shape: Optional[Sequence[DimLike]], elem_type: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[Tuple[str, Optional[Sequence[DimLike]]]],
    outputs: Sequence[Tuple[str, Optional[Sequence[DimLike]]]],
    initializers: Optional[Dict[str, np.ndarray]] = None,
    opset: int = OPSET,
    input_types: Optional[Dict[str, int]] = None,
    output_types: Optional[Dict[str, int]] = None,
    name: str = "tiny",
    check: bool = True,
    extra_opsets: Optional[Dict[str, int]] = None,
) -> onnx.ModelProto:
    """Assemble a graph.

    Args:
        nodes: the nodes, in topological order.
        inputs / outputs: (name, shape) pairs; a shape entry may be a symbolic name ("batch");
            an output shape of None leaves it to shape inference.
        initializers: constant tensors by name (their dtype is kept).
        opset: default-domain opset.
        input_types / output_types: TensorProto element types by name (default FLOAT).
        check: run onnx.checker (turn off for models with custom-domain ops).
        extra_opsets: opset versions of other domains, e.g. {"com.example": 1}.
    """
    input_types = input_types or {}
    output_types = output_types or {}
    graph = helper.make_graph(
        list(nodes),
        name,
        [_value_info(n, s, input_types.get(n, TensorProto.FLOAT)) for n, s in inputs],
        [_value_info(n, s, output_types.get(n, TensorProto.FLOAT)) for n, s in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()],
    )
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    if any(s is None for _, s in outputs):
        # Fill unspecified output shapes from shape inference (the checker wants a shape field).
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
        inferred.update({vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.output})
        for out in model.graph.output:
            src = inferred.get(out.name)
            if src is not None and src.type.tensor_type.HasField("shape"):
                out.type.CopyFrom(src.type)
            elif not out.type.tensor_type.HasField("shape"):
                out.type.tensor_type.shape.SetInParent()
    if check:
        onnx.checker.check_model(model)
    return model


def weights(*shape: int, seed: int = 0, dtype: Any = np.float32) -> np.ndarray:
    """Deterministic small random weights."""
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(dtype)


def single_node(
    op_type: str,
    inputs: Sequence[Tuple[str, Sequence[DimLike]]],
    initializers: Optional[Dict[str, np.ndarray]] = None,
    attrs: Optional[Dict[str, Any]] = None,
    n_outputs: int = 1,
    opset: int = OPSET,
    input_types: Optional[Dict[str, int]] = None,
    output_types: Optional[Dict[str, int]] = None,
    node_inputs: Optional[List[str]] = None,
    domain: str = "",
) -> onnx.ModelProto:
    """A model of one node ``op_type`` reading ``inputs`` (graph inputs) and ``initializers``.

    The node's inputs are ``node_inputs`` when given (use "" for an absent optional input), else
    the graph inputs followed by the initializers in order. Outputs are ``y`` (``y0, y1...`` for
    several), shapes left to shape inference.
    """
    initializers = initializers or {}
    names = node_inputs if node_inputs is not None else [n for n, _ in inputs] + list(initializers)
    outs = ["y"] if n_outputs == 1 else [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outs, name=f"{op_type.lower()}0", domain=domain, **(attrs or {}))
    return make_model([node], inputs, [(o, None) for o in outs], initializers, opset,
                      input_types, output_types, name=op_type, check=not domain,
                      extra_opsets={domain: 1} if domain else None)


def conv(c_in: int = 64, c_out: int = 64, hw: int = 56, k: int = 3, batch: DimLike = 1, group: int = 1,
         stride: int = 1, dilation: int = 1, pad: Optional[int] = None, bias: bool = False) -> onnx.ModelProto:
    """One Conv: x[batch, c_in, hw, hw] -> y, weight [c_out, c_in/group, k, k] ("same" pads by default)."""
    pad = (dilation * (k - 1)) // 2 if pad is None else pad
    inits = {"w": weights(c_out, c_in // group, k, k)}
    if bias:
        inits["b"] = weights(c_out, seed=1)
    return single_node("Conv", [("x", [batch, c_in, hw, hw])], inits,
                       dict(kernel_shape=[k, k], pads=[pad] * 4, strides=[stride, stride],
                            dilations=[dilation, dilation], group=group))


def depthwise_separable(channels: int = 32, out_channels: int = 64, hw: int = 56,
                        batch: DimLike = 1) -> onnx.ModelProto:
    """MobileNet block: 3x3 depthwise conv -> Relu -> 1x1 pointwise conv (no biases)."""
    nodes = [
        helper.make_node("Conv", ["x", "w_dw"], ["dw"], name="depthwise", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], group=channels),
        helper.make_node("Relu", ["dw"], ["act"], name="relu"),
        helper.make_node("Conv", ["act", "w_pw"], ["y"], name="pointwise", kernel_shape=[1, 1]),
    ]
    inits = {"w_dw": weights(channels, 1, 3, 3), "w_pw": weights(out_channels, channels, 1, 1, seed=1)}
    return make_model(nodes, [("x", [batch, channels, hw, hw])], [("y", [batch, out_channels, hw, hw])],
                      inits, name="depthwise_separable")


def mlp(in_features: int = 16, hidden: int = 32, classes: int = 10, batch: DimLike = "batch") -> onnx.ModelProto:
    """Gemm(transB) -> Relu -> Gemm(transB) -> Softmax, with a symbolic batch dim by default."""
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["a"], name="relu"),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    inits = {"w1": weights(hidden, in_features), "b1": weights(hidden, seed=1),
             "w2": weights(classes, hidden, seed=2), "b2": weights(classes, seed=3)}
    return make_model(nodes, [("x", [batch, in_features])], [("y", [batch, classes])], inits, name="mlp")


def small_cnn(batch: DimLike = "batch", channels: int = 8, hw: int = 16, classes: int = 10) -> onnx.ModelProto:
    """Conv(bias) -> BatchNorm -> Relu -> MaxPool -> GlobalAveragePool -> Flatten -> Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    inits = {
        "w": weights(channels, 3, 3, 3), "b": weights(channels, seed=1),
        "gamma": np.ones(channels, np.float32), "beta": np.zeros(channels, np.float32),
        "mean": np.zeros(channels, np.float32), "var": np.ones(channels, np.float32),
        "fc_w": weights(classes, channels, seed=2), "fc_b": weights(classes, seed=3),
    }
    return make_model(nodes, [("x", [batch, 3, hw, hw])], [("y", [batch, classes])], inits, name="small_cnn")


def attention(batch: DimLike = 1, heads: int = 2, seq: int = 8, head_dim: int = 4) -> onnx.ModelProto:
    """Scaled dot-product attention core: softmax(Q K^T * s) V on [batch, heads, seq, head_dim]."""
    shape = [batch, heads, seq, head_dim]
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], name="k_transpose", perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["y"], name="av"),
    ]
    inits = {"scale": np.array(1.0 / np.sqrt(head_dim), np.float32)}
    return make_model(nodes, [("q", shape), ("k", shape), ("v", shape)], [("y", shape)], inits, name="attention")


#: Named networks for tests that want "some small model".
MODELS: Dict[str, Callable[[], onnx.ModelProto]] = {
    "conv": conv,
    "depthwise_separable": depthwise_separable,
    "mlp": mlp,
    "small_cnn": small_cnn,
    "attention": attention,
}
