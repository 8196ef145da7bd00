"""The report's "Layer-wise sensitivity" section, from a run folder's run.json + sensitivity.json."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

from pipeline.report.fmt import fmt_time
from pipeline.report.sensitivity import TOP_LAYERS, ranked_layers
from pipeline.report.stage import assemble_report, render

REF_ACC = 0.76  # FP32 top-1 accuracy on the search samples
MAX_DROP = 0.005
N_LAYERS = 26  # more than TOP_LAYERS, so the ranked table is cut
# Harm per layer in graph order: the stem conv, two late 1x1 convs and the classifier hurt most.
HARMS = [2.4, 0.1, 0.0, 0.3, 0.0, 0.05, 0.0, 0.6, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.0, 0.0,
         1.3, 0.0, 0.0, 0.0, 0.0, 3.1]


def _label(i: int) -> str:
    if i == 0:
        return "/conv0/Conv"
    if i == N_LAYERS - 1:
        return "/fc/Gemm"
    return f"/layer{1 + i // 7}.0/conv{i}/Conv"


#: The best plan found (max_float=3): the three most harmful layers.
FLOATS = [_label(25), _label(0), _label(20)]


def _tensor(i: int) -> str:
    return "input" if i == 0 else f"/relu{i - 1}/Relu_output_0"


def _metrics(acc: float, cos: float) -> Dict[str, float]:
    return {"accuracy": acc, "top1_agreement": 0.97 + acc - REF_ACC, "output_cosine": cos,
            "output_cosine_min": cos - 0.01, "nn_agreement": 0.9, "max_abs_diff": 1.5}


def _point(floats: List[str], acc: float, predicted: float, step: str) -> Dict[str, Any]:
    return {"float_layers": floats, "num_float": len(floats),
            "metrics": {"accuracy": acc, "top1_agreement": 0.95, "output_cosine": 0.995, "nn_agreement": 0.9},
            "predicted_s": predicted, "meets": acc >= REF_ACC - MAX_DROP, "step": step}


def _layers() -> List[Dict[str, Any]]:
    out = []
    for i in range(N_LAYERS):
        label = _label(i)
        op = "Gemm" if label.endswith("Gemm") else "Conv"
        out.append({
            "label": label, "op_type": op, "index": 3 * i, "group": label,
            "activations": [_tensor(i)], "weights": [f"w{i}"],
            "one_at_a_time": _metrics(REF_ACC - HARMS[i] * MAX_DROP, 0.9999 - 1e-4 * HARMS[i]),
            "harm": HARMS[i], "all_but_one": _metrics(REF_ACC - 0.02 + 0.001 * HARMS[i], 0.99),
            "error_all_int8": {"snr_db": 40.0 - i * 0.5 - 3 * HARMS[i], "cosine": 0.999 - 1e-4 * i,
                               "max_abs": 0.1 * i},
            "predicted_int8_s": 2e-5 + 1e-6 * i, "predicted_float_s": 5e-5 + 2e-6 * i,
            "seconds": 0.2, "in_plan_float": label in FLOATS})
    return out


def make_sensitivity() -> Dict[str, Any]:
    """A ResNet-like run whose budget was not met with 3 float layers, and whose plan misses on held-out data."""
    layers = _layers()
    by = {ly["label"]: ly for ly in layers}
    base = sum(ly["predicted_int8_s"] for ly in layers)

    def predicted(floats: List[str]) -> float:
        return base + sum(by[f]["predicted_float_s"] - by[f]["predicted_int8_s"] for f in floats)

    order = [ly["label"] for ly in sorted(layers, key=lambda ly: -ly["harm"])]
    points = [_point([], 0.731, base, "all INT8")] + [
        _point(order[:k], acc, predicted(order[:k]), f"{k} most harmful in float")
        for k, acc in ((1, 0.742), (2, 0.748), (3, 0.752))]
    budget = {"metric": "accuracy", "minimum": REF_ACC - MAX_DROP, "reference": REF_ACC, "max_drop": MAX_DROP,
              "extra": {}}
    per_tensor = {_tensor(i): {"method": ("entropy", "max", "mse", "percentile")[i % 4], "amax": 1.0 + i,
                               "candidates": {"max": 2.0 + i, "percentile": 1.5 + i, "entropy": 1.0 + i,
                                              "mse": 1.2 + i},
                               "local_error": {"max": 1e-4, "entropy": 2e-4}} for i in range(N_LAYERS)}
    pareto = copy.deepcopy(points)
    pareto[0]["measured"] = {"throughput": 5210.5, "latency_ms": 49.1, "precision": "int8"}
    pareto[3]["measured"] = {"throughput": 4300.25, "latency_ms": 59.5, "precision": "int8+fp16"}
    return {
        "schema_version": 1, "task": "classification", "budget": budget,
        "samples": {"search": 384, "holdout": 128},
        "reference": _metrics(REF_ACC, 1.0) | {"reference_accuracy": REF_ACC},
        "calibration": {"kept": "per_tensor", "per_tensor": per_tensor,
                        "uniform": _metrics(0.722, 0.9931), "uniform_method": "entropy",
                        "methods_used": {"entropy": 7, "max": 7, "mse": 6, "percentile": 6}},
        "layers": layers,
        "groups": [{"name": ly["label"], "kind": "layer", "layers": [ly["label"]], "harm": ly["harm"]}
                   for ly in layers],
        "search": {
            "met": False, "plan": points[3], "points": points, "pareto": pareto,
            "holdout": {"samples": 128, "plan": _metrics(0.734, 0.996), "plan_meets": False,
                        "all_int8": _metrics(0.711, 0.993), "all_int8_meets": False, "budget": budget},
            "predicted_all_int8_s": base, "predicted_note": "roofline of H200 at batch 256: INT8 vs FP16",
            "message": "no plan met the budget (accuracy >= 0.7550): the best plan found is reported; raise "
                       "sensitivity.max_drop or sensitivity.max_float"},
        "settings": {"sensitivity": {"metric": "auto", "max_drop": None, "max_float": 3, "holdout": 0.25},
                     "quant_calib": "entropy", "per_channel": True, "symmetric": True, "keep_float": []},
        "seconds": {"reference": 1.5, "one_at_a_time": 30.2, "search": 8.0, "holdout": 2.1, "total": 45.0},
        "num_layers": N_LAYERS, "plan_file": "resnet.precision_plan.json",
    }


def _run_folder(path: Path, sens: Dict[str, Any] | None, rel: str = "sensitivity.json") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    artifacts = {}
    if sens is not None:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(json.dumps(sens))
        (path / sens["plan_file"]).write_text(json.dumps({"kind": "precision_plan", "float_layers": FLOATS}))
        artifacts = {"sensitivity": rel, "precision_plan": sens["plan_file"]}
    manifest = {"model_name": "resnet", "batch_size": 256, "precision": {"name": "int8"}, "backend": "onnxruntime",
                "stages": {"sensitivity": {"status": "ran", "reason": "", "seconds": 45.0, "outputs": {}},
                           "report": {"status": "ran", "reason": "", "seconds": 0.0, "outputs": {}}},
                "artifacts": artifacts, "environment": {"python": "3.12"}}
    (path / "run.json").write_text(json.dumps(manifest))
    return path


def _rendered(folder: Path) -> Dict[str, Any]:
    paths = render(folder)
    return {"md": paths["md"].read_text(), "html": paths["html"].read_text(),
            "json": json.loads(paths["json"].read_text())}


def _section(md: str) -> str:
    return md[md.index("\n## Layer-wise sensitivity\n"):md.index("\n## Model\n")]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Dict[str, Any]:
    return _rendered(_run_folder(tmp_path_factory.mktemp("run"), make_sensitivity()))


def test_summary_budget_plan_message_and_holdout(rendered) -> None:
    sec = _section(rendered["md"])
    assert "| Budget | top-1 accuracy ≥ 75.50% (FP32 76.00% minus a drop of at most 0.50%) |" in sec
    assert "| Samples | 384 to search, 128 held out to check the plan |" in sec
    assert "| Result | no plan met the budget (accuracy >= 0.7550): the best plan found is reported;" in sec
    assert f"| Float layers in the plan | 3 of {N_LAYERS}: {', '.join(FLOATS)} |" in sec
    assert "> **⚠ Budget NOT met: the plan below is the closest one the search found" in sec
    # All INT8 vs the plan vs FP32, search and held-out samples.
    assert ("| top-1 accuracy (budget) | 76.00% | 73.10% | 75.20% | 71.10% | 73.40% |") in sec
    assert re.search(r"> \*\*⚠ Held-out check on 128 samples .* the plan has top-1 accuracy 73\.40% and MISSES "
                     r"the budget \(top-1 accuracy ≥ 75\.50%\); all INT8 has 71\.10% and MISSES it", sec)
    assert "roofline of H200 at batch 256: INT8 vs FP16" in sec
    assert str(rendered["json"]["sensitivity"]["plan_path"]).endswith("resnet.precision_plan.json")
    # Calibration: methods per tensor, per-tensor choice vs entropy everywhere.
    assert "| entropy | 7 |" in sec and "| percentile | 6 |" in sec and "(26 tensors;" in sec
    assert "| top-1 accuracy | 73.10% | 72.20% |" in sec  # kept per-tensor = the all-INT8 point
    assert "Kept: the per-tensor choice" in sec


def test_layers_ranked_by_harm_and_cut(rendered) -> None:
    sec = _section(rendered["md"])
    rows = re.findall(r"^\| \**(\d+)\** \| \**([^|*]+?)\** \|", sec, flags=re.M)
    ranked = [(int(n), name) for n, name in rows if name.startswith("/")]
    by_harm = sorted(range(N_LAYERS), key=lambda i: -HARMS[i])
    table = ranked[:TOP_LAYERS]
    assert [n for n, _ in table] == list(range(1, TOP_LAYERS + 1))
    assert [name for _, name in table[:6]] == [_label(i) for i in by_harm[:6]]
    assert table[0][1] == "/fc/Gemm" and table[1][1] == "/conv0/Conv"
    assert f"{N_LAYERS - TOP_LAYERS} more layers (harm ≤ 0 each) are in report.json (sensitivity.layers)" in sec
    # Ties at harm 0 go to the lower SNR: the deepest zero-harm layers come first.
    zero = [name for _, name in table if HARMS[[_label(i) for i in range(N_LAYERS)].index(name)] == 0]
    assert zero[0] == _label(24)
    # Plan-float rows are bold and say FLOAT; the harm, SNR, times and input calibration are there.
    fc = next(line for line in sec.splitlines() if line.startswith("| **1** |"))
    assert "**FLOAT**" in fc and "**3.1**" in fc and f"**{40.0 - 25 * 0.5 - 3 * 3.1:.1f} dB**" in fc
    assert f"**{fmt_time(2e-5 + 25e-6)}**" in fc and "**max**" in fc  # tensor 25 -> "max"
    assert "The most harmful layer, /fc/Gemm (Gemm), alone uses 310% of the allowed drop. 3 layers alone would " \
           "break the budget (harm ≥ 1)." in sec


def test_float_costs_and_pareto(rendered) -> None:
    sec = _section(rendered["md"])
    layers = {ly["label"]: ly for ly in _layers()}
    costs = {f: layers[f]["predicted_float_s"] - layers[f]["predicted_int8_s"] for f in FLOATS}
    for f, c in costs.items():
        assert re.search(rf"\| {re.escape(f)} \| [^|]+ \| [^|]+ \| [^|]+ \| {re.escape(fmt_time(c))} \| \d+% \|", sec)
    base = sum(ly["predicted_int8_s"] for ly in layers.values())
    assert (f"Keeping these 3 layers in float adds {fmt_time(sum(costs.values()))} to the predicted all-INT8 "
            f"{fmt_time(base)} ({100 * sum(costs.values()) / base:+.1f}%).") in sec
    assert "The search evaluated 4 plans; 4 are on the Pareto front" in sec
    assert "No plan met the budget; the chosen plan is the closest one found." in sec
    plan_rows = [line for line in sec.splitlines() if "★ plan" in line and "| **3** |" in line]
    assert len(plan_rows) == 1 and "**75.20%**" in plan_rows[0] and "**4300.2 samples/s**" in plan_rows[0]
    assert "|  | 0 | none (all INT8) | 73.10% | 0.995000 |" in sec and "5210.5 samples/s" in sec


def test_html_section_and_plots(rendered) -> None:
    html = rendered["html"]
    assert '<section id="sensitivity"><h2>Layer-wise sensitivity</h2>' in html
    for key in ("sens_harm", "sens_error", "sens_pareto"):
        fig = html[html.index(f'id="plot-{key}"'):]
        assert "<svg" in fig[: fig.index("</figure>")], key
    pareto = html[html.index('id="plot-sens_pareto"'):]
    pareto = pareto[: pareto.index("</figure>")]
    assert 'id="sens-pareto-plan' in pareto and 'id="sens-pareto-measured' in pareto
    error = html[html.index('id="plot-sens_error"'):]
    assert 'id="sens-error-float' in error[: error.index("</figure>")]
    assert "/fc/Gemm" in html and "no plan met the budget" in html


def test_report_json_is_compact(rendered) -> None:
    s = rendered["json"]["sensitivity"]
    raw = make_sensitivity()
    assert s["plan"]["float_layers"] == raw["search"]["plan"]["float_layers"] and s["met"] is False
    assert s["message"] == raw["search"]["message"] and s["holdout"]["plan_meets"] is False
    assert [ly["label"] for ly in s["layers"]] == [ly["label"] for ly in raw["layers"]]
    assert all("weights" not in ly and "seconds" not in ly for ly in s["layers"])
    assert all("float_layers" not in p for p in s["points"]) and len(s["points"]) == 4
    assert s["pareto"][3]["measured"]["throughput"] == 4300.25
    with_candidates = {t for t, v in s["calibration"]["tensors"].items() if "candidates" in v}
    assert with_candidates == {_tensor(0), _tensor(20), _tensor(25)}  # inputs of the plan's float layers
    assert len(s["calibration"]["tensors"]) == N_LAYERS and s["groups"] == []  # single-layer groups dropped
    assert len(json.dumps(s)) < len(json.dumps(raw))
    assert [ly["label"] for ly in ranked_layers(s)][:2] == ["/fc/Gemm", "/conv0/Conv"]


def test_infinite_snr_and_manifest_path(tmp_path) -> None:
    sens = make_sensitivity()
    sens["layers"][3]["error_all_int8"]["snr_db"] = float("inf")  # a layer whose output is exact
    folder = _run_folder(tmp_path / "run", sens, rel="elsewhere/sens_results.json")
    out = _rendered(folder)
    assert out["json"]["sensitivity"]["layers"][3]["error_all_int8"]["snr_db"] is None
    assert "## Layer-wise sensitivity" in out["md"]


def test_met_plan_with_holdout_miss(tmp_path) -> None:
    sens = make_sensitivity()
    sens["search"]["met"] = True
    sens["search"]["message"] = ("3 layers in float; on the 128 held-out samples the plan misses the budget "
                                 "(see holdout)")
    sec = _section(_rendered(_run_folder(tmp_path / "run", sens))["md"])
    assert "| Result | 3 layers in float; on the 128 held-out samples the plan misses the budget (see holdout) |" \
           in sec
    assert "Budget NOT met" not in sec and "MISSES the budget" in sec
    assert "The chosen plan is the one with the fewest float layers that meets the budget." in sec


def test_holdout_used_by_the_search_and_pooled_nn_are_said(tmp_path, rendered) -> None:
    assert "Held-out check on 128 samples the search never saw:" in _section(rendered["md"])
    sens = make_sensitivity()
    sens["search"]["holdout"].update(in_search=True, nn_pool=512)
    sec = _section(_rendered(_run_folder(tmp_path / "run", sens))["md"])
    assert ("Held-out check on 128 samples, which also validated every plan during the search "
            "(sensitivity.validate), so this check is not independent of it:") in sec
    assert "never saw" not in sec
    assert "looks for each sample's neighbour among all 512 samples (search and held out)" in sec


def test_without_sensitivity_renders_as_before(tmp_path) -> None:
    plain = _rendered(_run_folder(tmp_path / "a", None))
    assert "sensitivity" not in assemble_report(tmp_path / "a") and "sensitivity" not in plain["json"]
    assert "Layer-wise sensitivity" not in plain["md"] and 'id="sensitivity"' not in plain["html"]
    with_sens = _rendered(_run_folder(tmp_path / "b", make_sensitivity()))

    def strip(md: str) -> str:
        md = re.sub(r"\| Report written at \| [^|]+ \|", "", md)
        md = md.replace(" · [Layer-wise sensitivity](#sensitivity)", "")
        start = md.find('<a id="sensitivity"></a>')
        return md if start < 0 else md[:start] + md[md.index('<a id="model"></a>'):]

    assert strip(with_sens["md"]) == strip(plain["md"])
