"""Predicted per-layer times (roofline of the analyze stage) in INT8 and in float, for the search's time ranking."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Sequence, Tuple

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.sensitivity.items import Layer
    from pipeline.sensitivity.inputs import SensitivitySettings

#: The float precision a float layer of a mixed INT8 plan runs in on a GPU.
FLOAT = "fp16"


def layer_times(onnx_path, settings: "SensitivitySettings", layers: Sequence["Layer"]
                ) -> Tuple[Dict[str, float], Dict[str, float], Optional[float], str]:
    """Roofline seconds per layer label in INT8 and in float, and the whole model's INT8 prediction.

    Returns:
        ``(int8_s, float_s, total_int8_s, note)``; empty dicts and None with the reason in ``note`` when the
        hardware has no INT8 or FP16 peak (a CPU without them falls back to FP32 SIMD in the analyze stage,
        which predicts no difference).
    """
    from pipeline.analyze import analyze_onnx, resolve_hardware
    from pipeline.core.config import precision_config

    try:
        hw = resolve_hardware(settings.hardware)
        kw = dict(batch_size=max(1, settings.batch_size), dims=dict(settings.dims) or None)
        a8 = analyze_onnx(onnx_path, hw, precision_config("int8"), **kw)
        af = analyze_onnx(onnx_path, hw, precision_config(FLOAT), **kw)
    except PipelineError as err:
        return {}, {}, None, f"no roofline prediction: {err.message}"
    by8 = {ly.layer.name: ly.bound_s for ly in a8.layers}
    byf = {ly.layer.name: ly.bound_s for ly in af.layers}
    int8_s, float_s = {}, {}
    for ly in layers:
        key = ly.label if ly.label in by8 else f"{ly.op_type}_{ly.index}"
        if key in by8:
            int8_s[ly.label], float_s[ly.label] = by8[key], byf.get(key, by8[key])
    note = f"roofline of {hw.name} at batch {kw['batch_size']}: layers in INT8 vs FP16 (analyze stage)"
    return int8_s, float_s, a8.predicted_latency_s, note
