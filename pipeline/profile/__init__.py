"""Profile stage: measured latency, throughput and per-layer times, checked against ONNX Runtime.

``stage.py`` holds ``run()``; the runtimes live in :mod:`pipeline.trt` (TensorRT) and :mod:`pipeline.ort`
(ONNX Runtime), the latency statistics in :mod:`pipeline.core.measurement`.
"""
