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
