"""FP16/BF16 conversion for strongly typed TensorRT 11: numerics (onnx ReferenceEvaluator) and typing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx.reference import ReferenceEvaluator

from pipeline.trt.onnx_typed import typed_onnx_from_onnx

_spec = importlib.util.spec_from_file_location("build_engine_tests", Path(__file__).parent / "test_trt_build.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
tiny_onnx = _mod.tiny_onnx


def _producer_types(model):
    """elem type of every tensor after shape inference."""
    m = onnx.shape_inference.infer_shapes(model)
    out = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.value_info) + list(m.graph.output)}
    out.update({t.name: t.data_type for t in m.graph.initializer})
    return out


def test_fp16_conversion_matches_fp32_and_keeps_softmax_fp32(tmp_path):
    src = tiny_onnx(tmp_path / "tiny.onnx")
    dst = typed_onnx_from_onnx(src, tmp_path / "tiny.fp16.onnx", "fp16")
    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    types = _producer_types(model)
    assert types["w"] == TensorProto.FLOAT16 and types["fw"] == TensorProto.FLOAT16
    soft = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert types[soft.input[0]] == TensorProto.FLOAT  # unsafe op fed FP32 through a Cast
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    assert types[conv.output[0]] == TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT

    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = ReferenceEvaluator(str(src)).run(None, {"input": x})[0]
    got = ReferenceEvaluator(str(dst)).run(None, {"input": x})[0]
    assert got.dtype == np.float32
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 1e-2, rel


def test_bf16_conversion_types_and_rounding(tmp_path):
    src = tiny_onnx(tmp_path / "tiny.onnx")
    dst = typed_onnx_from_onnx(src, tmp_path / "tiny.bf16.onnx", "bf16")
    model = onnx.load(str(dst))
    onnx.checker.check_model(model)
    w = next(t for t in model.graph.initializer if t.name == "w")
    assert w.data_type == TensorProto.BFLOAT16
    orig = next(t for t in onnx.load(str(src)).graph.initializer if t.name == "w")
    f32 = onnx.numpy_helper.to_array(orig).ravel()
    bf = np.frombuffer(w.raw_data, dtype=np.uint16).astype(np.uint32) << 16
    back = bf.view(np.float32)
    assert np.max(np.abs(back - f32) / np.abs(f32)) < 2 ** -8  # bf16 keeps 8 mantissa bits


def _block_onnx(path: Path) -> Path:
    """A transformer-like block: MatMul + bias, LayerNorm, a Constant node, Softmax, a residual,
    a Cast to float, Resize (FP32-only scales), Pow sharing an initializer with a low-precision Mul,
    and a graph output ("y") that other nodes read."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(1)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [init("w1", 16, 16), init("b1", 16), init("g", 16), init("beta", 16), init("w2", 16, 16),
             numpy_helper.from_array(np.array([1, 1, 2, 1], np.float32), "scales"),
             numpy_helper.from_array(np.array([2.0], np.float32), "two"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    half = numpy_helper.from_array(np.full((16,), 0.5, np.float32), "half_value")
    n = helper.make_node
    nodes = [
        n("MatMul", ["x", "w1"], ["m"], name="mm1"),
        n("Add", ["m", "b1"], ["h"], name="add1"),
        n("LayerNormalization", ["h", "g", "beta"], ["ln"], axis=-1, epsilon=1e-5, name="ln"),
        n("Constant", [], ["c"], value=half, name="const"),
        n("Mul", ["ln", "c"], ["lnc"], name="mul"),
        n("MatMul", ["lnc", "w2"], ["s"], name="mm2"),
        n("Mul", ["s", "two"], ["s2"], name="scale"),
        n("Softmax", ["s2"], ["p"], axis=-1, name="softmax"),
        n("Add", ["p", "h"], ["y"], name="residual"),
        n("Cast", ["y"], ["yc"], to=TensorProto.FLOAT, name="cast"),
        n("Relu", ["yc"], ["z"], name="relu"),
        n("Unsqueeze", ["z", "axes"], ["z4"], name="unsqueeze"),
        n("Resize", ["z4", "", "scales"], ["r"], mode="nearest", name="resize"),
        n("Pow", ["y", "two"], ["pw"], name="pow"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 16]),
               helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 2, 6, 16]),
               helper.make_tensor_value_info("pw", TensorProto.FLOAT, [2, 3, 16])]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 16])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_fp16_block_runs_on_onnxruntime_within_fp16_tolerance(tmp_path):
    import onnxruntime as ort

    from pipeline.core.accuracy import TOLERANCES

    src = _block_onnx(tmp_path / "block.onnx")
    dst = typed_onnx_from_onnx(src, tmp_path / "block.fp16.onnx", "fp16")
    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    types = _producer_types(model)
    nodes = {n.name: n for n in model.graph.node}
    assert types["w1"] == TensorProto.FLOAT16 and types["w2"] == TensorProto.FLOAT16
    assert types["scales"] == TensorProto.FLOAT  # Resize scales are float32 by the spec
    assert types["two"] == TensorProto.FLOAT  # Pow (kept FP32) reads it too
    assert types[nodes["mm2"].output[0]] == TensorProto.FLOAT16
    assert all(types[t] == TensorProto.FLOAT for t in nodes["ln"].input)  # LayerNorm fed FP32
    assert types[nodes["pow"].input[0]] == TensorProto.FLOAT
    assert nodes["cast"].attribute[0].i == TensorProto.FLOAT16  # a Cast to float inside an FP16 region
    const = next(a.t for a in nodes["const"].attribute if a.name == "value")
    assert const.data_type == TensorProto.FLOAT16
    assert [o.name for o in model.graph.output] == ["y", "r", "pw"]
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in model.graph.output)

    x = np.random.default_rng(4).standard_normal((2, 3, 16)).astype(np.float32)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for r, g in zip(ref, got):
        assert g.dtype == np.float32 and g.shape == r.shape
        rel = np.linalg.norm(g - r) / np.linalg.norm(r)
        assert 0 < rel < TOLERANCES["fp16"]["rel_l2"], rel  # FP16 rounding, within the FP16 limit
