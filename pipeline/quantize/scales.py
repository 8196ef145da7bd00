"""Quantization parameters (scale, zero point) and the error each choice costs.

Conventions (ONNX QuantizeLinear): ``q = saturate(round(x / scale) + zero_point)``,
``x' = (q - zero_point) * scale``; rounding is half to even.

- Symmetric int8 (what TensorRT supports): range ``[-amax, amax]`` maps to ``[-127, 127]``,
  ``scale = amax / 127``, zero point 0. Values inside the calibrated range never reach -128; clipped
  outliers below ``-amax`` saturate at -128 exactly as ONNX QuantizeLinear (and so ONNX Runtime and
  TensorRT) do, which :func:`quantize` reproduces.
- Asymmetric uint8 (ONNX Runtime's CPU kernels like it for activations): ``[lo, hi]`` (widened to
  contain 0 so that 0 is exact) maps to ``[0, 255]``, ``scale = (hi - lo) / 255``,
  ``zero_point = round(-lo / scale)``.
- Weights: per output channel (axis 0 of Conv ``[O, I, kh, kw]`` and of Gemm ``B`` with ``transB=1``;
  the last axis of a MatMul ``[K, N]`` weight) or one scale for the whole tensor; always symmetric
  int8 with ``amax = max |w|`` over the channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class QParams:
    """Scale and zero point of one quantized tensor.

    Attributes:
        scale: float32 scalar, or a 1-D array (per-channel), tensor units per integer step.
        zero_point: same shape as ``scale``; int8 or uint8 values.
        dtype: ``"int8"`` or ``"uint8"``.
        axis: channel axis for per-channel parameters, else ``None``.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str = "int8"
    axis: Optional[int] = None

    @property
    def qmin(self) -> int:
        """Smallest integer produced: -128 int8 (ONNX saturation), 0 uint8."""
        return -128 if self.dtype == "int8" else 0

    @property
    def qmax(self) -> int:
        """Largest integer produced."""
        return 127 if self.dtype == "int8" else 255

    def np_dtype(self):
        """The numpy integer type of the zero point."""
        return np.int8 if self.dtype == "int8" else np.uint8


#: Smallest scale written, so that an all-zero tensor still gets a valid (positive) scale.
MIN_SCALE = 1e-8


def symmetric_qparams(amax: "float | np.ndarray", axis: Optional[int] = None) -> QParams:
    """Symmetric int8 parameters for a threshold (or per-channel thresholds).

    Args:
        amax: clipping threshold(s), tensor units.
        axis: channel axis when ``amax`` is per channel.

    Returns:
        ``scale = amax / 127`` (at least :data:`MIN_SCALE`), zero point 0.
    """
    a = np.asarray(amax, dtype=np.float32)
    scale = np.maximum(a / np.float32(127.0), np.float32(MIN_SCALE)).astype(np.float32)
    return QParams(scale=scale, zero_point=np.zeros(scale.shape, dtype=np.int8), dtype="int8", axis=axis)


def asymmetric_qparams(lo: float, hi: float) -> QParams:
    """Asymmetric uint8 parameters for a range ``[lo, hi]`` (tensor units), widened to include 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max((hi - lo) / 255.0, MIN_SCALE)
    zp = int(np.clip(np.round(-lo / scale), 0, 255))
    return QParams(scale=np.asarray(scale, dtype=np.float32), zero_point=np.asarray(zp, dtype=np.uint8),
                   dtype="uint8")


def activation_qparams(amax: float, lo: float, hi: float, symmetric: bool = True) -> QParams:
    """Per-tensor activation parameters from a calibrated threshold.

    Args:
        amax: calibrated |x| threshold (tensor units).
        lo, hi: smallest and largest values seen (tensor units).
        symmetric: int8 ``[-amax, amax]``; else uint8 over ``[max(lo, -amax), min(hi, amax)]``, i.e.
            the observed range clipped by the calibrated threshold.
    """
    if symmetric:
        return symmetric_qparams(amax)
    return asymmetric_qparams(max(lo, -amax), min(hi, amax))


def weight_amax(w: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """max |w| over everything but ``axis`` (per channel), or over all of ``w`` when ``axis`` is None."""
    a = np.abs(np.asarray(w, dtype=np.float32))
    if axis is None:
        return np.asarray(a.max() if a.size else 0.0, dtype=np.float32)
    other = tuple(d for d in range(a.ndim) if d != axis % a.ndim)
    return a.max(axis=other) if other else a


def weight_qparams(w: np.ndarray, axis: Optional[int]) -> QParams:
    """Symmetric int8 weight parameters, per channel along ``axis`` or per tensor (``axis=None``)."""
    return symmetric_qparams(weight_amax(w, axis), axis=None if axis is None else axis % np.ndim(w))


def _broadcast(p: np.ndarray, x: np.ndarray, axis: Optional[int]) -> np.ndarray:
    if axis is None or np.ndim(p) == 0:
        return p
    shape = [1] * x.ndim
    shape[axis] = -1
    return p.reshape(shape)


def quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """Integer codes of ``x``, as ONNX QuantizeLinear computes them (round half to even, saturate)."""
    s = _broadcast(qp.scale.astype(np.float32), x, qp.axis)
    z = _broadcast(qp.zero_point.astype(np.float32), x, qp.axis)
    return np.clip(np.rint(x / s) + z, qp.qmin, qp.qmax).astype(qp.np_dtype())


def dequantize(q: np.ndarray, qp: QParams) -> np.ndarray:
    """Float values of integer codes (ONNX DequantizeLinear)."""
    s = _broadcast(qp.scale.astype(np.float32), q, qp.axis)
    z = _broadcast(qp.zero_point.astype(np.float32), q, qp.axis)
    return ((q.astype(np.float32) - z) * s).astype(np.float32)


def fake_quantize(x: np.ndarray, qp: QParams) -> np.ndarray:
    """``dequantize(quantize(x))``: what a Q/DQ pair does to a tensor."""
    return dequantize(quantize(np.asarray(x, dtype=np.float32), qp), qp)


@dataclass
class QuantError:
    """Error of quantizing one tensor, split by cause (mean over elements, tensor units squared).

    Attributes:
        clip_mse: mean squared error from values outside the representable range.
        round_mse: mean squared error from rounding values inside it.
        clipped_fraction: share of elements outside the range.
        sqnr_db: signal-to-quantization-noise ratio, dB (higher is better; inf for no error).
    """

    clip_mse: float
    round_mse: float
    clipped_fraction: float
    sqnr_db: float

    @property
    def total_mse(self) -> float:
        """clip_mse + round_mse."""
        return self.clip_mse + self.round_mse

    def to_dict(self) -> dict:
        """Plain dict (inf SQNR reported as None for JSON)."""
        return {"clip_mse": self.clip_mse, "round_mse": self.round_mse, "total_mse": self.total_mse,
                "clipped_fraction": self.clipped_fraction,
                "sqnr_db": self.sqnr_db if np.isfinite(self.sqnr_db) else None}


def _sqnr(signal_power: float, noise: float) -> float:
    if noise <= 0:
        return float("inf")
    if signal_power <= 0:
        return float("-inf")
    return float(10.0 * np.log10(signal_power / noise))


def quant_error_of_values(x: np.ndarray, qp: QParams) -> QuantError:
    """Exact clipping/rounding error of fake-quantizing the array ``x`` (e.g. a weight)."""
    x = np.asarray(x, dtype=np.float32)
    s = _broadcast(qp.scale.astype(np.float32), x, qp.axis)
    z = _broadcast(qp.zero_point.astype(np.float32), x, qp.axis)
    lo, hi = (qp.qmin - z) * s, (qp.qmax - z) * s
    err2 = (fake_quantize(x, qp) - x).astype(np.float64) ** 2
    clipped = (x < lo) | (x > hi)
    n = max(x.size, 1)
    clip_mse = float(err2[clipped].sum() / n)
    round_mse = float(err2[~clipped].sum() / n)
    return QuantError(clip_mse, round_mse, float(clipped.sum() / n),
                      _sqnr(float((x.astype(np.float64) ** 2).mean()) if x.size else 0.0, clip_mse + round_mse))


def quant_error_of_hist(hist: np.ndarray, edges: np.ndarray, amax: float) -> QuantError:
    """Estimated symmetric-int8 error of a |x| histogram at threshold ``amax``.

    Each bin stands for its centre ``c``: a bin that starts at or beyond ``amax`` is clipped, with
    error ``(c - amax)^2``; the others (including the one ``amax`` falls in, whose centre is capped
    at ``amax``) carry rounding error ``(fq(c) - c)^2``; all weighted by the bin's count.
    """
    h = np.asarray(hist, dtype=np.float64)
    total = h.sum()
    if total == 0:
        return QuantError(0.0, 0.0, 0.0, float("inf"))
    clipped = edges[:-1] >= amax
    c = np.where(clipped, (edges[:-1] + edges[1:]) / 2, np.minimum((edges[:-1] + edges[1:]) / 2, amax))
    s = max(amax / 127.0, MIN_SCALE)
    fq = np.clip(np.round(c / s), -127, 127) * s
    e2 = (fq - c) ** 2
    clip_mse = float((e2 * h)[clipped].sum() / total)
    round_mse = float((e2 * h)[~clipped].sum() / total)
    power = float((c ** 2 * h).sum() / total)
    return QuantError(clip_mse, round_mse, float(h[clipped].sum() / total), _sqnr(power, clip_mse + round_mse))
