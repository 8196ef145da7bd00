"""TensorRT deployment pipeline: model -> ONNX -> analysis -> engine -> measurements -> report.

Importing this package never imports torch, TensorRT, CUDA or ONNX Runtime: every stage imports
its heavy dependencies lazily, inside the functions that need them.
"""

__version__ = "0.1.0"

from pipeline.core.errors import PipelineError  # noqa: E402  (light, no heavy imports)

__all__ = ["PipelineError", "__version__"]
