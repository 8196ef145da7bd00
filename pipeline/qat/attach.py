"""Put fake quantizers on the torch layers whose ONNX nodes the PTQ placement quantizes.

The placement is decided on the FP32 ONNX (:func:`pipeline.quantize.api.plan_for_config`, the quantize stage's
own function), so the torch simulation quantizes exactly the layers the exported Q/DQ ONNX quantizes. Each such
ONNX node is traced back to the torch module that produced it:

1. by name: torch's TorchScript exporter names a node after its module scopes, ``/layer1/layer1.0/conv1/Conv``
   for ``layer1.0.conv1``, ``/features/features.0/Conv`` for ``features.0``, ``/fc/Gemm`` for ``fc``
   (:func:`module_path`);
2. else by execution order: the k-th Conv/Gemm/MatMul with a constant weight in the (topologically ordered)
   graph is the k-th Conv/Linear call of a forward pass, the k-th pooling node the k-th pooling-module call.

Either match must pass a check: the module type fits the op (Conv -> ``nn.ConvNd`` of the same rank,
Gemm/MatMul -> ``nn.Linear``, MaxPool -> ``nn.MaxPoolNd``, AveragePool/GlobalAveragePool -> ``nn.AvgPoolNd`` /
``nn.AdaptiveAvgPoolNd``), the ONNX weight's shape equals the module weight's (transposed for a Gemm without
``transB`` and for a MatMul), a pool's kernel equals the module's. A compute node neither way resolves is an
error. A pooling node neither way resolves (a functional ``F.max_pool2d`` in ``forward``) is left unsimulated
and named in a warning: its Q/DQ matters when the next quantized tensor has another scale (a max pool before a
Flatten feeding a Gemm: the Flatten output has its own range).

What stays unsimulated, listed in a warning: the residual-add Q/DQ (an ``Add`` in ``forward``, no module) and
activation x activation MatMuls (attention ``Q K^T``, ``P V``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    from torch import nn

    from pipeline.core.config import QuantConfig
    from pipeline.quantize.qdq import QdqPlan

log = logging.getLogger(__name__)

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool")


@dataclass(frozen=True)
class OnnxLayer:
    """One ONNX node whose activation input (input 0) the placement quantizes.

    Attributes:
        index: position in ``model.graph.node``.
        name: node name (``OpType#index`` when unnamed).
        op_type: ONNX op.
        tensor: the quantized activation input.
        weight_dims: the constant weight's dims (None for pooling nodes).
        trans_b: Gemm's ``transB`` attribute.
        kernel: a MaxPool/AveragePool's ``kernel_shape`` (None otherwise).
    """

    index: int
    name: str
    op_type: str
    tensor: str
    weight_dims: Optional[Tuple[int, ...]] = None
    trans_b: bool = False
    kernel: Optional[Tuple[int, ...]] = None

    @property
    def family(self) -> str:
        """``weight`` (Conv/Gemm/MatMul) or ``pool``: which module calls the execution order compares with."""
        return "pool" if self.op_type in POOL_OPS else "weight"

    def torch_weight_shape(self) -> Optional[Tuple[int, ...]]:
        """The shape the torch module's weight must have: Conv as is; Gemm/MatMul as ``[out, in]``."""
        if self.weight_dims is None or self.op_type == "Conv" or (self.op_type == "Gemm" and self.trans_b):
            return self.weight_dims
        return tuple(reversed(self.weight_dims))


def _ancestors(path: str) -> List[str]:
    """``a.b.c`` -> ``["a.b.c", "a.b", "a", ""]``."""
    parts = path.split(".") if path else []
    return [".".join(parts[:k]) for k in range(len(parts), -1, -1)]


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def _resolve_scope(cur: str, scope: str, names: Collection[str]) -> Optional[str]:
    """The module a scope names below the module ``cur``: relative to ``cur`` or to one of its ancestors, or
    below an uncalled container of ``cur`` (a ModuleDict leaves no scope of its own)."""
    for base in _ancestors(cur):
        if _join(base, scope) in names:
            return _join(base, scope)
    prefix, suffix = _join(cur, ""), f".{scope}"
    nested = sorted((n for n in names if n.startswith(prefix) and n.endswith(suffix)), key=len)
    return nested[0] if nested else None


def module_path(node_name: str, module_names: Collection[str]) -> Optional[str]:
    """The module whose scopes torch's exporter wrote into a node name, among ``module_names``.

    The TorchScript exporter names a node ``/<scope>/<scope>/.../<Op>``, one scope per module called on the way:
    ``/layer1/layer1.0/conv1/Conv`` for ``layer1.0.conv1``, ``/features/features.0/Conv`` for ``features.0``,
    ``/layer4/layer4.0/downsample/downsample.0/Conv`` for ``layer4.0.downsample.0``. A scope is a module path
    relative to the module of the scope before it or to one of that module's ancestors.

    Args:
        node_name: the ONNX node name.
        module_names: the model's module paths (``dict(model.named_modules())``).

    Returns:
        The module path, or None when the name has no scopes or a scope names no module.
    """
    scopes = [p for p in node_name.split("/") if p][:-1]
    if not scopes:
        return None
    cur: Optional[str] = ""
    for scope in scopes:
        cur = _resolve_scope(cur, scope, module_names)
        if cur is None:
            return None
    return cur


def _weight_of(node: "onnx.NodeProto", inits: Mapping[str, "onnx.TensorProto"]) -> Optional[Tuple[int, ...]]:
    """Dims of a compute node's constant weight (input 1, an initializer), or None."""
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    return tuple(int(d) for d in inits[node.input[1]].dims)


def _trans_b(node: "onnx.NodeProto") -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)


def _kernel(node: "onnx.NodeProto") -> Optional[Tuple[int, ...]]:
    return next((tuple(int(k) for k in a.ints) for a in node.attribute if a.name == "kernel_shape"), None)


def onnx_layers(model: "onnx.ModelProto", plan: "QdqPlan") -> Tuple[List[OnnxLayer], List[str]]:
    """The compute and pooling nodes whose input 0 the placement quantizes, and the quantized slots they leave.

    Args:
        model: the FP32 ONNX model.
        plan: its PTQ placement.

    Returns:
        ``(layers, unsimulated)``: layers in graph order; ``unsimulated`` names the other quantized activation
        inputs as ``node[input index]`` (residual adds, activation x activation MatMuls, ...).
    """
    from pipeline.quantize.qdq import node_label

    inits = {i.name: i for i in model.graph.initializer}
    slots = {slot: t for t, uses in plan.activations.items() for slot in uses}
    layers, covered = [], set()
    for idx, node in enumerate(model.graph.node):
        tensor = slots.get((idx, 0))
        if tensor is None:
            continue
        dims = _weight_of(node, inits) if node.op_type in COMPUTE_OPS else None
        if node.op_type in COMPUTE_OPS and dims is not None and node.input[1] in plan.weights:
            layers.append(OnnxLayer(idx, node_label(node, idx), node.op_type, tensor, dims, _trans_b(node)))
        elif node.op_type in POOL_OPS:
            layers.append(OnnxLayer(idx, node_label(node, idx), node.op_type, tensor, kernel=_kernel(node)))
        else:
            continue
        covered.add((idx, 0))
    nodes = model.graph.node
    unsimulated = [f"{node_label(nodes[i], i)}[{k}]" for (i, k) in sorted(slots) if (i, k) not in covered]
    return layers, unsimulated


def _fits_pool(module: "nn.Module", layer: OnnxLayer) -> bool:
    """Whether a pooling module can have produced a MaxPool/AveragePool/GlobalAveragePool node."""
    from torch import nn

    max_pools, avg_pools = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
    adaptive = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
    if layer.op_type == "GlobalAveragePool":
        size = getattr(module, "output_size", None)
        return isinstance(module, adaptive) and all(s == 1 for s in (size if isinstance(size, tuple) else (size,)))
    if isinstance(module, adaptive):
        return layer.op_type == "AveragePool"
    if not isinstance(module, max_pools if layer.op_type == "MaxPool" else avg_pools):
        return False
    k = module.kernel_size
    return layer.kernel is None or tuple(k if isinstance(k, tuple) else (k,) * len(layer.kernel)) == layer.kernel


def _fits(module: "nn.Module", layer: OnnxLayer) -> bool:
    """Whether ``module`` can have produced ``layer`` (type, and weight shape or pool kernel)."""
    from torch import nn

    if layer.family == "pool":
        return _fits_pool(module, layer)
    if layer.op_type == "Conv":
        convs = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}
        kind = convs.get(len(layer.weight_dims or ()))
        if kind is None or not isinstance(module, kind):
            return False
    elif not isinstance(module, nn.Linear):
        return False
    return tuple(module.weight.shape) == layer.torch_weight_shape()


def _example_inputs(fp32_onnx: Path) -> list:
    """Zero inputs of batch 1 for the model's inputs (dynamic dimensions set to 1)."""
    import numpy as np
    import torch

    from pipeline.graph.describe import onnx_input_specs

    return [torch.from_numpy(np.zeros((1, *[d if d > 0 else 1 for d in s.shape]), dtype=s.dtype))
            for s in onnx_input_specs(fp32_onnx)]


def call_order(model: "nn.Module", fp32_onnx: Union[str, Path]) -> Dict[str, List[str]]:
    """Paths of the Conv/Linear (``weight``) and pooling (``pool``) modules in the order a forward pass calls
    them (a module called twice appears twice).

    Runs one forward pass in eval mode on zero inputs shaped like the ONNX inputs (batch 1); the model's
    train/eval mode is restored afterwards.

    Raises:
        PipelineError: the model fails on those inputs.
    """
    import torch

    from pipeline.qat.fake_quant import POOL_LAYERS, WEIGHT_LAYERS

    calls: Dict[str, List[str]] = {"weight": [], "pool": []}
    hooks = [m.register_forward_pre_hook(lambda _m, _a, name=name, fam=fam: calls[fam].append(name))
             for name, m in model.named_modules()
             for fam, kinds in (("weight", WEIGHT_LAYERS), ("pool", POOL_LAYERS)) if isinstance(m, kinds)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*_example_inputs(Path(fp32_onnx)))
    except Exception as err:  # any forward failure: the model does not take the ONNX model's inputs
        raise PipelineError(f"the torch model does not run on inputs shaped like {Path(fp32_onnx).name}'s: {err}",
                            "pass the torch module the FP32 ONNX was exported from") from err
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return calls


def _positions(model: "onnx.ModelProto") -> Dict[int, int]:
    """Node index -> position among its family in graph order: compute nodes with a constant weight, pools."""
    inits = {i.name for i in model.graph.initializer}
    weights = [i for i, n in enumerate(model.graph.node)
               if n.op_type in COMPUTE_OPS and len(n.input) > 1 and n.input[1] in inits]
    pools = [i for i, n in enumerate(model.graph.node) if n.op_type in POOL_OPS]
    return {idx: k for family in (weights, pools) for k, idx in enumerate(family)}


def _describe_module(modules: Mapping[str, "nn.Module"], path: Optional[str]) -> str:
    if path is None:
        return "none"
    if path not in modules:
        return f"{path!r} (no such module)"
    m = modules[path]
    shape = f" with weight {list(m.weight.shape)}" if hasattr(m, "weight") and m.weight is not None else ""
    return f"{path!r} ({type(m).__name__}{shape})"


def match_modules(model: "nn.Module", fp32_onnx: Union[str, Path], onnx_model: "onnx.ModelProto",
                  layers: Sequence[OnnxLayer]) -> List[Tuple[OnnxLayer, str, str]]:
    """The torch module of each layer: ``(layer, module path, "name" | "order")``.

    Pooling layers that neither way resolves are left out (not simulated).

    Raises:
        PipelineError: a compute node that neither its name nor the execution order maps to a module of the
            right type and weight shape.
    """
    modules = dict(model.named_modules())
    positions = _positions(onnx_model)
    order: Optional[Dict[str, List[str]]] = None
    out = []
    for layer in layers:
        path = module_path(layer.name, modules)
        if path in modules and _fits(modules[path], layer):
            out.append((layer, path, "name"))
            continue
        if order is None:
            order = call_order(model, fp32_onnx)
        k, calls = positions[layer.index], order[layer.family]
        by_order = calls[k] if k < len(calls) else None
        if by_order is not None and _fits(modules[by_order], layer):
            out.append((layer, by_order, "order"))
        elif layer.family == "weight":
            raise PipelineError(
                f"no torch module matches ONNX node {layer.name} ({layer.op_type}, weight "
                f"{list(layer.weight_dims or ())}): its name gives {_describe_module(modules, path)}, the execution "
                f"order (Conv/Linear call {k + 1} of {len(calls)}) gives {_describe_module(modules, by_order)}",
                f"pass the torch module {Path(fp32_onnx).name} was exported from (same module names, or the same "
                "Conv/Linear layers in the same order), or keep that node in float with quant.exclude_nodes")
    return out


def _one_amax_per_module(matches: Sequence[Tuple[OnnxLayer, str, str]], amax_by_tensor: Mapping[str, float]
                         ) -> Tuple[Dict[str, Tuple[OnnxLayer, str]], List[str]]:
    """Module path -> (its first layer, how matched), and the pooling nodes left unsimulated because their
    module runs as several nodes with different input ranges (a ``self.pool`` called twice).

    Raises:
        PipelineError: a Conv/Linear module behind two nodes with different input ranges, or a node that is the
            whole model (no parent to put the wrapper in).
    """
    chosen: Dict[str, Tuple[OnnxLayer, str]] = {}
    conflicts: Dict[str, List[OnnxLayer]] = {}
    for layer, path, how in matches:
        if not path:
            raise PipelineError(f"ONNX node {layer.name} is the whole torch model",
                                "put the layer inside a container module (nn.Sequential(layer)) and export that")
        if path not in chosen:
            chosen[path] = (layer, how)
        elif float(amax_by_tensor[chosen[path][0].tensor]) != float(amax_by_tensor[layer.tensor]):
            conflicts.setdefault(path, [chosen[path][0]]).append(layer)
    for path, layers in conflicts.items():
        if layers[0].family == "weight":
            raise PipelineError(
                f"module {path!r} runs as ONNX nodes {', '.join(x.name for x in layers)}, whose inputs have "
                f"different PTQ ranges ({', '.join(f'{amax_by_tensor[x.tensor]:.6g}' for x in layers)})",
                "one fake quantizer per module cannot simulate them all: keep all but one of the nodes in float "
                "with quant.exclude_nodes")
        del chosen[path]
    return chosen, [f"{x.name}[0]" for layers in conflicts.values() for x in layers]


def attach_fake_quant(model: "nn.Module", fp32_onnx: Union[str, Path], amax_by_tensor: Mapping[str, float], *,
                      cfg: Optional["QuantConfig"] = None, placement: Optional["QdqPlan"] = None
                      ) -> List[Dict[str, object]]:
    """Wrap (in place) each torch layer whose ONNX node the PTQ placement quantizes in a :class:`QuantWrapper`.

    Args:
        model: the torch module ``fp32_onnx`` was exported from (same module structure).
        fp32_onnx: the FP32 ONNX model (the export stage's ``<model>.onnx``).
        amax_by_tensor: activation tensor -> PTQ threshold, tensor units (:attr:`PtqRanges.amaxes`).
        cfg: quantization settings: the placement options and ``per_channel``; default ``QuantConfig()``.
        placement: the placement to follow (:attr:`PtqRanges.plan`, which has a precision plan's float
            layers excluded); default: computed from ``cfg``.

    Returns:
        One dict per wrapped module, in graph order: ``module`` (path), ``node``, ``op_type``, ``tensor`` (the
        quantized input), ``amax`` and ``scale`` (tensor units), ``matched_by`` (``name`` or ``order``).

    Raises:
        PipelineError: the model already has fake quantizers, an unreadable model, a quantized activation
            without a range, a node no module matches, a module behind two nodes with different ranges.
    """
    from pipeline.core.config import QuantConfig
    from pipeline.qat.fake_quant import QuantWrapper
    from pipeline.quantize.api import _float_tensor_set, _load, plan_for_config

    if any(isinstance(m, QuantWrapper) for m in model.modules()):
        raise PipelineError("the model already has fake quantizers", "attach them once, to the float model")
    cfg = cfg or QuantConfig()
    onnx_model = _load(fp32_onnx)
    plan = placement if placement is not None else plan_for_config(onnx_model, cfg,
                                                                     float_tensors=_float_tensor_set(onnx_model))
    layers, unsimulated = onnx_layers(onnx_model, plan)
    missing = sorted({layer.tensor for layer in layers if layer.tensor not in amax_by_tensor})
    if missing:
        raise PipelineError(f"no PTQ range for {len(missing)} quantized activations (e.g. {missing[0]!r})",
                            "pass the ranges of this ONNX model's placement (pipeline.qat.ptq_ranges(...).amaxes)")
    matches = match_modules(model, fp32_onnx, onnx_model, layers)
    unsimulated += [f"{layer.name}[0]" for layer in layers if layer not in {m[0] for m in matches}]
    chosen, shared = _one_amax_per_module(matches, amax_by_tensor)
    records = []
    for path, (layer, how) in chosen.items():
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        wrapper = QuantWrapper(getattr(parent, child), float(amax_by_tensor[layer.tensor]), cfg.per_channel)
        setattr(parent, child, wrapper)
        records.append({"module": path, "node": layer.name, "op_type": layer.op_type, "tensor": layer.tensor,
                        "amax": wrapper.amax, "scale": float(wrapper.input_scale), "matched_by": how})
    unsimulated += shared
    if unsimulated:
        log.warning("QAT: %d quantized inputs are not simulated in torch (no module behind them, or one module behind "
                    "nodes with different ranges): %s",
                    len(unsimulated), ", ".join(sorted(unsimulated)))
    return records
