"""quantize_onnx and compare_calibrations end to end on a small exported CNN, in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.artifacts import write_json
from pipeline.core.config import QuantConfig
from pipeline.core.errors import PipelineError
from pipeline.quantize import compare_calibrations, quantize_onnx, save_comparison_figures
from pipeline.quantize.trt_cache import read_calibration_cache


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
            self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

        def forward(self, x):
            return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.pool, self.blk = nn.Conv2d(3, 16, 3, padding=1), nn.MaxPool2d(2), Block(16)
            self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.gap(self.blk(self.pool(torch.relu(self.stem(x))))), 1))

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    torch.onnx.export(Net().eval(), (torch.randn(2, 3, 16, 16),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      opset_version=17, dynamo=False)
    return path


def _batches(seed, n, bs=16):
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal((bs, 3, 16, 16)).astype(np.float32)} for _ in range(n)]


def test_quantize_onnx_writes_qdq_model_cache_and_metrics(cnn_onnx, tmp_path):
    out = tmp_path / "cnn.int8.qdq.onnx"
    res = quantize_onnx(cnn_onnx, iter(_batches(0, 4)), QuantConfig(calib="entropy", cache_all_tensors=True), out,
                        eval_batches=_batches(1, 4), progress=False)
    assert out.is_file() and res.qdq_onnx_path == out
    assert res.calib_batches == 4 and res.calib_samples == 64
    assert res.metrics["top1_agreement"] >= 0.9 and res.metrics["output_cosine"] > 0.999
    assert "onnxruntime_int8_kernels" in res.metrics
    header, scales = read_calibration_cache(res.calibration_cache_path)
    assert header == "TRT-8601-EntropyCalibration2"
    for t, r in res.ranges.items():
        assert scales[t] == pytest.approx(r["amax"] / 127, rel=1e-6)
        assert 0 < r["amax"] <= max(abs(r["min"]), abs(r["max"])) + 1e-6
    # the cache also covers tensors outside the Q/DQ plan (TensorRT's implicit path needs them)
    assert len(scales) > len(res.ranges)
    d = res.to_dict()
    write_json(tmp_path / "q.json", d)
    assert json.loads((tmp_path / "q.json").read_text())["algorithm"] == "entropy"
    assert d["num_quantized_nodes"] == 7  # 3 convs, gemm, maxpool, GAP, residual add


def test_quantize_onnx_user_errors(cnn_onnx, tmp_path):
    with pytest.raises(PipelineError, match="empty"):
        quantize_onnx(cnn_onnx, iter([]), QuantConfig(), tmp_path / "x.onnx", progress=False)
    with pytest.raises(PipelineError, match="unknown calibration method"):
        quantize_onnx(cnn_onnx, _batches(0, 1), QuantConfig(calib="kl"), tmp_path / "x.onnx", progress=False)
    with pytest.raises(PipelineError, match="not found"):
        quantize_onnx(tmp_path / "missing.onnx", _batches(0, 1), QuantConfig(), tmp_path / "x.onnx", progress=False)
    assert not (tmp_path / "x.onnx").exists()


def test_compare_calibrations_rows_tensors_histograms_and_figures(cnn_onnx, tmp_path):
    labels = np.random.default_rng(3).integers(0, 10, 48)
    c = compare_calibrations(cnn_onnx, _batches(0, 3), _batches(2, 3), eval_labels=labels,
                             methods=("max", "percentile@99.9", "entropy", "mse"), progress=False)
    assert len(c["results"]) == 4 * 2 + 1  # methods x granularities + one asymmetric uint8 row
    assert c["primary"] == "accuracy"
    for r in c["results"]:
        m = r["metrics"]
        lo, hi = m["accuracy_ci95"]
        assert lo <= m["accuracy"] <= hi and m["samples"] == 48
    labels_seen = {r["label"] for r in c["results"]}
    assert labels_seen == {"max", "percentile@99.9", "entropy", "mse"}
    t = c["tensors"][0]
    assert set(t["amax"]) == labels_seen and t["amax"]["max"] >= t["amax"]["percentile@99.9"]
    assert t["error"]["max"]["clip_mse"] == 0.0  # max calibration never clips
    assert all(w["per_channel"]["total_mse"] <= w["per_tensor"]["total_mse"] + 1e-12 for w in c["weights"])
    h = c["histograms"][0]
    assert len(h["edges"]) == len(h["counts"]) + 1 and set(h["thresholds"]) == labels_seen
    write_json(tmp_path / "c.json", c)
    paths = save_comparison_figures(c, tmp_path)
    assert [p.name for p in paths] == ["quant_metric.png", "quant_errors.png", "quant_histograms.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
