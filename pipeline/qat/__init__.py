"""Quantization-aware training (QAT): fake quantizers initialised from the PTQ ranges, exported as Q/DQ ONNX.

The PTQ path (:mod:`pipeline.quantize`) decides where Q/DQ goes and with which activation ranges; QAT keeps
both and only lets the weights adapt to INT8 rounding:

1. :func:`ptq_ranges` (FP32 ONNX + the quantize stage's statistics file + ``QuantConfig``) -> the placement
   and the activation thresholds, computed by the quantize stage's own functions;
2. :func:`attach_fake_quant` wraps, in place, the torch layers whose ONNX nodes the placement quantizes in
   :class:`QuantWrapper` (input per tensor, weights per output channel, straight-through gradient);
3. fine-tune the model (any float training loop: the wrappers are ordinary modules);
4. :func:`qat_qdq_onnx` exports ``<stem>.qat.onnx`` and writes ``<stem>.qat.int8.qdq.onnx`` with the PTQ
   writer, the same placement and the same activation ranges.

Example::

    ranges = ptq_ranges("digits_cnn.onnx", "digits_cnn.calib_stats.npz", QuantConfig(calib="entropy"))
    attach_fake_quant(model, ranges.onnx_path, ranges.amaxes, cfg=ranges.cfg, placement=ranges.plan)
    train(model)
    qdq_path = qat_qdq_onnx(model, ranges, out_dir)

Importing this package imports neither torch nor onnx: the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PtqRanges": "pipeline.qat.ranges",
    "ptq_ranges": "pipeline.qat.ranges",
    "attach_fake_quant": "pipeline.qat.attach",
    "module_path": "pipeline.qat.attach",
    "QuantWrapper": "pipeline.qat.fake_quant",
    "strip_fake_quant": "pipeline.qat.fake_quant",
    "qat_qdq_onnx": "pipeline.qat.export",
    "qat_paths": "pipeline.qat.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load a public name's module on first access (PEP 562), so that ``import pipeline.qat`` stays light."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline.qat' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))
