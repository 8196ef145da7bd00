"""Cost of the sensitivity stage's one-at-a-time sweep: ResNet-50 (random weights), 256 samples, this machine's CPU.

Usage (CPU; exports the model through the pipeline's own export stage when ``--onnx`` is not given)::

    python benchmarks/sensitivity_cost.py                          # ResNet-50, 256 samples
    python benchmarks/sensitivity_cost.py --onnx model.onnx --samples 256 --input-shape 3 224 224

Writes ``benchmarks/results/sensitivity_cost_<model>.json``: one full FP32 evaluation of the samples (ONNX
Runtime, all graph optimisations, the threads the sweep uses), the sweep's seconds per layer (its suffix run
and session) and in total, the frontier walk, and the ratios the issue asks about (total / one FP32 evaluation
per 10 layers). Also the predicted floor of any exact one-at-a-time route: each layer must at least run the
graph from itself to the output, so the sweep costs at least sum(FLOPs after each cut) / FLOPs of the model
full evaluations (computed here from the analyze stage's per-node FLOPs).
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

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.artifacts import write_json  # noqa: E402
from pipeline.core.config import QuantConfig  # noqa: E402


def _export(workdir: Path) -> Path:
    """ResNet-50 (random weights) through the export stage."""
    from pipeline.core.config import ModelConfig
    from pipeline.export.stage import ExportInputs, ExportSettings, run

    run(ExportInputs(ModelConfig(name="resnet50")), ExportSettings(opset=17, batch_size=1), workdir)
    return workdir / "resnet50.onnx"


def _suffix_flop_floor(onnx_path: Path, cuts) -> float:
    """sum over cuts of FLOPs from the cut to the end / FLOPs of the model (full evaluations)."""
    from pipeline.analyze.flops import graph_costs
    from pipeline.core.config import precision_config

    costs = graph_costs(onnx_path, 1, precision_config("fp32"), None)
    flops = np.array([c.flops for c in costs.layers], dtype=np.float64)
    tail = np.cumsum(flops[::-1])[::-1]
    total = flops.sum()
    return float(sum(tail[min(c, len(tail) - 1)] for c in cuts) / total) if total else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, help="model to sweep (default: export ResNet-50)")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--input-shape", type=int, nargs="+", default=[3, 224, 224])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--all-sites", action="store_true", help="also rank pooling / residual-add inputs")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/sensitivity_cost"))
    args = ap.parse_args()

    import onnx

    from pipeline.core.accuracy import task_metrics
    from pipeline.quantize.api import _float_tensor_set, plan_for_config
    from pipeline.quantize.stats import collect_stats
    from pipeline.sensitivity.items import quantized_layers
    from pipeline.sensitivity.segments import GraphIndex
    from pipeline.sensitivity.sweep import Calibration, Sweep, candidate_thresholds

    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.onnx or _export(args.workdir)
    model = onnx.load(str(path))
    name = model.graph.input[0].name
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, *args.input_shape)).astype(np.float32)
    calib = rng.standard_normal((args.calib_samples, *args.input_shape)).astype(np.float32)
    cfg = QuantConfig(calib="max", cache_all_tensors=False)
    plan = plan_for_config(model, cfg, float_tensors=_float_tensor_set(model))
    sites = quantized_layers(model, plan)
    layers = [ly for ly in sites if ly.compute or args.all_sites]  # the stage's default: sensitivity.layers=compute
    stats = collect_stats(model, [{name: calib[i:i + 8]} for i in range(0, len(calib), 8)], list(plan.activations),
                          progress=False)
    cands = candidate_thresholds(stats, plan.activations, ["max"], 99.99)
    sw = Sweep(GraphIndex(model), layers, stats, Calibration(cands, {t: "max" for t in cands}), {name: x}, None,
               batch=args.batch, threads=args.threads, fixed=[ly for ly in sites if ly not in layers])

    t0 = time.perf_counter()
    ref = sw.reference()
    fp32_s = time.perf_counter() - t0
    sw.metric = lambda y: task_metrics(ref, y)
    t0 = time.perf_counter()
    swept = sw.one_at_a_time(progress=True)
    total_s = time.perf_counter() - t0
    per_layer = [{"label": ly.label, "op_type": ly.op_type, "seconds": r["seconds"],
                  "top1_agreement": r["metrics"]["top1_agreement"], "output_cosine": r["metrics"]["output_cosine"]}
                 for ly, r in zip(layers, swept)]
    suffix_s = sum(p["seconds"] for p in per_layer)
    floor = _suffix_flop_floor(path, [ly.index for ly in layers])
    n = len(layers)
    result = {
        "benchmark": "sensitivity one-at-a-time sweep cost",
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": path.name, "samples": args.samples, "batch": args.batch, "layers": n,
        "one_full_fp32_evaluation_s": fp32_s, "sweep_total_s": total_s,
        "sweep_suffix_runs_s": suffix_s, "frontier_walk_and_overhead_s": total_s - suffix_s,
        "seconds_per_layer_mean": total_s / n,
        "full_evaluations_per_10_layers": total_s / fp32_s / n * 10,
        "exact_floor_full_evaluations": floor, "exact_floor_per_10_layers": floor / n * 10,
        "targets": {"total_s_max": 180, "full_evaluations_per_10_layers_max": 3},
        "per_layer": per_layer,
    }
    from pipeline.core.environment import package_versions

    result["versions"] = {k: v for k, v in package_versions().items() if k in ("onnxruntime", "onnx", "numpy")}
    out = args.out or REPO / "benchmarks" / "results" / f"sensitivity_cost_{path.stem}.json"
    write_json(out, result)
    print(f"{n} layers, {args.samples} samples: one FP32 evaluation {fp32_s:.1f} s, sweep {total_s:.1f} s "
          f"({total_s / n:.2f} s/layer, {result['full_evaluations_per_10_layers']:.2f} evaluations per 10 layers; "
          f"exact floor {result['exact_floor_per_10_layers']:.2f}) -> {out}")


if __name__ == "__main__":
    main()
