"""Profile stage: measured latency and throughput (ONNX Runtime on CPU; TensorRT runners alongside).

Re-exports only; heavy runtimes are imported inside the functions that use them.
"""

from __future__ import annotations

from pipeline.profile.measurement import Measurement, achieved, cpu_name, latency_stats, percentile
from pipeline.profile.onnxruntime_runner import (
    expected_inputs,
    measure_onnxruntime,
    ort_session,
    run_onnxruntime,
    validate_inputs,
)

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
