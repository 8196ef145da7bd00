"""Profile stage: measured latency and throughput (:mod:`pipeline.profile.stage`).

The runtimes live in :mod:`pipeline.ort` (ONNX Runtime) and :mod:`pipeline.trt` (TensorRT); the
backend-neutral record and its statistics in :mod:`pipeline.core.measurement`: import from those.
The two names below are still imported through this package by ``pipeline/profile/stage.py``,
``tests/test_report.py`` and ``scripts/gpu_evidence.py``; heavy runtimes load inside the functions.
"""

from __future__ import annotations

from pipeline.core.measurement import achieved
from pipeline.ort import measure_onnxruntime

__all__ = ["achieved", "measure_onnxruntime"]
