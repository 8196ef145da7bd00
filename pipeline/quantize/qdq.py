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
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from pipeline.errors import PipelineError
from pipeline.quantize.scales import QParams, weight_qparams

if TYPE_CHECKING:  # pragma: no cover
    import onnx

#: Ops whose float inputs get Q/DQ.
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool")
#: Ops that TensorRT fuses into a preceding Conv (so a residual Add fed through them is conv-side).
_CONV_EPILOGUE = ("BatchNormalization",)
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


def node_label(node: "onnx.NodeProto", index: int) -> str:
    """A node's name, or ``OpType#index`` when the exporter left it unnamed."""
    return node.name or f"{node.op_type}#{index}"


def _weight_axis(node: "onnx.NodeProto", input_index: int, ndim: int, per_channel: bool) -> Optional[int]:
    """The output-channel axis of a weight input, or None for per-tensor."""
    if not per_channel or ndim < 1:
        return None
    if node.op_type == "Conv":
        return 0 if input_index == 1 else None
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute}
        if input_index == 1:
            return 0 if attrs.get("transB", 0) else 1
        return 1 if attrs.get("transA", 0) else 0
    if node.op_type == "MatMul":
        if ndim < 2:
            return None
        # x @ W: output channels are W's last axis; W @ x: they are W's second-to-last axis.
        return ndim - 1 if input_index == 1 else ndim - 2
    return None


def _producers(model: "onnx.ModelProto") -> Dict[str, int]:
    return {o: i for i, n in enumerate(model.graph.node) for o in n.output}


def _consumer_counts(model: "onnx.ModelProto") -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for n in model.graph.node:
        for t in n.input:
            counts[t] = counts.get(t, 0) + 1
    for o in model.graph.output:
        counts[o.name] = counts.get(o.name, 0) + 1
    return counts


def _chain_length(tensor: str, model: "onnx.ModelProto", producers: Dict[str, int],
                  consumers: Dict[str, int], limit: int = 64) -> int:
    """Nodes on the single-consumer chain that produces ``tensor``, back to the branch point."""
    steps = 0
    t = tensor
    while steps < limit and t in producers:
        node = model.graph.node[producers[t]]
        steps += 1
        if not node.input:
            break
        t = node.input[0]
        if consumers.get(t, 0) > 1:
            break
    return steps


def _is_conv_side(tensor: str, model: "onnx.ModelProto", producers: Dict[str, int]) -> bool:
    """True if ``tensor`` comes from a Conv, directly or through a BatchNormalization."""
    t = tensor
    for _ in range(3):
        if t not in producers:
            return False
        node = model.graph.node[producers[t]]
        if node.op_type == "Conv":
            return True
        if node.op_type not in _CONV_EPILOGUE:
            return False
        t = node.input[0]
    return False


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
        The :class:`QdqPlan`.

    Raises:
        PipelineError: an unknown ``keep_float`` rule.
    """
    from pipeline.quantize.placement import check_rules, keep_float_nodes

    check_rules(keep_float)
    inits = {i.name: i for i in model.graph.initializer}
    const_outputs = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    producers = _producers(model)
    consumers = _consumer_counts(model)
    plan = QdqPlan()

    def excluded(label: str) -> bool:
        return any(fnmatch.fnmatchcase(label, p) for p in exclude_nodes)

    def is_float(t: str) -> bool:
        if t in inits:
            return inits[t].data_type == 1  # FLOAT
        return float_tensors is None or t in float_tensors

    def add_activation(t: str, slot: Tuple[int, int]) -> None:
        plan.activations.setdefault(t, []).append(slot)

    def compute_slots(node: "onnx.NodeProto") -> List[int]:
        # Conv/Gemm: inputs 0 and 1 (bias stays float: TensorRT folds it in int32/float itself).
        return [0, 1] if node.op_type in ("Conv", "Gemm", "MatMul") else list(range(len(node.input)))

    def skip_reason(idx: int, node: "onnx.NodeProto") -> Optional[str]:
        """Why a compute node is not quantized by the name/type rules, or None."""
        if excluded(node_label(node, idx)):
            return "excluded by pattern"
        slots = compute_slots(node)
        act_inputs = [i for i in slots if i < len(node.input) and node.input[i]
                      and node.input[i] not in inits and node.input[i] not in const_outputs]
        if node.op_type == "MatMul" and len(act_inputs) == 2 and not quantize_bmm:
            return "activation x activation MatMul kept in float (quantize_bmm=false)"
        if not all(is_float(node.input[i]) for i in slots if i < len(node.input) and node.input[i]):
            return "non-float input"
        return None

    kept: Dict[int, list] = {}
    if keep_float:
        candidates = [i for i, n in enumerate(model.graph.node) if n.op_type in op_types and skip_reason(i, n) is None]
        kept = {i: ks for i, ks in keep_float_nodes(model, keep_float, candidates).items()
                if model.graph.node[i].op_type in op_types}

    for idx, node in enumerate(model.graph.node):
        label = node_label(node, idx)
        op = node.op_type
        if op in op_types:
            reason = skip_reason(idx, node)
            if reason is None and idx in kept:
                rules = "+".join(dict.fromkeys(k.rule for k in kept[idx]))
                why = "; ".join(k.reason for k in kept[idx])
                reason = f"keep_float={rules}: {why}"
                plan.kept_float.append({"node": label, "op_type": op, "rule": rules, "reason": why})
            if reason is not None:
                plan.skipped[label] = reason
                continue
            slots = compute_slots(node)
            for i in slots:
                if i >= len(node.input) or not node.input[i]:
                    continue
                t = node.input[i]
                if t in inits:
                    ndim = len(inits[t].dims)
                    axis = _weight_axis(node, i, ndim, per_channel)
                    prev = plan.weights.get(t)
                    if prev is not None and prev.axis != axis:
                        axis = None  # shared weight used along different axes: one per-tensor scale
                    plan.weights[t] = WeightSlot(t, axis)
                    plan.weight_uses.setdefault(t, []).append((idx, i))
                elif t in const_outputs:
                    continue  # Constant-node weights are rare in exports; left in float
                else:
                    add_activation(t, (idx, i))
            plan.nodes.append(label)
        elif op in POOL_OPS and pooling and not excluded(label):
            if is_float(node.input[0]):
                add_activation(node.input[0], (idx, 0))
                plan.nodes.append(label)
        elif op == "Add" and residual_add and not excluded(label) and len(node.input) == 2:
            a, b = node.input
            if a in inits or b in inits or a in const_outputs or b in const_outputs:
                continue  # bias add, not a residual
            conv_a, conv_b = _is_conv_side(a, model, producers), _is_conv_side(b, model, producers)
            if not (conv_a or conv_b):
                continue
            if conv_a and not conv_b:
                pick = 1
            elif conv_b and not conv_a:
                pick = 0
            else:
                # Both branches end in a conv (downsampling shortcut): the shorter chain is the skip.
                la = _chain_length(a, model, producers, consumers)
                lb = _chain_length(b, model, producers, consumers)
                pick = 0 if la < lb else 1
            if is_float(node.input[pick]):
                add_activation(node.input[pick], (idx, pick))
                plan.nodes.append(label)
    return plan


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
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = _ensure_qdq_opset(out)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    used_names = {n for node in g.node for n in list(node.input) + list(node.output)} | set(inits)

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in used_names:
            name, k = f"{base}_{k}", k + 1
        used_names.add(name)
        return name

    def make_pair(tensor: str, qp: QParams) -> Tuple[List["onnx.NodeProto"], str]:
        scale = fresh(f"{tensor}_scale")
        zp = fresh(f"{tensor}_zero_point")
        g.initializer.append(numpy_helper.from_array(np.asarray(qp.scale, dtype=np.float32), scale))
        g.initializer.append(numpy_helper.from_array(np.asarray(qp.zero_point, dtype=qp.np_dtype()), zp))
        q_out, dq_out = fresh(f"{tensor}_QuantizeLinear_Output"), fresh(f"{tensor}_DequantizeLinear_Output")
        kw = {"axis": int(qp.axis)} if qp.axis is not None and np.ndim(qp.scale) == 1 else {}
        q = helper.make_node("QuantizeLinear", [tensor, scale, zp], [q_out], name=fresh(f"{tensor}_QuantizeLinear"), **kw)
        dq = helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out],
                              name=fresh(f"{tensor}_DequantizeLinear"), **kw)
        return [q, dq], dq_out

    nodes = list(g.node)
    rewired: Dict[Tuple[int, int], str] = {}
    before: Dict[int, List["onnx.NodeProto"]] = {}
    head: List["onnx.NodeProto"] = []

    for w, slot in plan.weights.items():
        arr = numpy_helper.to_array(inits[w])
        qp = weight_qparams(arr, slot.axis)
        pair, dq_out = make_pair(w, qp)
        head.extend(pair)
        for s in plan.weight_uses.get(w, []):
            rewired[s] = dq_out

    for t, slots in plan.activations.items():
        pair, dq_out = make_pair(t, act_qparams[t])
        first = min(s[0] for s in slots)
        before.setdefault(first, []).extend(pair)
        for s in slots:
            rewired[s] = dq_out

    new_nodes: List["onnx.NodeProto"] = list(head)
    for idx, node in enumerate(nodes):
        new_nodes.extend(before.get(idx, []))
        for i in range(len(node.input)):
            if (idx, i) in rewired:
                node.input[i] = rewired[(idx, i)]
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    onnx.checker.check_model(out)
    return out
