"""Analyze stage: what the hardware could do (peaks) and what the model asks of it (FLOPs, bytes).

``resolve_hardware(cfg)`` turns the ``hardware`` config group into a :class:`HardwareSpec`,
``layer_costs(onnx, batch, precision)`` costs every ONNX node and
``analyze_onnx(onnx, hardware, precision, batch)`` puts them on the roofline (:class:`Analysis`).
Importing this package imports neither onnx nor torch; they load inside the functions.
"""

from __future__ import annotations

from pipeline.analyze.flops import Cost, GraphCosts, LayerCost, graph_costs, layer_costs
from pipeline.analyze.fusion import FusionGroup, fusion_groups
from pipeline.analyze.hardware import (
    HardwareSpec,
    Peak,
    hardware_names,
    load_hardware,
    load_hardware_config,
    peak_ops_per_s,
    resolve_hardware,
)
from pipeline.analyze.roofline import Analysis, CategoryRow, LayerBound, analyze_onnx, roofline

__all__ = [
    "Analysis",
    "CategoryRow",
    "Cost",
    "FusionGroup",
    "GraphCosts",
    "HardwareSpec",
    "LayerBound",
    "LayerCost",
    "Peak",
    "analyze_onnx",
    "fusion_groups",
    "graph_costs",
    "hardware_names",
    "layer_costs",
    "load_hardware",
    "load_hardware_config",
    "peak_ops_per_s",
    "resolve_hardware",
    "roofline",
]
