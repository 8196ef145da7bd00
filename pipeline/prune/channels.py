"""L1-norm channel pruning through Torch-Pruning's DepGraph, and per-layer ratios from measured latency.

Removing an output channel of a convolution is never a local edit: its batch norm loses the same channel, the
next layer loses an input channel, and where a residual add, a concat or a depthwise convolution ties channels
together, every layer in the tie must lose the *same* channels. Torch-Pruning (Fang et al., "DepGraph: Towards
Any Structural Pruning", CVPR 2023) traces the model once, groups the coupled parameters and prunes a group at a
time; this module picks which channels go (smallest L1 norm, Li et al., "Pruning Filters for Efficient
ConvNets", ICLR 2017) and how many (a ratio, rounded so the kept channel counts stay Tensor Core friendly).

The model is pruned **in place**: the same ``nn.Module`` objects end up with smaller weights, so an optimizer
or a reference to a layer created before pruning is stale afterwards.

torch and Torch-Pruning are imported when a function runs, never at import time.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    from torch import nn

#: Kept channels rounded to multiples of this for FP16 Tensor Cores (8 halves = 16 bytes per vector load).
ROUND_TO_FP16 = 8
#: ... and of this for INT8 (TensorRT's INT8 kernels want C and K multiples of 32).
ROUND_TO_INT8 = 32
#: The install command named in errors.
TORCH_PRUNING_PIP = 'pip install torch-pruning  (or pip install ".[prune]")'


@dataclass
class ChannelPruneResult:
    """What :func:`prune_channels` did.

    Attributes:
        params_before / params_after: parameter count of the model.
        macs_before / macs_after: multiply-accumulates of one forward pass on ``example_inputs`` (Torch-Pruning's
            ``count_ops_and_params``; for the batch of ``example_inputs``).
        layers: one dict per Conv/Linear in module order: ``name``, ``type``, ``in_before``, ``out_before``,
            ``in_after``, ``out_after``, ``groups`` (after).
        ratio: requested share of channels to remove (0.5 removes half).
        round_to: kept channel counts were rounded down to multiples of this (None: no rounding).
        global_ranking: True when channels were ranked across layers, False when within each layer.
        per_layer: the layer-specific ratios used, ``{module name: ratio}``.
        ignored: modules left unpruned (their output channels): the model outputs' layers and ``ignored``.
        seconds: wall time of the pruning, seconds.
        warnings: things the user should know (layers meant to be pruned that kept all their channels).
    """

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    layers: List[Dict[str, Any]]
    ratio: float
    round_to: Optional[int]
    global_ranking: bool
    per_layer: Dict[str, float] = field(default_factory=dict)
    ignored: List[str] = field(default_factory=list)
    seconds: float = 0.0
    warnings: List[str] = field(default_factory=list)

    @property
    def pruned_layers(self) -> List[str]:
        """Names of the layers that lost output channels."""
        return [r["name"] for r in self.layers if r["out_after"] < r["out_before"]]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly form (for a stage's sidecar)."""
        return {**asdict(self), "pruned_layers": self.pruned_layers}


# ----------------------------------------------------------------------------- helpers


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError as err:
        raise PipelineError(
            "channel pruning needs Torch-Pruning, which is not installed", f"install it: {TORCH_PRUNING_PIP}"
        ) from err
    return torch_pruning


def _check_ratio(what: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise PipelineError(
            f"{what}={value!r} is not a pruning ratio in [0, 1)",
            "pass the share of channels to remove, e.g. 0.5 to remove half (1.0 would remove everything)",
        )
    return float(value)


def _layer_types() -> Tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _widths(module: "nn.Module") -> Tuple[int, int]:
    from torch import nn

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


def _layer_table(model: "nn.Module") -> Dict[str, Tuple[str, int, int, int]]:
    types = _layer_types()
    return {
        name: (type(m).__name__, *_widths(m), getattr(m, "groups", 1))
        for name, m in model.named_modules()
        if isinstance(m, types)
    }


def _as_args(example_inputs: Any) -> Tuple[Any, ...]:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _flat_tensors(out: Any) -> List[Any]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat_tensors(o)]
    return []


def output_layers(model: "nn.Module", example_inputs: Any) -> List[str]:
    """Names of the Conv/Linear layers whose output is a model output (the classifier): their output channels
    are the model's outputs (classes) and must not be pruned.

    A layer whose output tensor *is* a returned tensor counts; where nothing matches (a softmax or a reshape
    after the classifier), the last layer run whose output width equals an output's width (dim 1 or the last dim).

    Args:
        model: the model (put in eval mode by the caller, so the forward pass changes no batch-norm statistics).
        example_inputs: a tensor or a tuple of tensors the model takes.

    Raises:
        PipelineError: the model fails on ``example_inputs``.
    """
    import torch

    ran: List[Tuple[str, Any]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, n=name: ran.append((n, out)))
        for name, m in model.named_modules()
        if isinstance(m, _layer_types())
    ]
    try:
        with torch.no_grad():
            outputs = _flat_tensors(model(*_as_args(example_inputs)))
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        raise PipelineError(
            f"the model fails on the example inputs: {str(err).strip().splitlines()[0] if str(err).strip() else err}",
            "pass example_inputs shaped like a real batch, e.g. torch.randn(1, 3, 224, 224)",
        ) from err
    finally:
        for h in hooks:
            h.remove()
    direct = [n for n, out in ran if any(out is o for o in outputs)]
    if direct:
        return list(dict.fromkeys(direct))
    widths = {d for o in outputs if o.dim() >= 2 for d in (o.shape[1], o.shape[-1])}
    modules = dict(model.named_modules())
    for name, _ in reversed(ran):
        if _widths(modules[name])[1] in widths:
            return [name]
    return []


def _modules_by_name(model: "nn.Module", names: Sequence[Any], what: str) -> List["nn.Module"]:
    from torch import nn

    table = dict(model.named_modules())
    members = {id(m) for m in table.values()}
    found = []
    for name in names:
        if isinstance(name, nn.Module):
            if id(name) not in members:
                raise PipelineError(f"{what}: {type(name).__name__} is not a module of this model",
                                    "pass modules of the model being pruned, or their qualified names")
            found.append(name)
            continue
        if name not in table or name == "":
            known = [n for n in _layer_table(model)][:6]
            raise PipelineError(
                f"{what}: the model has no module named '{name}'",
                f"use qualified module names as model.named_modules() gives them, e.g. {known}",
            )
        found.append(table[name])
    return found


def _output_shapes(model: "nn.Module", example_inputs: Any, when: str) -> List[Tuple[int, ...]]:
    import torch

    try:
        with torch.no_grad():
            return [tuple(t.shape) for t in _flat_tensors(model(*_as_args(example_inputs)))]
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PipelineError(
            f"the model fails on the example inputs {when}: {first}",
            "the model probably hard-codes a channel count (a view/reshape with a constant, a parameter used "
            "outside a layer): pass ignored=[...] with the layers feeding it (the model was pruned in place; "
            "rebuild it before retrying)" if when == "after pruning" else
            "pass example_inputs shaped like a real batch, e.g. torch.randn(1, 3, 224, 224)",
        ) from err


def _unpruned_warning(before: Dict[str, Tuple[str, int, int, int]], after: Dict[str, Tuple[str, int, int, int]],
                      candidates: Sequence[str], round_to: Optional[int]) -> List[str]:
    # Torch-Pruning silently skips a group whose kept count rounds down to 0 (and groups tied to an ignored layer).
    same = [n for n in candidates if after[n][2] == before[n][2]]
    if not same:
        return []
    return [
        f"{len(same)} layer(s) meant to be pruned kept all their channels ({', '.join(same[:5])}"
        f"{', ...' if len(same) > 5 else ''}): their kept count rounds down to 0 with round_to={round_to} "
        "(Torch-Pruning then leaves them whole), or they are tied to an output layer; lower the ratio or round_to"
    ]


def _count(tp: Any, model: "nn.Module", example_inputs: Any) -> Tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return int(macs), int(params)


def prune_channels(
    model: "nn.Module",
    example_inputs: Any,
    ratio: float,
    *,
    global_ranking: bool = False,
    round_to: Optional[int] = ROUND_TO_FP16,
    per_layer: Optional[Mapping[str, float]] = None,
    ignored: Optional[Sequence[Union[str, "nn.Module"]]] = None,
) -> ChannelPruneResult:
    """Remove the output channels with the smallest L1 norm from every Conv/Linear, in place.

    Importance is Torch-Pruning's ``MagnitudeImportance(p=1)``: per channel, the L1 norm of its filter averaged
    with the L1 norms of the weights DepGraph removes with it (the batch-norm scale, the next layer's input
    slice, the other convs tied by a residual add), each group divided by its mean so that layers compare
    under ``global_ranking``. The layers producing the model outputs (the classifier) keep their outputs.

    Args:
        model: a torch module; pruned in place (left in the train/eval mode it came in).
        example_inputs: a tensor or tuple of tensors the model takes (one small batch); used to trace the
            dependency graph and to count MACs.
        ratio: share of the channels to remove in each group, in [0, 1) (0.5 removes half).
        global_ranking: rank channels across all layers (some layers lose more than ``ratio``, some less)
            instead of within each layer.
        round_to: round the kept channel counts down to multiples of this: 8 for FP16 Tensor Cores
            (:data:`ROUND_TO_FP16`), 32 for INT8 (:data:`ROUND_TO_INT8`), None for no rounding. A layer whose
            count would round to 0 is left unpruned (Torch-Pruning skips the group).
        per_layer: ``{module qualified name: ratio}`` overriding ``ratio`` for those layers (e.g. from
            :func:`ratios_from_latency`).
        ignored: more modules (qualified names or modules) whose output channels must stay.

    Returns:
        The parameter and MAC counts before and after, and each layer's channel counts.

    Raises:
        PipelineError: a ratio outside [0, 1), an unknown module name, a model with no prunable layer, a model
            that fails on ``example_inputs`` (before or after pruning), or Torch-Pruning not installed.
    """
    tp = _torch_pruning()
    ratio = _check_ratio("ratio", ratio)
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise PipelineError(f"round_to={round_to!r} is not a positive channel multiple",
                            "use 8 for FP16 Tensor Cores, 32 for INT8, or None for no rounding")
    per_layer = {name: _check_ratio(f"per_layer['{name}']", r) for name, r in (per_layer or {}).items()}
    was_training = model.training
    model.eval()  # tracing and counting run forward passes: in train mode they would move batch-norm statistics
    try:
        return _prune(tp, model, example_inputs, ratio, global_ranking, round_to, per_layer, list(ignored or []))
    finally:
        model.train(was_training)


def _group_ratios(tp: Any, model: "nn.Module", example_inputs: Any, ratio: float, ratio_dict: Dict[Any, float],
                  round_to: Optional[int], keep: List[Any]) -> Dict[Any, float]:
    """One ratio per group of coupled layers (a residual add ties a block's last conv to its shortcut), for every
    member, so that a per-layer ratio is not undone by whichever member Torch-Pruning reads first: the largest ratio
    asked of any member. With ``round_to``, a group whose kept channels would round down to 0 (Torch-Pruning then
    leaves it whole) keeps one multiple instead, so a larger ratio never prunes less.
    """
    from torch import nn

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=_as_args(example_inputs))
    out: Dict[Any, float] = {}
    for group in graph.get_all_groups(ignored_layers=keep, root_module_types=(nn.Conv2d, nn.Linear)):
        # The layers whose *output* channels this group removes (a consumer's input slice belongs to its producer).
        members = [dep.target.module for dep, _ in group if isinstance(dep.target.module, (nn.Conv2d, nn.Linear))
                   and graph.is_out_channel_pruning_fn(dep.handler)]
        if not members:
            continue
        asked = [ratio_dict[m] for m in members if m in ratio_dict]
        r = max(asked) if asked else ratio
        width = len(group[0][1])
        if round_to and width > round_to and r > 0 and int(width * (1 - r)) // round_to == 0:
            r = 1.0 - round_to / width
        if asked or r != ratio:
            out.update({m: r for m in members})
    return out


def _prune(tp: Any, model: "nn.Module", example_inputs: Any, ratio: float, global_ranking: bool,
           round_to: Optional[int], per_layer: Dict[str, float], ignored: List[Any]) -> ChannelPruneResult:
    start = time.perf_counter()
    shapes = _output_shapes(model, example_inputs, "before pruning")
    keep = _modules_by_name(model, [*output_layers(model, example_inputs), *ignored], "ignored")
    names = {id(m): n for n, m in model.named_modules()}
    kept = {id(sub) for m in keep for sub in m.modules()}
    before = _layer_table(model)
    modules = dict(model.named_modules())
    if not [n for n in before if id(modules[n]) not in kept]:
        raise PipelineError(
            f"nothing to prune: the model has no Conv/Linear layer besides its output layers and the ignored ones "
            f"({sorted(names[id(m)] for m in keep)})",
            "channel pruning needs convolutions or linear layers inside the model; pass fewer ignored layers",
        )
    ratio_dict = dict(zip(_modules_by_name(model, list(per_layer), "per_layer"), per_layer.values()))
    if not global_ranking:
        ratio_dict = _group_ratios(tp, model, example_inputs, ratio, ratio_dict, round_to, keep)
    macs_before, params_before = _count(tp, model, example_inputs)
    pruner_cls = getattr(tp.pruner, "BasePruner", None) or tp.pruner.MetaPruner  # BasePruner since 1.5
    pruner = pruner_cls(
        model,
        example_inputs,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        pruning_ratio_dict=ratio_dict or None,
        global_pruning=global_ranking,
        round_to=round_to,
        ignored_layers=keep,
    )
    pruner.step()
    after_shapes = _output_shapes(model, example_inputs, "after pruning")
    if after_shapes != shapes:
        raise PipelineError(
            f"pruning changed the model's output shapes from {shapes} to {after_shapes}: the layer producing an "
            "output was not recognised as the classifier",
            "pass ignored=['<name of the last layer>'] (the model was pruned in place; rebuild it before retrying)",
        )
    macs_after, params_after = _count(tp, model, example_inputs)
    after = _layer_table(model)
    candidates = [n for n in before if id(modules[n]) not in kept and per_layer.get(n, ratio) > 0]
    layers = [
        {"name": n, "type": t, "in_before": i, "out_before": o, "in_after": after[n][1], "out_after": after[n][2],
         "groups": after[n][3]}
        for n, (t, i, o, _) in before.items()
    ]
    return ChannelPruneResult(
        params_before=params_before, params_after=params_after, macs_before=macs_before, macs_after=macs_after,
        layers=layers, ratio=ratio, round_to=round_to, global_ranking=global_ranking, per_layer=per_layer,
        ignored=[names[id(m)] for m in keep], seconds=time.perf_counter() - start,
        warnings=_unpruned_warning(before, after, candidates, round_to),
    )


# ----------------------------------------------------------------------------- ratios from latency


def ratios_from_latency(layer_times: Mapping[str, float], ratio: float, max_ratio: float = 0.8) -> Dict[str, float]:
    """Per-layer pruning ratios that prune the slow layers more.

    Each layer gets ``ratio * t / mean(t)``, clipped to ``[0, max_ratio]``: a layer taking twice the mean time
    loses twice the share of channels, one taking no time loses none.

    Args:
        layer_times: measured time per layer, ``{module qualified name: time}`` (any unit, e.g. ms); from ONNX
            node timings via :func:`module_times_from_onnx`.
        ratio: the ratio a layer of mean time gets, in [0, 1).
        max_ratio: the most any layer loses, in (0, 1).

    Returns:
        ``{module qualified name: ratio}``, ready for ``prune_channels(per_layer=...)``.

    Raises:
        PipelineError: no layers, a negative or non-finite time, all times zero, or ratios out of range.
    """
    ratio = _check_ratio("ratio", ratio)
    if not 0.0 < _check_ratio("max_ratio", max_ratio):
        raise PipelineError("max_ratio=0 would prune nothing", "pass max_ratio in (0, 1), e.g. 0.8")
    if not layer_times:
        raise PipelineError("no layer times given", "pass {module name: measured time} for the layers to prune")
    bad = {n: t for n, t in layer_times.items() if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0}
    if bad:
        raise PipelineError(f"layer times must be finite and >= 0, got {bad}", "pass measured times (e.g. in ms)")
    mean = sum(layer_times.values()) / len(layer_times)
    if mean <= 0:
        raise PipelineError("every layer time is 0", "pass measured times (e.g. in ms), not placeholders")
    return {name: min(max(ratio * t / mean, 0.0), float(max_ratio)) for name, t in layer_times.items()}


def module_name_of_onnx_node(node_name: str) -> Optional[str]:
    """The qualified torch module name of a node exported by torch's ONNX exporter, or None.

    The exporter names a node by the path of module scopes it was traced in, then the op:
    ``/layer1/layer1.0/conv1/Conv`` for ``layer1.0.conv1``, ``/features/features.1/conv/conv.0/conv.0.0/Conv``
    for ``features.1.conv.0.0``, ``/fc/Gemm`` for ``fc``. A scope prefixed with its parent's scope and a dot
    (``layer1.0`` under ``layer1``) holds the child's attribute name after that prefix.

    Args:
        node_name: ONNX node name.

    Returns:
        The module name, or None for a node outside any module (``/Flatten``) or a name of another form.
    """
    if not node_name.startswith("/"):
        return None
    scopes = node_name[1:].split("/")[:-1]  # the last part is the op (Conv, Gemm, Conv_1...)
    if not scopes or not all(scopes):
        return None
    parts: List[str] = []
    prev = ""
    for scope in scopes:
        parts.append(scope[len(prev) + 1:] if prev and scope.startswith(prev + ".") else scope)
        prev = scope
    return ".".join(parts)


def module_times_from_onnx(
    node_times: Mapping[str, float], ops: Sequence[str] = ("Conv", "Gemm", "MatMul")
) -> Dict[str, float]:
    """Sum per-node times (ONNX node name -> time, e.g. from a profile) per torch module, for the nodes of ``ops``.

    Only the layers that own channels count: an activation or an ``Add`` node is named after its parent block
    (``/layer1/layer1.0/Add`` -> ``layer1.0``), and a ratio for a block would apply to every layer inside it.
    Several nodes of one module add up; nodes outside any module are dropped.

    Args:
        node_times: ``{ONNX node name: time}`` (any unit).
        ops: op types kept (the node name's last part, ``Conv`` or ``Conv_1``).

    Returns:
        ``{module qualified name: time}``, ready for :func:`ratios_from_latency`.
    """
    out: Dict[str, float] = {}
    for node, t in node_times.items():
        name = module_name_of_onnx_node(node)
        op = re.sub(r"_\d+$", "", node.rsplit("/", 1)[-1])
        if name is not None and op in ops:
            out[name] = out.get(name, 0.0) + float(t)
    return out
