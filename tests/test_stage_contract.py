"""Stages pass files: split runs equal one run, failures are recorded, Ctrl-C resumes, artifacts keep the umask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.core.config import DataConfig, InputsConfig, ModelConfig, PipelineConfig, ProfileConfig, precision_config
from pipeline.core.errors import PipelineError

REPO = Path(__file__).resolve().parent.parent
FAST_PROFILE = ProfileConfig(warmup_s=0.02, duration_s=0.1, min_iterations=3)


def _cfg(tmp_path: Path, out: str, **kw) -> PipelineConfig:
    base = dict(model=ModelConfig(name="digits_cnn", input_shape=[1, 8, 8], num_classes=10), precision=precision_config("int8"),
                data=DataConfig(name="digits", num_samples=24, calib_samples=16), profile=FAST_PROFILE,
                output_dir=str(tmp_path / out), engines_dir=str(tmp_path / "engines"))
    base.update(kw)
    cfg = PipelineConfig(**base)
    cfg.backend.name = "onnxruntime"
    return cfg


def _run(cfg: PipelineConfig) -> dict:
    from pipeline.orchestrate import run_pipeline

    return run_pipeline(cfg)


def _numbers(report: dict) -> dict:
    """What must not depend on how the run was split: theory, quantization and accuracy (not timings)."""
    return {"flops": report["analysis"]["totals"], "layers": [(x["name"], x["flops"]) for x in report["layers"]],
            "int8_vs_fp32": report["accuracy"]["int8_vs_fp32"], "quant_metrics": report["quantization"]["metrics"],
            "inputs": report["model"]["inputs"], "task": report["model"]["task"]}


def test_split_runs_from_files_give_the_numbers_of_one_run(tmp_path):
    full = _run(_cfg(tmp_path, "full"))
    first = _run(_cfg(tmp_path, "a", stages=["export", "quantize"]))
    assert first["stages"]["export"]["status"] == "reused"  # same model, same store: nothing recomputed
    assert first["stages"]["analyze"]["status"] == "not requested"
    # From a run folder ...
    second = _run(_cfg(tmp_path, "b", stages=["analyze", "profile", "report"], inputs=InputsConfig(run=str(tmp_path / "a"))))
    assert second["stages"]["export"]["status"] == "not requested"
    assert second["stages"]["profile"]["status"] == "ran"
    assert _numbers(second) == _numbers(full)
    assert second["measured"]["precision_executed"] == "int8"
    # ... and from files named one by one (the ONNX sidecar describes the model; the data is drawn anew).
    third = _run(_cfg(tmp_path, "c", stages=["analyze", "profile", "report"],
                      inputs=InputsConfig(onnx=str(tmp_path / "a" / "digits_cnn.onnx"),
                                          qdq_onnx=str(tmp_path / "a" / "digits_cnn.int8.qdq.onnx"),
                                          quantization=str(tmp_path / "a" / "quantization.json"))))
    assert _numbers(third) == _numbers(full)
    assert (tmp_path / "c" / "report.json").is_file() and (tmp_path / "c" / "data" / "eval.npz").is_file()


def test_a_profile_from_a_qdq_onnx_alone_measures_int8_and_checks_it(tmp_path):
    _run(_cfg(tmp_path, "a", stages=["export", "quantize"]))
    rep = _run(_cfg(tmp_path, "b", stages=["profile", "report"],
                    inputs=InputsConfig(onnx=str(tmp_path / "a" / "digits_cnn.onnx"),
                                        qdq_onnx=str(tmp_path / "a" / "digits_cnn.int8.qdq.onnx"))))
    assert rep["measured"]["precision_executed"] == "int8"
    acc = rep["accuracy"]["int8_vs_fp32"]  # measured by the profile stage itself: no quantization.json given
    assert acc["samples"] == 24 and 0.9 <= acc["top1_agreement"] <= 1.0


def test_an_exception_in_build_fails_build_skips_profile_and_still_writes_the_report(tmp_path, monkeypatch):
    from pipeline import orchestrate

    def broken(run):
        raise RuntimeError("injected build failure")

    monkeypatch.setitem(orchestrate.STAGE_FUNCS, "build", broken)
    with pytest.raises(PipelineError) as err:
        _run(_cfg(tmp_path, "run"))
    assert "RuntimeError: injected build failure" in err.value.message
    rep = json.loads((tmp_path / "run" / "report.json").read_text())
    assert rep["stages"]["build"]["status"] == "failed"
    assert "injected build failure" in rep["stages"]["build"]["reason"]
    assert rep["stages"]["profile"]["status"] == "skipped"
    assert "build stage, which failed" in rep["stages"]["profile"]["reason"]
    assert rep["stages"]["analyze"]["status"] == "ran"  # independent stages still ran
    log = (tmp_path / "run" / "run.log").read_text()
    assert "Traceback" in log and "injected build failure" in log and "stage export: ran" in log


def test_missing_input_names_the_stage_or_the_file_to_give(tmp_path):
    rep = _run(_cfg(tmp_path, "run", stages=["quantize", "report"]))
    assert rep["stages"]["quantize"]["status"] == "skipped"
    assert "inputs.onnx" in rep["stages"]["quantize"]["reason"] and "add export" in rep["stages"]["quantize"]["reason"]


def test_inputs_that_do_not_exist_fail_before_any_work(tmp_path):
    with pytest.raises(PipelineError) as err:
        _run(_cfg(tmp_path, "run", inputs=InputsConfig(onnx=str(tmp_path / "nope.onnx"))))
    assert "inputs.onnx" in err.value.message
    assert not (tmp_path / "run").exists()
    with pytest.raises(PipelineError) as err:
        _run(_cfg(tmp_path, "run", inputs=InputsConfig(run=str(tmp_path))))
    assert "not a run folder" in err.value.message


def test_report_re_renders_and_compares_run_folders(tmp_path):
    _run(_cfg(tmp_path, "a"))
    (tmp_path / "a" / "report.md").unlink()
    res = subprocess.run([sys.executable, "-m", "pipeline.report", str(tmp_path / "a")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "a" / "report.md").is_file()
    _run(replace(_cfg(tmp_path, "b"), batch_size=2))
    res = subprocess.run([sys.executable, "-m", "pipeline.report", str(tmp_path / "a"), str(tmp_path / "b"),
                          "--compare", str(tmp_path / "cmp")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert len(rows["rows"] if isinstance(rows, dict) else rows) == 2
    res = subprocess.run([sys.executable, "-m", "pipeline.report", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not a run folder" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_artifacts_keep_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        _run(_cfg(tmp_path, "run", stages=["export", "quantize", "report"]))
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    for name in ("digits_cnn.onnx", "digits_cnn.int8.qdq.onnx", "report.json", "run.json", "data/calib.npz",
                 "digits_cnn.onnx.json"):
        mode = (tmp_path / "run" / name).stat().st_mode & 0o777
        assert mode == expected, f"{name}: {oct(mode)} != {oct(expected)}"


def test_store_keeps_the_first_entry_when_two_jobs_fill_the_same_key(tmp_path):
    from pipeline.core.store import Store

    store = Store(tmp_path / "store")
    with store.filling("quantize", "m", "k1") as a:
        (a / "x.txt").write_text("first")
        with store.filling("quantize", "m", "k1") as b:
            (b / "x.txt").write_text("second")
    entry = store.lookup("quantize", "m", "k1")
    assert (entry / "x.txt").read_text() == "second"  # the inner job published first, the outer one kept it
    assert [p.name for p in entry.parent.iterdir()] == ["m-k1"]  # no temporary folder left
    with pytest.raises(RuntimeError):
        with store.filling("quantize", "m", "k2"):
            raise RuntimeError("stage failed")
    assert store.lookup("quantize", "m", "k2") is None and len(list(entry.parent.iterdir())) == 1


@pytest.mark.slow
def test_ctrl_c_writes_the_report_and_the_same_command_resumes(tmp_path):
    """A real run gets SIGINT while quantizing; the same command then reuses the export and finishes."""
    args = [sys.executable, "pipeline/run.py", "model=resnet18", "precision=int8", "backend=onnxruntime",
            "data.calib_samples=64", "data.num_samples=8", "profile.duration_s=0.1", "profile.warmup_s=0.02",
            f"engines_dir={tmp_path}/engines"]
    env = dict(os.environ, MPLBACKEND="Agg", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([*args, f"hydra.run.dir={tmp_path}/first"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "first" / "run.log"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and "stage quantize: start" in log.read_text()):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "Interrupted" in err
    rep = json.loads((tmp_path / "first" / "report.json").read_text())
    assert rep["stages"]["export"]["status"] == "ran"
    assert rep["stages"]["quantize"] == {**rep["stages"]["quantize"], "status": "failed", "reason": "interrupted (Ctrl-C)"}
    assert rep["stages"]["profile"]["status"] == "skipped" and "interrupted" in rep["stages"]["profile"]["reason"]
    again = subprocess.run([*args, f"hydra.run.dir={tmp_path}/second"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rep = json.loads((tmp_path / "second" / "report.json").read_text())
    assert rep["stages"]["export"]["status"] == "reused" and "reused" in again.stdout
    assert rep["stages"]["quantize"]["status"] == "ran" and rep["stages"]["profile"]["status"] == "ran"


def test_an_earlier_runs_artifacts_made_under_another_config_are_not_used(tmp_path, capsys):
    _run(_cfg(tmp_path, "a"))
    fp32 = _run(_cfg(tmp_path, "b", precision=precision_config("fp32"), stages=["profile", "report"],
                     inputs=InputsConfig(run=str(tmp_path / "a"))))
    out = capsys.readouterr().out
    assert "analysis.json is not used" in out and "precision=int8" in out
    assert fp32["analysis"] is None and fp32["quantization"] is None  # int8 theory and ranges do not describe fp32
    assert fp32["measured"]["precision_executed"] == "fp32"
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert any("analysis.json is not used" in n for n in run["notes"])
    # Other data settings: the samples are drawn again, so quantize is not reused from the earlier run.
    other = _run(_cfg(tmp_path, "c", data=DataConfig(name="digits", num_samples=24, calib_samples=8),
                      stages=["quantize", "report"], inputs=InputsConfig(run=str(tmp_path / "a"))))
    assert other["stages"]["quantize"]["status"] == "ran"
    assert other["quantization"]["calib_samples"] == 8


def test_files_of_another_model_are_refused_before_any_work(tmp_path):
    _run(_cfg(tmp_path, "a", stages=["export"]))
    for inputs in (InputsConfig(run=str(tmp_path / "a")), InputsConfig(onnx=str(tmp_path / "a" / "digits_cnn.onnx"))):
        with pytest.raises(PipelineError) as err:
            _run(_cfg(tmp_path, "b", model=ModelConfig(name="resnet18"), stages=["analyze", "report"], inputs=inputs))
        assert "model 'digits_cnn'" in err.value.message and "model=digits_cnn" in err.value.hint
    with pytest.raises(PipelineError) as err:
        _run(_cfg(tmp_path, "b", inputs=InputsConfig(onnx=str(tmp_path / "a" / "digits_cnn.onnx"))))
    assert "inputs.onnx and the export stage" in err.value.message
    assert not (tmp_path / "b").exists()


def test_a_failed_quantize_skips_the_int8_measurement_and_a_corrupt_npz_is_named(tmp_path, capsys):
    _run(_cfg(tmp_path, "a", stages=["export"]))
    bad = tmp_path / "bad.npz"
    bad.write_text("garbage")
    with pytest.raises(PipelineError):
        _run(_cfg(tmp_path, "b", stages=["quantize", "profile", "report"],
                  inputs=InputsConfig(onnx=str(tmp_path / "a" / "digits_cnn.onnx"), calib_data=str(bad))))
    rep = json.loads((tmp_path / "b" / "report.json").read_text())
    assert rep["stages"]["quantize"]["status"] == "failed"
    assert "bad.npz is not an .npz file of arrays" in rep["stages"]["quantize"]["reason"]
    assert "allow_pickle" not in rep["stages"]["quantize"]["reason"]
    assert rep["stages"]["profile"]["status"] == "skipped"  # not an FP32 measurement under an int8 label
    assert "Q/DQ model from the quantize stage, which failed" in rep["stages"]["profile"]["reason"]


def test_inputs_no_stage_uses_are_reported(tmp_path, capsys):
    _run(_cfg(tmp_path, "a"))
    _run(_cfg(tmp_path, "b", precision=precision_config("fp32"), stages=["profile", "report"],
              inputs=InputsConfig(onnx=str(tmp_path / "a" / "digits_cnn.onnx"),
                                  qdq_onnx=str(tmp_path / "a" / "digits_cnn.int8.qdq.onnx"))))
    assert "inputs.qdq_onnx=" in capsys.readouterr().out
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert any(n.startswith("inputs.qdq_onnx=") and "no stage of this run used it" in n for n in run["notes"])
