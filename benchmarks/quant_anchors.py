"""Anchors for the quantize stage: ONNX Runtime's ``quantize_static`` vs ours, same models, same data.

Usage (CPU, a few minutes for minilm on 2 cores)::

    HF_HUB_OFFLINE=1 python benchmarks/quant_anchors.py --model minilm
    python benchmarks/quant_anchors.py --model digits_cnn

Writes ``benchmarks/results/quant_<model>.json``. Every variant is calibrated on the same batches
and evaluated on the same held-out batches against the FP32 model in ONNX Runtime, twice:
``simulated`` (ORT optimisations off: Q/DQ evaluated as float math, what TensorRT computes up to
accumulation order) and ``ort_kernels`` (default ORT session: Q/DQ fused into ORT's integer CPU
kernels). ``calib_seconds`` is the wall time of producing the Q/DQ model (statistics, thresholds,
writing), without evaluation. ModelOpt is not run here (it needs its own ~2 GB environment).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.accuracy import label_accuracy, task_metrics  # noqa: E402
from pipeline.core.artifacts import write_json  # noqa: E402
from pipeline.core.config import DataConfig, ModelConfig, QuantConfig  # noqa: E402
from pipeline.ort import ort_session, run_first_output  # noqa: E402
from pipeline.quantize import quantize_onnx  # noqa: E402

#: Per-model setup: zoo config, data source, sample counts, ops to quantize, task.
MODELS = {
    "minilm": dict(model=ModelConfig(name="minilm", input_kind="tokens", input_shape=[64]), data="text",
                   calib=200, eval=500, batch=25, ops=["MatMul", "Gemm"], task="embedding"),
    "digits_cnn": dict(model=ModelConfig(name="digits_cnn", input_kind="image", input_shape=[1, 8, 8], num_classes=10),
                       data="digits", calib=256, eval=397, batch=64, ops=["Conv", "Gemm", "MatMul"],
                       task="classification"),
    # A random-weight zoo CNN on random inputs: agreement with FP32 is the metric (no labels).
    "resnet18": dict(model=ModelConfig(name="resnet18", input_kind="image", input_shape=[3, 224, 224]),
                     data="random", calib=64, eval=128, batch=32, ops=["Conv", "Gemm", "MatMul"],
                     task="classification"),
}

#: Our transformer placement: the feed-forward MatMuls stay in float, found on the graph by the
#: structural ``ffn`` rule (the MatMul/Gemm feeding a GELU and the one reading it; no node names, see
#: pipeline/quantize/placement.py). Found by quantizing one MatMul group at a time on MiniLM: the FFN
#: down-projection (input = GELU output, |x| up to ~25 with a long tail) and the FFN up-projection
#: (input = attention LayerNorm output, outlier channels up to ~30 while the 99.99th percentile is
#: ~10) are the sensitive ones. Q/K/V, attention output and both attention bmm stay INT8.
TRANSFORMER_KEEP_FLOAT = ["ffn"]


def _batches(inputs: Dict[str, np.ndarray], bs: int) -> List[Dict[str, np.ndarray]]:
    n = len(next(iter(inputs.values())))
    return [{k: v[i:i + bs] for k, v in inputs.items()} for i in range(0, n, bs)]


def prepare(name: str, workdir: Path):
    """Export the zoo model and load disjoint calibration / evaluation data through the pipeline."""
    from pipeline.data import load_dataset
    from pipeline.export import export_onnx
    from pipeline.models import build_model

    spec = MODELS[name]
    bundle = build_model(spec["model"])
    onnx_path = workdir / f"{name}.onnx"
    export_onnx(bundle, onnx_path, opset=17)
    dc = DataConfig(name=spec["data"], seed=0, calib_samples=spec["calib"], num_samples=spec["eval"] or 64)
    cal = load_dataset(dc, bundle.inputs, "calib", spec["calib"], tokenizer=bundle.tokenizer)
    ev = load_dataset(dc, bundle.inputs, "eval", spec["eval"], tokenizer=bundle.tokenizer) if spec["eval"] else \
        load_dataset(dc, bundle.inputs, "eval", None, tokenizer=bundle.tokenizer)
    return onnx_path, cal, ev


def ort_anchor(onnx_path: Path, cal_batches, method: str, ops: List[str], out: Path) -> float:
    """ONNX Runtime quantize_static (QDQ, int8 activations and weights, per-channel); returns seconds."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(cal_batches)

        def get_next(self):
            return next(self.it, None)

    t0 = time.perf_counter()
    quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=ops,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))
    return time.perf_counter() - t0


def evaluate(fp32: Path, qpath: Path, ev_batches, labels, task: str, ref) -> Dict[str, object]:
    """Metrics vs FP32 in both execution modes."""
    sim = task_metrics(ref, run_first_output(ort_session(qpath, optimize=False), ev_batches), labels, task)
    kern = task_metrics(ref, run_first_output(ort_session(qpath), ev_batches), labels, task)
    return {"simulated": sim, "ort_kernels": kern}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--workdir", default="/tmp/quant_anchors")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-anchors", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    spec = MODELS[args.model]
    work = Path(args.workdir) / args.model
    work.mkdir(parents=True, exist_ok=True)
    onnx_path, cal, ev = prepare(args.model, work)
    bs = spec["batch"]
    cal_b, ev_b = _batches(cal.inputs, bs), _batches(ev.inputs, bs)
    labels = ev.labels if spec["task"] == "classification" else None
    ref = run_first_output(ort_session(onnx_path), ev_b)
    rows = []

    def record(tool, method, placement, qpath, seconds, extra=None):
        m = evaluate(onnx_path, qpath, ev_b, labels, spec["task"], ref)
        row = {"tool": tool, "method": method, "placement": placement, "calib_seconds": round(seconds, 3),
               "metrics": m, **(extra or {})}
        rows.append(row)
        s = m["simulated"]
        key = "accuracy" if labels is not None else ("embedding_cosine" if spec["task"] == "embedding" else "output_cosine")
        print(f"{tool:12s} {method:10s} {placement:28s} {seconds:7.2f}s  {key}={s[key]:.4f} "
              f"nn={s.get('nn_agreement', float('nan')):.3f} top1={s['top1_agreement']:.3f}  "
              f"| ort-kernels {key}={m['ort_kernels'][key]:.4f} nn={m['ort_kernels'].get('nn_agreement', float('nan')):.3f}",
              flush=True)

    if not args.skip_anchors:
        for method in ("MinMax", "Entropy", "Percentile"):
            q = work / f"ort_{method}.onnx"
            record("onnxruntime", method, "all " + "/".join(spec["ops"]), q, ort_anchor(onnx_path, cal_b, method, spec["ops"], q))

    # keep_float=ffn runs on every model: on a CNN it must match nothing (same nodes as "all").
    placements = [("all " + "/".join(spec["ops"]), []), ("keep_float=ffn", TRANSFORMER_KEEP_FLOAT)]
    for label, keep in placements:
        for method in ("max", "percentile", "entropy", "mse"):
            cfg = QuantConfig(calib=method, op_types=list(spec["ops"]), keep_float=list(keep), cache_all_tensors=False)
            q = work / f"ours_{method}_{'-'.join(keep) or 'all'}.onnx"
            res = quantize_onnx(onnx_path, cal_b, cfg, q, progress=False)
            secs = res.seconds["statistics"] + res.seconds["thresholds"] + res.seconds["write"]
            record("ours", method, label, q, secs, {"quantized_nodes": len(res.plan["quantized_nodes"]),
                                                     "keep_float": list(keep), "kept_float": res.kept_float})

    import onnxruntime

    result = {
        "command": "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": args.model, "task": spec["task"], "calib_samples": len(cal_b) and sum(len(next(iter(b.values()))) for b in cal_b),
        "eval_samples": int(len(ref)), "batch": bs, "data": [cal.description, ev.description],
        "reference": {"fp32_accuracy": label_accuracy(ref, labels) if labels is not None else None},
        "environment": {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                        "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "rows": rows,
    }
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"quant_{args.model}.json"
    write_json(out, result)
    print("wrote", out)


if __name__ == "__main__":
    main()
