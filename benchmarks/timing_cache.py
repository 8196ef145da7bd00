#!/usr/bin/env python
"""Does the timing cache make a second build faster? Three builds of one engine, each in a fresh process.

1. ``cold``: an empty engines folder, timing cache on: every kernel is timed; the build stage saves
   the cache (if TensorRT can read it back, see ``pipeline.trt.timing_cache.save_timing_cache``).
2. ``warm``: the same engine rebuilt (``force_rebuild``) with that cache.
3. ``control``: rebuilt once more with the timing cache off, after the other two, so that it has
   the same warm disk and driver caches as ``warm``: only the timing cache differs.

By default each build runs in a fresh process (the cache passes through its file, as between two
runs of the pipeline). ``--in-process`` runs the three in one process, where the second build takes
the cache object from memory (as in a sweep); the control build then shares the process's warmth
(loaded kernels, CUDA context), so that again only the cache differs.

``--probe`` instead builds tiny networks (Conv; + GlobalAveragePool/Flatten/Gemm; + Softmax) with
dynamic and static batch, with TensorRT 8.6's ``faster_dynamic_shapes_0805`` preview feature on and
off, and records which of them produce a timing cache TensorRT can read back, and how many Myelin
layers each engine has (TensorRT 8.6.0 cannot deserialize Myelin timing entries).

Usage (GPU with TensorRT; in the GPU sandbox through ``gpukit-trt``)::

    gpukit-trt benchmarks/timing_cache.py --onnx resnet50.onnx --model resnet50 --precision fp16 \\
        --batch 256 --out results/timing_cache-resnet50-fp16.json
    gpukit-trt benchmarks/timing_cache.py --in-process --onnx resnet50.onnx ... --out results/timing_cache-inproc.json
    gpukit-trt benchmarks/timing_cache.py --probe --out results/timing_cache-probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEPS = {"cold": {"timing_cache": True}, "warm": {"timing_cache": True, "force_rebuild": True},
         "control": {"timing_cache": False, "force_rebuild": True}}


def _precision(name: str):
    from pipeline.core.config import precision_config

    return precision_config(name)


def _engine_facts(art) -> dict:
    side = art.sidecar
    layers = side.get("layers") or []
    types = [str(layer.get("LayerType", "")) for layer in layers if isinstance(layer, dict)]
    return {"build_seconds": round(art.build_seconds, 3), "cache_hit": art.cache_hit,
            "timing_cache": side.get("timing_cache"), "layers": len(layers),
            "myelin_layers": sum("myelin" in t.lower() for t in types),
            "preview_features": side.get("preview_features"), "plan_bytes": side.get("plan_bytes"),
            "tensorrt": side.get("tensorrt", {}).get("library_version"), "gpu": side.get("gpu")}


def _build_step(args, step: str, engines_dir: Path) -> dict:
    from pipeline.trt import engine_from_onnx
    from pipeline.core.config import BuildConfig

    t0 = time.perf_counter()
    art = engine_from_onnx(args.onnx, _precision(args.precision), BuildConfig(**STEPS[step]), args.batch,
                           engines_dir, args.model)
    facts = _engine_facts(art)
    facts["call_seconds"] = round(time.perf_counter() - t0, 3)
    return facts


def child(args) -> None:
    """One build in this (fresh) process; facts to ``args.result``."""
    from pipeline.core.artifacts import write_json

    write_json(args.result, _build_step(args, args.child, args.engines_dir))


def three_builds(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="timing-cache-", dir=args.work_dir))
    res = {"onnx": str(args.onnx), "model": args.model, "precision": args.precision, "batch_size": args.batch,
           "engines_dir": str(work), "mode": "in-process" if args.in_process else "fresh processes", "steps": {}}
    for step in STEPS:
        if args.in_process:  # the second build takes the cache from memory (a sweep does the same)
            res["steps"][step] = facts = _build_step(args, step, work)
        else:
            out = work / f"{step}.json"
            cmd = [sys.executable, __file__, "--child", step, "--result", str(out), "--onnx", str(args.onnx),
                   "--model", args.model, "--precision", args.precision, "--batch", str(args.batch),
                   "--engines-dir", str(work)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0 or not out.is_file():
                res["steps"][step] = {"error": (proc.stdout + proc.stderr)[-2000:], "returncode": proc.returncode}
                break
            facts = json.loads(out.read_text())
            facts["wall_seconds_with_process_start"] = round(wall, 3)
            res["steps"][step] = facts
        print(f"{step:8s} build {facts['build_seconds']:8.2f} s  timing cache "
              f"loaded={facts['timing_cache']['loaded']} saved={facts['timing_cache']['saved']}", flush=True)
    s = res["steps"]
    if all("build_seconds" in s.get(k, {}) for k in STEPS):
        warm, control, cold = (s[k]["build_seconds"] for k in ("warm", "control", "cold"))
        loaded = bool(s["warm"]["timing_cache"]["loaded"])
        res["verdict"] = {
            "first_build_seconds": cold, "second_build_with_cache_seconds": warm,
            "second_build_without_cache_seconds": control,
            "speedup_vs_first": round(cold / warm, 3), "speedup_vs_control": round(control / warm, 3),
            "cache_loaded": loaded, "cache_source": s["warm"]["timing_cache"].get("source"),
            "second_build_faster": loaded and warm < control and warm < cold,
        }
    return res


def _tiny(path: Path, ops: str, batch):
    """Conv(3->16, 3x3)+Relu [+ GlobalAveragePool + Flatten + Gemm(16->10) [+ Softmax]] on 3x32x32."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.1, "w"),
             numpy_helper.from_array(np.zeros(16, np.float32), "b")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="/conv/Conv"),
             helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu")]
    out, shape = "r", [batch, 16, 32, 32]
    if ops != "conv":
        inits += [numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32) * 0.1, "fw"),
                  numpy_helper.from_array(np.zeros(10, np.float32), "fb")]
        nodes += [helper.make_node("GlobalAveragePool", ["r"], ["p"], name="/pool/GlobalAveragePool"),
                  helper.make_node("Flatten", ["p"], ["f"], name="/flatten/Flatten"),
                  helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], transB=1, name="/fc/Gemm")]
        out, shape = "g", [batch, 10]
    if ops == "conv_gemm_softmax":
        nodes.append(helper.make_node("Softmax", ["g"], ["s"], axis=1, name="/softmax/Softmax"))
        out = "s"
    nodes[-1].output[0] = "output"  # the last node writes the graph output (no Identity: a reformat in 8.6)
    graph = helper.make_graph(nodes, ops, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 32, 32])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def probe(args) -> dict:
    from pipeline.trt import detect_features, engine_from_onnx
    from pipeline.trt import import_tensorrt
    from pipeline.core.config import BuildConfig

    features = detect_features(import_tensorrt())
    previews = [None]
    if "FASTER_DYNAMIC_SHAPES_0805" in features.preview_features:
        previews += [True, False]
    work = Path(tempfile.mkdtemp(prefix="timing-probe-", dir=args.work_dir))
    rows = []
    for ops in ("conv", "conv_gemm", "conv_gemm_softmax"):
        for dynamic in (True, False):
            onnx_path = _tiny(work / f"{ops}-{'dyn' if dynamic else 'static'}.onnx", ops, "N" if dynamic else 4)
            for pv in previews:
                engines = work / f"eng-{ops}-{dynamic}-{pv}"
                build = dict(min_batch=1, opt_batch=4, max_batch=8) if dynamic else {}
                if pv is not None:
                    build["preview_features"] = {"faster_dynamic_shapes_0805": pv}
                row = {"ops": ops, "dynamic_batch": dynamic, "faster_dynamic_shapes_0805": pv}
                try:
                    first = engine_from_onnx(onnx_path, _precision("fp16"), BuildConfig(**build), 4, engines, ops)
                    second = engine_from_onnx(onnx_path, _precision("fp16"), BuildConfig(force_rebuild=True, **build), 4,
                                              engines, ops)
                    row["first"], row["second"] = _engine_facts(first), _engine_facts(second)
                except Exception as err:  # one failing variant must not end the probe
                    row["error"] = f"{type(err).__name__}: {err}"
                rows.append(row)
                tc = row.get("first", {}).get("timing_cache") or {}
                print(f"{ops:18s} dynamic={dynamic!s:5s} preview={pv!s:5s} saved={tc.get('saved')} "
                      f"myelin={row.get('first', {}).get('myelin_layers')} "
                      f"second loaded={(row.get('second', {}).get('timing_cache') or {}).get('loaded')} "
                      f"{row.get('error', '')}", flush=True)
    return {"tensorrt": features.library_version, "bindings": features.bindings_version,
            "preview_features_available": sorted(features.preview_features), "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path)
    ap.add_argument("--model", default="model")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--probe", action="store_true", help="tiny-network diagnosis instead of the three builds")
    ap.add_argument("--in-process", action="store_true",
                    help="the three builds in this process (the cache passes in memory) instead of fresh processes")
    ap.add_argument("--work-dir", type=Path, default=ROOT / "outputs", help="where the fresh engines folders go")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", choices=sorted(STEPS), help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--engines-dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    if not args.out or (not args.probe and not args.onnx):
        ap.error("--out, and --onnx unless --probe, are required")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    res = probe(args) if args.probe else three_builds(args)
    res.update({"command": "gpukit-trt " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
                "python": platform.python_version(), "started_at": started})
    from pipeline.core.artifacts import write_json

    write_json(args.out, res)
    print(json.dumps(res.get("verdict", {}), indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
