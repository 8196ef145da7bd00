"""Roofline model (Williams, Waterman, Patterson, CACM 2009): how fast each layer could run at best.

For each layer: ``compute_s = flops / peak``, ``memory_s = bytes / DRAM bandwidth`` and the layer
can take no less than ``bound_s = max(compute_s, memory_s)``; whichever is larger *binds*. The
ridge point ``peak / bandwidth`` (FLOP/byte) separates the two regimes.

Which peak: MAC layers (conv, gemm, matmul: ``macs > 0``) use the precision's peak, a Tensor Core
peak on GPUs. Everything else (elementwise, norms, softmax, pooling, resize, Q/DQ) cannot run on
Tensor Cores and uses the CUDA-core (CPU: SIMD) peak of the same precision, or the nearest wider
one (:meth:`HardwareSpec.vector_peak_for`). Depthwise convs are MAC layers here although cuDNN and
TensorRT often run them on CUDA cores: the bound stays a lower bound, and they are memory-bound
either way.

Three model-level numbers:

* ``predicted_latency_s``: the **fused** estimate, the sum of the bounds of the fusion groups of
  :mod:`pipeline.analyze.fusion` (TensorRT-style layer fusion: conv + bias/BN/activation/residual
  add, pointwise chains, Q/DQ absorbed, views free). A group's ``memory_s`` charges only the
  tensors that cross its boundary plus its weights; its ``compute_s`` is the sum of its members'
  ``compute_s`` (each node at the peak of its own unit: fusion saves traffic, not arithmetic). So
  ``group bound_s = max(sum of member compute_s, boundary bytes / bandwidth)``.
* ``predicted_latency_unfused_s``: the sum of layer bounds, each ONNX node run alone: the best an
  engine that executes the graph node by node (every intermediate tensor written to and read back
  from DRAM) could do. Always >= the fused estimate.
* ``whole_model.bound_s``: perfect fusion, where only weights (once) and the graph's inputs and
  outputs touch DRAM: ``max(sum of compute_s, (unique weights + I/O) / bandwidth)``. No engine
  beats it.

What the fused estimate assumes: each group is one kernel that streams its inputs and weights
from DRAM once and writes its outputs once, at full bandwidth, and overlaps its arithmetic with
that traffic perfectly; caches hold nothing between kernels; launch overheads, tails and tactic
choice are ignored. It stays a bound for the fusions it models, not a prediction of the tactics
TensorRT picks: a real engine may fuse more (attention kernels, Myelin regions) or less, and
epilogue arithmetic running on CUDA cores next to Tensor Cores could overlap more than assumed.

The by-category table puts each category's FLOPs share next to its predicted-time share, computed
on fusion groups (a group counts for the category of its anchor: a conv + Clip group is conv time)
(seed note 4.2: FLOPs do not predict speed; depthwise and 1x1 convs are memory-bound and take more
time than their FLOPs suggest).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Union

from pipeline.analyze.flops import Cost, GraphCosts, LayerCost, graph_costs
from pipeline.analyze.hardware import HardwareSpec, Peak
from pipeline.core.config import PrecisionConfig


@dataclass(frozen=True)
class LayerBound:
    """One layer on the roofline.

    Attributes:
        layer: its cost.
        peak_key: the peak it is bounded with (MAC peak or CUDA-core/SIMD peak).
        peak_ops_per_s: that peak, ops/s.
        compute_s / memory_s / bound_s: seconds at peak compute, at full bandwidth, and their max.
        bound: ``compute``, ``memory`` or ``none`` (no work, e.g. a view or a folded constant).
        group / group_name: index and name of the fusion group the node belongs to.
    """

    layer: LayerCost
    peak_key: str
    peak_ops_per_s: float
    compute_s: float
    memory_s: float
    bound_s: float
    bound: str
    group: Optional[int] = None
    group_name: str = ""

    def to_dict(self) -> Dict[str, Any]:
        """The report's per-layer row: the :class:`LayerCost` fields, the roofline fields (unfused)
        and the fusion group (``group`` index, ``group_name``)."""
        row = self.layer.to_dict()
        row.update(peak_key=self.peak_key, peak_ops_per_s=self.peak_ops_per_s, compute_s=self.compute_s,
                   memory_s=self.memory_s, bound_s=self.bound_s, bound=self.bound, group=self.group,
                   group_name=self.group_name)
        return row


@dataclass(frozen=True)
class CategoryRow:
    """FLOPs share vs predicted-time share of one category, over fusion groups (shares are
    fractions of 1 of the fused totals).

    Attributes:
        category: the anchor category of the groups.
        layers: ONNX nodes in those groups; groups: how many groups.
        flops / bytes / predicted_s: sums over the groups (bytes and time fused).
        memory_bound_groups / compute_bound_groups: groups on each side of the ridge.
    """

    category: str
    layers: int
    groups: int
    flops: float
    flops_share: float
    bytes: float
    predicted_s: float
    time_share: float
    memory_bound_groups: int
    compute_bound_groups: int


@dataclass
class Analysis:
    """The analyze stage's result (``report.json``'s ``analysis`` key, per-layer rows in ``layers``).

    Attributes:
        model_path: the ONNX analysed ("" for an in-memory model).
        hardware: hardware name; precision: precision name; batch_size: batch the costs are for.
        peak: the MAC peak; vector_peak: the peak for non-MAC layers.
        sparse: whether 2:4-sparse Tensor Core peaks were used.
        memory_bandwidth_bytes_s: DRAM bandwidth, bytes/s.
        ridge_point: MAC peak / bandwidth, FLOP per byte.
        total: sum of layer costs.
        predicted_latency_s: sum of fusion-group bounds (fused estimate), seconds per batch.
        predicted_latency_unfused_s: sum of layer bounds (node by node), seconds per batch.
        whole_model: perfect-fusion bound: compute_s, memory_s, bytes, bound_s, bound.
        layers: per-layer bounds in graph order (each with its ``group``).
        groups: fusion groups in graph order, as dicts: :meth:`FusionGroup.to_dict` plus
            peak_key, compute_s, memory_s, bound_s, bound.
        by_category: categories of the groups' anchors sorted by predicted (fused) time, largest first.
        unsupported_ops: op type -> count (0 FLOPs counted); unknown_shape_nodes: node names.
        notes: assumptions, fallbacks and detection notes.
    """

    model_path: str
    hardware: str
    precision: str
    batch_size: int
    peak: Peak
    vector_peak: Peak
    sparse: bool
    memory_bandwidth_bytes_s: float
    ridge_point: float
    total: Cost
    predicted_latency_s: float
    whole_model: Dict[str, Any]
    layers: List[LayerBound]
    by_category: List[CategoryRow]
    predicted_latency_unfused_s: float = 0.0
    groups: List[Dict[str, Any]] = field(default_factory=list)
    unsupported_ops: Dict[str, int] = field(default_factory=dict)
    unknown_shape_nodes: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def predicted_throughput_samples_s(self) -> float:
        """Samples per second at the fused predicted latency (0 when nothing was costed)."""
        return self.batch_size / self.predicted_latency_s if self.predicted_latency_s else 0.0

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready dict (``analysis`` key of report.json; ``layers`` are the report's layer rows)."""
        return {
            "model_path": self.model_path,
            "hardware": self.hardware,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "peak_key": self.peak.key,
            "peak": self.peak.to_dict(),
            "peak_ops_per_s": self.peak.ops_per_s(self.sparse),
            "vector_peak_key": self.vector_peak.key,
            "vector_peak": self.vector_peak.to_dict(),
            "sparse": self.sparse,
            "memory_bandwidth_bytes_s": self.memory_bandwidth_bytes_s,
            "ridge_point": self.ridge_point,
            "totals": self.total.to_dict(),
            "predicted_latency_s": self.predicted_latency_s,
            "predicted_latency_unfused_s": self.predicted_latency_unfused_s,
            "predicted_throughput_samples_s": self.predicted_throughput_samples_s,
            "whole_model": dict(self.whole_model),
            "by_category": [asdict(row) for row in self.by_category],
            "unsupported_ops": dict(self.unsupported_ops),
            "unknown_shape_nodes": list(self.unknown_shape_nodes),
            "notes": list(self.notes),
            "groups": [dict(g) for g in self.groups],
            "layers": [layer.to_dict() for layer in self.layers],
        }


def bound_layer(layer: LayerCost, peak: Peak, bandwidth_bytes_s: float, sparse: bool = False) -> LayerBound:
    """Put one layer on the roofline of ``peak`` and ``bandwidth_bytes_s`` (bytes/s)."""
    ops = peak.ops_per_s(sparse)
    compute_s = layer.flops / ops if layer.flops else 0.0
    memory_s = layer.bytes / bandwidth_bytes_s if layer.bytes else 0.0
    if compute_s == 0.0 and memory_s == 0.0:
        bound = "none"
    else:
        bound = "compute" if compute_s >= memory_s else "memory"
    return LayerBound(layer, peak.key, ops, compute_s, memory_s, max(compute_s, memory_s), bound)


def _bound_kind(compute_s: float, memory_s: float) -> str:
    """``none`` when there is no work at all, else the side of the ridge that binds."""
    if compute_s == 0.0 and memory_s == 0.0:
        return "none"
    return "compute" if compute_s >= memory_s else "memory"


def _fusion_groups(costs: GraphCosts, layers: List[LayerBound], bandwidth: float) -> List[Dict[str, Any]]:
    """Bound every fusion group and tag its member layers with the group (``layers`` in place).

    A group's compute is the sum of its members' (each at its own unit's peak: fusion saves
    traffic, not arithmetic); its memory is only the bytes crossing the group boundary.
    """
    from pipeline.analyze.fusion import groups_from_costs

    groups: List[Dict[str, Any]] = []
    for grp in groups_from_costs(costs):
        members = [layers[i] for i in grp.node_indices]
        anchor = next((b for b in members if b.layer.name == grp.anchor), members[0])
        g_compute = sum(b.compute_s for b in members)
        g_memory = grp.bytes / bandwidth if grp.bytes else 0.0
        row = grp.to_dict()
        row.update(
            peak_key=anchor.peak_key,
            compute_s=g_compute,
            memory_s=g_memory,
            bound_s=max(g_compute, g_memory),
            bound=_bound_kind(g_compute, g_memory),
        )
        groups.append(row)
        for i in grp.node_indices:
            layers[i] = replace(layers[i], group=grp.index, group_name=grp.name)
    return groups


def _whole_model(costs: GraphCosts, layers: List[LayerBound], bandwidth: float) -> Dict[str, Any]:
    """Perfect-fusion bound: all arithmetic, but only unique weights and graph I/O touch DRAM."""
    compute_s = sum(b.compute_s for b in layers)
    min_bytes = costs.unique_weight_bytes + costs.io_bytes
    memory_s = min_bytes / bandwidth
    return {
        "compute_s": compute_s,
        "memory_s": memory_s,
        "bytes": min_bytes,
        "bound_s": max(compute_s, memory_s),
        # No "none" here (unlike layers and groups): an empty model is reported compute-bound at 0 s.
        "bound": "compute" if compute_s >= memory_s else "memory",
        "meaning": "perfect fusion: weights read once, only graph inputs/outputs touch DRAM",
    }


def _category_row(cat: str, items: List[Dict[str, Any]], total_flops: float, predicted: float) -> CategoryRow:
    """Sum the fusion groups whose anchor is of category ``cat``."""
    flops = sum(g["flops"] for g in items)
    predicted_s = sum(g["bound_s"] for g in items)
    return CategoryRow(
        category=cat,
        layers=sum(len(g["nodes"]) for g in items),
        groups=len(items),
        flops=flops,
        flops_share=flops / total_flops if total_flops else 0.0,
        bytes=sum(g["bytes"] for g in items),
        predicted_s=predicted_s,
        time_share=predicted_s / predicted if predicted else 0.0,
        memory_bound_groups=sum(1 for g in items if g["bound"] == "memory"),
        compute_bound_groups=sum(1 for g in items if g["bound"] == "compute"),
    )


def _by_category(groups: List[Dict[str, Any]], total_flops: float, predicted: float) -> List[CategoryRow]:
    """Category rows sorted by predicted (fused) time, largest first, ties by name."""
    by_cat: Dict[str, List[Dict[str, Any]]] = {}
    for g in groups:
        by_cat.setdefault(g["category"], []).append(g)
    rows = [_category_row(cat, items, total_flops, predicted) for cat, items in by_cat.items()]
    rows.sort(key=lambda r: (-r.predicted_s, r.category))
    return rows


def _analysis_notes(costs: GraphCosts, hardware: HardwareSpec, peaks: List[Peak]) -> List[str]:
    """The cost notes, then the peaks' notes (once each), hardware detection notes, unsupported ops."""
    notes = list(costs.notes)
    for p in peaks:
        if p.note and p.note not in notes:
            notes.append(p.note)
    for key in ("assumption", "note"):
        if hardware.detection.get(key):
            notes.append(f"hardware {key}: {hardware.detection[key]}")
    if costs.unsupported_ops:
        notes.append("unsupported ops counted as 0 FLOPs: "
                     + ", ".join(f"{k} x{v}" for k, v in sorted(costs.unsupported_ops.items())))
    return notes


def roofline(
    costs: GraphCosts,
    hardware: HardwareSpec,
    precision: PrecisionConfig,
    sparse: bool = False,
    model_path: str = "",
) -> Analysis:
    """Bound every layer of ``costs`` on ``hardware`` at ``precision``.

    Raises:
        PipelineError: ``hardware`` has no peak for ``precision`` (from :meth:`HardwareSpec.peak_for`).
    """
    peak = hardware.peak_for(precision)
    vector = hardware.vector_peak_for(peak)
    bandwidth = hardware.memory_bandwidth_bytes_s
    # MAC layers run at the precision's (Tensor Core) peak, sparse if asked; the rest on CUDA cores.
    layers = [
        bound_layer(layer, peak if layer.macs > 0 else vector, bandwidth, sparse and layer.macs > 0)
        for layer in costs.layers
    ]
    unfused = sum(b.bound_s for b in layers)  # before _fusion_groups: group tags do not change bounds
    groups = _fusion_groups(costs, layers, bandwidth)
    predicted = sum(g["bound_s"] for g in groups)
    return Analysis(
        model_path=model_path,
        hardware=hardware.name,
        precision=precision.name,
        batch_size=costs.batch_size,
        peak=peak,
        vector_peak=vector,
        sparse=sparse,
        memory_bandwidth_bytes_s=bandwidth,
        ridge_point=peak.ops_per_s(sparse) / bandwidth,
        total=costs.total,
        predicted_latency_s=predicted,
        whole_model=_whole_model(costs, layers, bandwidth),
        layers=layers,
        by_category=_by_category(groups, costs.total.flops, predicted),
        predicted_latency_unfused_s=unfused,
        groups=groups,
        unsupported_ops=dict(costs.unsupported_ops),
        unknown_shape_nodes=list(costs.unknown_shape_nodes),
        notes=_analysis_notes(costs, hardware, [peak, vector]),
    )


def analyze_onnx(
    onnx_path: Union[str, os.PathLike, Any],
    hardware: HardwareSpec,
    precision: PrecisionConfig,
    batch_size: int = 1,
    sparse: bool = False,
    dims: Optional[Dict[str, int]] = None,
) -> Analysis:
    """The analyze stage: FLOPs, bytes and the roofline of an ONNX model on ``hardware``.

    Args:
        onnx_path: ``.onnx`` path (or a ``ModelProto``).
        hardware: from :func:`pipeline.analyze.resolve_hardware`.
        precision: byte sizes and the peak key.
        batch_size: value of the symbolic batch dim.
        sparse: use 2:4-sparse Tensor Core peaks for MAC layers (``build.sparse_weights``).
        dims: values for other symbolic dims, e.g. ``{"sequence": 128}``.

    Raises:
        PipelineError: unreadable model, failed shape inference, or no peak for ``precision``.
    """
    hardware.peak_for(precision)  # fail on a missing precision before the (slower) graph walk
    costs = graph_costs(onnx_path, batch_size, precision, dims)
    path = os.fspath(onnx_path) if isinstance(onnx_path, (str, os.PathLike)) else ""
    return roofline(costs, hardware, precision, sparse, path)


__all__ = ["Analysis", "CategoryRow", "LayerBound", "analyze_onnx", "bound_layer", "roofline"]
