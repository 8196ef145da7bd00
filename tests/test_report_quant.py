"""The report's Quantization section, from a real quantize run + calibration comparison on a tiny CNN."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_models import small_cnn
from test_report import make_report

from pipeline.core.config import QuantConfig
from pipeline.quantize import compare_calibrations, quantize_onnx
from pipeline.report import write_reports
from pipeline.report.quant import MAX_ROWS


def _batches(seed: int, n: int, bs: int = 16):
    rng = np.random.default_rng(seed)
    # A heavy-tailed input, so the calibration methods pick different thresholds.
    return [{"x": (rng.standard_normal((bs, 3, 16, 16)) * rng.exponential(1.0, (bs, 1, 1, 1))).astype(np.float32)}
            for _ in range(n)]


@pytest.fixture(scope="module")
def quantization(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("q")
    path = d / "small_cnn.onnx"
    onnx.save(small_cnn(), str(path))
    labels = np.random.default_rng(7).integers(0, 10, 48)
    res = quantize_onnx(path, _batches(0, 4), QuantConfig(calib="entropy"), d / "small_cnn.int8.qdq.onnx",
                        eval_batches=_batches(1, 3), eval_labels=labels, progress=False)
    q = res.to_dict()
    q["comparison"] = compare_calibrations(path, _batches(0, 4), _batches(1, 3), eval_labels=labels,
                                           methods=("max", "percentile@99.9", "entropy", "mse"), progress=False)
    return json.loads(json.dumps(q))  # exactly what report.json holds


def _write(q: dict, tmp_path: Path) -> dict:
    report = make_report(measured=True)
    report["quantization"] = q
    paths = write_reports(report, tmp_path)
    return {k: p.read_text() for k, p in paths.items()} | {"report": report}


def _qsec(md: str) -> str:
    return md[md.index("\n## Quantization\n"):md.index("\n## Model\n")]


def test_summary_metrics_and_ranges(quantization, tmp_path):
    out = _write(quantization, tmp_path)
    md = out["md"]
    sec = _qsec(md)
    assert "| Calibration algorithm | entropy |" in sec
    assert "| Weights | int8, per_channel |" in sec and "| Scheme | symmetric int8 (zero point 0) |" in sec
    assert f"| Quantized nodes | {quantization['num_quantized_nodes']} |" in sec
    assert f"{quantization['calib_samples']} samples in 4 batches" in sec
    assert quantization["qdq_onnx_path"] in sec and quantization["calibration_cache_path"] in sec
    acc = quantization["metrics"]["accuracy"]
    lo, hi = quantization["metrics"]["accuracy_ci95"]
    assert f"| top-1 accuracy [95% CI] (primary) | {100 * acc:.2f}% [{100 * lo:.2f}%, {100 * hi:.2f}%]" in sec
    # One ranges table with the tensor units, not a flat dump of dotted keys.
    assert "| tensor | min | max | amax | range clipped | scale | zero point |" in sec
    assert "ranges." not in sec and "ranges.x.scale" not in md
    x = quantization["ranges"]["x"]
    assert re.search(rf"\| x \| [^|]+ \| [^|]+ \| {x['amax']:.4g} \| [^|]+ \| {x['scale']:.4g} \| 0 \|", sec)
    # report.json is the data as given (rendering only).
    assert json.loads(out["json"])["quantization"] == quantization


def test_comparison_tables_and_best(quantization, tmp_path):
    md = _write(quantization, tmp_path)["md"]
    c = quantization["comparison"]
    variant = re.compile(r"\| (\*\*★ best\*\*|\s*) \| \**(max|percentile@99\.9|entropy|mse)")
    rows = [line for line in md.splitlines() if variant.match(line)]
    assert len(rows) == len(c["results"]) == 4 * 2 + 1  # methods x granularities + one asymmetric variant
    best = [r for r in rows if "★ best" in r]
    assert len(best) == 1 and c["best"]["label"] in best[0] and c["best"]["granularity"] in best[0]
    assert sum("uint8 asymmetric" in r for r in rows) == 1
    assert "| method | clipping (Σ MSE/range²) | rounding (Σ MSE/range²) |" in md
    assert "| max | 0 |" in md  # max never clips
    assert "| weight | shape | channel axis | MSE per-channel | MSE per-tensor |" in md
    assert "| w | 8, 3, 3, 3 | 0 |" in md and "Per-channel scales gain" in md
    # Markdown references nothing external (the plots are HTML-only; their numbers are tables).
    assert "report.html" not in _qsec(md)
    assert "**Thresholds (amax) of the tensors where the methods disagree most**" in md


def test_html_plots_inline_with_threshold_lines(quantization, tmp_path):
    html = _write(quantization, tmp_path)["html"]
    c = quantization["comparison"]
    hist = html[html.index('id="plot-quant_histograms"'):]
    hist = hist[: hist.index("</figure>")]
    assert "<svg" in hist
    lines = re.findall(r'id="quant-thr-(\d+)-([\w-]+)"', hist)
    n = min(len(c["histograms"]), 6)
    assert n >= 1 and len(lines) == n * 4
    assert {m for _, m in lines} == {"max", "percentile_99_9", "entropy", "mse"}
    metric = html[html.index('id="plot-quant_metric"'):]
    assert "<svg" in metric[: metric.index("</figure>")] and "★ best" in metric[: metric.index("</figure>")]
    # Self-contained: no external resources.
    assert not re.search(r'(src|href)="(?!#|data:)', html)
    assert "<img" not in html and "<link" not in html and "http://" not in html.replace("http://www.w3.org", "")
    assert len(html) < 600_000


def test_ranges_and_per_tensor_tables_are_capped(quantization, tmp_path):
    q = copy.deepcopy(quantization)
    proto = q["ranges"]["x"]
    q["ranges"] = {f"t{i}": dict(proto) for i in range(MAX_ROWS + 17)}
    c = q["comparison"]
    c["tensors"] = [dict(c["tensors"][0], name=f"t{i}") for i in range(MAX_ROWS + 5)]
    out = _write(q, tmp_path)
    md = out["md"]
    assert f"Showing {MAX_ROWS} of {MAX_ROWS + 17}; 17 more in report.json (quantization.ranges)." in md
    assert f"Showing {MAX_ROWS} of {MAX_ROWS + 5}; 5 more in report.json (quantization.comparison.tensors)." in md
    assert f"| t{MAX_ROWS - 1} |" in md and f"| t{MAX_ROWS} |" not in md
    assert len(json.loads(out["json"])["quantization"]["ranges"]) == MAX_ROWS + 17


def test_without_comparison_or_metrics(quantization, tmp_path):
    q = copy.deepcopy(quantization)
    del q["comparison"]
    q["metrics"] = None
    out = _write(q, tmp_path)
    assert "Calibration comparison" not in out["md"] and 'id="plot-quant_histograms"' not in out["html"]
    assert "INT8 was not compared with FP32" in out["md"]
