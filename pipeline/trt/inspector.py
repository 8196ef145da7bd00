"""What precision each engine layer runs in, read from IEngineInspector's JSON (the engine sidecar).

TensorRT decides per layer; the inspector's ``Format/Datatype`` strings (8.6/10: "Int8 NC/32HW32",
"Row major linear FP16 format"...; 11 splits them into ``Format`` and ``DataType``) say what each layer
reads and writes. A convolution or matmul whose *inputs* are Int8 runs on INT8 Tensor Cores: that is
how a user checks that a Q/DQ ONNX was fused as intended rather than falling back to FP16/FP32.
"""

from __future__ import annotations

import re
from collections import Counter
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
