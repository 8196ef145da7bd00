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


@dataclass
class _FusionState:
    """What the fusion phases share: the graph as index lists, and the grouping being built.

    Attributes:
        costs: the costed graph (layers, node_io, constants, tensor_bytes).
        kinds: kind of every node (``_CONST``, ``_VIEW``...), after alias resolution.
        alias: view/DQ output -> the root tensor that holds its data.
        producer: tensor -> index of the node writing it.
        direct: tensor (not resolved to its root) -> every node reading it, graph order.
        consumers: root tensor -> its real readers (not views, DQs, metadata or constants).
        output_roots: roots of the graph outputs (always written to DRAM).
        groups: the groups so far; their order only matters after the final sort.
        group_of: node index -> its group. None before the node is grouped, and for deferred nodes
            placed into another group's ``extra``.
    """

    costs: GraphCosts
    kinds: List[str]
    alias: Dict[str, str]
    producer: Dict[str, int]
    direct: Dict[str, List[int]]
    consumers: Dict[str, Set[int]]
    output_roots: Set[str]
    groups: List[_Group] = field(default_factory=list)
    group_of: List[Optional[_Group]] = field(default_factory=list)

    @property
    def io(self) -> List[Tuple[Tuple[str, ...], Tuple[str, ...]]]:
        """Per node, its (input names, output names)."""
        return self.costs.node_io

    @property
    def consts(self) -> frozenset:
        """Names of constant tensors."""
        return self.costs.constants

    def root(self, t: str) -> str:
        """The tensor holding the data of ``t`` (``t`` itself unless it is a view/DQ output)."""
        return self.alias.get(t, t)

    def data_inputs(self, i: int) -> List[str]:
        """Roots of node ``i``'s non-constant inputs, each once, in input order."""
        seen: List[str] = []
        for t in self.io[i][0]:
            r = self.root(t)
            if t not in self.consts and r not in seen:
                seen.append(r)
        return seen

    def add_group(self, members: List[int], kind: str, tail: int, closed: bool = False) -> _Group:
        """Append a new group and point its members at it."""
        g = _Group(members, kind, tail, closed=closed)
        self.groups.append(g)
        for m in members:
            self.group_of[m] = g
        return g


def _resolve_aliases(io: Sequence[Tuple[Sequence[str], Sequence[str]]], consts: frozenset,
                     kinds: List[str]) -> Dict[str, str]:
    """Map every view/DQ output to the tensor holding its data; demote views/DQs that alias nothing.

    One lookup per input is enough because ONNX node order is topological: a view's input was
    resolved before the view is reached, so the values stored are already roots. A view or DQ of a
    constant becomes a constant; one without input or output is an ordinary op. ``kinds`` is
    updated in place (the later phases must see the demoted kinds).
    """
    alias: Dict[str, str] = {}
    for i, (ins, outs) in enumerate(io):
        if kinds[i] not in (_VIEW, _DQ):
            continue
        if ins and outs and ins[0] not in consts:
            alias[outs[0]] = alias.get(ins[0], ins[0])
        else:
            kinds[i] = _CONST if ins and ins[0] in consts else _OTHER
    return alias


def _new_state(costs: GraphCosts) -> _FusionState:
    """Kinds, aliases and edges of a costed graph, with no groups yet."""
    io, consts = costs.node_io, costs.constants
    graph_outputs = set(costs.graph_outputs)
    kinds = [_kind(layer, outs, graph_outputs) for layer, (_, outs) in zip(costs.layers, io)]
    alias = _resolve_aliases(io, consts, kinds)
    edges = edges_of(io)
    consumers: Dict[str, Set[int]] = {}
    for i, (ins, _) in enumerate(io):
        for t in ins:
            # Deferred readers do not read the data: a view's reader does, a shape op reads none.
            if t not in consts and kinds[i] not in _DEFERRED:
                consumers.setdefault(alias.get(t, t), set()).add(i)
    return _FusionState(costs, kinds, alias, edges.producer, edges.consumers, consumers,
                        {alias.get(t, t) for t in graph_outputs}, group_of=[None] * len(costs.layers))


def _epilogue_hosts(st: _FusionState, i: int, kind: str) -> List[_Group]:
    """Groups that pointwise/Q node ``i`` may join (one entry per data input that qualifies)."""
    hosts = []
    for r in st.data_inputs(i):
        p = st.producer.get(r)
        g = st.group_of[p] if p is not None else None
        # Only a group's last output can stay on chip; after a Q (closed) or a graph output the
        # tensor is written anyway.
        if g is None or g.closed or g.tail != p or r in st.output_roots:
            continue
        if kind == _POINTWISE and g.kind not in _TAKES_POINTWISE:
            continue
        # Every other reader must be pointwise/Q and not in another group. Readers later in graph
        # order are not grouped yet: they may still join, and _split_materialised cuts the group
        # when one does not.
        others = st.consumers.get(r, set()) - {i}
        if any((st.group_of[c] is not None and st.group_of[c] is not g) or st.kinds[c] not in (_POINTWISE, _Q)
               for c in others):
            continue
        hosts.append(g)
    return hosts


def _fuse_epilogues(st: _FusionState) -> None:
    """Phase 1, greedy in graph order: epilogues join the group whose last output they read."""
    for i, kind in enumerate(st.kinds):
        if kind in _DEFERRED:
            continue
        hosts = _epilogue_hosts(st, i, kind) if kind in (_POINTWISE, _Q) else []
        if not hosts:
            st.add_group([i], kind, i, closed=kind == _Q)
            continue
        # Prefer a compute anchor (conv/gemm + epilogue is the fusion that saves most), then the
        # group that started latest.
        chosen = max(hosts, key=lambda g: (g.kind == _MAC, g.members[0]))
        chosen.members.append(i)
        chosen.tail = i
        chosen.closed = kind == _Q  # nothing fuses after an 8-bit output
        st.group_of[i] = chosen


def _find(parent: Dict[int, int], x: int) -> int:
    """Union-find root of ``x``, halving the path on the way (keeps the trees flat)."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def _connected_pieces(st: _FusionState, g: _Group) -> List[List[int]]:
    """``g``'s members split into the pieces joined by tensors that stay on chip, in member order.

    An edge producer -> reader is internal only if the tensor is no graph output and every real
    reader of it is in ``g``; otherwise the tensor is materialised and does not join the two.
    """
    mset = set(g.members)
    parent = {m: m for m in g.members}
    for m in g.members:
        for r in st.data_inputs(m):
            p = st.producer.get(r)
            if p is None or p not in mset or p == m:
                continue
            if r in st.output_roots or not st.consumers.get(r, set()) <= mset:
                continue  # materialised: no internal edge
            parent[_find(parent, m)] = _find(parent, p)
    pieces: Dict[int, List[int]] = {}
    for m in g.members:
        pieces.setdefault(_find(parent, m), []).append(m)
    return list(pieces.values())


def _anchor_kind(kinds: Sequence[str], members: Sequence[int]) -> str:
    """Kind of a piece: MAC if it holds a compute anchor, else its first member's kind."""
    return next((kinds[m] for m in members if kinds[m] == _MAC), kinds[members[0]])


def _split_materialised(st: _FusionState) -> None:
    """Phase 2: a tensor read outside its group is materialised; split the groups it cuts apart.

    Sweeps repeat until one splits nothing (pieces are appended and checked again).
    """
    changed = True
    while changed:
        changed = False
        for g in list(st.groups):
            if len(g.members) < 2:
                continue
            pieces = _connected_pieces(st, g)
            if len(pieces) == 1:
                continue
            changed = True
            st.groups.remove(g)
            for members in pieces:
                st.add_group(sorted(members), _anchor_kind(st.kinds, members), max(members))


def _first_real_consumer(st: _FusionState, t: str, depth: int = 0) -> Optional[int]:
    """Earliest grouped node reading ``t``, looking through deferred readers (views, DQs...).

    A reader behind a view reads the viewed data. The walk through chains of deferred nodes stops
    64 deep (a guard, not a rule); there a deferred reader counts itself if it has a group.
    """
    best = None
    for c in st.direct.get(t, []):
        if st.kinds[c] in _DEFERRED and depth < 64:
            found = [f for f in (_first_real_consumer(st, o, depth + 1) for o in st.io[c][1]) if f is not None]
            c = min(found) if found else None
        if c is not None and st.group_of[c] is not None and (best is None or c < best):
            best = c
    return best


def _deferred_target(st: _FusionState, i: int, kind: str) -> Optional[int]:
    """The node whose group deferred node ``i`` joins, or None for a group of its own."""
    ins, outs = st.io[i]
    if kind == _VIEW and ins:
        # A view goes with the producer of the data it views (a reshape after the conv).
        p = st.producer.get(st.root(ins[0]))
        if p is not None and st.kinds[p] not in _DEFERRED and st.group_of[p] is not None:
            return p
    found = [c for c in (_first_real_consumer(st, o) for o in outs) if c is not None]
    if found:
        return min(found)
    if kind == _META and ins:
        # A shape read nobody real consumes stays with the tensor's producer.
        p = st.producer.get(st.root(ins[0]))
        return p if p is not None and st.group_of[p] is not None else None
    return None


def _place_deferred(st: _FusionState) -> None:
    """Phase 3: put views, DQs, metadata and constants into a group (they cost nothing of their own).

    Graph order matters: a deferred node with no target gets a group of its own (and ``group_of``),
    which a later metadata node or one past the depth guard may then join.
    """
    for i, kind in enumerate(st.kinds):
        if kind not in _DEFERRED:
            continue
        target = _deferred_target(st, i, kind)
        if target is not None:
            st.group_of[target].extra.append(i)
        else:
            st.add_group([i], kind, i)


def _boundary_tensors(st: _FusionState, members: Sequence[int]) -> Tuple[List[str], List[str]]:
    """Phase 4: the tensors a group reads from and writes to DRAM, each once, in member order."""
    mset = set(members)
    reads: List[str] = []
    writes: List[str] = []
    for m in members:
        if st.kinds[m] in (_CONST, _META):
            continue  # constants are weight bytes; a shape read moves no activation data
        ins, outs = st.io[m]
        for t in ins:
            r = st.root(t)
            if t in st.consts or r in reads or st.producer.get(r) in mset:
                continue
            reads.append(r)
        for t in outs:
            # A view/DQ output is its input's data: written (if at all) by whoever produced that.
            if t in st.alias or t in writes:
                continue
            outside = [c for c in st.consumers.get(t, set()) if c not in mset]
            if outside or t in st.output_roots:
                writes.append(t)
    return reads, writes


def _fusion_group(st: _FusionState, index: int, g: _Group) -> FusionGroup:
    """The public :class:`FusionGroup` of a finished group: names, summed costs, boundary bytes."""
    layers = st.costs.layers
    members = sorted(g.members + g.extra)
    reads, writes = _boundary_tensors(st, members)
    anchor = next((m for m in g.members if st.kinds[m] == _MAC), g.members[0])
    shown = [m for m in members if st.kinds[m] not in (_CONST, _META)] or members
    tb = st.costs.tensor_bytes
    return FusionGroup(
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
    )


def _one_group_per_layer(layers: Sequence[LayerCost]) -> List[FusionGroup]:
    """One group per layer with the layer's own bytes (no connectivity to fuse by)."""
    return [
        FusionGroup(i, layer.name, (layer.name,), (i,), layer.name, layer.op_type, layer.category, layer.flops,
                    layer.macs, layer.weight_bytes, layer.activation_bytes)
        for i, layer in enumerate(layers)
    ]


def groups_from_costs(costs: GraphCosts) -> List[FusionGroup]:
    """Fusion groups of a costed graph (:func:`pipeline.analyze.flops.graph_costs`).

    Four phases over one :class:`_FusionState`: greedy epilogue fusion, splitting where a tensor is
    materialised, placing the zero-cost nodes, then boundary bytes per group.
    A :class:`GraphCosts` without node connectivity (built by hand) gets one group per layer, with
    the layer's own bytes.
    """
    if len(costs.node_io) != len(costs.layers):
        return _one_group_per_layer(costs.layers)
    st = _new_state(costs)
    _fuse_epilogues(st)
    _split_materialised(st)
    _place_deferred(st)
    st.groups.sort(key=lambda g: g.members[0])
    return [_fusion_group(st, index, g) for index, g in enumerate(st.groups)]


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


def group_of_nodes(costs: GraphCosts, names: Sequence[str], index: int = 0) -> FusionGroup:
    """The :class:`FusionGroup` of a node set a real engine fused (an engine layer's ONNX nodes), with the same
    boundary-bytes rule as the modelled groups: what the layer reads from and writes to DRAM, each once.
    Unknown names are ignored; a costed graph without connectivity sums the nodes' own bytes."""
    pos = {layer.name: i for i, layer in enumerate(costs.layers)}
    members = sorted({pos[n] for n in names if n in pos})
    if not members or len(costs.node_io) != len(costs.layers):
        layers = [costs.layers[m] for m in members]
        return FusionGroup(index, " + ".join(x.name for x in layers), tuple(x.name for x in layers), tuple(members),
                           layers[0].name if layers else "", layers[0].op_type if layers else "",
                           layers[0].category if layers else "", sum(x.flops for x in layers),
                           sum(x.macs for x in layers), sum(x.weight_bytes for x in layers),
                           sum(x.activation_bytes for x in layers))
    st = _new_state(costs)
    return _fusion_group(st, index, _Group(members, _OTHER, members[-1]))


__all__ = ["FusionGroup", "MAC_CATEGORIES", "POINTWISE_OPS", "fusion_groups", "group_of_nodes", "groups_from_costs"]
