"""The export stage: torch module (or a user's ONNX file) -> checked, shape-inferred ONNX.

Entry points:

* :func:`export_onnx` - torch -> ONNX (opset 17 by default, dynamic batch), verified against
  ONNX Runtime on CPU.
* :func:`onnx_from_file` - ``model=onnx``: validate a user's file and copy it, shape-inferred.
* :func:`onnx_input_specs` / :func:`onnx_output_names` / :func:`describe_onnx` - what an ONNX file
  takes and returns.

torch, onnx and onnxruntime are imported inside the functions that need them.
"""

from __future__ import annotations

from pipeline.export.onnx_export import ExportResult, export_onnx, make_check_inputs, onnx_from_file
from pipeline.graph.describe import (
    MAX_IR_VERSION,
    TENSORRT_MAX_OPSET,
    OnnxDescription,
    describe_onnx,
    onnx_input_specs,
    onnx_output_names,
)

__all__ = [
    "MAX_IR_VERSION",
    "TENSORRT_MAX_OPSET",
    "ExportResult",
    "OnnxDescription",
    "describe_onnx",
    "export_onnx",
    "make_check_inputs",
    "onnx_from_file",
    "onnx_input_specs",
    "onnx_output_names",
]
