"""Report writing (json/md/html), formatting, validation and the multirun comparison table."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

from pipeline.core.errors import PipelineError
from pipeline.report import comparison_table, fmt_ops_per_s, write_comparison, write_reports
from pipeline.report.compare import comparison_rows
from pipeline.report.fmt import fmt_bytes, fmt_ms, fmt_time
from pipeline.report.plots import roofline_svg

PEAK = 312e12  # fp16 tensor peak used by the run, ops/s
BW = 2.0e12  # memory bandwidth, bytes/s
SKIP_REASON = "TensorRT is not installed (import tensorrt failed): pip install tensorrt on a GPU host"


def _layer(
    name: str, op: str, cat: str, flops: float, nbytes: float, measured_s: float | None = None
) -> Dict[str, Any]:
    """A layer row as the analyze stage writes it: bound = max(compute, memory) time."""
    compute_s, memory_s = flops / PEAK, nbytes / BW
    layer = {
        "name": name,
        "op_type": op,
        "category": cat,
        "flops": flops,
        "macs": flops / 2,
        "weight_bytes": nbytes * 0.3,
        "activation_bytes": nbytes * 0.7,
        "bytes": nbytes,
        "intensity": flops / nbytes,
        "compute_s": compute_s,
        "memory_s": memory_s,
        "bound_s": max(compute_s, memory_s),
        "bound": "compute" if compute_s >= memory_s else "memory",
    }
    if measured_s is not None:
        layer["measured_s"] = measured_s
    return layer


def make_report(measured: bool = True) -> Dict[str, Any]:
    """A MobileNet-like run: big 3x3 convs are compute-bound, depthwise convs are memory-bound."""
    layers = [
        _layer("conv_stem", "Conv", "conv", 2.0e9, 4.0e6),  # intensity 500 > ridge 156: compute
        _layer("conv_head", "Conv", "conv", 1.2e9, 3.0e6),
        _layer("dw_1", "Conv", "depthwise_conv", 2.0e7, 8.0e6),  # intensity 2.5: memory
        _layer("dw_2", "Conv", "depthwise_conv", 1.0e7, 6.0e6),
        _layer("fc", "Gemm", "gemm", 2.5e6, 5.1e6),
        _layer("relu_1", "Relu", "elementwise", 1.0e6, 8.0e6),
    ]
    if measured:
        for layer in layers:
            layer["measured_s"] = layer["bound_s"] * 2.0  # 50% efficiency everywhere
    predicted = sum(layer["bound_s"] for layer in layers)
    flops = sum(layer["flops"] for layer in layers)
    nbytes = sum(layer["bytes"] for layer in layers)
    stages = {
        "export": {"status": "ran", "reason": "", "seconds": 1.25, "outputs": {"onnx": "mnet.onnx"}},
        "analyze": {"status": "ran", "reason": "", "seconds": 0.4, "outputs": {}},
        "quantize": {
            "status": "skipped",
            "reason": "precision fp16 needs no quantization",
            "seconds": 0.0,
            "outputs": {},
        },
        "build": {"status": "skipped", "reason": SKIP_REASON, "seconds": 0.0, "outputs": {}},
        "profile": {"status": "ran", "reason": "backend auto -> onnxruntime", "seconds": 2.6, "outputs": {}},
        "report": {"status": "ran", "reason": "", "seconds": 0.0, "outputs": {}},
    }
    measured_section = None
    if measured:
        measured_section = {
            "backend": "onnxruntime",
            "device": "Test CPU @ 2.0GHz",
            "batch_size": 4,
            "iterations": 200,
            "latency_ms": {"median": 2.5, "p90": 2.75, "p99": 3.125, "mean": 2.6, "min": 2.4, "max": 3.5, "std": 0.1},
            "throughput_samples_s": 1600.0,
            "achieved_ops_per_s": flops / 2.5e-3,
            "pct_of_peak": 100 * flops / 2.5e-3 / PEAK,
            "peak_key": "fp16_tensor",
            "precision_executed": "fp32",
            "includes_copies": True,
            "notes": ["CPU run: numbers are not TensorRT numbers"],
        }
    else:
        stages["profile"] = {
            "status": "skipped",
            "reason": "no NVIDIA GPU found (nvidia-smi missing)",
            "seconds": 0.0,
            "outputs": {},
        }
    return {
        "schema_version": 1,
        "model": {
            "name": "mnet_tiny",
            "task": "classification",
            "onnx_path": "mnet.onnx",
            "inputs": [{"name": "x", "shape": [4, 3, 224, 224], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": [4, 1000], "dtype": "float32"}],
            "parameters": 3.5e6,
            "notes": "",
        },
        "precision": {"name": "fp16", "weight_bytes": 2, "activation_bytes": 2, "peak": "fp16_tensor"},
        "hardware": {
            "name": "Example GPU",
            "kind": "gpu",
            "peaks": {
                "fp32_cuda": {
                    "ops_per_s_dense": 19.5e12,
                    "ops_per_s_sparse": 19.5e12,
                    "formula": "1410 MHz x 108 SM x 64 FMA x 2",
                    "source": "whitepaper table 3",
                },
                "fp16_tensor": {
                    "ops_per_s_dense": PEAK,
                    "ops_per_s_sparse": 2 * PEAK,
                    "formula": "1410 MHz x 108 SM x 4 TC x 256 FMA x 2",
                    "source": "whitepaper table 3",
                },
                "int8_tensor": {
                    "ops_per_s_dense": 624e12,
                    "ops_per_s_sparse": 1248e12,
                    "formula": "1410 MHz x 108 SM x 4 TC x 512 FMA x 2",
                    "source": "whitepaper table 3",
                },
            },
            # the shape HardwareSpec.to_dict() writes
            "sm_count": 108,
            "memory_bandwidth_bytes_s": BW,
            "memory_bandwidth_gbs": BW / 1e9,
            "detection": {
                "method": "nvidia-smi",
                "reported_name": "Example GPU 40GB",
                "file": "conf/hardware/example.yaml",
            },
            "sources": {"S1": "Example GPU datasheet"},
            "notes": "from conf/hardware/example.yaml",
        },
        "stages": stages,
        "analysis": {
            "totals": {
                "flops": flops,
                "macs": flops / 2,
                "params": 3.5e6,
                "weight_bytes": nbytes * 0.3,
                "activation_bytes": nbytes * 0.7,
                "bytes": nbytes,
                "intensity": flops / nbytes,
            },
            "predicted_latency_s": predicted,
            "ridge_point": PEAK / BW,
            "by_category": {},
            "peak_key": "fp16_tensor",
        },
        "layers": layers,
        "measured": measured_section,
        "accuracy": {
            "export_check": {"max_abs_diff": 1.2e-5, "passed": True},
            "backend_vs_reference": {"top1_agreement": 1.0, "passed": True},
        }
        if measured
        else None,
        "quantization": None,
        "environment": {
            "python": "3.11.9",
            "platform": "Linux-x86_64",
            "packages": {"onnx": "1.23.2", "onnxruntime": "1.32.0"},
            "command_line": "python pipeline/run.py precision=fp16 batch_size=4",
            "config": {"batch_size": 4, "precision": {"name": "fp16"}},
            "started_at": "2025-01-01T12:00:00+00:00",
            "git_commit": "abc1234",
            "hostname": "testhost",
        },
    }


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Dict[str, Any]:
    out = tmp_path_factory.mktemp("report")
    report = make_report(measured=True)
    paths = write_reports(report, out)
    return {"report": report, "paths": paths, "dir": out}


# ---------------------------------------------------------------- formatting


def test_number_formatting() -> None:
    assert fmt_ops_per_s(312e12) == "312.0 TFLOPS"
    assert fmt_ops_per_s(624e12, integer=True) == "624.0 TOPS"
    assert fmt_ops_per_s(1979e12) == "1979.0 TFLOPS"  # capped at tera, like datasheets
    assert fmt_ops_per_s(45.6e9) == "45.6 GFLOPS"
    assert fmt_time(1.2345e-3) == "1.234 ms" and fmt_time(2.5e-6) == "2.5 µs"
    assert fmt_ms(2.5) == "2.500 ms" and fmt_ms(None) == "—"
    assert fmt_bytes(44.7e6) == "44.70 MB" and fmt_bytes(512) == "512 B"


# ---------------------------------------------------------------- write_reports


def test_writes_three_files_and_json_round_trips(written) -> None:
    paths = written["paths"]
    assert set(paths) == {"json", "md", "html"}
    assert [p.name for p in (paths["json"], paths["md"], paths["html"])] == ["report.json", "report.md", "report.html"]
    assert json.loads(paths["json"].read_text()) == written["report"]
    # atomic writes leave no temp files behind
    assert sorted(p.name for p in written["dir"].iterdir()) == ["report.html", "report.json", "report.md"]


def test_html_is_self_contained_with_inline_plots(written) -> None:
    html = written["paths"]["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    assert html.count("<svg") == 3  # roofline, top layers, category share
    for key in ("roofline", "top_layers", "category_share"):
        assert f'id="plot-{key}"' in html
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html


def test_skipped_stage_and_reason_are_prominent(written) -> None:
    md = written["paths"]["md"].read_text()
    html = written["paths"]["html"].read_text()
    assert "build SKIPPED: " + SKIP_REASON in md
    # alerts come before any section
    assert md.index("What did not run") < md.index("## Summary")
    assert md.index(SKIP_REASON) < md.index("## Summary")
    from html import escape

    assert escape("build SKIPPED: " + SKIP_REASON) in html
    assert html.index('id="not-run"') < html.index('id="summary"')
    assert re.search(r'<tr class="flag"><td>build</td><td>SKIPPED</td>', html)


def test_header_peaks_and_measured_numbers(written) -> None:
    md = written["paths"]["md"].read_text()
    report = written["report"]
    assert md.startswith("# mnet_tiny · fp16 · Example GPU · onnxruntime")
    for text in (
        "python pipeline/run.py precision=fp16 batch_size=4",
        "abc1234",
        "onnxruntime 1.32.0",
        "2025-01-01T12:00:00+00:00",
    ):
        assert text in md
    # peaks with formula and source; integer peak in TOPS; the used one marked
    fp16_row = "| fp16_tensor (used) | 312.0 TFLOPS | 624.0 TFLOPS | 1410 MHz x 108 SM x 4 TC x 256 FMA x 2 |"
    assert fp16_row + " whitepaper table 3 |" in md
    assert "| int8_tensor | 624.0 TOPS | 1248.0 TOPS |" in md
    bw_row = "| memory bandwidth | 2000.0 GB/s | — | DRAM peak bandwidth (datasheet or estimate) |"
    assert bw_row + " conf/hardware/example.yaml" in md
    assert "| S1 | Example GPU datasheet |" in md and "| reported_name | Example GPU 40GB |" in md
    assert "| Ridge point | 156 FLOP/B |" in md
    flops = report["analysis"]["totals"]["flops"]
    assert f"({flops / 1e9:.3f} GFLOPs)" in md
    assert "| Latency median | 2.500 ms |" in md and "| Latency p99 | 3.125 ms |" in md
    assert "| Throughput | 1600.0 samples/s |" in md
    assert f"| Achieved | {fmt_ops_per_s(flops / 2.5e-3)} |" in md
    assert f"| % of peak | {100 * flops / 2.5e-3 / PEAK:.1f}% of fp16_tensor |" in md
    ratio = 2.5e-3 / report["analysis"]["predicted_latency_s"]
    assert f"is {ratio:.2f}x the predicted lower bound" in md


def test_where_the_time_goes_and_category_sentence(written) -> None:
    md = written["paths"]["md"].read_text()
    report = written["report"]
    layers = sorted(report["layers"], key=lambda layer: -layer["bound_s"])
    # top layer first, with measured time and efficiency = bound / measured = 50%
    first_row = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert f"| {layers[0]['name']} |" in first_row and first_row.rstrip().endswith("| 50.0% |")
    # depthwise does ~1% of FLOPs but a large share of time: the sentence must say so, with numbers
    total_f = sum(layer["flops"] for layer in report["layers"])
    total_t = sum(layer["bound_s"] for layer in report["layers"])
    dw = [layer for layer in report["layers"] if layer["category"] == "depthwise_conv"]
    fs = sum(layer["flops"] for layer in dw) / total_f
    ts = sum(layer["bound_s"] for layer in dw) / total_t
    assert fs < 0.01 and ts > 0.25  # the fixture really has the FLOPs/time mismatch
    expected = f"depthwise_conv does {fs:.1%} of the FLOPs but takes {ts:.1%} of the predicted time: "
    assert expected + "2 of its 2 layers are memory-bound" in md
    assert "conv does" in md and "FLOPs alone do not predict speed" in md


def test_missing_measurement_says_why(tmp_path: Path) -> None:
    report = make_report(measured=False)
    paths = write_reports(report, tmp_path)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    reason = "no NVIDIA GPU found (nvidia-smi missing)"
    assert f"Nothing was measured: the profile stage skipped: {reason}." in md
    assert f"profile SKIPPED: {reason}" in html
    assert "No accuracy results" in md and "No quantization results: the quantize stage skipped" in md
    assert html.count("<svg") == 3  # plots still drawn from the analysis
    assert "measured (per layer)" not in roofline_svg(report)


def test_flops_track_time_sentence_when_all_compute_bound(tmp_path: Path) -> None:
    report = make_report(measured=False)
    report["layers"] = [_layer("a", "Conv", "conv", 4e9, 4e6), _layer("b", "MatMul", "matmul", 2e9, 2e6)]
    md = write_reports(report, tmp_path)["md"].read_text()
    assert "Here predicted time tracks FLOPs" in md and "FLOPs alone do not predict" not in md


def test_generic_sections_render_any_structure(tmp_path: Path) -> None:
    report = make_report(measured=True)
    report["quantization"] = {
        "calib": "entropy",
        "per_channel": True,
        "ranges": [{"tensor": "x", "amax": 2.5}, {"tensor": "y", "amax": 7.25}],
    }
    md = write_reports(report, tmp_path)["md"].read_text()
    assert "| calib | entropy |" in md and "| per_channel | yes |" in md
    assert "| tensor | amax |" in md and "| y | 7.25 |" in md
    assert "| export_check.max_abs_diff | 1.2e-05 |" in md


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: r.pop("measured"), "missing sections"),
        (lambda r: r.update(schema_version=2), "schema_version"),
        (lambda r: r["stages"]["build"].update(status="maybe"), "stages.build.status"),
        (lambda r: r.update(layers={"a": 1}), "'layers' must be a list"),
        (lambda r: r["analysis"].update(predicted_latency_s=float("nan")), "JSON"),
    ],
)
def test_malformed_report_raises_and_writes_nothing(tmp_path: Path, mutate, match) -> None:
    report = make_report()
    mutate(report)
    with pytest.raises(PipelineError, match=match) as ei:
        write_reports(report, tmp_path)
    assert ei.value.hint
    assert list(tmp_path.iterdir()) == []


def test_not_a_dict() -> None:
    with pytest.raises(PipelineError, match="must be a dict"):
        write_reports([], Path("unused"))  # type: ignore[arg-type]


# ---------------------------------------------------------------- comparison


def _runs() -> List[Dict[str, Any]]:
    a = make_report(measured=True)
    b = make_report(measured=False)
    b["precision"] = {"name": "int8", "weight_bytes": 1, "activation_bytes": 1, "peak": "int8_tensor"}
    c = copy.deepcopy(a)
    c["accuracy"]["backend_vs_reference"]["passed"] = False
    c["measured"]["latency_ms"]["median"] = 1.25
    c["measured"]["throughput_samples_s"] = 3200.0
    c["measured"]["pct_of_peak"] = 4.5
    return [a, b, c]


def test_comparison_rows_values() -> None:
    a, b, c = _runs()
    rows = comparison_rows([a, b, c])
    assert len(rows) == 3
    assert [r["precision"] for r in rows] == ["fp16", "int8", "fp16"]
    assert rows[0]["measured_median_ms"] == 2.5 and rows[2]["measured_median_ms"] == 1.25
    assert rows[1]["measured_median_ms"] is None and rows[1]["backend"] is None
    assert rows[0]["batch"] == 4 and rows[0]["hardware"] == "Example GPU"
    assert rows[0]["predicted_latency_s"] == pytest.approx(a["analysis"]["predicted_latency_s"])
    assert [r["accuracy"] for r in rows] == ["pass", "n/a", "FAIL (1 of 2 checks)"]
    assert (
        rows[1]["stage:profile"] == "skipped"
        and rows[0]["stage:build"] == "skipped"
        and rows[0]["stage:export"] == "ran"
    )
    assert rows[2]["pct_of_peak"] == 4.5


def test_write_comparison_and_text_table(tmp_path: Path) -> None:
    runs = _runs()
    paths = write_comparison(runs, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparison.json", "comparison.md"]
    blob = json.loads(paths["json"].read_text())
    assert len(blob["rows"]) == 3 and blob["rows"][2]["throughput_samples_s"] == 3200.0
    md_rows = [line for line in paths["md"].read_text().splitlines() if line.startswith("| mnet_tiny")]
    assert len(md_rows) == 3
    assert "| 1.250 ms | 3200.0 | 4.5% | FAIL (1 of 2 checks) |" in md_rows[2]
    text = comparison_table(runs)
    lines = text.strip().splitlines()
    assert len(lines) == 2 + 3  # header, rule, one line per run
    assert lines[0].split()[:3] == ["model", "precision", "batch"]
    assert "int8" in lines[3] and "skipped" in lines[3] and "2.500 ms" in lines[2]
    with pytest.raises(PipelineError, match="no reports"):
        write_comparison([], tmp_path)
    with pytest.raises(PipelineError, match="report #1"):
        comparison_table([runs[0], {"schema_version": 1}])


def test_failed_analysis_still_writes_a_report(tmp_path: Path) -> None:
    report = make_report(measured=False)
    report["hardware"] = None
    report["analysis"] = None
    report["layers"] = []
    report["model"]["name"] = "<script>alert(1)</script>"
    report["stages"]["analyze"] = {"status": "failed", "reason": "shape inference failed on node Foo", "seconds": 0.1}
    paths = write_reports(report, tmp_path)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert "analyze FAILED: shape inference failed on node Foo" in md
    assert "No analysis: the analyze stage failed: shape inference failed on node Foo." in md
    assert "<svg" not in html
    assert "No per-layer data: the analyze stage failed" in html
    assert "No hardware peaks: the analyze stage failed" in html
    assert "<script>" not in html and "&lt;script&gt;" in html  # user text is escaped


def test_real_onnxruntime_measurement_renders(tmp_path: Path) -> None:
    """A Measurement from a real ORT run, merged as the orchestrator does, renders in the report."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from pipeline.core.config import ProfileConfig
    from pipeline.core.measurement import achieved
    from pipeline.ort import measure_onnxruntime

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "relu.onnx"))
    cfg = ProfileConfig(warmup_s=0.0, duration_s=0.05, min_iterations=5, threads=1)
    m = measure_onnxruntime(tmp_path / "relu.onnx", {"x": np.ones((2, 16), np.float32)}, cfg)
    report = make_report(measured=True)
    flops = report["analysis"]["totals"]["flops"]
    report["measured"] = {
        **m.to_dict(),
        **achieved(flops, m.latency_ms["median"] / 1e3, PEAK),
        "peak_key": "fp16_tensor",
    }
    paths = write_reports(report, tmp_path / "out")
    md = paths["md"].read_text()
    assert f"| Latency median | {m.latency_ms['median']:.3f} ms |" in md
    assert "| Providers | CPUExecutionProvider |" in md
    assert f"| warmup_iterations | {m.warmup_iterations} |" in md
    assert json.loads(paths["json"].read_text())["measured"]["iterations"] == m.iterations


def test_missing_bandwidth_and_peaks_explained_in_place_of_roofline(tmp_path: Path) -> None:
    report = make_report(measured=False)
    report["hardware"] = {"name": "Unknown CPU", "kind": "cpu", "peaks": {}}
    html = write_reports(report, tmp_path)["html"].read_text()
    assert "no plot: no hardware peaks or bandwidth to draw" in html
    assert html.count("<svg") == 2  # the layer and category plots need no hardware numbers


def test_bandwidth_as_a_dict_is_accepted(tmp_path: Path) -> None:
    report = make_report(measured=False)
    del report["hardware"]["memory_bandwidth_bytes_s"]
    report["hardware"]["bandwidth"] = {"bytes_per_s": 3.35e12, "formula": "5 stacks x 670 GB/s", "source": "datasheet"}
    md = write_reports(report, tmp_path)["md"].read_text()
    assert "| memory bandwidth | 3350.0 GB/s | — | 5 stacks x 670 GB/s | datasheet |" in md


def test_real_hardware_spec_renders(tmp_path: Path) -> None:
    """The hardware section as the analyze stage really writes it (HardwareSpec.to_dict)."""
    hardware = pytest.importorskip("pipeline.analyze.hardware")
    spec = hardware.spec_from_config(hardware.load_hardware_config("a100_sxm"))
    report = make_report(measured=False)
    report["hardware"] = spec.to_dict()
    report["precision"]["peak"] = report["analysis"]["peak_key"] = "int8_tensor"
    paths = write_reports(report, tmp_path)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    int8 = spec.peaks["int8_tensor"].ops_per_s_dense
    assert f"| int8_tensor (used) | {int8 / 1e12:.1f} TOPS |" in md
    assert f"| memory bandwidth | {spec.memory_bandwidth_bytes_s / 1e9:.1f} GB/s |" in md
    assert html.count("<svg") == 3
