"""Per-layer TensorRT times: ``trt.IProfiler`` records, fused layers mapped back to ONNX nodes.

TensorRT fuses ONNX nodes (Conv + BatchNorm + Relu, Q/DQ into the conv, pointwise chains into
``PWN(...)``, whole subgraphs into Myelin ``{ForeignNode[first...last]}``), so a measured layer
time belongs to a *group* of ONNX nodes. The engine inspector (``IEngineInspector`` JSON, built with
``ProfilingVerbosity.DETAILED``) gives each engine layer's name, and on 10+ a ``Metadata`` field with
``[ONNX Layer: <node>]`` entries. :func:`onnx_nodes_of_layer` uses, in order: the metadata, the ONNX
node names that appear in the layer name (``ForeignNode`` ranges expanded in graph order), then the
producers of the layer's output tensors. Reformat (copy) layers belong to no node.

The join with the analyze stage's per-node FLOPs/bytes gives each engine layer a roofline bound and
an efficiency (bound / measured): the "how far from its bound" column of the report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import onnx_graphsurgeon as gs

_META = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
_FOREIGN = re.compile(r"ForeignNode\[(.+?)\.\.\.(.+?)\]")
_TOKEN_SPLIT = re.compile(r"\s\+\s|[\s(),\[\]{}]+")


@dataclass
class OnnxGraphIndex:
    """Node names in graph order and the producer of each tensor (names only: the index outlives the
    graph it was read from and is cheap to keep beside an engine's profile).

    Attributes:
        order: node names in graph (topological) order; unnamed nodes are ``<op>_<position>``.
        producer: tensor name -> name of the node writing it.
        op_type: node name -> op type.
        position: node name -> index in ``order`` (the first node of that name).
    """

    order: List[str] = field(default_factory=list)
    producer: Dict[str, str] = field(default_factory=dict)
    op_type: Dict[str, str] = field(default_factory=dict)
    position: Dict[str, int] = field(default_factory=dict)

    @property
    def names(self) -> set:
        """Set of node names."""
        return set(self.order)

    def index_of(self, name: str) -> int:
        """Position of node ``name`` in graph order (``position``, else a search of ``order``)."""
        return self.position[name] if name in self.position else self.order.index(name)


def graph_index(graph: "gs.Graph") -> OnnxGraphIndex:
    """:class:`OnnxGraphIndex` of an onnx-graphsurgeon graph (its top level; ``graph.nodes`` order)."""
    from pipeline.graph import node_positions, producer_of

    positions = node_positions(graph)
    label = {id(n): n.name or f"{n.op}_{positions[id(n)]}" for n in graph.nodes}
    idx = OnnxGraphIndex()
    for node in graph.nodes:
        name = label[id(node)]
        idx.position.setdefault(name, len(idx.order))
        idx.order.append(name)
        idx.op_type[name] = node.op
    for tensor_name, tensor in graph.tensors().items():
        node = producer_of(tensor)
        if node is not None and id(node) in label:
            idx.producer[tensor_name] = label[id(node)]
    return idx


def onnx_graph_index(onnx_path: str | Path) -> OnnxGraphIndex:
    """Index an ONNX file's nodes (structure only: weights stored externally are not read).

    Raises:
        PipelineError: the file is missing or not an ONNX model.
    """
    from pipeline.graph import load_model, to_graph

    return graph_index(to_graph(load_model(onnx_path, load_weights=False)))


def _tensor_names(entries: Any) -> List[str]:
    out = []
    for e in entries or []:
        if isinstance(e, Mapping):
            if "Name" in e:
                out.append(str(e["Name"]))
        elif isinstance(e, str):
            out.append(e)
    return out


def onnx_nodes_of_layer(layer: Mapping[str, Any], index: OnnxGraphIndex) -> List[str]:
    """ONNX node names an engine layer implements (graph order, no duplicates).

    Args:
        layer: one entry of the inspector JSON's ``Layers`` (``Name``, maybe ``Metadata``, ``Outputs``),
            or ``{"Name": name}`` alone.
        index: the ONNX graph index.

    Returns:
        Node names; empty for reformat/copy layers TensorRT inserted itself.
    """
    name = str(layer.get("Name", ""))
    known = index.names
    found: List[str] = []
    meta = layer.get("Metadata")
    if isinstance(meta, str):
        found = [m.strip() for m in _META.findall(meta) if m.strip() in known]
    if not found:
        if "Reformatting CopyNode" in name or name.startswith("Reformat"):
            return []
        for first, last in _FOREIGN.findall(name):
            if first in known and last in known:
                a, b = index.index_of(first), index.index_of(last)
                found += index.order[min(a, b) : max(a, b) + 1]
        for tok in _TOKEN_SPLIT.split(name):
            if tok in known:
                found.append(tok)
            elif tok in index.producer:  # some layers are named after a tensor (e.g. "<node>_output_0")
                found.append(index.producer[tok])
    if not found:
        found = [index.producer[t] for t in _tensor_names(layer.get("Outputs")) if t in index.producer]
    seen, ordered = set(found), []
    for n in index.order:  # graph order, deduplicated
        if n in seen:
            ordered.append(n)
    return ordered


def engine_layers(layer_info: Mapping[str, Any] | Sequence[Any]) -> List[Dict[str, Any]]:
    """The ``Layers`` of an inspector JSON as dicts (ONELINE/LAYER_NAMES_ONLY engines give bare names)."""
    layers = layer_info.get("Layers", []) if isinstance(layer_info, Mapping) else list(layer_info)
    return [dict(x) if isinstance(x, Mapping) else {"Name": str(x)} for x in layers]


def layer_rows(
    mean_ms: Mapping[str, float],
    layers: Sequence[Mapping[str, Any]],
    index: Optional[OnnxGraphIndex],
    onnx_costs: Optional[Iterable[Mapping[str, Any]]] = None,
    peak_ops_per_s: Optional[float] = None,
) -> List[Dict[str, Any]]:
    """One row per profiled engine layer: time, ONNX nodes, FLOPs/bytes, roofline bound, efficiency.

    Args:
        mean_ms: engine layer name -> mean time per run, milliseconds (from the profiler).
        layers: inspector layers (for metadata and outputs); layers absent there map by name only.
        index: ONNX graph index (None: no node mapping).
        onnx_costs: the analyze stage's per-node rows (``name``, ``flops``, ``bytes``, ``compute_s``,
            ``memory_s``).
        peak_ops_per_s: the precision's peak, for ``pct_of_peak``.

    Returns:
        Rows ``{name, layer_type, measured_ms, share, onnx_nodes, flops, bytes, bound_s, efficiency,
        achieved_ops_per_s, pct_of_peak}`` in execution order. ``bound_s`` is
        max(sum of compute_s, sum of memory_s) over the fused nodes; memory_s counts the tensors
        between fused nodes that the fusion keeps on chip, so it overestimates the memory bound of
        a fused layer and efficiency can exceed 1 there.
    """
    by_name = {str(l.get("Name")): l for l in layers}
    costs = {str(c["name"]): c for c in (onnx_costs or [])}
    total = sum(mean_ms.values()) or 1.0
    rows = []
    for name, ms in mean_ms.items():
        info = by_name.get(name, {"Name": name})
        nodes = onnx_nodes_of_layer(info, index) if index is not None else []
        row: Dict[str, Any] = {
            "name": name,
            "layer_type": info.get("LayerType"),
            "measured_ms": ms,
            "share": ms / total,
            "onnx_nodes": nodes,
        }
        hit = [costs[n] for n in nodes if n in costs]
        if hit:
            flops = sum(float(c.get("flops", 0) or 0) for c in hit)
            nbytes = sum(float(c.get("bytes", 0) or 0) for c in hit)
            compute_s = sum(float(c.get("compute_s", 0) or 0) for c in hit)
            memory_s = sum(float(c.get("memory_s", 0) or 0) for c in hit)
            bound_s = max(compute_s, memory_s)
            measured_s = ms / 1e3
            row.update(
                flops=flops,
                bytes=nbytes,
                bound_s=bound_s,
                efficiency=(bound_s / measured_s) if measured_s > 0 else None,
                achieved_ops_per_s=(flops / measured_s) if measured_s > 0 else None,
            )
            if peak_ops_per_s and measured_s > 0:
                row["pct_of_peak"] = 100.0 * flops / measured_s / peak_ops_per_s
        rows.append(row)
    return rows


def onnx_layer_times(
    rows: Sequence[Mapping[str, Any]], onnx_costs: Optional[Iterable[Mapping[str, Any]]] = None
) -> Dict[str, float]:
    """Split each engine layer's time over its ONNX nodes: ONNX node name -> seconds per run.

    A fused layer's time is shared in proportion to the nodes' roofline bounds (``bound_s``) when
    the analyze stage's costs are given, else equally; this keeps the per-node sum equal to the
    engine's total so the report's per-layer table adds up.
    """
    costs = {str(c["name"]): c for c in (onnx_costs or [])}
    out: Dict[str, float] = {}
    for row in rows:
        nodes = list(row.get("onnx_nodes") or [])
        if not nodes:
            continue
        secs = float(row["measured_ms"]) / 1e3
        weights = [float(costs.get(n, {}).get("bound_s", 0) or 0) for n in nodes]
        if sum(weights) <= 0:
            weights = [1.0] * len(nodes)
        tot = sum(weights)
        for n, w in zip(nodes, weights):
            out[n] = out.get(n, 0.0) + secs * w / tot
    return out
