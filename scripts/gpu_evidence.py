#!/usr/bin/env python
"""GPU evidence for one (model, precision, batch): build, check, time, compare with a minimal loop.

Runs the pipeline's stage functions directly (``engine_from_onnx``, ``profile_engine``), with the same
data the orchestrator would use (``pipeline.data.load_dataset``), then times the same engine with
``benchmarks/trt_execute_loop.py`` in a fresh process and records the ratio. When ``--report``
names a ``report.json`` from ``pipeline/run.py``, its engine is profiled instead of building again.

Usage (in the GPU sandbox, TensorRT's interpreter)::

    gpukit-trt scripts/gpu_evidence.py --onnx outputs/gpu/onnx/resnet50.onnx --model resnet50 \
        --precision fp16 --batch 256 --rebuild-twice --out outputs/gpu/results/resnet50-fp16-bs256.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _precision(name: str):
    from pipeline.core.config import precision_config

    return precision_config(name)


def _data(onnx_path: Path, split: str, n: int, batch: int):
    from pipeline.core.config import DataConfig
    from pipeline.data import load_dataset
    from pipeline.export import onnx_input_specs

    ds = load_dataset(DataConfig(), onnx_input_specs(onnx_path), split=split, num_samples=n)
    return list(ds.batches(batch))


def _first_batch(onnx_path: Path, batch: int):
    """Like the orchestrator: real samples repeated up to ``batch``."""
    import numpy as np

    b = _data(onnx_path, "eval", min(batch, 64), min(batch, 64))[0]
    out = {}
    for name, arr in b.items():
        reps = -(-batch // len(arr))
        out[name] = np.ascontiguousarray(np.concatenate([arr] * reps)[:batch])
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", required=True, type=Path)
    ap.add_argument("--model", required=True)
    ap.add_argument("--precision", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--engines-dir", type=Path, default=ROOT / "engines")
    ap.add_argument("--report", type=Path, help="report.json of a pipeline/run.py run whose engine to profile")
    ap.add_argument("--rebuild-twice", action="store_true", help="rebuild with the warm timing cache, record both times")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    from pipeline.trt import engine_from_onnx
    from pipeline.core.config import BuildConfig, ProfileConfig
    from pipeline.trt import profile_engine

    prec = _precision(args.precision)
    res: dict = {"command": "gpukit-trt " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
                 "model": args.model, "precision": args.precision, "batch_size": args.batch,
                 "python": platform.python_version(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    plan = None
    if args.report and args.report.is_file():
        rep = json.loads(args.report.read_text())
        b = rep.get("stages", {}).get("build", {})
        res["pipeline_run"] = {"report": str(args.report), "stages": {k: {"status": v.get("status"), "seconds": v.get("seconds"),
                                                                          "reason": v.get("reason")}
                                                                      for k, v in rep.get("stages", {}).items()},
                               "measured": rep.get("measured"), "accuracy": rep.get("accuracy")}
        if b.get("status") == "ran" and b.get("outputs", {}).get("engine"):
            plan = Path(b["outputs"]["engine"])
            res["build"] = {"source": "pipeline/run.py", "plan": str(plan), "cache_hit": b["outputs"].get("cache_hit"),
                            "build_seconds": b["outputs"].get("build_seconds")}
    if plan is None:
        calib = _data(args.onnx, "calib", 64, args.batch) if args.precision in ("int8", "best") else None
        art = engine_from_onnx(args.onnx, prec, BuildConfig(), args.batch, args.engines_dir, args.model,
                               calib_batches=calib, calibration_cache=args.engines_dir / f"{args.model}.calib.cache")
        plan = art.plan_path
        res["build"] = {"source": "engine_from_onnx", "plan": str(plan), "cache_hit": art.cache_hit,
                        "build_seconds": round(art.build_seconds, 2),
                        "timing_cache_loaded": art.sidecar.get("timing_cache", {}).get("loaded"),
                        "plan_notes": art.sidecar.get("plan", {}).get("notes"),
                        "calibration": art.sidecar.get("calibration")}
    side = json.loads(Path(str(plan) + ".json").read_text()) if Path(str(plan) + ".json").is_file() else {}
    res["tensorrt"] = side.get("tensorrt", {}).get("library_version"), side.get("tensorrt", {}).get("bindings_version")
    res["gpu"] = side.get("gpu")
    res["build"]["sidecar"] = {k: side.get(k) for k in ("build_seconds", "timing_cache", "calibration", "plan",
                                                        "plan_bytes", "layer_info_error")}
    res["build"]["sidecar"]["layers"] = len(side.get("layers") or [])
    if args.rebuild_twice:
        art2 = engine_from_onnx(args.onnx, prec, BuildConfig(force_rebuild=True), args.batch, args.engines_dir,
                                args.model)
        res["rebuild_with_timing_cache"] = {"build_seconds": round(art2.build_seconds, 2),
                                            "timing_cache_loaded": art2.sidecar["timing_cache"]["loaded"],
                                            "first_build_seconds": res["build"].get("build_seconds"),
                                            "first_timing_cache_loaded": res["build"].get("timing_cache_loaded")}
        plan = art2.plan_path

    costs, peak, flops = None, None, None
    try:
        from pipeline.analyze import analyze_onnx, resolve_hardware

        hw = resolve_hardware()
        analysis = analyze_onnx(args.onnx, hw, prec, args.batch).to_dict()
        costs, flops = analysis.get("layers"), analysis["totals"]["flops"]
        pk = hw.peak_for(prec)
        peak = pk.ops_per_s_dense
        res["theory"] = {"hardware": hw.name, "peak_key": pk.key, "peak_ops_per_s": peak, "flops_per_batch": flops,
                         "predicted_latency_s": analysis.get("predicted_latency_s")}
    except Exception as err:  # the analyze stage is another module: evidence goes on without it
        res["theory"] = {"error": f"{type(err).__name__}: {err}"}

    inputs = _first_batch(args.onnx, args.batch)
    cfg = ProfileConfig(warmup_s=args.warmup, duration_s=args.duration, min_iterations=50, layer_runs=10)
    prof = profile_engine(plan, inputs, cfg, onnx_path=args.onnx, precision=prec, onnx_costs=costs, peak_ops_per_s=peak)
    m = prof.measurement
    res["pipeline_timing"] = prof.measured_dict()
    res["accuracy"] = prof.accuracy
    res["layers_top10"] = sorted(prof.layers, key=lambda r: -r["measured_ms"])[:10]
    res["layers_count"] = len(prof.layers)
    if flops and peak:
        from pipeline.core.measurement import achieved

        res["achieved"] = achieved(flops, m.duration_s / m.iterations, peak)
    graph = profile_engine(plan, inputs, ProfileConfig(warmup_s=1.0, duration_s=args.duration, min_iterations=50,
                                                       cuda_graph=True, with_copies=False, layer_times=False,
                                                       accuracy_check=False), precision=prec)
    res["pipeline_timing_cuda_graph"] = graph.measured_dict()

    loop_json = args.out.with_suffix(".loop.json")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "trt_execute_loop.py"), str(plan), "--warmup", str(args.warmup),
           "--duration", str(args.duration), "--json", str(loop_json)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    loop = json.loads(loop_json.read_text())
    res["minimal_loop"] = loop
    res["minimal_loop_command"] = "gpukit-trt benchmarks/trt_execute_loop.py <plan> " + " ".join(cmd[3:-2])
    res["ratio_pipeline_to_minimal"] = m.throughput_samples_s / loop["samples_per_s"]
    res["ratio_cuda_graph_to_minimal"] = graph.measurement.throughput_samples_s / loop["samples_per_s"]
    res["summary"] = {
        "device": m.device,
        "images_per_s_gpu_compute": round(m.throughput_samples_s),
        "images_per_s_cuda_graph": round(graph.measurement.throughput_samples_s),
        "images_per_s_with_copies": round(prof.with_copies.throughput_samples_s) if prof.with_copies else None,
        "images_per_s_minimal_loop": round(loop["samples_per_s"]),
        "latency_ms_median": m.latency_ms["median"], "latency_ms_p99": m.latency_ms["p99"],
        "ratio_pipeline_to_minimal": round(res["ratio_pipeline_to_minimal"], 4),
        "accuracy_passed": prof.accuracy.get("passed"),
        # NVML over the timed loop: clocks and power say whether the GPU ran at its boost clock.
        "gpu_telemetry": {k: (v["median"] if isinstance(v, dict) else v)
                          for k, v in prof.measured_dict()["gpu_telemetry"].items()},
        "build_seconds": res["build"].get("build_seconds"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from pipeline.core.artifacts import write_json

    write_json(args.out, res)
    print(json.dumps(res["summary"], indent=2))
    return res


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)
