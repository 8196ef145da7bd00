"""The quantize stage (issue 4): INT8 post-training quantization of an ONNX model.

Public API:

- :func:`quantize_onnx` -> :class:`QuantResult`: calibrate, write ``<model>.int8.qdq.onnx`` and a
  TensorRT calibration cache, optionally evaluate INT8 vs FP32.
- :func:`compare_calibrations` -> dict: every algorithm x weight granularity on held-out data, with
  per-tensor ranges, clipping vs rounding error and histograms (the comparison report's data).
- :func:`save_comparison_figures`: PNG figures of a comparison.

Modules: ``stats`` (streaming histograms), ``calibrate`` (max/percentile/entropy/mse),
``scales`` (scales, zero points, error metrics), ``qdq`` (Q/DQ placement and writer),
``trt_cache`` (TensorRT calibration cache), ``metrics`` (INT8 vs FP32), ``report`` (comparison).
Importing this package never imports onnxruntime, torch or TensorRT.
"""

from pipeline.quantize.api import QuantResult, quantize_onnx
from pipeline.quantize.calibrate import METHODS
from pipeline.quantize.report import compare_calibrations, save_comparison_figures

__all__ = ["METHODS", "QuantResult", "compare_calibrations", "quantize_onnx", "save_comparison_figures"]
