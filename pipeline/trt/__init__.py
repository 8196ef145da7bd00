"""TensorRT: engines from ONNX (8.6 / 10.x / 11.x by feature detection), running and profiling them.

Loader-style modules, each a small step that takes the ``tensorrt`` module as an argument:
:mod:`~pipeline.trt.features` (what this TensorRT supports, the GPU), :mod:`~pipeline.trt.plan`
(flags per precision), :mod:`~pipeline.trt.network` (ONNX -> network, profile shapes),
:mod:`~pipeline.trt.builder_config`, :mod:`~pipeline.trt.calibrator`, :mod:`~pipeline.trt.timing_cache`,
:mod:`~pipeline.trt.engine_cache` (sidecar; engines of another TensorRT or GPU are rebuilt, never
loaded), :mod:`~pipeline.trt.builder` (:func:`engine_from_onnx`), :mod:`~pipeline.trt.inspector`,
:mod:`~pipeline.trt.dtypes` (inputs in the engine's dtypes), :mod:`~pipeline.trt.cuda` (device memory),
:mod:`~pipeline.trt.runtime` (engine session, Polygraphy runner), :mod:`~pipeline.trt.layers` and
:mod:`~pipeline.trt.profiler` (:func:`profile_engine`), :mod:`~pipeline.trt.onnx_typed`.

Re-exports only; ``tensorrt``, pycuda, Polygraphy and onnx are imported inside the functions that use
them, so ``import pipeline.trt`` works on a machine without a GPU.
"""

from __future__ import annotations

from pipeline.trt.builder import engine_from_onnx
from pipeline.trt.dtypes import engine_input_array, engine_inputs
from pipeline.trt.engine_cache import EngineArtifact, cached_engine_problem
from pipeline.trt.features import (GpuInfo, TrtFeatures, detect_features, gpu_info, import_tensorrt,
                                   library_version, tensorrt_status)
from pipeline.trt.inspector import precision_summary
from pipeline.trt.network import onnx_summary, profile_shapes
from pipeline.trt.plan import BuildPlan, plan_build
from pipeline.trt.profiler import TrtProfile, profile_engine, timed_loop
from pipeline.trt.timing_cache import forget_process_timing_caches

__all__ = [
    "BuildPlan",
    "EngineArtifact",
    "GpuInfo",
    "TrtFeatures",
    "TrtProfile",
    "cached_engine_problem",
    "detect_features",
    "engine_from_onnx",
    "engine_input_array",
    "engine_inputs",
    "forget_process_timing_caches",
    "gpu_info",
    "import_tensorrt",
    "library_version",
    "onnx_summary",
    "plan_build",
    "precision_summary",
    "profile_engine",
    "profile_shapes",
    "tensorrt_status",
    "timed_loop",
]
