"""Each engine layer's gap to its roofline bound, and the whole gap broken down by cause.

An engine layer (a fused TensorRT layer) covers a set of ONNX nodes (:mod:`pipeline.trt.layers`). Its bound is
``max(FLOPs / compute peak, DRAM bytes / bandwidth)`` where

* the FLOPs are the nodes' sum; the bytes are only the tensors the layer reads from and writes to DRAM, each once
  (:func:`pipeline.analyze.fusion.group_of_nodes` on the engine's own grouping), plus the weights, at the byte
  sizes of the engine's precision;
* the compute time is the nodes' multiply-accumulate FLOPs at the precision's Tensor Core peak plus their other
  FLOPs at the CUDA-core peak (elementwise, pooling and normalization work cannot use Tensor Cores), both scaled
  from their rated clock to the SM clock NVML recorded during the timed run; the bandwidth is the rated one.

Each layer gets a cause: ``compute`` / ``memory`` (whichever bound is larger), ``overhead`` (a reformat, a Q/DQ
left standalone, a layer with nothing to compute or move, or one so small that its time is launch latency), or
``unmapped`` (work the profile cannot tie to ONNX nodes). The breakdown sums measured time, bound and gap per cause
and compares the sum of layer times with the end-to-end latency: IProfiler layer times include per-layer
synchronisation, so they do not add up to the timed loop, and that difference is shown, not hidden.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

#: A layer whose whole time is below this and whose bound is under a tenth of it is launch overhead.
LAUNCH_S = 5e-6
_QDQ = ("QuantizeLinear", "DequantizeLinear")
_REFORMAT = re.compile(r"reformat|copynode", re.IGNORECASE)


@dataclass(frozen=True)
class Rates:
    """The rates the bounds use: compute peak (ops/s) and DRAM bandwidth (bytes/s), already at run clocks."""

    peak_ops_s: float
    bandwidth_bytes_s: float
    peak_key: str = ""
    clock_note: str = ""
    vector_ops_s: float = 0.0  # CUDA-core peak for non-MAC FLOPs (0: the same as peak_ops_s)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def run_rates(peak_ops_s: float, peak_clock_mhz: Optional[float], bandwidth_bytes_s: float,
              telemetry: Optional[Mapping[str, Any]], peak_key: str = "", vector_ops_s: float = 0.0,
              vector_clock_mhz: Optional[float] = None) -> Rates:
    """Rates at the clocks of the run: each peak scaled by NVML's median SM clock over its unit's rated clock."""
    note = "rated clocks (no NVML telemetry)"
    peak, vector = peak_ops_s, vector_ops_s
    sm = ((telemetry or {}).get("sm_clock_mhz") or {}).get("median") if telemetry else None
    if sm and peak_clock_mhz:
        peak = peak_ops_s * float(sm) / float(peak_clock_mhz)
        if vector and vector_clock_mhz:
            vector = vector_ops_s * float(sm) / float(vector_clock_mhz)
        note = f"peak scaled to the run's median SM clock {float(sm):.0f} MHz (rated {float(peak_clock_mhz):.0f} MHz)"
    return Rates(peak, bandwidth_bytes_s, peak_key, note, vector)


@dataclass
class LayerGap:
    """One engine layer against its bound."""

    name: str
    layer_type: str
    measured_s: float
    onnx_nodes: List[str]
    flops: float = 0.0
    bytes: float = 0.0
    compute_s: float = 0.0
    memory_s: float = 0.0
    bound_s: float = 0.0
    cause: str = "unmapped"
    detail: str = ""
    precision: Optional[str] = None
    tactic: Optional[str] = None
    planned: Optional[str] = None  # "int8" when the ONNX quantizes one of its compute nodes (Q/DQ before it)

    @property
    def fell_back(self) -> bool:
        """Planned INT8 (explicit Q/DQ) but ran in a wider type."""
        return self.planned == "int8" and self.precision not in (None, "int8")

    @property
    def gap_s(self) -> float:
        return max(0.0, self.measured_s - self.bound_s)

    @property
    def efficiency(self) -> Optional[float]:
        return self.bound_s / self.measured_s if self.measured_s > 0 and self.bound_s > 0 else None

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.update(gap_s=self.gap_s, efficiency=self.efficiency, fell_back=self.fell_back)
        return d


_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def planned_int8(costs: Any) -> set:
    """Compute nodes the ONNX plans in INT8: their data input comes out of a DequantizeLinear (explicit Q/DQ)."""
    if len(costs.node_io) != len(costs.layers):
        return set()
    producer = {t: i for i, (_, outs) in enumerate(costs.node_io) for t in outs}
    planned = set()
    for layer, (ins, _) in zip(costs.layers, costs.node_io):
        p = producer.get(ins[0]) if layer.op_type in _COMPUTE and ins else None
        if p is not None and costs.layers[p].op_type == "DequantizeLinear":
            planned.add(layer.name)
    return planned


def _cause(layer: LayerGap, ops: Mapping[str, str]) -> tuple:
    if (_REFORMAT.search(layer.layer_type or "") or not layer.onnx_nodes) and re.search(r"(De)?QuantizeLinear",
                                                                                          layer.name):
        return "overhead", "standalone Q/DQ, run as a reformat (not fused into a neighbour)"
    if _REFORMAT.search(layer.layer_type or "") or (not layer.onnx_nodes and _REFORMAT.search(layer.name)):
        return "overhead", "reformat (layout or precision conversion between layers)"
    if not any(n in ops for n in layer.onnx_nodes):
        return "unmapped", ("no ONNX node found for this layer" if not layer.onnx_nodes else
                            "its ONNX nodes are not in this model (built from another ONNX?)")
    if all(ops.get(n) in _QDQ for n in layer.onnx_nodes):
        return "overhead", "standalone Q/DQ (not fused into a neighbour)"
    if layer.flops <= 0 and layer.bytes <= 0:
        return "overhead", "no FLOPs and no DRAM traffic modelled (shape or copy work)"
    if layer.measured_s < LAUNCH_S and layer.bound_s < 0.1 * layer.measured_s:
        return "overhead", f"under {LAUNCH_S * 1e6:.0f} us with a bound under a tenth of it: launch latency"
    if layer.compute_s >= layer.memory_s:
        return "compute", "FLOPs / peak is the larger bound"
    return "memory", "DRAM bytes / bandwidth is the larger bound"


#: Node types that become no work of their own inside an engine (shape arithmetic, constants, Q/DQ folded away).
_NO_WORK = ("Constant", "Shape", "Unsqueeze", "Squeeze", "Reshape", "Identity", "ConstantOfShape", "Range") + _QDQ


def is_myelin(row: Mapping[str, Any]) -> bool:
    """A Myelin layer: TensorRT compiled a whole subgraph (a transformer, a ``ForeignNode``) into one engine layer."""
    return str(row.get("layer_type") or "") == "Myelin" or str(row.get("name") or "").startswith("{ForeignNode")


def infer_myelin_nodes(rows: Sequence[Mapping[str, Any]], costs: Any) -> List[Dict[str, Any]]:
    """``rows`` with the ONNX nodes of a lone Myelin layer filled in.

    TensorRT 8.6 names a Myelin layer by the first and last of its (internal) layers and reports none or a few of the
    ONNX nodes inside it. When the engine has exactly one such layer, it runs every compute node that no other layer
    claims: those become its nodes (``onnx_nodes_inferred`` says so). With several Myelin layers nothing is inferred.
    """
    out = [dict(r) for r in rows]
    myelin = [i for i, r in enumerate(out) if is_myelin(r)]
    if len(myelin) != 1:
        return out
    claimed = {str(n) for j, r in enumerate(out) if j != myelin[0] for n in (r.get("onnx_nodes") or [])}
    rest = [ly.name for ly in costs.layers if ly.name not in claimed and ly.op_type not in _NO_WORK]
    if rest:
        r = out[myelin[0]]
        r["onnx_nodes"] = sorted(set(str(n) for n in (r.get("onnx_nodes") or [])) | set(rest),
                                 key=[ly.name for ly in costs.layers].index)
        r["onnx_nodes_inferred"] = True
    return out


def myelin_breakdown(gap: "LayerGap", costs: Any, rates: Rates, half_peak_ops_s: Optional[float],
                     half_costs: Any = None) -> Dict[str, Any]:
    """What a Myelin layer's nodes cost, by kind of work, node by node (no fusion inside the layer assumed).

    Matrix products planned INT8 (a Q/DQ before them) count at ``rates.peak_ops_s`` (the INT8 Tensor Core peak for an
    INT8 engine), other matrix products at ``half_peak_ops_s`` (FP16 Tensor Cores), everything else at the CUDA-core
    rate; each node's bound is the larger of that and its own DRAM bytes / bandwidth. The sum is an upper roofline for
    the layer (the fused bound of :func:`layer_gaps` is the lower one): the measured time of a good Myelin kernel set
    falls between them, and the kinds of work show what INT8 can and cannot speed up. ``half_costs`` (the same graph
    costed at 2-byte activations) gives the bytes of the nodes that are not INT8 in an INT8 engine: softmax,
    normalization and elementwise work keep 16-bit tensors there.
    """
    by_name = {ly.name: ly for ly in costs.layers}
    half_by_name = {ly.name: ly for ly in half_costs.layers} if half_costs is not None else {}
    int8 = planned_int8(costs)
    vector = rates.vector_ops_s or rates.peak_ops_s
    half = half_peak_ops_s or rates.peak_ops_s
    kinds: Dict[str, Dict[str, float]] = {}
    for n in gap.onnx_nodes:
        ly = by_name.get(n)
        if ly is None or ly.op_type in _NO_WORK:
            continue
        mm = ly.op_type in _COMPUTE and ly.macs > 0
        kind = ("matmul, INT8 in the plan" if n in int8 else "matmul, 16-bit") if mm else (ly.category or ly.op_type)
        mac_rate = rates.peak_ops_s if n in int8 else half
        flops_mac = min(2.0 * ly.macs, ly.flops) if mm else 0.0
        compute = (flops_mac / mac_rate if mac_rate > 0 else 0.0) + (max(0.0, ly.flops - flops_mac) / vector
                                                                     if vector > 0 else 0.0)
        nbytes = ly.bytes if n in int8 else half_by_name.get(n, ly).bytes
        memory = nbytes / rates.bandwidth_bytes_s if rates.bandwidth_bytes_s > 0 else 0.0
        k = kinds.setdefault(kind, {"nodes": 0, "flops": 0.0, "bytes": 0.0, "compute_s": 0.0, "memory_s": 0.0,
                                    "bound_s": 0.0})
        k["nodes"] += 1
        k["flops"] += ly.flops
        k["bytes"] += nbytes
        k["compute_s"] += compute
        k["memory_s"] += memory
        k["bound_s"] += max(compute, memory)
    total = sum(k["bound_s"] for k in kinds.values())
    return {"layer": gap.name, "nodes": sum(int(k["nodes"]) for k in kinds.values()), "kinds": kinds,
            "unfused_bound_s": total, "fused_bound_s": gap.bound_s, "measured_s": gap.measured_s}


def layer_gaps(rows: Sequence[Mapping[str, Any]], costs: Any, rates: Rates,
               inspector: Optional[Mapping[str, Mapping[str, Any]]] = None) -> List[LayerGap]:
    """Gap rows for the profiled engine layers ``rows`` (``measurement.json``'s ``engine_layers``).

    Args:
        rows: ``{name, layer_type, measured_ms, onnx_nodes}`` per engine layer, execution order.
        costs: the ONNX model's :class:`pipeline.analyze.flops.GraphCosts` at the engine's precision and batch.
        rates: compute and memory rates at the run's clocks (:func:`run_rates`).
        inspector: engine layer name -> inspector layer (``precision`` / ``tactic`` columns), optional.
    """
    from pipeline.analyze.fusion import group_of_nodes
    from pipeline.trt.inspector import layer_precision

    ops = {layer.name: layer.op_type for layer in costs.layers}
    int8_nodes = planned_int8(costs)
    out: List[LayerGap] = []
    for i, r in enumerate(rows):
        nodes = [str(n) for n in (r.get("onnx_nodes") or [])]
        g = LayerGap(name=str(r["name"]), layer_type=str(r.get("layer_type") or ""),
                     measured_s=float(r.get("measured_ms") or 0.0) / 1e3, onnx_nodes=nodes)
        known = [n for n in nodes if n in ops]
        if known:
            grp = group_of_nodes(costs, known, i)
            g.flops = float(grp.flops)
            g.bytes = float(grp.weight_bytes + grp.activation_bytes)
            mac = 2.0 * float(grp.macs)  # the group already sums its members' multiply-accumulates
            other = max(0.0, g.flops - mac)
            vector = rates.vector_ops_s or rates.peak_ops_s
            g.compute_s = (min(mac, g.flops) / rates.peak_ops_s + other / vector) if rates.peak_ops_s > 0 else 0.0
            g.memory_s = g.bytes / rates.bandwidth_bytes_s if rates.bandwidth_bytes_s > 0 else 0.0
            g.bound_s = max(g.compute_s, g.memory_s)
        info = (inspector or {}).get(g.name)
        if is_myelin(r):  # the inspector shows a Myelin layer's I/O types (token ids: int32), never its kernels'
            g.precision = None
            g.tactic = info.get("TacticName") or info.get("Tactic") if info else None
        elif info:
            g.precision = layer_precision(info)
            g.tactic = info.get("TacticName") or info.get("Tactic")
        else:  # ONNX Runtime rows carry the precision their kernel computes in
            g.precision = r.get("precision")
        g.planned = "int8" if any(n in int8_nodes for n in nodes) else None
        g.cause, g.detail = _cause(g, ops)
        out.append(g)
    return out


def breakdown(gaps: Iterable[LayerGap], end_to_end_s: Optional[float]) -> Dict[str, Any]:
    """Measured time, bound and gap per cause; the layer sum against the end-to-end latency."""
    by: Dict[str, Dict[str, float]] = {}
    gaps = list(gaps)
    for g in gaps:
        b = by.setdefault(g.cause, {"layers": 0, "measured_s": 0.0, "bound_s": 0.0, "gap_s": 0.0})
        b["layers"] += 1
        b["measured_s"] += g.measured_s
        b["bound_s"] += g.bound_s
        b["gap_s"] += g.gap_s
    total = sum(g.measured_s for g in gaps)
    bound = sum(g.bound_s for g in gaps)
    out: Dict[str, Any] = {"by_cause": by, "layers_sum_s": total, "bound_sum_s": bound,
                           "gap_sum_s": sum(g.gap_s for g in gaps),
                           "share_of_gap": {k: (v["gap_s"] / max(1e-30, sum(x["gap_s"] for x in by.values())))
                                            for k, v in by.items()}}
    if end_to_end_s:
        out["end_to_end_s"] = end_to_end_s
        out["layers_minus_end_to_end_s"] = total - end_to_end_s
        out["adds_up"] = abs(total - end_to_end_s) <= 0.05 * end_to_end_s
        out["note"] = ("per-layer times (the runtime's profiler) add up to the end-to-end latency within 5%"
                       if out["adds_up"] else
                       f"per-layer times sum to {total * 1e3:.3f} ms against {end_to_end_s * 1e3:.3f} ms end to end: "
                       "a per-layer profiler synchronises after every layer (TensorRT's IProfiler) or leaves out the "
                       "time between kernels, so overlap is lost or gaps are added; the per-layer gap is relative, "
                       "the end-to-end number is the truth")
    return out
