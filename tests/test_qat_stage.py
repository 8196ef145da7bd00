"""The qat stage through pipeline/run.py: after quantize (the PTQ ranges), after prune (the pruned module), the QAT
Q/DQ ONNX handed to the stages after it, and clear errors."""

import json

import onnx
import onnxruntime as ort

from tests.test_pipeline_e2e import FAST, _report, _run


def test_qat_after_prune_trains_the_pruned_module_and_replaces_the_ptq_qdq(tmp_path):
    res = _run(["model=digits_resnet", "data=digits", "precision=int8", "backend=onnxruntime",
                "stages=[prune,quantize,qat,profile,report]", "prune.channels=0.5", "prune.finetune_epochs=1",
                "qat.epochs=1", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    q = json.loads((run / "qat.json").read_text())
    assert q["qdq_onnx"] == "digits_resnet.pruned.qat.int8.qdq.onnx" and q["same_placement"] is True
    assert q["ptq"]["onnx"] == "digits_resnet.pruned.int8.qdq.onnx"
    assert len(q["wrapped"]) >= 9 and q["finetune"]["samples"] == 1400 and q["finetune"]["epochs"] == 1
    for key in ("fp32", "ptq", "qat"):
        assert q[key]["metric"] == "top1" and q[key]["samples"] == 16 and 0.0 <= q[key]["value"] <= 1.0
    assert q["qat"]["value"] >= q["ptq"]["value"] - 0.07  # 16 samples: one sample is 0.0625
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["artifacts"]["qdq_onnx"] == q["qdq_onnx"]  # build and profile take the QAT model
    sess = ort.InferenceSession(str(run / q["qdq_onnx"]), providers=["CPUExecutionProvider"])
    assert {n.op_type for n in onnx.load(str(run / q["qdq_onnx"])).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert sess.get_inputs()[0].name == "input"
    rep = _report(run)
    assert rep["stages"]["qat"]["status"] == "ran" and rep["qat"]["same_placement"] is True
    assert "## Quantization-aware training" in (run / "report.md").read_text()


def test_qat_needs_labels_and_the_ptq_statistics(tmp_path):
    res = _run(["model=digits_cnn", "data=random", "precision=int8", "backend=onnxruntime",
                "stages=[export,quantize,qat]", *FAST], tmp_path)
    assert res.returncode != 0
    rec = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["qat"]
    assert rec["status"] == "failed" and "no labels" in rec["reason"] and "data=digits" in rec["reason"]
    res = _run(["model=digits_cnn", "data=digits", "precision=int8", "backend=onnxruntime", "stages=[export,qat]",
                *FAST], tmp_path / "b")
    rec = json.loads((tmp_path / "b" / "run" / "run.json").read_text())["stages"]["qat"]
    assert rec["status"] == "skipped" and "quantize" in rec["reason"] and "calib_stats" in rec["reason"]


def test_qat_keeps_the_2_4_pattern_of_a_sparse_model(tmp_path):
    from pipeline.prune.sparsity import check_24, summary_24

    res = _run(["model=digits_cnn", "data=digits", "precision=int8", "backend=onnxruntime",
                "stages=[prune,quantize,qat]", "prune.sparse24=true", "prune.finetune_epochs=1", "qat.epochs=1",
                *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    q = json.loads((run / "qat.json").read_text())
    assert q["sparse24_layers_kept"] == ["classifier.1", "classifier.3", "features.2", "features.5"]
    s = summary_24(check_24(run / q["qdq_onnx"]))  # through the Q/DQ, as TensorRT reads the weights
    assert s["checked"] == 4 and s["sparse_24"] == 4 and s["violating"] == 0
