"""Profile stage: measured latency and throughput, and the statistics behind them.

The runtimes live in :mod:`pipeline.ort` (ONNX Runtime) and :mod:`pipeline.trt` (TensorRT); the
backend-neutral record in :mod:`pipeline.core.measurement`. Re-exports only; heavy runtimes are
imported inside the functions that use them.
"""

from __future__ import annotations

from pipeline.core.measurement import Measurement, achieved, cpu_name, latency_stats, percentile
from pipeline.ort import expected_inputs, measure_onnxruntime, ort_session, run_onnxruntime, validate_inputs

__all__ = [
    "Measurement",
    "achieved",
    "cpu_name",
    "expected_inputs",
    "latency_stats",
    "measure_onnxruntime",
    "ort_session",
    "percentile",
    "run_onnxruntime",
    "validate_inputs",
]
