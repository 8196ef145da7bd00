"""CPU throughput of the zoo models on ONNX Runtime, and their share of the CPU's theoretical peak.

Usage (from the repository root)::

    python benchmarks/cpu_zoo.py [--models resnet18 resnet50 mobilenet_v2 bert digits_cnn]
                                 [--batch 8] [--duration 5] [--out benchmarks/results/cpu_zoo.json]

Each model runs through the same stages as ``python pipeline/run.py backend=onnxruntime`` (export ->
analyze -> profile); the result file records the command line, the machine and every package version.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.artifacts import write_json  # noqa: E402
from pipeline.core.config import (  # noqa: E402
    BackendConfig, DataConfig, HardwareConfig, ModelConfig, PipelineConfig, PrecisionConfig, ProfileConfig,
)
from pipeline.core.environment import environment  # noqa: E402
from pipeline.orchestrate import run_pipeline  # noqa: E402

MODEL_SHAPES = {
    "resnet18": dict(input_kind="image", input_shape=[3, 224, 224]),
    "resnet50": dict(input_kind="image", input_shape=[3, 224, 224]),
    "mobilenet_v2": dict(input_kind="image", input_shape=[3, 224, 224]),
    "bert": dict(input_kind="tokens", input_shape=[128]),
    "digits_cnn": dict(input_kind="image", input_shape=[1, 8, 8], num_classes=10),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODEL_SHAPES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--duration", type=float, default=5.0, help="measuring time per model, seconds")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_zoo.json"))
    args = ap.parse_args()

    rows = []
    hw = None
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = PipelineConfig(
                model=ModelConfig(name=name, **MODEL_SHAPES.get(name, {})),
                precision=PrecisionConfig(name="fp32", weight_bytes=4, activation_bytes=4, peak="fp32_simd"),
                hardware=HardwareConfig(name="cpu", kind="cpu"),
                backend=BackendConfig(name="onnxruntime"),
                data=DataConfig(name="random", num_samples=args.batch),
                profile=ProfileConfig(warmup_s=1.0, duration_s=args.duration, min_iterations=10),
                stages=["export", "analyze", "profile"],
                batch_size=args.batch, output_dir=tmp, command_line=" ".join(["python", *sys.argv]),
            )
            rep = run_pipeline(cfg)
        m, a = rep["measured"], rep["analysis"]
        hw = rep["hardware"]
        rows.append({
            "model": name, "batch_size": args.batch,
            "gflops_per_sample": a["totals"]["flops"] / args.batch / 1e9,
            "latency_ms_median": m["latency_ms"]["median"], "latency_ms_p90": m["latency_ms"]["p90"],
            "latency_ms_p99": m["latency_ms"]["p99"],
            "throughput_samples_s": m["throughput_samples_s"],
            "achieved_gflops": (m.get("achieved_ops_per_s") or 0) / 1e9,
            "pct_of_peak": m.get("pct_of_peak"), "peak_key": m.get("peak_key"),
            "predicted_latency_ms": a["predicted_latency_s"] * 1e3,
            "notes": list(m.get("notes") or []),
        })
    result = {
        "benchmark": "cpu_zoo", "command": " ".join(["python", *sys.argv]),
        "hardware": {k: hw[k] for k in ("name", "kind", "detection", "peaks") if k in hw} if hw else None,
        "rows": rows, "environment": environment(),
    }
    write_json(args.out, result)
    print(f"\n{'model':<14}{'GFLOP/sample':>13}{'median ms':>11}{'samples/s':>11}{'GFLOPS':>9}{'% peak':>8}")
    for r in rows:
        print(f"{r['model']:<14}{r['gflops_per_sample']:>13.3f}{r['latency_ms_median']:>11.2f}"
              f"{r['throughput_samples_s']:>11.1f}{r['achieved_gflops']:>9.1f}{(r['pct_of_peak'] or 0):>8.1f}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
