"""Build stage: TensorRT engines from ONNX, version-aware (8.6 / 10.x / 11.x by feature detection).

Re-exports only; ``tensorrt``, pycuda and onnx are imported inside the functions that use them, so
``import pipeline.build`` works on a machine without a GPU.
"""

from __future__ import annotations

from pipeline.build.engine import BuildPlan, EngineArtifact, engine_from_onnx, plan_build, profile_shapes
from pipeline.build.trt_features import GpuInfo, TrtFeatures, detect_features, gpu_info, tensorrt_status

__all__ = [
    "BuildPlan",
    "EngineArtifact",
    "GpuInfo",
    "TrtFeatures",
    "detect_features",
    "engine_from_onnx",
    "gpu_info",
    "plan_build",
    "profile_shapes",
    "tensorrt_status",
]
