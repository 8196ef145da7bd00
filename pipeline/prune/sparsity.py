"""2:4 fine-grained structured sparsity: make it (torch), keep it while fine-tuning, and check it (ONNX).

Sparse Tensor Cores (Ampere and later) skip the zeros of a weight that holds at most 2 non-zeros in every group
of 4 consecutive values along the **input-channel** axis, doubling the math rate of the layer (TensorRT builds
them with ``BuilderFlag.SPARSE_WEIGHTS``; the weights must already hold the pattern). The recipe of NVIDIA's ASP
(Automatic SParsity, Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021): take a trained model,
keep the 2 largest magnitudes of each group of 4 (:func:`apply_24`), retrain with the masks fixed
(:func:`keep_masks` + :func:`reapply`, which :func:`pipeline.prune.finetune.finetune` calls after every step).

Layouts and their input-channel axis: a convolution weight ``[K, C, R, S]`` (axis 1, groups of 4 input
channels at one output channel and kernel position), a torch ``nn.Linear`` / ONNX ``Gemm`` with ``transB=1``
``[out, in]`` (axis 1), ONNX ``Gemm`` with ``transB=0`` and ``MatMul`` ``[in, out]`` (axis 0; the second
to last axis of a batched ``MatMul`` weight). Grouped and depthwise convolutions have no sparse kernels.

Only numpy at import time; onnx and torch are imported by the functions that use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

#: Group size and non-zeros allowed per group of the pattern.
GROUP = 4
KEEP = 2
#: Ops whose constant weight the ONNX checker looks at, and the nodes it follows from the op to the initializer.
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
PASS_THROUGH = ("QuantizeLinear", "DequantizeLinear", "Identity")


def mask_24(weight: np.ndarray, axis: int) -> np.ndarray:
    """The 2:4 mask of ``weight``: True for the 2 largest ``|w|`` of every 4 consecutive values along ``axis``.

    Ties keep the earlier position, so an all-zero group keeps its first two (zero) values and the mask always
    has exactly 2 True per group.

    Args:
        weight: any real array.
        axis: the input-channel axis (1 for a ``[K, C, R, S]`` conv or ``[out, in]`` linear weight).

    Returns:
        A bool array shaped like ``weight``.

    Raises:
        PipelineError: ``axis`` out of range, or its length not a multiple of 4.
    """
    w = np.asarray(weight)
    if not -w.ndim <= axis < w.ndim:
        raise PipelineError(f"axis {axis} is out of range for a weight of shape {w.shape}",
                            "pass the input-channel axis (1 for [K, C, R, S] and [out, in] weights)")
    n = w.shape[axis]
    if n % GROUP:
        raise PipelineError(
            f"2:4 sparsity needs the input channels (axis {axis} of shape {w.shape}) to be a multiple of "
            f"{GROUP}, got {n}",
            "skip this layer, or pad / prune its input channels to a multiple of 4",
        )
    moved = np.moveaxis(np.abs(w), axis, -1)
    groups = moved.reshape(-1, GROUP)
    order = np.argsort(-groups, axis=1, kind="stable")  # largest first, earlier position first on ties
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :KEEP], True, axis=1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def _violations(w: np.ndarray, axis: int) -> Tuple[int, int]:
    # (groups of 4 checked, groups with more than 2 non-zeros)
    nonzero = np.moveaxis(w != 0, axis, -1).reshape(-1, GROUP).sum(axis=1)
    return int(nonzero.size), int((nonzero > KEEP).sum())


# ----------------------------------------------------------------------------- torch


@dataclass
class Masks24:
    """What :func:`apply_24` did.

    Attributes:
        masks: ``{module qualified name: bool tensor shaped like its weight}`` (True = kept).
        skipped: ``{module qualified name: reason}`` for the Conv/Linear layers left dense.
    """

    masks: Dict[str, "torch.Tensor"] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)


def _ineligible_24(module: "nn.Module") -> Optional[str]:
    from torch import nn

    if isinstance(module, nn.Linear):
        c = module.in_features
    else:
        if module.groups != 1:
            kind = "depthwise" if module.groups == module.in_channels == module.out_channels else "grouped"
            return f"{kind} conv (groups={module.groups}): no sparse kernels"
        c = module.in_channels
    return None if c % GROUP == 0 else f"input channels {c} not a multiple of {GROUP}"


def apply_24(model: "nn.Module", *, skip: Optional[Sequence[str]] = None) -> Masks24:
    """Zero all but the 2 largest ``|w|`` of every 4 input channels, in place, in each eligible layer.

    Eligible: ``nn.Linear`` and ``nn.Conv1d/2d/3d`` with ``groups == 1`` whose input channels are a multiple
    of 4. Biases stay dense (TensorRT's pattern is on the weights only).

    Args:
        model: a torch module, modified in place.
        skip: module qualified names to leave dense; a name also skips the modules inside it (``"layer4"``).

    Returns:
        The masks and the layers left dense with the reason.

    Raises:
        PipelineError: a name in ``skip`` that is not a module of the model.
    """
    import torch
    from torch import nn

    modules = dict(model.named_modules())
    unknown = [s for s in skip or [] if s not in modules]
    if unknown:
        raise PipelineError(f"skip names modules the model does not have: {unknown}",
                            "use qualified names as model.named_modules() gives them, e.g. 'layer1.0.conv1'")
    result = Masks24()
    for name, m in modules.items():
        if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            continue
        if any(name == s or name.startswith(s + ".") for s in skip or []):
            result.skipped[name] = "skipped on request"
            continue
        reason = _ineligible_24(m)
        if reason:
            result.skipped[name] = reason
            continue
        mask = torch.from_numpy(mask_24(m.weight.detach().cpu().numpy(), axis=1)).to(m.weight.device)
        result.masks[name] = mask
    reapply(model, result.masks)
    return result


def masks_of_24(model: "nn.Module") -> Dict[str, "torch.Tensor"]:
    """The masks of the layers whose weights already hold the 2:4 pattern (a model pruned earlier, e.g. by the prune
    stage): ``{module name: weight != 0}``, for keeping the pattern through a later fine-tune (QAT)."""
    from torch import nn

    out: Dict[str, Any] = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) or _ineligible_24(m):
            continue
        w = m.weight.detach().cpu().numpy()
        groups, bad = _violations(w, 1)
        if groups and bad == 0:
            out[name] = m.weight.detach() != 0
    return out


def reapply(model: "nn.Module", masks: Mapping[str, "torch.Tensor"]) -> None:
    """Zero the masked-out weights again (call after every optimizer step: momentum and weight decay move them).

    Args:
        model: the model the masks were made for.
        masks: ``{module qualified name: bool mask}`` from :func:`apply_24`.
    """
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight.mul_(mask)


def keep_masks(model: "nn.Module", masks: Mapping[str, "torch.Tensor"]) -> List[Any]:
    """Register gradient hooks that zero the gradients of masked-out weights (so no optimizer state builds up
    on them). Pair with :func:`reapply` after each step; remove the hooks when done (``h.remove()``).

    Args:
        model: the model the masks were made for.
        masks: ``{module qualified name: bool mask}`` from :func:`apply_24`.

    Returns:
        The hook handles.
    """
    modules = dict(model.named_modules())
    return [modules[name].weight.register_hook(lambda g, m=mask: g * m) for name, mask in masks.items()]


# ----------------------------------------------------------------------------- ONNX


def _dq_axis(scale: np.ndarray, ndim: int, axis: int) -> Tuple[int, ...]:
    # Per-channel scale / zero point broadcast along `axis`; a scalar broadcasts as is.
    if scale.ndim == 0 or scale.size == 1:
        return ()
    shape = [1] * ndim
    shape[axis % ndim] = scale.size
    return tuple(shape)


def _through_qdq(node: "onnx.NodeProto", x: np.ndarray, consts: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
    if node.op_type == "Identity":
        return x
    if len(node.input) < 2 or node.input[1] not in consts:
        return None
    scale = consts[node.input[1]].astype(np.float64)
    if len(node.input) > 2 and node.input[2] in consts:
        zp = consts[node.input[2]]
    else:  # ONNX: no zero point means 0, and uint8 output for QuantizeLinear
        zp = np.zeros((), np.uint8 if node.op_type == "QuantizeLinear" else x.dtype)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    shape = _dq_axis(scale, x.ndim, axis)
    if shape:
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    if node.op_type == "DequantizeLinear":
        return (x.astype(np.float64) - zp.astype(np.float64)) * scale
    info = np.iinfo(zp.dtype) if np.issubdtype(zp.dtype, np.integer) else None
    q = np.rint(x.astype(np.float64) / scale) + zp.astype(np.float64)
    return (np.clip(q, info.min, info.max) if info else q).astype(zp.dtype)


def _constant(
    name: str, consts: Mapping[str, np.ndarray], producer: Mapping[str, Any]
) -> Tuple[Optional[np.ndarray], bool]:
    # The value of `name` if it is an initializer or reached through Q/DQ/Identity; and whether Q/DQ was crossed.
    if name in consts:
        return consts[name], False
    node = producer.get(name)
    if node is None or node.op_type not in PASS_THROUGH or not node.input:
        return None, False
    x, crossed = _constant(node.input[0], consts, producer)
    if x is None:
        return None, False
    value = _through_qdq(node, x, consts)
    return value, value is not None and (crossed or node.op_type != "Identity")


def _weight_axis(node: "onnx.NodeProto", w: np.ndarray) -> Tuple[Optional[int], Optional[str]]:
    # (input-channel axis, reason the layer is ineligible)
    attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
    if node.op_type == "Conv":
        group = attrs.get("group", 1)
        if group != 1:
            kind = "depthwise" if w.shape[1] == 1 and w.shape[0] == group else "grouped"
            return 1, f"{kind} conv (group={group}): no sparse kernels"
        axis = 1
    elif node.op_type == "Gemm":
        axis = 1 if attrs.get("transB", 0) else 0
    else:
        axis = w.ndim - 2
    if w.shape[axis] % GROUP:
        return axis, f"input channels {w.shape[axis]} not a multiple of {GROUP}"
    return axis, None


def _load_onnx(model_or_path: Union[str, Path, "onnx.ModelProto"]) -> "onnx.ModelProto":
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    from pipeline.graph.describe import _load  # the loader every stage uses: missing/corrupt -> PipelineError

    return _load(model_or_path)


def check_24(model_or_path: Union[str, Path, "onnx.ModelProto"]) -> List[Dict[str, Any]]:
    """Which Conv/Gemm/MatMul layers of an ONNX model hold the 2:4 pattern along their input channels.

    A layer is looked at when its weight (the second input) is a constant initializer, reached directly or
    through ``QuantizeLinear``/``DequantizeLinear`` (explicit quantization: float initializer -> Q -> DQ, or an
    int8 initializer -> DQ); the weight is then checked as the layer sees it, dequantized.

    Args:
        model_or_path: an ONNX file or a loaded ``onnx.ModelProto``.

    Returns:
        One dict per layer, in graph order: ``node``, ``op``, ``weight`` (initializer name), ``weight_shape``,
        ``weights`` (elements), ``quantized`` (reached through Q/DQ), ``axis`` (input-channel axis),
        ``eligible``, ``reason`` (why not, else None), ``groups_checked`` and ``violating_groups`` (groups of 4
        with more than 2 non-zeros; 0 when not eligible), ``sparse_24`` (eligible and no violating group).

    Raises:
        PipelineError: a missing, unreadable or invalid ONNX file.
    """
    from onnx import numpy_helper

    model = _load_onnx(model_or_path)
    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    rows: List[Dict[str, Any]] = []
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        w, quantized = _constant(node.input[1], consts, producer)
        if w is None or w.ndim < 2 or (node.op_type == "Conv" and w.ndim < 3):
            continue
        axis, reason = _weight_axis(node, w)
        checked, violating = (0, 0) if reason else _violations(w, axis)
        rows.append({
            "node": node.name, "op": node.op_type, "weight": node.input[1], "weight_shape": list(w.shape),
            "weights": int(w.size), "quantized": quantized, "axis": axis, "eligible": reason is None,
            "reason": reason, "groups_checked": checked, "violating_groups": violating,
            "sparse_24": reason is None and violating == 0,
        })
    return rows


def summary_24(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Totals of :func:`check_24`'s rows.

    Returns:
        ``layers`` (rows), ``checked`` (eligible layers), ``sparse_24`` (layers holding the pattern),
        ``violating`` (eligible layers that do not), ``ineligible``, ``weights`` (elements in all rows),
        ``weights_24`` (elements in 2:4 layers) and ``share_24`` (``weights_24 / weights``, 0 without weights).
    """
    weights = sum(int(r["weights"]) for r in rows)
    weights_24 = sum(int(r["weights"]) for r in rows if r["sparse_24"])
    return {
        "layers": len(rows),
        "checked": sum(1 for r in rows if r["eligible"]),
        "sparse_24": sum(1 for r in rows if r["sparse_24"]),
        "violating": sum(1 for r in rows if r["eligible"] and not r["sparse_24"]),
        "ineligible": sum(1 for r in rows if not r["eligible"]),
        "weights": weights,
        "weights_24": weights_24,
        "share_24": weights_24 / weights if weights else 0.0,
    }
