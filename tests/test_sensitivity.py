"""The sensitivity stage: cut-and-resume evaluation is exact, the search finds the fewest float layers, errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_models import make_model, small_cnn, weights
from pipeline.core.accuracy import task_metrics
from pipeline.core.config import QuantConfig, SensitivityConfig
from pipeline.core.datasets import save_dataset
from pipeline.core.errors import PipelineError
from pipeline.data.dataset import Dataset
from pipeline.ort import ort_session, run_first_output
from pipeline.quantize import quantize_onnx
from pipeline.quantize.api import _float_tensor_set, plan_for_config
from pipeline.quantize.stats import collect_stats
from pipeline.sensitivity.items import quantized_layers, structural_groups
from pipeline.sensitivity.search import Budget, Unit, budget_for, search
from pipeline.sensitivity.segments import GraphIndex, Quantization, build_piece, chunked, piece_session, run_piece
from pipeline.sensitivity.stage import SensitivityInputs, SensitivitySettings, run, split_samples
from pipeline.sensitivity.sweep import Calibration, Sweep, candidate_thresholds


def deep_cnn(batch="batch") -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> residual Add -> Relu -> MaxPool -> Conv -> GAP -> Flatten -> Gemm (a Shape op too)."""
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Add", ["c2", "r1"], ["a"], name="add"),
        n("Relu", ["a"], ["r2"], name="relu2"),
        n("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p", "w3", "b3"], ["c3"], name="conv3", kernel_shape=[1, 1]),
        n("GlobalAveragePool", ["c3"], ["g"], name="gap"),
        n("Shape", ["g"], ["shape"], name="shape"),  # a tensor that is not per sample crosses later cuts
        n("Flatten", ["g"], ["f"], name="flatten"),
        n("Gemm", ["f", "fc_w", "fc_b"], ["y0"], name="fc", transB=1),
        n("Slice", ["shape", "zero", "one"], ["bdim"], name="bdim"),
        n("Concat", ["bdim", "minus1"], ["yshape"], name="yshape", axis=0),
        n("Reshape", ["y0", "yshape"], ["y"], name="reshape"),
    ]
    inits = {"w1": weights(8, 3, 3, 3), "b1": weights(8, seed=1), "w2": weights(8, 8, 3, 3, seed=2),
             "b2": weights(8, seed=3), "w3": weights(16, 8, 1, 1, seed=4), "b3": weights(16, seed=5),
             "fc_w": weights(10, 16, seed=6), "fc_b": weights(10, seed=7), "zero": np.array([0], np.int64),
             "one": np.array([1], np.int64), "minus1": np.array([-1], np.int64)}
    return make_model(nodes, [("x", [batch, 3, 16, 16])], [("y", [batch, 10])], inits, name="deep_cnn")


@pytest.fixture(scope="module")
def setup():
    model = deep_cnn()
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((16, 3, 16, 16)).astype(np.float32)
    evals = rng.standard_normal((40, 3, 16, 16)).astype(np.float32)
    cfg = QuantConfig(calib="max", cache_all_tensors=False)
    plan = plan_for_config(model, cfg, float_tensors=_float_tensor_set(model))
    layers = quantized_layers(model, plan)
    stats = collect_stats(model, [{"x": calib[i:i + 4]} for i in range(0, 16, 4)], list(plan.activations),
                          progress=False)
    cands = candidate_thresholds(stats, plan.activations, ["max", "entropy"], 99.99)
    return model, plan, layers, stats, cands, evals, calib


def _sweep(setup, batch=16):
    model, plan, layers, stats, cands, evals, _ = setup
    cal = Calibration(cands, {t: "max" for t in cands})
    sw = Sweep(GraphIndex(model), layers, stats, cal, {"x": evals}, None, batch=batch)
    ref = sw.reference()
    sw.metric = lambda y: {"y": y, **task_metrics(ref, y)}
    return sw, ref


def test_layers_are_the_placement_nodes_in_graph_order(setup):
    _, plan, layers, *_ = setup
    assert [ly.label for ly in layers] == ["conv1", "conv2", "add", "pool", "conv3", "gap", "fc"]
    conv2 = layers[1]
    assert conv2.activations == [((2, 0), "r1")] and conv2.weights == [((2, 1), "w2", 0)]
    assert layers[2].activations == [((3, 1), "r1")]  # the residual (skip) input only
    assert not any(ly.weights for ly in layers if ly.op_type in ("Add", "MaxPool"))


def test_fake_quant_pieces_equal_the_quantize_stage_qdq_model(setup, tmp_path):
    model, plan, layers, stats, cands, evals, calib = setup
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    cfg = QuantConfig(calib="max", cache_all_tensors=False, split_outliers=None)  # the sweep's graph is unsplit
    res = quantize_onnx(path, [{"x": calib[i:i + 4]} for i in range(0, 16, 4)], cfg, tmp_path / "m.int8.qdq.onnx",
                        progress=False)
    qdq = run_first_output(ort_session(onnx.load(res.qdq_onnx_path), optimize=False), [{"x": evals}])
    sw, ref = _sweep(setup)
    sw.calibration.candidates = {t: {"max": res.ranges[t]["amax"]} for t in res.ranges}
    y = sw.run_full(sw.quantization())
    np.testing.assert_allclose(y, qdq, rtol=0, atol=1e-5 * float(np.abs(qdq).max()))
    fp32 = run_first_output(ort_session(model), [{"x": evals}])
    np.testing.assert_allclose(ref, fp32, rtol=1e-5, atol=1e-5)
    assert np.abs(y - ref).max() > 1e-4  # quantization did change the output


@pytest.mark.parametrize("batch", [16, 7])  # 7: the last batch is short, the Shape tensor differs per batch
def test_one_at_a_time_from_cuts_equals_full_evaluations(setup, batch):
    sw, _ = _sweep(setup, batch)
    swept = sw.one_at_a_time(progress=False)
    labels = [ly.label for ly in sw.layers]
    for ly, r in zip(sw.layers, swept):
        full = sw.evaluate([x for x in labels if x != ly.label])
        np.testing.assert_allclose(r["metrics"]["y"], full["y"], rtol=1e-6, atol=1e-6)
        assert r["seconds"] > 0
    outs = [r["metrics"]["y"] for r in swept]
    assert len({float(np.abs(o).sum()) for o in outs}) == len(outs)  # each layer changes the output its own way


def test_all_but_one_from_cuts_equals_full_evaluations(setup):
    sw, _ = _sweep(setup, 16)
    for ly, r in zip(sw.layers, sw.all_but_one(progress=False)):
        np.testing.assert_allclose(r["metrics"]["y"], sw.evaluate([ly.label])["y"], rtol=1e-6, atol=1e-6)


def test_choose_method_picks_the_smaller_layer_error(setup):
    sw, _ = _sweep(setup)
    sw.choose_methods(["max", "entropy"], progress=False)
    cal = sw.calibration
    assert set(cal.local_error) >= {"x", "r1"}
    for t, errs in cal.local_error.items():
        assert cal.chosen[t] == min(errs, key=errs.get)
        assert all(e >= 0 for e in errs.values())


def test_layer_errors_are_zero_for_float_layers_and_grow_downstream(setup):
    sw, _ = _sweep(setup)
    labels = [ly.label for ly in sw.layers]
    err = sw.layer_errors()
    assert set(err) == set(labels)
    assert all(np.isfinite(e["snr_db"]) and e["cosine"] < 1.0 for e in err.values())
    none = sw.layer_errors(labels)
    assert all(e["snr_db"] is None and e["max_abs"] == 0.0 for e in none.values())


def test_piece_with_no_quantization_returns_crossing_tensors(setup):
    model, *_ , evals, _ = setup
    idx = GraphIndex(model)
    assert idx.crossing(2) == ["r1"]  # conv2 reads r1, the residual add reads it too
    piece = build_piece(idx, 0, 2, Quantization(), ["r1"])
    out = run_piece(piece_session(piece), chunked({"x": evals}, 8))
    assert len(out) == 5 and out[0]["r1"].shape == (8, 8, 16, 16)
    assert (np.concatenate([o["r1"] for o in out]) >= 0).all()


# ------------------------------------------------------------------------------------------------- search
def _units(harms):
    return [Unit(f"L{i}", "layer", [f"L{i}"], h, saving_s=1.0) for i, h in enumerate(harms)]


def _additive(drops):
    """Metric = 1 - sum of the drops of the quantized layers (an exact, known model of the network)."""
    def evaluate(float_layers):
        return {"output_cosine": 1.0 - sum(d for k, d in drops.items() if k not in float_layers)}
    return evaluate


def test_search_keeps_the_fewest_layers_in_float():
    drops = {"L0": 0.001, "L1": 0.02, "L2": 0.0005, "L3": 0.015, "L4": 0.001}
    budget = Budget("output_cosine", 0.99, 1.0, 0.01)
    # Harm ranking from one-at-a-time drops, as the stage computes it.
    res = search(_units([drops[f"L{i}"] / 0.01 for i in range(5)]), _additive(drops), budget, lambda f: float(len(f)))
    assert res.met and sorted(res.plan.float_layers) == ["L1", "L3"]
    assert res.plan.meets and float(res.plan.metrics["output_cosine"]) >= 0.99
    assert res.points[0].float_layers == [] and not res.points[0].meets
    front = res.pareto("output_cosine")
    assert [len(p.float_layers) for p in front] == sorted(len(p.float_layers) for p in front)


def test_search_prunes_a_misranked_layer():
    # L0 looks harmful alone but does not matter with the rest quantized (interaction): pruning drops it.
    drops = {"L0": 0.0, "L1": 0.02, "L2": 0.001}
    res = search(_units([5.0, 2.0, 0.1]), _additive(drops), Budget("output_cosine", 0.99, 1.0, 0.01), lambda f: None)
    assert res.plan.float_layers == ["L1"]


def test_search_all_int8_when_the_budget_holds():
    res = search(_units([0.1, 0.2]), _additive({"L0": 0.001, "L1": 0.001}), Budget("output_cosine", 0.99, 1.0, 0.01),
                 lambda f: None)
    assert res.met and res.plan.float_layers == [] and len(res.points) == 1


def test_search_says_when_no_plan_meets_the_budget():
    drops = {"L0": 0.02, "L1": 0.02, "L2": 0.02}
    res = search(_units([2, 2, 2]), _additive(drops), Budget("output_cosine", 0.99, 1.0, 0.01), lambda f: None,
                 max_float=1)
    assert not res.met and len(res.plan.float_layers) <= 1
    assert all(len(p.float_layers) <= 1 for p in res.points)


def test_budget_rules():
    b = budget_for("classification", {"reference_accuracy": 0.9}, True, None, 0.95)
    assert (b.metric, round(b.minimum, 6)) == ("accuracy", 0.895)
    b = budget_for("embedding", {}, False, 0.01, 0.95)
    assert b.metric == "embedding_cosine" and b.extra == (("nn_agreement", 0.95),)
    assert not b.meets({"embedding_cosine": 0.995, "nn_agreement": 0.9})
    assert b.meets({"embedding_cosine": 0.995, "nn_agreement": 0.96})
    assert b.harm({"embedding_cosine": 0.995, "nn_agreement": 1.0}) == pytest.approx(0.5)
    with pytest.raises(PipelineError, match="labelled"):
        budget_for("classification", {}, False, None, 0, metric="accuracy")
    with pytest.raises(PipelineError, match="negative"):
        budget_for("auto", {}, False, -0.1, 0)
    with pytest.raises(PipelineError, match="unknown"):
        budget_for("auto", {}, False, None, 0, metric="f1")


def test_budget_tightened_keeps_a_reserve():
    b = budget_for("embedding", {}, False, 0.01, 0.95).tightened(0.25)
    assert b.minimum == pytest.approx(0.9925) and dict(b.extra)["nn_agreement"] == pytest.approx(0.9625)
    assert not b.meets({"embedding_cosine": 0.99, "nn_agreement": 1.0})
    assert budget_for("auto", {}, False, 0.01, 0).tightened(0.0).minimum == pytest.approx(0.99)
    with pytest.raises(PipelineError, match="margin"):
        b.tightened(1.0)


def test_split_samples_holds_out_every_kth():
    s, h = split_samples(16, 0.25)
    assert list(h) == [3, 7, 11, 15] and len(s) == 12 and not set(s) & set(h)
    assert len(split_samples(16, 0.0)[1]) == 0
    with pytest.raises(PipelineError):
        split_samples(16, 1.0)


# ------------------------------------------------------------------------------------------ stage, errors
def _stage_files(tmp_path, model, n_eval=40, labels=False):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(1)
    calib = save_dataset(Dataset("t", {"x": rng.standard_normal((16, 3, 16, 16)).astype(np.float32)}, None, ""),
                         tmp_path / "calib.npz")
    lab = rng.integers(0, 10, n_eval) if labels else None
    ev = save_dataset(Dataset("t", {"x": rng.standard_normal((n_eval, 3, 16, 16)).astype(np.float32)}, lab, ""),
                      tmp_path / "eval.npz")
    return path, calib, ev


def test_stage_writes_results_and_a_plan_quantize_takes(tmp_path):
    path, calib, ev = _stage_files(tmp_path, deep_cnn())
    cfg = SensitivityConfig(max_drop=1e-6, methods=["max", "entropy"], holdout=0.25, batch_size=8, layers="all")
    # split_min_gain=1: the Gemm input's outlier channels are split whatever the gain (the path under test)
    out = run(SensitivityInputs(path, None, ev, calib_data=calib), SensitivitySettings(cfg, QuantConfig(split_min_gain=1.0)),
              tmp_path, progress=False)
    res = json.loads(out.results.read_text())
    plan = json.loads(out.plan.read_text())
    assert res["num_layers"] == 7 and res["fixed_sites"] == [] and res["samples"] == {"search": 30, "holdout": 10}
    assert res["search"]["met"] and plan["float_layers"] == res["search"]["plan"]["float_layers"]
    assert plan["float_layers"], "a 1e-6 cosine budget needs float layers on this model"
    # every quantized activation; the Gemm's input under the name of its outlier split
    assert [r["tensor"] for r in plan["splits"]] == ["f"] and plan["split_outliers"] == 0.99 and plan["split_min_gain"] == 1.0
    assert set(plan["calibration"]) == {"x", "r1", "r2", "p", "c3", plan["splits"][0]["split_tensor"]}
    assert res["search"]["holdout"]["samples"] == 10
    # The quantize stage leaves the plan's layers float.
    q = quantize_onnx(path, [{"x": np.load(calib)["x"][:8]}], QuantConfig(plan=str(out.plan)),
                      tmp_path / "p.int8.qdq.onnx", progress=False)
    assert set(plan["float_layers"]).isdisjoint(q.plan["quantized_nodes"])
    assert {f["node"] for f in q.float_nodes} == set(plan["float_layers"])


def test_stage_ranks_compute_layers_by_default(tmp_path):
    path, calib, ev = _stage_files(tmp_path, deep_cnn())
    out = run(SensitivityInputs(path, None, ev, calib_data=calib),
              SensitivitySettings(SensitivityConfig(methods=[], holdout=0.0), QuantConfig()), tmp_path, progress=False)
    res = json.loads(out.results.read_text())
    assert [ly["label"] for ly in res["layers"]] == ["conv1", "conv2", "conv3", "fc"]
    assert [f["label"] for f in res["fixed_sites"]] == ["add", "pool", "gap"]  # always INT8 with their neighbours
    plan = json.loads(out.plan.read_text())
    assert set(plan["layer_precisions"]) == {"conv1", "conv2", "conv3", "fc", "add", "pool", "gap"}


def test_stage_reports_a_budget_no_plan_meets(tmp_path):
    path, calib, ev = _stage_files(tmp_path, small_cnn())
    cfg = SensitivityConfig(max_drop=0.0, metric="output_cosine", max_float=1, methods=[], holdout=0.0, layers="all")
    # split_min_gain=1: the Gemm input's outlier channels are split whatever the gain (the path under test)
    out = run(SensitivityInputs(path, None, ev, calib_data=calib), SensitivitySettings(cfg, QuantConfig(split_min_gain=1.0)),
              tmp_path, progress=False)
    res = json.loads(out.results.read_text())
    assert res["search"]["met"] is False and "no plan met the budget" in res["search"]["message"]
    assert res["search"]["plan"]["num_float"] <= 1


def test_stage_errors(tmp_path):
    path, calib, ev = _stage_files(tmp_path, deep_cnn(), n_eval=0)
    with pytest.raises(PipelineError, match="evaluation set is empty"):
        run(SensitivityInputs(path, None, ev, calib_data=calib), SensitivitySettings(SensitivityConfig(), QuantConfig()),
            tmp_path, progress=False)
    path, calib, ev = _stage_files(tmp_path, deep_cnn())
    with pytest.raises(PipelineError, match="labelled"):
        run(SensitivityInputs(path, None, ev, calib_data=calib),
            SensitivitySettings(SensitivityConfig(metric="accuracy"), QuantConfig()), tmp_path, progress=False)
    relu = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [("x", ["batch", 3, 16, 16])],
                      [("y", ["batch", 3, 16, 16])], {}, name="relu")
    path, calib, ev = _stage_files(tmp_path, relu)
    with pytest.raises(PipelineError, match="no quantizable layer"):
        run(SensitivityInputs(path, None, ev, calib_data=calib), SensitivitySettings(SensitivityConfig(), QuantConfig()),
            tmp_path, progress=False)


def test_quantize_refuses_a_plan_of_another_model(tmp_path):
    path, calib, ev = _stage_files(tmp_path, deep_cnn())
    out = run(SensitivityInputs(path, None, ev, calib_data=calib),
              SensitivitySettings(SensitivityConfig(methods=[], holdout=0.0), QuantConfig()), tmp_path, progress=False)
    other = tmp_path / "other.onnx"
    onnx.save(small_cnn(), other)
    with pytest.raises(PipelineError, match="another ONNX model"):
        quantize_onnx(other, [{"x": np.zeros((1, 3, 16, 16), np.float32)}], QuantConfig(plan=str(out.plan)),
                      tmp_path / "o.onnx", progress=False)
    with pytest.raises(PipelineError, match="not a precision plan"):
        quantize_onnx(path, [{"x": np.zeros((1, 3, 16, 16), np.float32)}], QuantConfig(plan=str(out.results)),
                      tmp_path / "o.onnx", progress=False)


def test_structural_groups_pair_ffn_and_attention():
    from test_quant_placement import transformer_block

    model = transformer_block("erf")
    plan = plan_for_config(model, QuantConfig(op_types=["MatMul", "Gemm"]), float_tensors=_float_tensor_set(model))
    layers = quantized_layers(model, plan)
    groups = structural_groups(model, layers)
    kinds = {g.kind: g.layers for g in groups}
    assert kinds["ffn"] == ["ffn_up", "ffn_down"]
    assert sorted(sum((g.layers for g in groups), [])) == sorted(ly.label for ly in layers)


def test_samples_in_a_frontier_batch_ignore_scalars_and_shape_tensors():
    from pipeline.sensitivity.sweep import _samples_in

    chunk = {"dim": np.array(384, dtype=np.int64), "shape": np.array([7, 128], dtype=np.int64),
             "h": np.zeros((7, 128, 384), np.float32)}
    assert _samples_in(chunk, "h") == 7
    assert _samples_in(chunk, "missing") == 7  # the largest array's leading axis


def test_a_validated_search_metric_meets_only_when_the_held_out_samples_meet_the_real_budget():
    from pipeline.sensitivity.search import Budget, validated_metrics

    real = Budget("embedding_cosine", 0.99, 1.0, 0.01, (("nn_agreement", 0.95),))
    tight = real.tightened(0.25)  # cosine >= 0.9925, NN >= 0.9625 on the search samples
    search = {"embedding_cosine": 0.998, "nn_agreement": 0.967, "top1_agreement": 0.9}
    held_bad = {"embedding_cosine": 0.998, "nn_agreement": 0.9375}
    held_ok = {"embedding_cosine": 0.995, "nn_agreement": 0.95}
    assert tight.meets(search) and not real.meets(held_bad) and real.meets(held_ok)
    bad = validated_metrics(search, held_bad, tight, real)
    assert not tight.meets(bad) and bad["nn_agreement"] == pytest.approx(0.9375 + 0.0125)
    assert bad["search_nn_agreement"] == 0.967 and bad["holdout_nn_agreement"] == 0.9375
    assert bad["embedding_cosine"] == pytest.approx(0.998) and bad["top1_agreement"] == 0.9  # not in the budget
    ok = validated_metrics(search, held_ok, tight, real)
    assert tight.meets(ok) and ok["nn_agreement"] == pytest.approx(0.9625)
    assert not tight.meets(validated_metrics({**search, "nn_agreement": 0.96}, held_ok, tight, real))


def test_nn_agreement_among_a_larger_pool_sees_neighbours_a_subset_lacks():
    from pipeline.core.accuracy import nn_agreement_among

    # Rows 0-1 are each other's nearest neighbour among themselves; row 2 (outside the query subset) sits between
    # row 0 and row 1 in the test outputs only, so row 0's neighbour changes once the pool includes row 2.
    ref = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.1]], np.float32)
    test = np.array([[1.0, 0.0], [0.8, 0.6], [0.95, 0.31], [-1.0, 0.1]], np.float32)
    queries = np.array([0, 1])
    own = float((np.argmax(ref[:2] @ ref[:2].T - 9 * np.eye(2), 1) == np.argmax(test[:2] @ test[:2].T - 9 * np.eye(2), 1)).mean())
    assert own == 1.0
    # pooled: row 0 -> row 1 in FP32, row 0 -> row 2 in the test; row 1 -> row 0 in FP32, row 1 -> row 2 in the test
    assert nn_agreement_among(ref, test, queries) == 0.0
    assert nn_agreement_among(ref, ref, queries) == 1.0
    with pytest.raises(ValueError):
        nn_agreement_among(ref[:2], test[:2], queries)


def _embedder(batch="batch"):
    """x -> MatMul -> Relu -> MatMul -> an L2-free embedding (the sensitivity stage's embedding task)."""
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["h"], name="mm1"), n("Relu", ["h"], ["r"], name="relu"),
             n("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return make_model(nodes, [("x", [batch, 16])], [("y", [batch, 8])],
                      {"w1": weights(16, 32, seed=11), "w2": weights(32, 8, seed=12)}, name="embedder")


def test_stage_measures_nn_agreement_among_all_samples_for_an_embedder(tmp_path):
    path = tmp_path / "e.onnx"
    onnx.save(_embedder(), path)
    summary = tmp_path / "export.json"
    summary.write_text(json.dumps({"task": "embedding", "inputs": [{"name": "x", "shape": [16]}]}))
    rng = np.random.default_rng(3)
    calib = save_dataset(Dataset("t", {"x": rng.standard_normal((16, 16)).astype(np.float32)}, None, ""),
                         tmp_path / "calib.npz")
    ev = save_dataset(Dataset("t", {"x": rng.standard_normal((48, 16)).astype(np.float32)}, None, ""),
                      tmp_path / "eval.npz")
    cfg = SensitivityConfig(methods=[], holdout=0.25, batch_size=8, validate=True, min_nn_agreement=0.5)
    out = run(SensitivityInputs(path, None, ev, calib_data=calib, summary=summary),
              SensitivitySettings(cfg, QuantConfig(calib="max")), tmp_path, progress=False)
    res = json.loads(out.results.read_text())
    held = res["search"]["holdout"]
    assert res["task"] == "embedding" and held["nn_pool"] == 48 and held["samples"] == 12 and held["in_search"]
    # The held-out number is its 12 queries' agreement among all 48 samples, recomputed here from the outputs.
    from pipeline.core.accuracy import nn_agreement_among
    from pipeline.sensitivity.inputs import split_samples as split

    search_idx, held_idx = split(48, 0.25)
    x = np.load(ev)["x"]
    order = np.concatenate([search_idx, held_idx])
    q = quantize_onnx(path, [{"x": np.load(calib)["x"]}], QuantConfig(plan=str(out.plan)),
                      tmp_path / "e.int8.qdq.onnx", progress=False)
    ref = run_first_output(ort_session(path), [{"x": x[order]}])
    test = run_first_output(ort_session(q.qdq_onnx_path), [{"x": x[order]}])
    expect = nn_agreement_among(ref, test, np.arange(36, 48))
    assert held["plan"]["nn_agreement"] == pytest.approx(expect, abs=1e-9)
