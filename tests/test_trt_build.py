"""Build stage on the CPU: each TensorRT version path's API calls, checked with a recording fake.

TensorRT cannot run here; ``tests/test_trt_fake.py`` provides modules shaped like 8.6, 10.x and
11.x. Real ONNX files (tiny, built with onnx.helper) go through the real onnx library.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.trt import GpuInfo, detect_features, engine_from_onnx, plan_build, profile_shapes
from pipeline.trt.timing_cache import forget_process_timing_caches
from pipeline.trt.features import decode_lib_version
from pipeline.core.config import BuildConfig, PrecisionConfig
from pipeline.core.errors import PipelineError


def _load_fake():
    import importlib.util

    spec = importlib.util.spec_from_file_location("trt_fake_module", Path(__file__).parent / "test_trt_fake.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_fake_trt, FakeCuda = _load_fake().make_fake_trt, _load_fake().FakeCuda

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0", "test")
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0", "test")


def tiny_onnx(path: Path, qdq: bool = False) -> Path:
    """Conv(3->4, 3x3) + Relu + GlobalAveragePool + Flatten + Gemm(4->5) + Softmax, dynamic batch."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    fw = numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "fw")
    fb = numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fb")
    inits = [w, b, fw, fb]
    nodes, x = [], "input"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="/q/QuantizeLinear"),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="/q/DequantizeLinear")]
        x = "dq"
    nodes += [
        helper.make_node("Conv", [x, "w", "b"], ["c"], pads=[1, 1, 1, 1], name="/conv/Conv"),
        helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["f"], name="/flatten/Flatten"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], transB=1, name="/fc/Gemm"),
        helper.make_node("Softmax", ["g"], ["output"], axis=1, name="/softmax/Softmax"),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def called(trt, name):
    return [arg for n, arg in trt.calls if n == name]


@pytest.fixture
def model(tmp_path):
    return tiny_onnx(tmp_path / "tiny.onnx")


def build(trt, onnx_path, tmp_path, precision="fp16", gpu=H100, **kw):
    cfg = BuildConfig(**{k: v for k, v in kw.items() if k in BuildConfig.__dataclass_fields__})
    extra = {k: v for k, v in kw.items() if k not in BuildConfig.__dataclass_fields__}
    return engine_from_onnx(onnx_path, PrecisionConfig(name=precision), cfg, batch_size=2,
                            engines_dir=tmp_path / "engines", model_name="tiny", gpu=gpu, trt=trt,
                            log=lambda m: trt.calls.append(("log", m)), **extra)


def test_decode_library_version_both_encodings():
    assert decode_lib_version(8600) == "8.6.0"
    assert decode_lib_version(8601) == "8.6.1"
    assert decode_lib_version(100300) == "10.3.0"
    assert decode_lib_version(110102) == "11.1.2"


def test_detect_features_per_version():
    f86, f10, f11 = (detect_features(make_fake_trt(v)) for v in ("8.6", "10", "11"))
    assert f86.precision_flags == {"TF32", "FP16", "INT8"} and f86.implicit_int8 and not f86.strongly_typed_flag
    assert f86.explicit_batch_flag and not f86.strongly_typed_only
    assert {"BF16", "FP8"} <= f10.precision_flags and f10.strongly_typed_flag and f10.implicit_int8
    assert f11.strongly_typed_only and not f11.implicit_int8 and not f11.explicit_batch_flag
    assert f11.precision_flags == {"TF32"} and f11.sparse_weights and f11.timing_cache


@pytest.mark.parametrize("version,precision,needle,hint_needle", [
    ("8.6", "bf16", "not available on TensorRT", "TensorRT 10+"),
    ("8.6", "fp8", "not available on TensorRT", "TensorRT 10+"),
    ("11", "int8", "removed in TensorRT 11", "quantize"),
])
def test_impossible_paths_raise_with_a_hint(version, precision, needle, hint_needle):
    f = detect_features(make_fake_trt(version))
    with pytest.raises(PipelineError) as err:
        plan_build(f, precision, BuildConfig(), has_qdq=False, has_calibration=True)
    assert needle in err.value.message and hint_needle in err.value.hint


def test_fp8_needs_hopper_or_ada_and_fp8_qdq():
    f10 = detect_features(make_fake_trt("10"))
    with pytest.raises(PipelineError, match="compute capability >= 8.9"):
        plan_build(f10, "fp8", BuildConfig(), has_qdq=True, has_calibration=False, qdq_types=["fp8"], gpu=A100)
    with pytest.raises(PipelineError, match="FP8 Q/DQ"):
        plan_build(f10, "fp8", BuildConfig(), has_qdq=False, has_calibration=False, gpu=H100)
    p = plan_build(f10, "fp8", BuildConfig(), has_qdq=True, has_calibration=False, qdq_types=["fp8"], gpu=H100)
    assert "FP8" in p.set_flags


def test_plans_per_precision_on_86():
    f = detect_features(make_fake_trt("8.6"))
    assert plan_build(f, "fp32", BuildConfig(), False, False).clear_flags == ["TF32"]
    assert plan_build(f, "tf32", BuildConfig(), False, False).set_flags == ["TF32"]
    p = plan_build(f, "int8", BuildConfig(calibrator="minmax", sparse_weights=True), False, True)
    assert p.set_flags == ["INT8", "FP16", "SPARSE_WEIGHTS"] and p.calibrator == "minmax"
    with pytest.raises(PipelineError, match="needs calibration data"):
        plan_build(f, "int8", BuildConfig(), has_qdq=False, has_calibration=False)
    best = plan_build(f, "best", BuildConfig(), has_qdq=True, has_calibration=False)
    assert best.set_flags == ["TF32", "FP16", "INT8"]


def test_profile_shapes_dynamic_and_errors():
    s = profile_shapes([{"name": "x", "shape": [None, 3, 8, 8]}], 4, BuildConfig(min_batch=1, max_batch=8))
    assert s == {"x": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}}
    with pytest.raises(PipelineError, match="fixed batch of 2"):
        profile_shapes([{"name": "x", "shape": [2, 3]}], 4, BuildConfig())
    with pytest.raises(PipelineError, match="dynamic non-batch"):
        profile_shapes([{"name": "x", "shape": [None, None]}], 4, BuildConfig())
    with pytest.raises(PipelineError, match="does not hold"):
        profile_shapes([{"name": "x", "shape": [None, 3]}], 16, BuildConfig(max_batch=8))


def test_trt86_fp16_build_sidecar_cache_hit_and_rebuilds(model, tmp_path):
    trt = make_fake_trt("8.6")
    art = build(trt, model, tmp_path)
    assert not art.cache_hit and art.plan_path.name.startswith("tiny-") and art.plan_path.suffix == ".plan"
    assert called(trt, "set_flag") == ["FP16"]
    assert called(trt, "create_network") == [1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)]
    assert called(trt, "add_optimization_profile") == [{"input": ([2, 3, 8, 8], [2, 3, 8, 8], [2, 3, 8, 8])}]
    assert called(trt, "builder_optimization_level") == [3]
    assert called(trt, "set_memory_pool_limit") == [4096 << 20]
    side = json.loads(art.sidecar_path.read_text())
    assert side["tensorrt"]["library_version"] == "8.6.1" and side["gpu"]["name"] == H100.name
    assert side["layers"][0]["Name"] == "/conv/Conv + /relu/Relu"
    timing = list((tmp_path / "engines").glob("timing-*.cache"))
    assert len(timing) == 1 and side["timing_cache"]["loaded"] is False

    trt.calls.clear()
    again = build(trt, model, tmp_path)
    assert again.cache_hit and not called(trt, "build_serialized_network")
    assert again.plan_path == art.plan_path

    trt.calls.clear()
    other_gpu = build(trt, model, tmp_path, gpu=A100)
    assert not other_gpu.cache_hit and called(trt, "build_serialized_network")
    assert any("was built for NVIDIA H100" in m for m in called(trt, "log"))
    # The A100 gets its own timing cache (fresh, 0 bytes), then the saved one is read back once.
    assert called(trt, "create_timing_cache") == [0, len(b"TCACHE-v1")]

    trt.calls.clear()
    warm = build(trt, model, tmp_path, gpu=A100, force_rebuild=True)  # same process: the cache from memory
    assert warm.sidecar["timing_cache"]["loaded"] is True and warm.sidecar["timing_cache"]["source"] == "memory"
    assert called(trt, "create_timing_cache") == [len(b"TCACHE-v1")]  # only the read-back check

    forget_process_timing_caches()  # as a new process: the cache file
    trt.calls.clear()
    cold_process = build(trt, model, tmp_path, gpu=A100, force_rebuild=True)
    assert cold_process.sidecar["timing_cache"]["source"] == "file" and called(trt, "create_timing_cache")[0] > 0


def test_engine_from_another_tensorrt_version_is_rebuilt(model, tmp_path):
    build(make_fake_trt("8.6"), model, tmp_path)
    trt10 = make_fake_trt("10")
    art = build(trt10, model, tmp_path)
    assert not art.cache_hit
    assert any("built by TensorRT 8.6.1; this is TensorRT 10.3.0" in m for m in called(trt10, "log"))
    assert not called(trt10, "deserialize_cuda_engine") or called(trt10, "build_serialized_network")


def test_trt86_int8_calibration_writes_then_reads_cache(model, tmp_path):
    trt = make_fake_trt("8.6")
    rng = np.random.default_rng(1)
    batches = [{"input": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    batches.append({"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)})  # short tail: dropped
    cache = tmp_path / "tiny.calib.cache"
    cuda = FakeCuda()
    art = build(trt, model, tmp_path, precision="int8", calib_batches=batches, calibration_cache=cache, cuda=cuda)
    assert called(trt, "IInt8EntropyCalibrator2.__init__") and called(trt, "set_calibration_profile")
    assert sorted(called(trt, "set_flag")) == ["FP16", "INT8"]
    assert len(called(trt, "calibration_batch")) == 3 and cuda.copies == 3
    assert art.sidecar["calibration"]["samples_dropped"] == 1 and cache.is_file()
    assert json.loads(Path(str(cache) + ".json").read_text())["calibrator"] == "entropy"

    trt.calls.clear()
    build(trt, model, tmp_path, precision="int8", calib_batches=batches, calibration_cache=cache, cuda=cuda,
          force_rebuild=True)
    assert called(trt, "calibration_cache_read") and not called(trt, "calibration_batch")

    trt.calls.clear()
    mm = build(trt, model, tmp_path, precision="int8", calib_batches=batches, calibration_cache=cache, cuda=cuda,
               calibrator="minmax")
    assert called(trt, "IInt8MinMaxCalibrator.__init__") and called(trt, "calibration_batch")  # other calibrator
    assert mm.plan_path != art.plan_path


def test_trt10_bf16_and_qdq_int8(model, tmp_path):
    trt = make_fake_trt("10")
    build(trt, model, tmp_path, precision="bf16")
    assert called(trt, "set_flag") == ["BF16"]
    trt.calls.clear()
    qdq = tiny_onnx(tmp_path / "tiny.qdq.onnx", qdq=True)
    art = build(trt, qdq, tmp_path, precision="int8")
    assert sorted(called(trt, "set_flag")) == ["FP16", "INT8"] and not called(trt, "int8_calibrator")
    assert art.sidecar["plan"]["explicit_quantization"] is True


def test_trt11_fp16_converts_onnx_strongly_typed(model, tmp_path):
    trt = make_fake_trt("11")
    art = build(trt, model, tmp_path, precision="fp16")
    assert not called(trt, "set_flag")
    assert called(trt, "create_network") == [1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)]
    parsed = Path(called(trt, "parse_from_file")[0])
    assert parsed.name.endswith(".fp16.onnx")
    types = {t.name: t.data_type for t in onnx.load(str(parsed)).graph.initializer}
    assert types["w"] == TensorProto.FLOAT16
    assert art.sidecar["plan"]["typed_conversion"] == "fp16"


def test_trt11_int8_only_from_qdq(model, tmp_path):
    trt = make_fake_trt("11")
    with pytest.raises(PipelineError) as err:
        build(trt, model, tmp_path, precision="int8", calib_batches=[{"input": np.zeros((2, 3, 8, 8), np.float32)}])
    assert "build.qdq_onnx" in err.value.hint
    qdq = tiny_onnx(tmp_path / "tiny.qdq.onnx", qdq=True)
    art = build(trt, qdq, tmp_path, precision="int8")
    assert art.sidecar["plan"]["strongly_typed"] and not called(trt, "set_flag")


def test_input_format_fp16_sets_float_inputs_and_names_the_engine(model, tmp_path):
    trt = make_fake_trt("8.6")
    plain = build(trt, model, tmp_path, precision="int8", calib_batches=[{"input": np.zeros((2, 3, 8, 8), np.float32)}],
                  cuda=FakeCuda())
    assert not called(trt, "tensor.dtype")
    trt.calls.clear()
    half = build(trt, model, tmp_path, precision="int8", input_format="fp16",
                 calib_batches=[{"input": np.zeros((2, 3, 8, 8), np.float32)}], cuda=FakeCuda())
    assert called(trt, "tensor.dtype") == [("input", "HALF")]
    assert called(trt, "tensor.allowed_formats") == [("input", 1 << int(trt.TensorFormat.LINEAR))]
    assert half.plan_path != plain.plan_path and half.sidecar["plan"]["input_format"] == "fp16"
    assert half.sidecar["key"]["input_format"] == "fp16" and "input_format" not in plain.sidecar["key"]


def test_input_format_refused_where_it_cannot_apply(model, tmp_path):
    with pytest.raises(PipelineError, match="strongly typed") as err:
        build(make_fake_trt("11"), model, tmp_path, precision="fp16", input_format="fp16")
    assert "float16 inputs" in err.value.hint
    with pytest.raises(PipelineError, match="not offered") as err:
        build(make_fake_trt("8.6"), model, tmp_path, precision="fp16", input_format="int8")
    assert "input_format=fp16" in err.value.hint
    with pytest.raises(PipelineError, match="Unknown build.input_format"):
        build(make_fake_trt("8.6"), model, tmp_path, precision="fp16", input_format="bf8")


def test_tactic_sources_mask_and_unknown(model, tmp_path):
    trt = make_fake_trt("8.6")
    build(trt, model, tmp_path, tactic_sources=["cublas_lt", "edge_mask_convolutions"])
    assert called(trt, "set_tactic_sources") == [(1 << 1) | (1 << 3)]
    with pytest.raises(PipelineError, match="Unknown tactic source"):
        build(trt, model, tmp_path, tactic_sources=["winograd"], force_rebuild=True)


def test_small_calibration_set_is_repeated_to_the_engine_batch(model, tmp_path):
    # 1 sample per batch for a batch-2 engine: TensorRT calibrates at the engine's shape, so the
    # samples are re-chunked (and a set smaller than one batch repeated) rather than skipped.
    trt = make_fake_trt("8.6")
    cuda = FakeCuda()
    one = [{"input": np.full((1, 3, 8, 8), 1.0, np.float32)}]
    art = build(trt, model, tmp_path, precision="int8", calib_batches=one, cuda=cuda)
    assert called(trt, "set_calibration_profile") == [{"input": ([2, 3, 8, 8],) * 3}]
    assert len(called(trt, "calibration_batch")) == 1 and "repeated 2x" in art.sidecar["calibration"]["rebatch_note"]
    two = [{"input": np.full((1, 3, 8, 8), float(i), np.float32)} for i in range(2)]
    trt.calls.clear()
    build(trt, model, tmp_path, precision="int8", calib_batches=two, cuda=cuda)
    assert len(called(trt, "calibration_batch")) == 1
    assert cuda.last.shape == (2, 3, 8, 8) and set(np.unique(cuda.last)) == {0.0, 1.0}  # both samples, one batch


def test_timing_cache_tensorrt_cannot_read_back_is_not_saved(model, tmp_path):
    # TensorRT 8.6.0 serializes Myelin entries it cannot deserialize: such a cache must neither be
    # written (every later build would drop it whole) nor replace a readable one.
    trt = make_fake_trt("8.6")
    good = build(trt, model, tmp_path)
    cache_file = Path(good.sidecar["timing_cache"]["path"])
    assert good.sidecar["timing_cache"]["saved"] and cache_file.read_bytes() == b"TCACHE-v1"

    trt.unreadable_timing_cache = True
    trt.calls.clear()
    bad = build(trt, model, tmp_path, force_rebuild=True)
    tc = bad.sidecar["timing_cache"]
    assert tc["loaded"] is True and tc["saved"] is False
    assert "could not be read back" in tc["save_note"] and "Myelin" in tc["save_note"]
    assert "previous cache file is kept" in tc["save_note"]
    assert cache_file.read_bytes() == b"TCACHE-v1"  # the readable cache survives
    assert any("could not be read back" in m for m in called(trt, "log"))

    fresh = tmp_path / "fresh"
    first = engine_from_onnx(model, PrecisionConfig(name="fp16"), BuildConfig(), 2, fresh, "tiny", gpu=H100, trt=trt,
                             log=lambda m: None)
    assert not first.sidecar["timing_cache"]["saved"] and "no cache file is written" in first.sidecar["timing_cache"]["save_note"]
    assert not list(fresh.glob("timing-*.cache"))


def test_timing_cache_rejected_on_load_is_reported(model, tmp_path):
    trt = make_fake_trt("8.6")
    art = build(trt, model, tmp_path)
    cache_file = Path(art.sidecar["timing_cache"]["path"])
    cache_file.write_bytes(b"TCACHE+MYELIN-v1")  # e.g. left by an older build of this tool
    forget_process_timing_caches()  # a new process reads the file
    again = build(trt, model, tmp_path, force_rebuild=True)
    tc = again.sidecar["timing_cache"]
    assert tc["loaded"] is False and tc["bytes_in"] == len(b"TCACHE+MYELIN-v1")
    assert tc["note"].startswith("TensorRT rejected the timing cache") and "will not be used" in tc["note"]
    assert tc["saved"] and cache_file.read_bytes() == b"TCACHE-v1"  # replaced by this build's readable cache
    assert build(trt, model, tmp_path, force_rebuild=True).sidecar["timing_cache"]["loaded"] is True


def test_timing_cache_off_creates_none(model, tmp_path):
    trt = make_fake_trt("8.6")
    art = build(trt, model, tmp_path, timing_cache=False)
    assert not called(trt, "create_timing_cache") and not list((tmp_path / "engines").glob("timing-*.cache"))
    assert art.sidecar["timing_cache"] == {"path": None, "loaded": False, "source": None, "note": "", "bytes_in": 0,
                                           "saved": False, "save_note": ""}


def test_timing_cache_reused_from_memory_where_the_file_cannot_be_read(model, tmp_path):
    # TensorRT 8.6.0 (the GPU sandbox) cannot deserialize any cache it writes; a second build in
    # the same process (a sweep, the benchmark) still gets the first build's timings from memory.
    trt = make_fake_trt("8.6")
    trt.unreadable_timing_cache = True
    first = build(trt, model, tmp_path)
    assert not first.sidecar["timing_cache"]["saved"]
    second = build(trt, model, tmp_path, force_rebuild=True)
    tc = second.sidecar["timing_cache"]
    assert tc["loaded"] and tc["source"] == "memory" and tc["bytes_in"] == 0
    # The cache stays with the builder that created it (a TensorRT 8.6 cache must not outlive it).
    from pipeline.trt.timing_cache import _PROCESS_TIMING_CACHES

    assert _PROCESS_TIMING_CACHES[tc["path"]][0] is trt.builders[0] and len(trt.builders) == 2
    assert any("with a warm timing cache" in m for m in called(trt, "log"))
    forget_process_timing_caches()
    third = build(trt, model, tmp_path, force_rebuild=True)
    assert not third.sidecar["timing_cache"]["loaded"] and third.sidecar["timing_cache"]["source"] is None


def test_preview_features_set_recorded_and_checked(model, tmp_path):
    trt = make_fake_trt("8.6")
    default = build(trt, model, tmp_path)
    assert default.sidecar["preview_features"]["faster_dynamic_shapes_0805"] is True
    assert not called(trt, "set_preview_feature")
    off = build(trt, model, tmp_path, preview_features={"faster_dynamic_shapes_0805": False})
    assert called(trt, "set_preview_feature") == [("FASTER_DYNAMIC_SHAPES_0805", False)]
    assert off.sidecar["preview_features"]["faster_dynamic_shapes_0805"] is False
    assert off.plan_path != default.plan_path  # a different engine, cached under its own key
    with pytest.raises(PipelineError) as err:
        build(make_fake_trt("10"), model, tmp_path, preview_features={"faster_dynamic_shapes_0805": False})
    assert "has no preview feature" in err.value.message and "profile_sharing_0806" in err.value.hint
