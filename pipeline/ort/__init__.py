"""ONNX Runtime: sessions (one factory), input validation, runs, a Polygraphy runner and CPU timing.

Re-exports only; ``onnxruntime`` and Polygraphy are imported inside the functions that use them.
"""

from __future__ import annotations

from pipeline.ort.runner import onnxrt_runner, run_first_output, run_onnxruntime
from pipeline.ort.session import ORT_DTYPES, expected_inputs, ort_session, validate_inputs
from pipeline.ort.timing import MIN_WARMUP_RUNS, measure_onnxruntime

__all__ = [
    "MIN_WARMUP_RUNS",
    "ORT_DTYPES",
    "expected_inputs",
    "measure_onnxruntime",
    "onnxrt_runner",
    "ort_session",
    "run_first_output",
    "run_onnxruntime",
    "validate_inputs",
]
