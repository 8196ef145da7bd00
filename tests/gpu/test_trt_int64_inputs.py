"""Real TensorRT: an engine from an ONNX with int64 ids and mask (the BERT input signature).

TensorRT 8.6 builds such inputs as int32 engine inputs; the profile stage must bind them in the
engine's dtype (Polygraphy's TrtRunner refused int64 feeds: "Received unexpected dtype: int64.
Expected int32"), check values against ONNX Runtime, and refuse ids that do not fit int32.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU tests need it)")

from pipeline.core.config import BuildConfig, PrecisionConfig, ProfileConfig  # noqa: E402
from pipeline.core.errors import PipelineError  # noqa: E402
from pipeline.trt import engine_from_onnx, profile_engine  # noqa: E402

pytestmark = pytest.mark.gpu

_spec = importlib.util.spec_from_file_location("transformer_onnx", Path(__file__).parent / "transformer_onnx.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)

FAST = ProfileConfig(warmup_s=0.1, duration_s=0.2, min_iterations=20, layer_runs=2)


@pytest.fixture(scope="module")
def built(ready, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int64")
    onnx_file = _mod.tiny_transformer(tmp / "tiny_transformer.onnx")
    art = engine_from_onnx(onnx_file, PrecisionConfig(name="fp32"), BuildConfig(workspace_mb=256), 4, tmp / "engines",
                           "tiny_transformer")
    return onnx_file, art


def test_int64_ids_profile_with_accuracy_and_telemetry(built):
    onnx_file, art = built
    io = {t["name"]: t["dtype"] for t in art.sidecar["io"]}
    assert io["input_ids"] in ("INT32", "INT64") and io["logits"] == "FLOAT", io
    batches = [_mod.token_batch(4, seed=s) for s in range(3)]
    prof = profile_engine(art.plan_path, batches[0], FAST, onnx_path=onnx_file, precision=PrecisionConfig(name="fp32"),
                          accuracy_batches=batches)
    acc = prof.accuracy
    assert acc["passed"] and acc["samples"] == 12 and acc["batches"] == 3, acc
    assert acc["top1_agreement"] == 1.0 and acc["output"] == "logits", acc
    assert prof.measurement.iterations >= 20 and prof.layers
    tel = prof.measured_dict()["gpu_telemetry"]
    assert tel["available"] and tel["samples"] >= 1 and tel["sm_clock_mhz"]["max"] > 0, tel
    assert prof.measured_dict()["with_copies"]["gpu_telemetry"]["available"]


def test_ids_beyond_int32_are_refused_with_the_input_named(built):
    onnx_file, art = built
    if {t["name"]: t["dtype"] for t in art.sidecar["io"]}["input_ids"] != "INT32":
        pytest.skip("this TensorRT keeps int64 inputs")
    feed = _mod.token_batch(4)
    feed["input_ids"][0, 0] = 2**40
    cfg = ProfileConfig(warmup_s=0.0, duration_s=0.0, min_iterations=1, with_copies=False, layer_times=False,
                        accuracy_check=False)
    with pytest.raises(PipelineError) as err:
        profile_engine(art.plan_path, feed, cfg)
    assert "'input_ids'" in err.value.message and str(2**40) in err.value.message
    assert "[-2147483648, 2147483647]" in err.value.message


def test_fp16_engine_from_int64_model(built, tmp_path):
    onnx_file, _ = built
    art = engine_from_onnx(onnx_file, PrecisionConfig(name="fp16"), BuildConfig(workspace_mb=256), 4,
                           tmp_path / "engines", "tiny_transformer")
    cfg = ProfileConfig(warmup_s=0.05, duration_s=0.1, min_iterations=10, with_copies=False, layer_times=False)
    prof = profile_engine(art.plan_path, _mod.token_batch(4), cfg, onnx_path=onnx_file,
                          precision=PrecisionConfig(name="fp16"))
    assert prof.accuracy["passed"], prof.accuracy
