"""TensorRT INT8 calibration cache, written from our own ranges and read back.

With a cache, TensorRT's implicit INT8 path (TensorRT <= 10, ``BuilderFlag.INT8`` plus a calibrator
whose ``read_calibration_cache`` returns these bytes) takes the scales as given and skips its own
calibration, so any of our four algorithms can drive a TensorRT engine.

Format (text, one entry per line, ``\\n`` line ends)::

    TRT-8601-EntropyCalibration2
    input: 3c010204
    /conv1/Conv_output_0: 3d4ccccd

- Line 1: ``TRT-<version>-<algorithm>``. ``<version>`` is ``NV_TENSORRT_VERSION`` of the TensorRT
  that wrote it: ``major*1000 + minor*100 + patch`` up to 9.x (8.6.1 -> ``8601``, as in caches from
  TensorRT 8.6), ``major*10000 + minor*100 + patch`` from 10.0 (10.3.0 -> ``100300``, seen in
  NVIDIA TAO's TrafficCamNet cache). ``<algorithm>`` names the calibrator (``EntropyCalibration2``,
  ``EntropyCalibration``, ``MinMaxCalibration``, ``LegacyCalibration``); TensorRT ignores a cache whose
  algorithm does not match the calibrator it was handed, so build with the matching calibrator class.
- Other lines: ``<tensor name>: <scale>`` where ``<scale>`` is the float32 *scale* (``amax / 127``,
  not amax) as 8 hex digits of its IEEE-754 bits, big-endian (``struct.pack(">f", s).hex()``).
  Tensor names are the ONNX tensor names (TensorRT's ONNX parser keeps them).

Sources: NVIDIA TensorRT developer guide, "INT8 Calibration Using C++/Python" (calibration cache
reuse); NVIDIA ModelOpt ``modelopt/onnx/quantization/calib_utils.py::import_scales_from_calib_cache``
(parses exactly this: skip line 1, split on ``": "``, ``struct.unpack("!f", bytes.fromhex(v))``).
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Dict, Tuple

from pipeline.core.artifacts import write_text
from pipeline.core.errors import PipelineError

#: Calibrator names TensorRT writes in the header.
ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")


def trt_version_code(version: str) -> int:
    """``NV_TENSORRT_VERSION`` for a version string: "8.6.1" -> 8601, "10.3.0" -> 100300."""
    parts = [int(p) for p in version.split(".")[:3] if p.isdigit()]
    major, minor, patch = (parts + [0, 0, 0])[:3]
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    """float32 scale -> 8 lowercase hex digits of its big-endian IEEE-754 bits."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    """Inverse of :func:`scale_to_hex` (accepts fewer than 8 digits, as some writers drop zeros)."""
    return struct.unpack(">f", bytes.fromhex(text.strip().zfill(8)))[0]


def calibration_cache_text(amaxes: Dict[str, float], trt_version: str = "8.6.1",
                           algorithm: str = "EntropyCalibration2") -> str:
    """The cache file's content for per-tensor thresholds.

    Args:
        amaxes: ``{tensor_name: amax}`` in tensor units; scale = amax / 127.
        trt_version: TensorRT version the cache is for (header only).
        algorithm: calibrator name for the header, one of :data:`ALGORITHMS`.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    lines = [f"TRT-{trt_version_code(trt_version)}-{algorithm}"]
    for name, amax in amaxes.items():
        a = float(amax)
        if not math.isfinite(a) or a < 0:
            raise ValueError(f"amax for {name!r} must be finite and >= 0, got {a}")
        # An all-zero tensor still needs a positive scale; TensorRT rejects 0.
        lines.append(f"{name}: {scale_to_hex(max(a / 127.0, 1e-8))}")
    return "\n".join(lines) + "\n"


def write_calibration_cache(path: "str | os.PathLike", amaxes: Dict[str, float], trt_version: str = "8.6.1",
                            algorithm: str = "EntropyCalibration2") -> Path:
    """Atomically write a TensorRT calibration cache (see module docstring); returns the path."""
    return write_text(path, calibration_cache_text(amaxes, trt_version, algorithm))


def read_calibration_cache(path: "str | os.PathLike") -> Tuple[str, Dict[str, float]]:
    """Parse a TensorRT calibration cache.

    Returns:
        ``(header, {tensor_name: scale})`` with scales as float32 values (amax = scale * 127).

    Raises:
        PipelineError: the file is missing or not in the format above.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise PipelineError(f"cannot read calibration cache {p}: {err}", "check the path") from err
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise PipelineError(f"{p} is not a TensorRT calibration cache (no 'TRT-<version>-<algo>' header)",
                            "point to a cache written by TensorRT or by pipeline.quantize")
    scales: Dict[str, float] = {}
    for ln in lines[1:]:
        name, sep, value = ln.rpartition(": ")
        if not sep:
            raise PipelineError(f"malformed line in {p}: {ln!r}", "expected '<tensor>: <8 hex digits>'")
        try:
            scales[name] = hex_to_scale(value)
        except ValueError as err:
            raise PipelineError(f"bad scale in {p}: {ln!r}", "expected 8 hex digits") from err
    return lines[0], scales
