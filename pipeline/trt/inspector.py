"""IEngineInspector: what each engine layer runs in, and the engine's layer JSON and I/O tensors.

TensorRT decides per layer; the inspector's ``Format/Datatype`` strings (8.6/10: "Int8 NC/32HW32",
"Row major linear FP16 format"...; 11 splits them into ``Format`` and ``DataType``) say what each layer
reads and writes. A convolution or matmul whose *inputs* are Int8 runs on INT8 Tensor Cores: that is
how a user checks that a Q/DQ ONNX was fused as intended rather than falling back to FP16/FP32.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from types import ModuleType
from typing import Any, Dict, Iterable, List, Mapping, Optional

#: Layer types that do the model's multiply-accumulates (TensorRT's LayerType / inspector names).
COMPUTE_LAYER_TYPES = ("Convolution", "CaskConvolution", "CaskConvActPool", "Deconvolution", "CaskDeconvolution", "MatrixMultiply",
                       "Gemm", "CaskGemmConvolution", "FullyConnected", "CaskFullyConnected", "gemm", "Myelin")

_DTYPES = (  # order matters: first match wins
    ("int8", re.compile(r"\bint8\b", re.I)),
    ("fp8", re.compile(r"\bfp8\b|\bfloat8|e4m3", re.I)),
    ("bf16", re.compile(r"\bbf16\b|\bbfloat16\b", re.I)),
    ("fp16", re.compile(r"\bfp16\b|\bhalf\b", re.I)),
    ("fp32", re.compile(r"\bfp32\b|\bfloat\b", re.I)),
    ("int32", re.compile(r"\bint32\b", re.I)),
    ("bool", re.compile(r"\bbool\b", re.I)),
)


def tensor_dtype(desc: Mapping[str, Any]) -> Optional[str]:
    """Data type of one inspector tensor entry (``Format/Datatype`` in 8.6/10, ``DataType`` in 11)."""
    text = " ".join(str(desc.get(k, "")) for k in ("Format/Datatype", "DataType", "Datatype", "Format"))
    for name, pattern in _DTYPES:
        if pattern.search(text):
            return name
    return None


def layer_precision(layer: Mapping[str, Any]) -> Optional[str]:
    """The precision a layer computes in: its first input's type (outputs for layers without inputs)."""
    for key in ("Inputs", "Outputs"):
        for desc in layer.get(key) or []:
            if isinstance(desc, Mapping):
                dt = tensor_dtype(desc)
                if dt:
                    return dt
    return None


def precision_summary(layers: Iterable[Mapping[str, Any]]) -> Dict[str, Any]:
    """Count engine layers by computing precision, for all layers and for the compute (conv/matmul) ones.

    Args:
        layers: the inspector's ``Layers`` list (dicts; layers given only as names are ignored).

    Returns:
        ``{"layers": n, "by_precision": {...}, "compute_layers": n, "compute_by_precision": {...},
        "compute_not_int8": [names...]}``, where compute layers are convolutions and matmuls.
    """
    rows: List[Mapping[str, Any]] = [layer for layer in layers if isinstance(layer, Mapping)]
    every = Counter()
    compute = Counter()
    not_int8: List[str] = []
    for layer in rows:
        if str(layer.get("LayerType", "")) == "Constant":
            continue
        prec = layer_precision(layer) or "unknown"
        every[prec] += 1
        if str(layer.get("LayerType", "")) in COMPUTE_LAYER_TYPES:
            compute[prec] += 1
            if prec != "int8":
                not_int8.append(str(layer.get("Name", "?")))
    return {
        "layers": sum(every.values()),
        "by_precision": dict(every),
        "compute_layers": sum(compute.values()),
        "compute_by_precision": dict(compute),
        "compute_not_int8": not_int8,
    }


def layer_info_from_engine(trt: ModuleType, engine: Any) -> Dict[str, Any]:
    """IEngineInspector JSON (layers and I/O) of a deserialized engine.

    Engines with dynamic input dimensions may need an execution context with shapes set before the
    inspector reports layers, so that is the second attempt. Returns ``{"Layers": [...], ...}`` or
    ``{"error": "..."}``.
    """
    errors = []
    for with_context in (False, True):
        try:
            inspector = engine.create_engine_inspector()
            context = None
            if with_context:
                context = engine.create_execution_context()
                for i in range(int(engine.num_io_tensors)):
                    name = engine.get_tensor_name(i)
                    if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                        context.set_input_shape(name, tuple(engine.get_tensor_profile_shape(name, 0)[1]))
                inspector.execution_context = context
            raw = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
            # TensorRT 8.6 writes raw control characters inside JSON strings (layer metadata):
            # strict=False accepts them.
            info = json.loads(raw, strict=False)
            del inspector, context
            if isinstance(info, dict) and info.get("Layers"):
                return info
            errors.append(f"context={with_context}: no Layers in {str(raw)[:120]!r}")
        except (AttributeError, ValueError, TypeError, RuntimeError) as err:
            errors.append(f"context={with_context}: {type(err).__name__}: {err}")
    return {"error": "; ".join(errors)}


def io_tensors(trt: ModuleType, engine: Any) -> List[Dict[str, Any]]:
    """Name, mode (INPUT/OUTPUT), shape (-1 for dynamic) and dtype of every I/O tensor of an engine."""
    out = []
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        out.append({
            "name": name,
            "mode": str(engine.get_tensor_mode(name)).rsplit(".", 1)[-1],
            "shape": [int(d) for d in engine.get_tensor_shape(name)],
            "dtype": str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1],
        })
    return out
