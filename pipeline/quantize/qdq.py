"""Explicit quantization: place QuantizeLinear/DequantizeLinear pairs in an ONNX graph.

Placement follows TensorRT's Q/DQ guidance ("Explicit Quantization" chapter of the TensorRT
developer guide, 8.6-10.x, and ModelOpt's ONNX PTQ which implements it):

- Q/DQ on the *inputs* of the compute ops (Conv, Gemm, MatMul): activations per tensor, weights
  per output channel. TensorRT fuses ``DQ -> Conv`` + the next ``Q`` into an INT8 conv.
- Residual ``Add`` after a Conv: Q/DQ on the *residual* (skip) input only, so that TensorRT fuses the
  add into the conv's epilogue (the conv-side input is fused, quantizing it would break the fusion).
- Pooling (MaxPool, AveragePool, GlobalAveragePool): Q/DQ on the input so the pool runs in INT8
  between two INT8 convs instead of forcing a dequantize/requantize round trip.
- One Q/DQ pair per tensor, shared by every consumer we rewire (TensorRT and ORT both prefer it).
- Weights stay float initializers feeding ``Q -> DQ`` (the form pytorch-quantization exports and
  TensorRT 8.6 constant-folds into INT8 weights); ``axis`` gives the channel for per-channel scales,
  which needs opset >= 13 (we write opset 17 when the model is older than 13).

The graph stays an ordinary ONNX model: ONNX Runtime runs it on the CPU for accuracy checks.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.quantize.scales import QParams, weight_qparams

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import onnx_graphsurgeon as gs

#: Ops whose float inputs get Q/DQ.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool")
#: Opset written when the input model is older than per-channel Q/DQ allows (axis needs >= 13).
QDQ_OPSET = 17


@dataclass
class WeightSlot:
    """A weight initializer that gets a Q/DQ pair.

    Attributes:
        name: initializer name.
        axis: output-channel axis (per-channel), or None (per-tensor).
    """

    name: str
    axis: Optional[int]


@dataclass
class QdqPlan:
    """Where Q/DQ goes.

    Attributes:
        activations: tensor name -> list of ``(node_index, input_index)`` consumer slots to rewire.
        weights: initializer name -> :class:`WeightSlot`, with its consumer slots in ``weight_uses``.
        weight_uses: initializer name -> consumer slots.
        nodes: names (or ``op#index``) of the nodes that got quantized inputs.
        skipped: ``{node: reason}`` for candidate nodes left in float.
        kept_float: nodes kept in float by the structural ``keep_float`` rules
            (:mod:`pipeline.quantize.placement`): ``{node, op_type, rule, reason}`` each, graph order.
    """

    activations: Dict[str, List[Tuple[int, int]]] = field(default_factory=dict)
    weights: Dict[str, WeightSlot] = field(default_factory=dict)
    weight_uses: Dict[str, List[Tuple[int, int]]] = field(default_factory=dict)
    nodes: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    kept_float: List[Dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain-dict summary for the report."""
        return {"activation_tensors": sorted(self.activations), "weights": {
            k: {"axis": v.axis} for k, v in sorted(self.weights.items())},
            "quantized_nodes": list(self.nodes), "skipped_nodes": dict(self.skipped),
            "kept_float": [dict(k) for k in self.kept_float]}


def node_label(node: Any, index: int) -> str:
    """A node's name, or ``OpType#index`` when the exporter left it unnamed (``NodeProto`` or gs node)."""
    op = getattr(node, "op_type", None) or node.op
    return node.name or f"{op}#{index}"


def _weight_axis(op: str, attrs: Dict[str, Any], input_index: int, ndim: int, per_channel: bool) -> Optional[int]:
    """The output-channel axis of a weight input, or None for per-tensor."""
    if not per_channel or ndim < 1:
        return None
    if op == "Conv":
        return 0 if input_index == 1 else None
    if op == "Gemm":
        if input_index == 1:
            return 0 if attrs.get("transB", 0) else 1
        return 1 if attrs.get("transA", 0) else 0
    if op == "MatMul":
        if ndim < 2:
            return None
        # x @ W: output channels are W's last axis; W @ x: they are W's second-to-last axis.
        return ndim - 1 if input_index == 1 else ndim - 2
    return None


def _compute_slots(op: str, n_inputs: int) -> List[int]:
    # Conv/Gemm: inputs 0 and 1 (bias stays float: TensorRT folds it in int32/float itself).
    return [0, 1] if op in ("Conv", "Gemm", "MatMul") else list(range(n_inputs))


class _InputRules:
    """The per-tensor and per-node tests of :func:`plan_qdq`, for one model and one set of options.

    Args:
        init_types: initializer name -> ONNX data type.
        float_tensors: names of float tensors (None: every non-weight tensor counts as float).
        exclude_nodes: fnmatch patterns of node labels kept in float.
        quantize_bmm: whether activation x activation MatMuls are quantized.
    """

    def __init__(self, init_types: Dict[str, int], float_tensors: Optional[Set[str]],
                 exclude_nodes: Sequence[str], quantize_bmm: bool):
        self.init_types = init_types
        self.float_tensors = float_tensors
        self.exclude_nodes = exclude_nodes
        self.quantize_bmm = quantize_bmm
        import onnx_graphsurgeon as gs

        from pipeline.graph import producer_of

        self._constant_type = gs.Constant
        self._producer_of = producer_of

    def excluded(self, label: str) -> bool:
        """Whether a node label matches one of the exclusion patterns."""
        return any(fnmatch.fnmatchcase(label, p) for p in self.exclude_nodes)

    def is_weight(self, t: "gs.Tensor") -> bool:
        """Whether ``t`` is an initializer (graphsurgeon Constant)."""
        return isinstance(t, self._constant_type)

    def from_constant_node(self, t: "gs.Tensor") -> bool:
        """Whether ``t`` is written by a ``Constant`` node."""
        node = self._producer_of(t)
        return node is not None and node.op == "Constant"

    def is_float(self, t: "gs.Tensor") -> bool:
        """Whether ``t`` holds float32 values (weights: by data type; activations: by ``float_tensors``)."""
        if self.is_weight(t):
            return self.init_types.get(t.name) == 1  # FLOAT
        return self.float_tensors is None or t.name in self.float_tensors

    def skip_reason(self, idx: int, node: "gs.Node") -> Optional[str]:
        """Why a compute node is not quantized by the name/type rules, or None."""
        if self.excluded(node_label(node, idx)):
            return "excluded by pattern"
        slots = [i for i in _compute_slots(node.op, len(node.inputs)) if i < len(node.inputs) and node.inputs[i].name]
        acts = [i for i in slots if not self.is_weight(node.inputs[i]) and not self.from_constant_node(node.inputs[i])]
        if node.op == "MatMul" and len(acts) == 2 and not self.quantize_bmm:
            return "activation x activation MatMul kept in float (quantize_bmm=false)"
        if not all(self.is_float(node.inputs[i]) for i in slots):
            return "non-float input"
        return None


def _kept_by_rules(graph: "gs.Graph", rules: _InputRules, op_types: Sequence[str],
                   keep_float: Sequence[str]) -> Dict[int, list]:
    """Node index -> matched ``keep_float`` rules, among compute nodes the name/type rules would quantize."""
    from pipeline.quantize.placement import keep_float_nodes

    if not keep_float:
        return {}
    candidates = [i for i, n in enumerate(graph.nodes) if n.op in op_types and rules.skip_reason(i, n) is None]
    return {i: ks for i, ks in keep_float_nodes(graph, keep_float, candidates).items()
            if graph.nodes[i].op in op_types}


def _plan_compute_node(plan: QdqPlan, idx: int, node: "gs.Node", rules: _InputRules,
                       kept: Dict[int, list], per_channel: bool) -> None:
    """Quantize a compute node's inputs, or record in ``plan`` why it stays in float."""
    label = node_label(node, idx)
    reason = rules.skip_reason(idx, node)
    if reason is None and idx in kept:
        names = "+".join(dict.fromkeys(k.rule for k in kept[idx]))  # each rule once, first-seen order
        why = "; ".join(k.reason for k in kept[idx])
        reason = f"keep_float={names}: {why}"
        plan.kept_float.append({"node": label, "op_type": node.op, "rule": names, "reason": why})
    if reason is not None:
        plan.skipped[label] = reason
        return
    _plan_compute_inputs(plan, node, idx, per_channel, rules.is_weight, rules.from_constant_node)
    plan.nodes.append(label)


def _plan_single_input(plan: QdqPlan, idx: int, node: "gs.Node", pick: int, rules: _InputRules) -> None:
    """Q/DQ on input ``pick`` of a pooling or residual-add node, when that input is float."""
    if rules.is_float(node.inputs[pick]):
        plan.activations.setdefault(node.inputs[pick].name, []).append((idx, pick))
        plan.nodes.append(node_label(node, idx))


def plan_qdq(
    model: "onnx.ModelProto",
    op_types: Sequence[str] = COMPUTE_OPS,
    per_channel: bool = True,
    residual_add: bool = True,
    pooling: bool = True,
    quantize_bmm: bool = True,
    exclude_nodes: Sequence[str] = (),
    float_tensors: Optional[Set[str]] = None,
    keep_float: Sequence[str] = (),
) -> QdqPlan:
    """Decide which node inputs get Q/DQ.

    Args:
        model: FP32 ONNX model (shape-inferred is best; used to skip non-float inputs).
        op_types: compute ops whose activation and weight inputs are quantized.
        per_channel: per-output-channel weight scales (else per-tensor).
        residual_add: Q/DQ on the residual input of Adds that follow a Conv (TensorRT fusion).
        pooling: Q/DQ on pooling inputs.
        quantize_bmm: quantize MatMuls whose two inputs are both activations (attention scores
            ``Q K^T`` and ``softmax V`` in transformers); off keeps them in float.
        exclude_nodes: node names or fnmatch patterns kept in float (e.g. ``/encoder/layer.5/*``).
        float_tensors: names of float tensors; inputs outside it are not quantized (None: all are).
        keep_float: structural rules whose compute nodes stay in float, found from ops and edges,
            never names: ``ffn`` (MatMul/Gemm on both sides of a transformer FFN's GELU, or of a
            Relu with a residual around the block), ``attention_scores`` (``Q K^T`` and ``P V``
            around a Softmax), ``first`` / ``last`` (first / last quantizable compute node in
            topological order). See :mod:`pipeline.quantize.placement`.

    Returns:
        The :class:`QdqPlan` (slots are ``(index in model.graph.node, input index)``).

    Raises:
        PipelineError: an unknown ``keep_float`` rule.
    """
    from pipeline.graph import conv_residual_adds, to_graph
    from pipeline.quantize.placement import check_rules

    check_rules(keep_float)
    graph = to_graph(model)
    rules = _InputRules({i.name: i.data_type for i in model.graph.initializer}, float_tensors, exclude_nodes,
                        quantize_bmm)
    kept = _kept_by_rules(graph, rules, op_types, keep_float)
    residual_skip = {id(r.node): r.skip for r in conv_residual_adds(graph)} if residual_add else {}
    plan = QdqPlan()
    for idx, node in enumerate(graph.nodes):
        # One branch per node, first match wins: a compute op never counts as a pool or residual add.
        if node.op in op_types:
            _plan_compute_node(plan, idx, node, rules, kept, per_channel)
        elif node.op in POOL_OPS and pooling and not rules.excluded(node_label(node, idx)):
            _plan_single_input(plan, idx, node, 0, rules)
        elif id(node) in residual_skip and not rules.excluded(node_label(node, idx)):
            _plan_single_input(plan, idx, node, residual_skip[id(node)], rules)
    return plan


def _plan_compute_inputs(plan: QdqPlan, node: "gs.Node", idx: int, per_channel: bool,
                         is_weight: Callable[["gs.Tensor"], bool],
                         from_constant_node: Callable[["gs.Tensor"], bool]) -> None:
    """Add a quantized compute node's weight and activation inputs to ``plan``."""
    for i in _compute_slots(node.op, len(node.inputs)):
        if i >= len(node.inputs) or not node.inputs[i].name:
            continue
        t = node.inputs[i]
        if is_weight(t):
            axis = _weight_axis(node.op, node.attrs, i, len(t.shape), per_channel)
            prev = plan.weights.get(t.name)
            if prev is not None and prev.axis != axis:
                axis = None  # shared weight used along different axes: one per-tensor scale
            plan.weights[t.name] = WeightSlot(t.name, axis)
            plan.weight_uses.setdefault(t.name, []).append((idx, i))
        elif from_constant_node(t):
            continue  # Constant-node weights are rare in exports; left in float
        else:
            plan.activations.setdefault(t.name, []).append((idx, i))


def _ensure_qdq_opset(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """Return a model whose default-domain opset is >= 13 (converted to :data:`QDQ_OPSET` if needed)."""
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= 13:
        return model
    try:
        return onnx.version_converter.convert_version(model, QDQ_OPSET)
    except Exception as err:  # the converter raises plain RuntimeErrors for unsupported ops
        raise PipelineError(
            f"the model uses opset {opset}; per-channel Q/DQ needs opset >= 13 and conversion failed: {err}",
            f"re-export the model with opset={QDQ_OPSET} (pipeline `opset=17`)",
        ) from err


def qdq_onnx_from_onnx(
    model: "onnx.ModelProto",
    plan: QdqPlan,
    act_qparams: Dict[str, QParams],
) -> "onnx.ModelProto":
    """Write Q/DQ pairs into a copy of ``model`` following ``plan``.

    Weight pairs go first; an activation's pair goes right before its first rewired consumer, so
    the node list stays topological.

    Args:
        model: FP32 model (not modified).
        plan: from :func:`plan_qdq`.
        act_qparams: per-tensor parameters for every tensor in ``plan.activations``.

    Returns:
        The Q/DQ model (opset >= 13), checked with ``onnx.checker``.

    Raises:
        KeyError: an activation in the plan has no parameters (a caller bug).
    """
    import onnx
    from onnx import numpy_helper

    from pipeline.graph import to_graph, to_model
    from pipeline.graph.edit import NameSource, insert_qdq_pair

    # No copy of ``model``: graphsurgeon only reads it, and the export builds a new model.
    out = _ensure_qdq_opset(model)
    graph = to_graph(out)
    tensors = graph.tensors()
    nodes = list(graph.nodes)
    names = NameSource(set(tensors))
    head: List["gs.Node"] = []
    before: Dict[int, List["gs.Node"]] = {}

    inits = {i.name: i for i in out.graph.initializer}
    for w, slot in plan.weights.items():
        # From the proto, not ``tensors[w].values``: that would swap graphsurgeon's lazy proto for
        # an array, and the export would then re-encode every weight.
        qp = weight_qparams(numpy_helper.to_array(inits[w]), slot.axis)
        slots = [(nodes[i], k) for i, k in plan.weight_uses.get(w, [])]
        head.extend(insert_qdq_pair(tensors[w], slots, qp.scale, np.asarray(qp.zero_point, dtype=qp.np_dtype()),
                                    _axis(qp), names))
    for t, slots in plan.activations.items():
        qp = act_qparams[t]
        pair = insert_qdq_pair(tensors[t], [(nodes[i], k) for i, k in slots], qp.scale,
                               np.asarray(qp.zero_point, dtype=qp.np_dtype()), _axis(qp), names)
        before.setdefault(min(i for i, _ in slots), []).extend(pair)

    graph.nodes = head + [n for idx, node in enumerate(nodes) for n in before.get(idx, []) + [node]]
    result = to_model(graph, like=out)
    onnx.checker.check_model(result)
    return result


def _axis(qp: QParams) -> Optional[int]:
    """The Q/DQ ``axis`` attribute: only per-channel (1-D) parameters carry one."""
    return int(qp.axis) if qp.axis is not None and np.ndim(qp.scale) == 1 else None
