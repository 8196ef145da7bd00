"""A mixed-precision plan in the TensorRT build: per-layer constraints on 8.6/10.x, the Q/DQ path, 11's refusal.

TensorRT cannot run here: the recording fake of ``tests/test_trt_fake.py`` stands in for 8.6, 10.x and 11.x
(its ONNX parser names layers the way onnx-tensorrt does). The ONNX files and the plan files are real.
"""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pipeline.core.artifacts import write_json
from pipeline.core.config import BuildConfig, PrecisionConfig
from pipeline.core.errors import PipelineError
from pipeline.core.store import content_hash
from pipeline.trt import detect_features, engine_from_onnx
from pipeline.trt.layer_precision import LayerPlan, engine_check, layer_owner, parser_names, plan_float_labels


from test_trt_build import H100, FakeCuda, make_fake_trt  # noqa: E402  (the fakes, loaded once)
FLOAT_LABELS = ["/attn/MatMul", "Relu#1", "/fc/Gemm", "/shape/Shape", "/gone/Node"]


def mixed_onnx(path: Path, qdq: bool = False) -> Path:
    """Conv, an unnamed Relu, pool, flatten, two MatMuls named as PyTorch names them (``/attn/MatMul`` and
    ``/attn/MatMul_1``), Gemm, Softmax, and a Shape output (INT64 -> an INT32 layer); optional Q/DQ on the input."""
    rng = np.random.default_rng(0)
    arr = {"w": (4, 3, 3, 3), "b": (4,), "m1": (4, 4), "m2": (4, 4), "fw": (5, 4), "fb": (5,)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in arr.items()]
    x, nodes = "input", []
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.02, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["q"], name="/q/QuantizeLinear"),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="/q/DequantizeLinear")]
        x = "dq"
    nodes += [
        helper.make_node("Conv", [x, "w", "b"], ["c"], pads=[1, 1, 1, 1], name="/conv/Conv"),
        helper.make_node("Relu", ["c"], ["r"]),  # unnamed: label Relu#<index>, parser name node_of_r
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["f"], name="/flatten/Flatten"),
        helper.make_node("MatMul", ["f", "m1"], ["a1"], name="/attn/MatMul"),
        helper.make_node("MatMul", ["a1", "m2"], ["a2"], name="/attn/MatMul_1"),
        helper.make_node("Gemm", ["a2", "fw", "fb"], ["g"], transB=1, name="/fc/Gemm"),
        helper.make_node("Softmax", ["g"], ["output"], axis=1, name="/softmax/Softmax"),
        helper.make_node("Shape", ["f"], ["shape"], name="/shape/Shape"),
    ]
    graph = helper.make_graph(nodes, "mixed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 5]),
                               helper.make_tensor_value_info("shape", TensorProto.INT64, [2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def plan_file(path: Path, onnx_path: Path, float_layers=FLOAT_LABELS, sha=None) -> Path:
    """A plan file as the sensitivity stage writes it (the fields the build reads, and a few more)."""
    names = parser_names(onnx_path)
    return write_json(path, {
        "kind": "precision_plan", "schema_version": 1, "model": "mixed",
        "onnx_sha256": sha or content_hash(onnx_path), "float_layers": list(float_layers),
        "layer_precisions": {label: "float" if label in float_layers else "int8" for label in names},
        "calibration": {}, "amax": {}})


def called(trt, name):
    return [arg for n, arg in trt.calls if n == name]


def without_flags(trt, *names):
    """``trt`` with BuilderFlag members removed (a TensorRT build that lacks them)."""
    keep = [n for n in trt.BuilderFlag.__members__ if n not in names]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", keep, start=0)
    return trt


@pytest.fixture
def model(tmp_path):
    return mixed_onnx(tmp_path / "mixed.onnx")


@pytest.fixture
def plan(tmp_path, model):
    return plan_file(tmp_path / "mixed.precision_plan.json", model)


def batches():
    rng = np.random.default_rng(1)
    return [{"input": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)} for _ in range(2)]


def build(trt, onnx_path, tmp_path, precision="int8", plan=None, calibrate=True, **kw):
    cfg = BuildConfig(**kw)
    return engine_from_onnx(onnx_path, PrecisionConfig(name=precision), cfg, batch_size=2,
                            engines_dir=tmp_path / "engines", model_name="mixed", gpu=H100, trt=trt,
                            calib_batches=batches() if calibrate else None,
                            calibration_cache=tmp_path / "mixed.calib.cache", cuda=FakeCuda(),
                            log=lambda m: trt.calls.append(("log", m)), precision_plan=plan)


def test_features_detect_precision_constraints_per_version():
    f86, f10, f11 = (detect_features(make_fake_trt(v)) for v in ("8.6", "10", "11"))
    both = {"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"}
    assert f86.precision_constraints == both and f86.layer_precision
    assert f10.precision_constraints == both and f10.layer_precision
    assert f11.precision_constraints == frozenset() and not f11.layer_precision
    only_prefer = detect_features(without_flags(make_fake_trt("8.6"), "OBEY_PRECISION_CONSTRAINTS"))
    assert only_prefer.precision_constraints == {"PREFER_PRECISION_CONSTRAINTS"}


def test_layer_owner_follows_the_parser_names():
    nodes = {"/attn/MatMul", "/attn/MatMul_1", "/fc/Gemm", "node_of_r"}
    assert layer_owner("/attn/MatMul", nodes) == "/attn/MatMul"
    assert layer_owner("/attn/MatMul_1", nodes) == "/attn/MatMul_1"  # the exporter's second MatMul, not a suffix
    assert layer_owner("/attn/MatMul_1_7", nodes) == "/attn/MatMul_1"  # a helper layer of the second one
    assert layer_owner("/fc/Gemm_0", nodes) == "/fc/Gemm" and layer_owner("/fc/Gemm_3_12", nodes) == "/fc/Gemm"
    assert layer_owner("/fc/GemmX", nodes) is None and layer_owner("(Unnamed Layer* 3) [Shuffle]", nodes) is None


def test_parser_names_and_plan_labels(model):
    names = parser_names(model)
    assert names["Relu#1"] == "node_of_r" and names["/attn/MatMul_1"] == "/attn/MatMul_1"
    extra = {"float_layers": ["a"], "layer_precisions": {"a": "float", "b": "int8", "c": "float"}}
    assert plan_float_labels(extra) == ["a", "c"]


@pytest.mark.parametrize("version", ["8.6", "10"])
def test_implicit_path_constrains_the_plan_layers(version, model, plan, tmp_path):
    trt = make_fake_trt(version)
    art = build(trt, model, tmp_path, plan=plan)
    assert sorted(called(trt, "set_flag")) == ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"]
    assert called(trt, "IInt8EntropyCalibrator2.__init__")  # still the implicit (calibrated) path
    constrained = ["/attn/MatMul", "node_of_r", "/fc/Gemm", "/fc/Gemm_0"]
    assert sorted(called(trt, "layer.precision")) == sorted((n, "HALF") for n in constrained)
    assert sorted(called(trt, "set_output_type")) == sorted((n, 0, "HALF") for n in constrained)
    rec = art.sidecar["layer_precision_plan"]
    assert rec["path"] == "implicit" and rec["flag"] == "OBEY_PRECISION_CONSTRAINTS" and rec["layer_type"] == "FP16"
    assert rec["matched"] == {"/attn/MatMul": ["/attn/MatMul"], "Relu#1": ["node_of_r"],
                              "/fc/Gemm": ["/fc/Gemm", "/fc/Gemm_0"]}
    assert rec["unmatched"] == ["/shape/Shape", "/gone/Node"]
    assert rec["why_unmatched"] == {"/shape/Shape": "only integer-typed layers",
                                    "/gone/Node": "no node of that label in the ONNX"}
    assert rec["integer_layers"] == {"/shape/Shape": ["/shape/Shape"]}
    assert any("no layer for: /shape/Shape, /gone/Node" in m for m in called(trt, "log"))
    assert art.sidecar["key"]["layer_precisions"]["float_layers"] == sorted(FLOAT_LABELS)


def test_implicit_path_cache_key_holds_the_plan(model, plan, tmp_path):
    trt = make_fake_trt("8.6")
    first = build(trt, model, tmp_path, plan=plan)
    again = build(trt, model, tmp_path, plan=plan)
    assert again.cache_hit and again.sidecar["layer_precision_plan"]["matched"] == \
        first.sidecar["layer_precision_plan"]["matched"]
    other = plan_file(tmp_path / "other.precision_plan.json", model, ["/conv/Conv"])
    trt.calls.clear()
    second = build(trt, model, tmp_path, plan=other)
    assert not second.cache_hit and second.plan_path != first.plan_path
    assert called(trt, "layer.precision") == [("/conv/Conv", "HALF")]
    plain = build(trt, model, tmp_path)
    assert plain.plan_path not in (first.plan_path, second.plan_path)
    assert plain.sidecar["layer_precision_plan"] is None


def test_implicit_path_without_fp16_constrains_to_fp32(model, plan, tmp_path):
    trt = without_flags(make_fake_trt("8.6"), "FP16")
    art = build(trt, model, tmp_path, plan=plan)
    assert sorted(called(trt, "set_flag")) == ["INT8", "OBEY_PRECISION_CONSTRAINTS"]
    assert ("/attn/MatMul", "FLOAT") in called(trt, "layer.precision")
    assert ("/attn/MatMul", 0, "FLOAT") in called(trt, "set_output_type")
    assert art.sidecar["layer_precision_plan"]["layer_type"] == "FP32"


def test_implicit_path_uses_prefer_when_obey_is_missing(model, plan, tmp_path):
    trt = without_flags(make_fake_trt("10"), "OBEY_PRECISION_CONSTRAINTS")
    art = build(trt, model, tmp_path, plan=plan)
    assert "PREFER_PRECISION_CONSTRAINTS" in called(trt, "set_flag")
    assert art.sidecar["layer_precision_plan"]["flag"] == "PREFER_PRECISION_CONSTRAINTS"


@pytest.mark.parametrize("version", ["8.6", "10", "11"])
def test_explicit_path_only_records_the_plan(version, tmp_path, plan):
    trt = make_fake_trt(version)
    qdq = mixed_onnx(tmp_path / "mixed.int8.qdq.onnx", qdq=True)
    art = build(trt, qdq, tmp_path, plan=plan, calibrate=False)
    assert not called(trt, "layer.precision") and not called(trt, "set_output_type")
    assert not {"OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"} & set(called(trt, "set_flag"))
    rec = art.sidecar["layer_precision_plan"]
    assert rec["path"] == "explicit" and rec["float_labels"] == FLOAT_LABELS and "quant.plan" in rec["note"]
    assert "layer_precisions" not in art.sidecar["key"]
    hit = build(trt, qdq, tmp_path, calibrate=False)  # same engine without the plan: the record goes
    assert hit.cache_hit and hit.sidecar["layer_precision_plan"] is None


def test_fp16_build_does_not_use_the_plan(model, plan, tmp_path):
    trt = make_fake_trt("8.6")
    art = build(trt, model, tmp_path, precision="fp16", plan=plan, calibrate=False)
    assert not called(trt, "layer.precision") and called(trt, "set_flag") == ["FP16"]
    assert art.sidecar["layer_precision_plan"]["path"] == "unused"


def test_trt11_refuses_the_implicit_path_with_a_plan(model, plan, tmp_path):
    trt = make_fake_trt("11")
    for precision in ("int8", "best"):
        with pytest.raises(PipelineError) as err:
            build(trt, model, tmp_path, precision=precision, plan=plan)
        msg, hint = err.value.message, err.value.hint
        assert "TensorRT 11.0.0 has no per-layer precision constraints" in msg
        assert "allows the explicit path only (a Q/DQ ONNX" in msg and "OBEY/PREFER_PRECISION_CONSTRAINTS" in msg
        assert f"quant.plan={plan}" in hint and "Q/DQ ONNX" in hint
    assert not called(trt, "create_network") and not called(trt, "build_serialized_network")


def test_plan_made_for_another_onnx_is_refused(model, tmp_path):
    wrong = plan_file(tmp_path / "wrong.precision_plan.json", model, sha="0" * 64)
    with pytest.raises(PipelineError, match="made for another ONNX model"):
        build(make_fake_trt("8.6"), model, tmp_path, plan=wrong)


def test_engine_check_reads_fused_engine_layer_names(model):
    names = parser_names(model)
    lp = LayerPlan("p.json", "implicit", FLOAT_LABELS, {k: names[k] for k in FLOAT_LABELS if k in names},
                   sorted(set(names.values())), "OBEY_PRECISION_CONSTRAINTS", "FP16")
    rec = {"matched": {"/attn/MatMul": ["/attn/MatMul"], "Relu#1": ["node_of_r"], "/fc/Gemm": ["/fc/Gemm"]}}
    half = [{"Format/Datatype": "Row major linear FP16 format"}]
    layers = [{"Name": "/attn/MatMul + node_of_r", "Inputs": half},
              {"Name": "{ForeignNode[/fc/Gemm.../softmax/Softmax]}", "Inputs": half},
              {"Name": "/attn/MatMul_1", "Inputs": [{"Format/Datatype": "Row major Int8 format"}]}]
    out = engine_check(rec, lp, layers)
    assert out["engine_layers"] == {"/attn/MatMul": [{"name": "/attn/MatMul + node_of_r", "precision": "fp16"}],
                                    "Relu#1": [{"name": "/attn/MatMul + node_of_r", "precision": "fp16"}]}
    assert out["not_in_engine_names"] == ["/fc/Gemm"]


def test_engine_stage_records_the_plan(monkeypatch, tmp_path, plan):
    from pipeline.engine.stage import EngineInputs, EngineSettings, run

    trt = make_fake_trt("10")
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr("pipeline.trt.builder.gpu_info", lambda: H100)
    qdq = mixed_onnx(tmp_path / "mixed.int8.qdq.onnx", qdq=True)
    out = run(EngineInputs(onnx=tmp_path / "mixed.onnx", qdq_onnx=qdq, precision_plan=plan),
              EngineSettings(PrecisionConfig(name="int8"), BuildConfig(), 2, tmp_path / "engines", "mixed"),
              tmp_path / "run")
    res = json.loads(out.results.read_text())
    assert res["precision_plan"]["path"] == "explicit" and res["precision_plan"]["plan"] == str(plan)


def test_orchestrator_passes_the_plan_the_build_honours(tmp_path):
    from pipeline.core.config import PipelineConfig
    from pipeline.orchestrate import Run, _precision_plan

    cfg = PipelineConfig()
    cfg.engines_dir = str(tmp_path / "engines")
    run = Run(cfg, tmp_path, ("tensorrt", "test"))
    assert _precision_plan(run) is None  # no plan anywhere: the build gets none
    made = tmp_path / "mixed.precision_plan.json"
    made.write_text("{}")
    run.add("precision_plan", made)
    assert _precision_plan(run) == made  # the one this run's sensitivity stage made
    cfg.quant.plan = str(tmp_path / "given.precision_plan.json")
    assert _precision_plan(run) == Path(cfg.quant.plan)  # what the Q/DQ ONNX was made from wins
