"""The sensitivity stage (issue 11): which layers lose accuracy in INT8, and the fastest plan inside a budget.

Modules: ``segments`` (cut-and-resume evaluation of graph pieces with fake-quantized slots), ``items`` (layers
and structural groups), ``sweep`` (one-at-a-time / all-but-one metrics, per-layer errors, calibration choice),
``search`` (budget, mixed-precision search, Pareto front), ``predict`` (roofline times per layer),
``analysis`` (one run, start to end), ``stage`` (files in, files out). The plan file format lives in
:mod:`pipeline.quantize.mixed` (the quantize stage reads it). Importing this package imports no onnxruntime.
"""
