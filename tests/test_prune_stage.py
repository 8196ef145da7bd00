"""The prune stage end to end through pipeline/run.py: real digits data, real fine-tune, the pruned ONNX used by the
stages after it, the report section, 2:4 checked in the exported ONNX, and clear errors."""

import json

import onnx
import pytest
from onnx import numpy_helper

from tests.test_pipeline_e2e import FAST, _report, _run


def _conv_out_channels(path):
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {n.name: inits[n.input[1]].shape[0] for n in m.graph.node if n.op_type == "Conv" and n.input[1] in inits}


def test_channel_pruning_of_a_resnet_on_digits_then_int8_on_the_pruned_onnx(tmp_path):
    res = _run(["model=digits_resnet", "data=digits", "precision=int8", "backend=onnxruntime",
                "stages=[prune,analyze,quantize,profile,report]", "prune.channels=0.5", "prune.finetune_epochs=3",
                *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    p = json.loads((run / "prune.json").read_text())
    dense, pruned = p["dense"], p["pruned"]
    assert p["round_to"] == 32  # INT8 Tensor Cores
    assert pruned["parameters"] < 0.5 * dense["parameters"]
    assert pruned["roofline"]["flops"] < dense["roofline"]["flops"]
    assert pruned["roofline"]["predicted_latency_s"] < dense["roofline"]["predicted_latency_s"]
    # Channels removed for real: every conv of the pruned ONNX keeps a multiple of 32 output channels, fewer in total.
    before, after = _conv_out_channels(run / dense["onnx"]), _conv_out_channels(run / pruned["onnx"])
    assert all(c % 32 == 0 for c in after.values()) and sum(after.values()) < sum(before.values())
    # Real accuracy on the digits test split: pruning hurt, the fine-tune on the train split won it back.
    assert dense["accuracy"]["metric"] == "top1" and dense["accuracy"]["samples"] == 16
    full = json.loads((run / "prune.json").read_text())["finetune"]
    assert full["ran"] and full["samples"] == 1400 and len(full["loss"]) == 3 and full["loss"][-1] < full["loss"][0]
    assert pruned["accuracy"]["value"] >= dense["accuracy"]["value"] - 0.07
    # The stages after prune ran on the pruned model.
    rep = _report(run)
    assert rep["stages"]["prune"]["status"] == "ran"
    assert json.loads((run / "run.json").read_text())["artifacts"]["onnx"].endswith("digits_resnet.pruned.onnx")
    assert rep["analysis"]["totals"]["flops"] == pruned["roofline"]["flops"]
    assert (run / "digits_resnet.pruned.int8.qdq.onnx").is_file()
    assert rep["prune"]["pruned"]["parameters"] == pruned["parameters"] and rep["prune"]["layers"]
    md = (run / "report.md").read_text()
    assert "## Pruning" in md and "Channels removed" in md


def test_sparse24_masks_survive_the_fine_tune_and_the_check_reads_the_onnx(tmp_path):
    from pipeline.prune.sparsity import check_24, summary_24

    res = _run(["model=digits_cnn", "data=digits", "precision=fp16", "backend=onnxruntime", "stages=[prune,report]",
                "prune.sparse24=true", "prune.finetune_epochs=1", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    p = json.loads((run / "prune.json").read_text())
    check = p["sparse24"]["check"]
    assert check["checked"] >= 3 and check["sparse_24"] == check["checked"] and check["violating"] == 0
    assert "features.0" in p["sparse24_masks"]["skipped"]  # 1 input channel: not a multiple of 4
    dense = summary_24(check_24(run / p["dense"]["onnx"]))
    assert dense["sparse_24"] == 0 and dense["violating"] == check["checked"]
    assert p["pruned"]["parameters"] == p["dense"]["parameters"]  # 2:4 zeroes weights, removes none
    assert p["pruned"]["accuracy"]["value"] > 0.8
    assert "2:4 check of the pruned ONNX" in (run / "report.md").read_text()


def test_without_labels_the_prune_stage_says_so_and_scores_agreement(tmp_path):
    res = _run(["model=resnet18", "model.input_shape=[3,32,32]", "data=random", "backend=onnxruntime",
                "stages=[prune]", "prune.channels=0.25", *FAST], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    p = json.loads((tmp_path / "run" / "prune.json").read_text())
    assert not p["finetune"]["ran"] and "no labels" in p["finetune"]["why"]
    assert p["pruned"]["accuracy"]["metric"] == "top1_agreement_with_unpruned"
    assert p["dense"]["accuracy"]["value"] == 1.0
    assert all(ly["out_after"] % 8 == 0 for ly in p["channels"]["layers"][:-1])  # FP32/FP16: multiples of 8


@pytest.mark.parametrize("args, needle", [
    (["model=digits_cnn", "data=digits"], "nothing to do"),
    (["model=digits_cnn", "data=digits", "prune.channels=1.5"], "not a share of channels"),
])
def test_bad_prune_settings_fail_with_what_to_do(tmp_path, args, needle):
    res = _run([*args, "backend=onnxruntime", "stages=[prune]", *FAST], tmp_path)
    assert res.returncode != 0
    rec = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["prune"]
    assert rec["status"] == "failed" and needle in rec["reason"] and "prune." in rec["reason"]


def test_pruning_steered_by_an_onnx_runtime_profile(tmp_path):
    """prune.layer_times takes a profile's measurement.json; ONNX Runtime profiles give per-node times too."""
    res = _run(["model=digits_resnet", "data=digits", "backend=onnxruntime", "stages=[export,profile]", *FAST],
               tmp_path / "a")
    assert res.returncode == 0, res.stderr[-3000:]
    meas = tmp_path / "a" / "run" / "measurement.json"
    res = _run(["model=digits_resnet", "data=digits", "backend=onnxruntime", "stages=[prune]", "prune.channels=0.5",
                "prune.finetune_epochs=0", f"prune.layer_times={meas}", *FAST], tmp_path / "b")
    assert res.returncode == 0, res.stderr[-3000:]
    per_layer = json.loads((tmp_path / "b" / "run" / "prune.json").read_text())["channels"]["per_layer"]
    assert len(per_layer) >= 9 and len(set(round(v, 6) for v in per_layer.values())) > 1  # not one uniform ratio
    assert max(per_layer.values()) <= 0.8
