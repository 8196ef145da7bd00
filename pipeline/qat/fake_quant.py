"""Fake quantization in torch, computing what the PTQ Q/DQ ONNX computes (and so what TensorRT runs in INT8).

:class:`QuantWrapper` wraps one layer whose input the PTQ placement quantizes:

- the input (activation) is fake-quantized per tensor, symmetric int8: ``scale = amax / 127``, zero point 0,
  codes clipped to ``[-128, 127]`` as ONNX ``QuantizeLinear`` saturates (the scale comes from
  :func:`pipeline.quantize.scales.symmetric_qparams`, the function that writes the Q/DQ ONNX);
- the weight of a Conv/Linear is fake-quantized per output channel (axis 0 of the torch weight, which is the
  output-channel axis of the ONNX Conv weight, of the Gemm ``B`` with ``transB=1`` and, transposed, of a MatMul
  weight), symmetric, ``amax = max |w|`` of the channel recomputed at every forward, as the Q/DQ writer does
  from the weights it is given (:func:`pipeline.quantize.scales.weight_qparams`); per tensor when
  ``per_channel=False``;
- a pooling layer only gets its input fake-quantized (the PTQ placement puts Q/DQ on pooling inputs).

``torch.fake_quantize_per_tensor_affine`` / ``torch.fake_quantize_per_channel_affine`` round half to even like
``QuantizeLinear``; their backward is the straight-through estimator with clipping: the gradient passes
unchanged where the value lies inside the representable range and is zero outside. The weight's scale is
computed without gradient (it follows the weight, it is not learned).

This module imports torch at import time; :mod:`pipeline.qat` imports it only on first use.
"""

from __future__ import annotations

import copy
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.quantize.scales import MIN_SCALE, symmetric_qparams

#: Integer range of a symmetric int8 Q/DQ pair (ONNX QuantizeLinear saturates at -128).
QMIN, QMAX = -128, 127
#: Layers whose weights are fake-quantized (ONNX Conv, Gemm / MatMul).
WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: Layers that only get their input fake-quantized (ONNX MaxPool, AveragePool, GlobalAveragePool).
POOL_LAYERS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
               nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)


def weight_scale(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Symmetric int8 weight scale(s): ``max|w| / 127`` per output channel (axis 0) or for the whole tensor.

    Args:
        w: the weight (no gradient flows through the scale).
        per_channel: one scale per output channel, else one scalar.

    Returns:
        float32 scales, at least :data:`pipeline.quantize.scales.MIN_SCALE`.
    """
    a = w.detach().abs().float()
    amax = a.reshape(a.shape[0], -1).amax(dim=1) if per_channel else a.max()
    return (amax / 127.0).clamp_min(MIN_SCALE)


def fake_quantize_weight(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """``w`` through a symmetric int8 Q/DQ pair (per output channel or per tensor), straight-through gradient."""
    scale = weight_scale(w, per_channel)
    if per_channel:
        zero = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, QMIN, QMAX)
    return torch.fake_quantize_per_tensor_affine(w, scale, torch.zeros((), dtype=torch.int32, device=w.device),
                                                 QMIN, QMAX)


class QuantWrapper(nn.Module):
    """A Conv/Linear (input and weight fake-quantized) or pooling layer (input fake-quantized).

    Args:
        module: ``nn.Conv1d/2d/3d``, ``nn.Linear`` or one of :data:`POOL_LAYERS`; kept as ``self.module`` (its
            parameters are the ones trained).
        amax: the input's calibrated threshold (tensor units), fixed: ``scale = amax / 127``.
        per_channel: per-output-channel weight scales (else one per tensor).

    Raises:
        TypeError: another kind of module (a caller bug: :func:`pipeline.qat.attach_fake_quant` checks first).
    """

    def __init__(self, module: nn.Module, amax: float, per_channel: bool = True):
        super().__init__()
        if not isinstance(module, WEIGHT_LAYERS + POOL_LAYERS):
            raise TypeError(f"QuantWrapper wraps Conv/Linear/pooling layers, got {type(module).__name__}")
        self.module = module
        self.amax = float(amax)
        self.per_channel = bool(per_channel)
        scale = np.asarray(symmetric_qparams(self.amax).scale, dtype=np.float32)
        self.register_buffer("input_scale", torch.from_numpy(scale.reshape(())).clone())
        self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))

    @property
    def quantizes_weight(self) -> bool:
        """Whether the wrapped layer has a weight that is fake-quantized."""
        return isinstance(self.module, WEIGHT_LAYERS)

    def quantized_weight(self) -> Optional[torch.Tensor]:
        """The weight as the Q/DQ ONNX sees it (fake-quantized), or None for a pooling layer."""
        return fake_quantize_weight(self.module.weight, self.per_channel) if self.quantizes_weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq = torch.fake_quantize_per_tensor_affine(x, self.input_scale, self.input_zero_point, QMIN, QMAX)
        if not self.quantizes_weight:
            return self.module(xq)
        w = self.quantized_weight()
        if isinstance(self.module, nn.Linear):
            return F.linear(xq, w, self.module.bias)
        return self.module._conv_forward(xq, w, self.module.bias)

    def extra_repr(self) -> str:
        return f"amax={self.amax:.6g}, per_channel={self.per_channel}"


def strip_fake_quant(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` with every :class:`QuantWrapper` replaced by the layer it wraps (same parameters).

    The result has the module structure of the model before :func:`pipeline.qat.attach_fake_quant`, so the
    exporter gives its nodes and tensors the same names.

    Args:
        model: a model with fake quantizers.
        inplace: change ``model`` itself; by default a deep copy is changed and ``model`` keeps its wrappers.

    Returns:
        The float model.
    """
    out = model if inplace else copy.deepcopy(model)
    if isinstance(out, QuantWrapper):
        return out.module
    wrapped = [name for name, m in out.named_modules() if isinstance(m, QuantWrapper)]
    for name in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        setattr(parent, child, getattr(parent, child).module)
    return out
