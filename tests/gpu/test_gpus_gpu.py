"""One sweep over every GPU of a host, on real GPUs: NVML follows the job's CUDA_VISIBLE_DEVICES, a pinned job
records its GPU's NVML facts, the timing-cache merge with TensorRT's ``ITimingCache.combine``, and the data-parallel
throughput of a real engine timed on every visible GPU at once.

Skipped with the reason where TensorRT or a GPU is absent (see tests/conftest.py). On a one-GPU machine the
data-parallel figure is one GPU against itself (scaling about 1); a second run on GPU 0 twice still times two
processes in one window through the barrier.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (GPU tests need it)")

from pipeline.core.config import BuildConfig, PrecisionConfig  # noqa: E402
from pipeline.trt import engine_from_onnx  # noqa: E402

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location("build_engine_tests", REPO / "tests" / "test_trt_build.py")
_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mod)
tiny_onnx = _mod.tiny_onnx


@pytest.fixture(scope="module")
def plan(ready, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp")
    art = engine_from_onnx(tiny_onnx(tmp / "tiny.onnx"), PrecisionConfig(name="fp16"), BuildConfig(workspace_mb=256),
                           16, tmp / "engines", "tiny")
    return art.plan_path


def _nvml_uuids():
    from pipeline.core.gpu import all_device_facts

    facts, why = all_device_facts()
    if not facts:
        pytest.skip(f"NVML lists no GPU: {why}")
    return [f["uuid"] for f in facts]


def test_nvml_follows_cuda_visible_devices(ready, monkeypatch):
    from pipeline.core.gpu import device_facts

    uuids = _nvml_uuids()
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    for k, uuid in enumerate(uuids):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", str(k))
        assert device_facts(0)["uuid"] == uuid  # CUDA device 0 of a job pinned to GPU k is NVML's device k
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuid[:12])  # a UUID prefix, as CUDA accepts
        assert device_facts(0)["uuid"] == uuid
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert device_facts(0) is None


def test_a_pinned_job_records_its_gpu(ready, tmp_path):
    uuids = _nvml_uuids()
    code = ("import json; from pipeline.optimize import gpus; gpus.pin_job(%r, log=lambda m: None); "
            "print(json.dumps(gpus.job_gpu()))" % str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))),
                         capture_output=True, text=True, timeout=120, check=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["id"] == "0" and rec["uuid"] == uuids[0] and rec["name"] and rec["max_sm_clock_mhz"]


def test_timing_caches_of_two_processes_merge(ready, tmp_path):
    # Two builds that did not see each other's cache (two processes): the second save combines the file's timings.
    import onnx

    from pipeline.trt.logger import recording_logger
    from pipeline.trt.timing_cache import forget_process_timing_caches, merge_cache_file
    from tests.onnx_models import conv

    blobs = []
    for i, hw in enumerate((16, 32)):
        path = tmp_path / f"conv{hw}.onnx"
        onnx.save(conv(c_in=3, c_out=16, hw=hw, batch="N"), str(path))
        forget_process_timing_caches()
        art = engine_from_onnx(path, PrecisionConfig(name="fp16"), BuildConfig(workspace_mb=256), 4,
                               tmp_path / f"engines{i}", "conv")
        if not art.sidecar["timing_cache"]["saved"]:
            pytest.skip(f"this TensorRT cannot read its timing cache back: {art.sidecar['timing_cache']['save_note']}")
        blobs.append(Path(art.sidecar["timing_cache"]["path"]).read_bytes())
    logger = recording_logger(trt, lambda m: None)
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    assert config.set_timing_cache(config.create_timing_cache(blobs[1]), False)
    other = tmp_path / "engines0" / Path(art.sidecar["timing_cache"]["path"]).name
    assert merge_cache_file(config, other, logger)
    merged = bytes(config.get_timing_cache().serialize())
    assert len(merged) > max(len(b) for b in blobs), (len(merged), [len(b) for b in blobs])


def test_data_parallel_throughput_of_a_real_engine(plan, tmp_path):
    from pipeline.optimize.dataparallel import main
    from pipeline.optimize.gpus import visible_gpus

    gpus = visible_gpus()
    out = tmp_path / "dp.json"
    assert main([str(plan), "--seconds", "1", "--warmup", "0.3", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["gpus"] == gpus and res["n"] == len(gpus) and res["single_samples_s"] > 0
    assert all(r["throughput_samples_s"] > 0 and r["iterations"] >= 10 for r in res["per_gpu"])
    assert res["sum_samples_s"] == pytest.approx(sum(r["throughput_samples_s"] for r in res["per_gpu"]))
    assert res["scaling"] == pytest.approx(res["sum_samples_s"] / (len(gpus) * res["single_samples_s"]))
    assert res["overlap"]["share"] > 0.5
    tel = [r["gpu_telemetry"] for r in res["per_gpu"] if r["gpu_telemetry"].get("available")]
    assert len({t["uuid"] for t in tel}) == len(tel)  # each process sampled its own GPU

    # Two processes on GPU 0: not a data-parallel setup, but the barrier lines up two timed windows on any machine.
    assert main([str(plan), "--gpus", "0,0", "--seconds", "1", "--warmup", "0.3", "--out", str(out)]) == 0
    two = json.loads(out.read_text())
    assert two["n"] == 2 and two["overlap"]["share"] > 0.5 and two["sum_samples_s"] > 0
