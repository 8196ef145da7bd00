"""Group ONNX nodes the way TensorRT fuses them into layers, so the roofline charges DRAM traffic
only for the tensors a fused kernel really reads and writes.

TensorRT's builder fuses layers before it picks kernels (TensorRT Developer Guide, "Layer Fusion" /
"Types of Fusions", now the "Layer Fusion Catalog":
https://docs.nvidia.com/deeplearning/tensorrt/latest/performance/fusion-catalog.html). The rules
modelled here are the ones that matter for the memory traffic of CNNs and transformers:

* **Compute anchor + epilogue** ("Convolution and ReLU/Clip/GELU Activation", "Convolution and
  Scale", "Convolution and ElementWise Operation", "Scale and Activation"): a Conv, ConvTranspose,
  Gemm, MatMul or Einsum absorbs the pointwise ops that follow it: bias Add, BatchNormalization,
  Mul/Add/Sub/Div by constants, activations (Relu, Clip, LeakyRelu, Sigmoid, Tanh, HardSigmoid,
  HardSwish, Elu, Selu, Softplus, Gelu or its Div -> Erf -> Add -> Mul -> Mul expansion...) and an
  elementwise Add of a second, non-constant tensor (the residual of conv + add + relu).
* **Pointwise fusion** ("Pointwise Fusion": adjacent pointwise layers become one pointwise layer):
  a chain of pointwise ops with no compute anchor is one kernel. Normalizations (LayerNorm...)
  take a pointwise epilogue the same way.
* **Q/DQ fusion** (Developer Guide, "Working with Quantized Types", Q/DQ layer fusion): a
  DequantizeLinear is absorbed into its consumer (which then reads the 8-bit tensor) and a
  QuantizeLinear into its producer (which then writes the 8-bit tensor). Weight DQs are folded
  into the weights already (:mod:`pipeline.analyze.flops`).
* **Views and constants cost 0**: Reshape, Flatten, Squeeze, Unsqueeze, Identity and Dropout are
  aliases of their input (a consumer behind a view is a consumer of the viewed tensor); Shape, Size,
  Constant and constant-folded nodes join the group of their first consumer.

A node fuses into its producer's group only if the tensor it reads is the group's last output and
every consumer of that tensor ends up in the same group; a tensor consumed outside the group (or a
graph output) is materialised, and the consumers after it start new groups. Several consumers
inside one group are allowed (GELU's ``x * (1 + erf(x / sqrt2)) / 2`` reads ``x`` twice).

Each group's **activation bytes** are only the tensors crossing its boundary: non-constant tensors
it reads that are produced elsewhere (or are graph inputs), each once, plus the tensors it
produces that something outside reads or that are graph outputs. Outputs nobody reads (Dropout
masks) are not written. **Weight bytes** and **FLOPs** are the sums over the member nodes.

This is a model of TensorRT's fusion, not a replay of it: tactic choice, horizontal fusion,
multi-head-attention kernels and Myelin's larger fusions are not modelled, and a rule here may fuse
something a given TensorRT version does not (or the reverse). Compare with the engine's layer
list (``build`` stage sidecar) when it matters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from pipeline.analyze.flops import ELEMENTWISE_FLOPS, GraphCosts, LayerCost, graph_costs
from pipeline.core.config import PrecisionConfig
from pipeline.graph.edges import edges_of

#: Categories of layers that run on Tensor Cores and anchor a fused kernel.
MAC_CATEGORIES = frozenset({"conv", "conv_1x1", "conv_depthwise", "conv_transpose", "gemm", "matmul"})
#: Pointwise ops: fuse into a preceding compute/pointwise/norm group, or chain into one kernel.
POINTWISE_OPS = frozenset(ELEMENTWISE_FLOPS) | {"Max", "Min", "Sum", "Mean", "BatchNormalization", "Cast",
                                                "CastLike"}
#: Normalizations that take a pointwise epilogue (their own kernel otherwise).
NORM_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization",
                      "RMSNormalization", "MeanVarianceNormalization", "LpNormalization"})
#: Ops whose (first) output is a view of their first input: no data moves.
ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
#: Metadata ops: reading a tensor's shape does not read the tensor.
META_OPS = frozenset({"Shape", "Size"})

# node kinds
_CONST, _VIEW, _META, _DQ, _Q, _MAC, _POINTWISE, _NORM, _OTHER = (
    "const", "view", "meta", "dq", "q", "mac", "pointwise", "norm", "other")
_DEFERRED = (_CONST, _VIEW, _META, _DQ)  # placed after the fusion pass, cost nothing of their own
_TAKES_POINTWISE = (_MAC, _POINTWISE, _NORM)  # group kinds a pointwise epilogue may join


@dataclass(frozen=True)
class FusionGroup:
    """One fused kernel as this model sees it.

    Attributes:
        index: position in graph order (0-based).
        name: TensorRT-like name, the member nodes joined by `` + `` (views/constants left out).
        nodes: names of all member ONNX nodes, graph order (views, constants and DQs included).
        node_indices: their indices in the graph's node list.
        anchor: the node that sets the kernel (the conv/gemm/matmul, else the first real op).
        anchor_op / category: its op type and category (the group's category).
        flops / macs / weight_bytes: sums over the members.
        activation_bytes: only tensors crossing the group boundary (see module docstring).
        inputs / outputs: those tensors (roots of views and DQs), read and written.
    """

    index: int
    name: str
    nodes: Tuple[str, ...]
    node_indices: Tuple[int, ...]
    anchor: str
    anchor_op: str
    category: str
    flops: float
    macs: float
    weight_bytes: float
    activation_bytes: float
    inputs: Tuple[str, ...] = ()
    outputs: Tuple[str, ...] = ()

    @property
    def bytes(self) -> float:
        """DRAM traffic of the fused kernel, bytes."""
        return self.weight_bytes + self.activation_bytes

    @property
    def intensity(self) -> float:
        """FLOP per byte of the fused kernel (0 when nothing moves)."""
        return self.flops / self.bytes if self.bytes else 0.0

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (with ``bytes`` and ``intensity``)."""
        return {
            "index": self.index, "name": self.name, "nodes": list(self.nodes), "anchor": self.anchor,
            "anchor_op": self.anchor_op, "category": self.category, "flops": self.flops, "macs": self.macs,
            "weight_bytes": self.weight_bytes, "activation_bytes": self.activation_bytes, "bytes": self.bytes,
            "intensity": self.intensity, "inputs": list(self.inputs), "outputs": list(self.outputs),
        }


@dataclass
class _Group:
    members: List[int]
    kind: str
    tail: int
    closed: bool = False
    extra: List[int] = field(default_factory=list)  # deferred nodes placed here


def _kind(layer: LayerCost, outputs: Sequence[str], graph_outputs: Set[str]) -> str:
    op = layer.op_type
    if layer.category == "constant":
        return _CONST
    if op in ALIAS_OPS:
        return _VIEW
    if op in META_OPS:
        return _META
    if op == "DequantizeLinear" and not any(o in graph_outputs for o in outputs):
        return _DQ
    if op == "QuantizeLinear":
        return _Q
    if layer.category in MAC_CATEGORIES:
        return _MAC
    if op in POINTWISE_OPS:
        return _POINTWISE
    if op in NORM_OPS:
        return _NORM
    return _OTHER


def groups_from_costs(costs: GraphCosts) -> List[FusionGroup]:
    """Fusion groups of a costed graph (:func:`pipeline.analyze.flops.graph_costs`).

    A :class:`GraphCosts` without node connectivity (built by hand) gets one group per layer, with
    the layer's own bytes.
    """
    layers = costs.layers
    if len(costs.node_io) != len(layers):
        return [
            FusionGroup(i, layer.name, (layer.name,), (i,), layer.name, layer.op_type, layer.category, layer.flops,
                        layer.macs, layer.weight_bytes, layer.activation_bytes)
            for i, layer in enumerate(layers)
        ]
    consts = costs.constants
    graph_outputs = set(costs.graph_outputs)
    io = costs.node_io
    kinds = [_kind(layer, outs, graph_outputs) for layer, (_, outs) in zip(layers, io)]

    # Views and DQs alias their first input: resolve every tensor to the tensor that holds the data.
    alias: Dict[str, str] = {}

    def root(t: str) -> str:
        return alias.get(t, t)

    for i, (ins, outs) in enumerate(io):
        if kinds[i] in (_VIEW, _DQ) and ins and outs and ins[0] not in consts:
            alias[outs[0]] = root(ins[0])
        elif kinds[i] in (_VIEW, _DQ):
            kinds[i] = _CONST if ins and ins[0] in consts else _OTHER
    edges = edges_of(io)
    producer, direct = edges.producer, edges.consumers  # tensor -> writer / every reader
    consumers: Dict[str, Set[int]] = {}  # root -> real consumers (not views, DQs, metadata, constants)
    for i, (ins, _) in enumerate(io):
        for t in ins:
            if t not in consts and kinds[i] not in _DEFERRED:
                consumers.setdefault(root(t), set()).add(i)
    output_roots = {root(t) for t in graph_outputs}

    def data_inputs(i: int) -> List[str]:
        seen: List[str] = []
        for t in io[i][0]:
            r = root(t)
            if t not in consts and r not in seen:
                seen.append(r)
        return seen

    # 1. greedy pass in graph order: epilogues join the group whose last output they read.
    group_of: List[Optional[_Group]] = [None] * len(layers)
    groups: List[_Group] = []
    for i, kind in enumerate(kinds):
        if kind in _DEFERRED:
            continue
        chosen = None
        if kind in (_POINTWISE, _Q):
            candidates = []
            for r in data_inputs(i):
                p = producer.get(r)
                g = group_of[p] if p is not None else None
                if g is None or g.closed or g.tail != p or r in output_roots:
                    continue
                if kind == _POINTWISE and g.kind not in _TAKES_POINTWISE:
                    continue
                others = consumers.get(r, set()) - {i}
                if any((group_of[c] is not None and group_of[c] is not g) or kinds[c] not in (_POINTWISE, _Q)
                       for c in others):
                    continue
                candidates.append(g)
            if candidates:
                chosen = max(candidates, key=lambda g: (g.kind == _MAC, g.members[0]))
        if chosen is not None:
            chosen.members.append(i)
            chosen.tail = i
            chosen.closed = kind == _Q  # nothing fuses after an 8-bit output
            group_of[i] = chosen
        else:
            g = _Group([i], kind, i, closed=kind == _Q)
            groups.append(g)
            group_of[i] = g

    # 2. a tensor read outside its group is materialised: cut it and split what falls apart.
    def anchor_kind(members: List[int]) -> str:
        return next((kinds[m] for m in members if kinds[m] == _MAC), kinds[members[0]])

    changed = True
    while changed:
        changed = False
        for g in list(groups):
            if len(g.members) < 2:
                continue
            mset = set(g.members)
            parent = {m: m for m in g.members}

            def find(x: int) -> int:
                while parent[x] != x:
                    parent[x] = parent[parent[x]]
                    x = parent[x]
                return x

            for m in g.members:
                for r in data_inputs(m):
                    p = producer.get(r)
                    if p is None or p not in mset or p == m:
                        continue
                    if r in output_roots or not consumers.get(r, set()) <= mset:
                        continue  # materialised: no internal edge
                    parent[find(m)] = find(p)
            comps: Dict[int, List[int]] = {}
            for m in g.members:
                comps.setdefault(find(m), []).append(m)
            if len(comps) == 1:
                continue
            changed = True
            groups.remove(g)
            for members in comps.values():
                ng = _Group(sorted(members), anchor_kind(members), max(members))
                groups.append(ng)
                for m in members:
                    group_of[m] = ng

    # 3. place views, DQs, metadata and constants (they cost nothing of their own).
    def first_real_consumer(t: str, depth: int = 0) -> Optional[int]:
        best = None
        for c in direct.get(t, []):
            if kinds[c] in _DEFERRED and depth < 64:
                found = None
                for o in io[c][1]:
                    f = first_real_consumer(o, depth + 1)
                    if f is not None and (found is None or f < found):
                        found = f
                c = found
            if c is not None and group_of[c] is not None and (best is None or c < best):
                best = c
        return best

    for i, kind in enumerate(kinds):
        if kind not in _DEFERRED:
            continue
        ins, outs = io[i]
        target = None
        if kind == _VIEW:
            p = producer.get(root(ins[0])) if ins else None
            if p is not None and kinds[p] not in _DEFERRED and group_of[p] is not None:
                target = p
        if target is None:
            for o in outs:
                c = first_real_consumer(o)
                if c is not None and (target is None or c < target):
                    target = c
        if target is None and kind == _META and ins:
            p = producer.get(root(ins[0]))
            target = p if p is not None and group_of[p] is not None else None
        if target is not None:
            group_of[target].extra.append(i)
        else:
            g = _Group([i], kind, i)
            groups.append(g)
            group_of[i] = g

    # 4. boundary bytes per group.
    groups.sort(key=lambda g: g.members[0])
    out: List[FusionGroup] = []
    for index, g in enumerate(groups):
        members = sorted(g.members + g.extra)
        mset = set(members)
        reads: List[str] = []
        writes: List[str] = []
        for m in members:
            if kinds[m] in (_CONST, _META):
                continue
            for t in io[m][0]:
                r = root(t)
                if t in consts or r in reads or producer.get(r) in mset:
                    continue
                reads.append(r)
            for t in io[m][1]:
                if t in alias or t in writes:
                    continue
                outside = [c for c in consumers.get(t, set()) if c not in mset]
                if outside or t in output_roots:
                    writes.append(t)
        anchor = next((m for m in g.members if kinds[m] == _MAC), g.members[0])
        shown = [m for m in members if kinds[m] not in (_CONST, _META)] or members
        tb = costs.tensor_bytes
        out.append(FusionGroup(
            index=index,
            name=" + ".join(layers[m].name for m in shown),
            nodes=tuple(layers[m].name for m in members),
            node_indices=tuple(members),
            anchor=layers[anchor].name,
            anchor_op=layers[anchor].op_type,
            category=layers[anchor].category,
            flops=sum(layers[m].flops for m in members),
            macs=sum(layers[m].macs for m in members),
            weight_bytes=sum(layers[m].weight_bytes for m in members),
            activation_bytes=sum(tb.get(t, 0.0) for t in reads + writes),
            inputs=tuple(reads),
            outputs=tuple(writes),
        ))
    return out


def fusion_groups(
    model: Union[str, os.PathLike, Any],
    precision: Optional[PrecisionConfig] = None,
    batch_size: int = 1,
    dims: Optional[Mapping[str, int]] = None,
) -> List[FusionGroup]:
    """Group the nodes of an ONNX model as TensorRT fuses them (rules in the module docstring).

    Args:
        model: a ``ModelProto`` (shape-inferred or not; it is not modified) or a ``.onnx`` path.
        precision: byte sizes (default fp32).
        batch_size / dims: values of symbolic dims, as for :func:`pipeline.analyze.flops.graph_costs`.

    Returns:
        The groups in graph order; every node is in exactly one.
    """
    return groups_from_costs(graph_costs(model, batch_size, precision, dims))


__all__ = ["FusionGroup", "MAC_CATEGORIES", "POINTWISE_OPS", "fusion_groups", "groups_from_costs"]
