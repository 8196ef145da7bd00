"""What 2:4 structured sparsity could buy, predicted from the shapes and the measured layers before anyone prunes.

Sparse Tensor Cores double the math rate of a Conv/Gemm/MatMul whose weights hold two zeros in every group of four
along the input channels; memory traffic does not shrink (activations dominate) and the metadata costs a little.
A layer is **eligible** when its weight is a constant with input (C) and output (K) channels multiples of 32 and no
groups (depthwise and grouped convs have no sparse kernels). TensorRT picks a sparse tactic only where it times
faster, which in practice needs wide layers (its guidance: C and K >= 256, 3x3 kernels rather than 1x1): those are
**likely**. The **prediction** keeps each layer's measured efficiency and halves its compute bound: a memory-bound
layer gains nothing, a compute-bound one at most half its time, down to its memory bound.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from pipeline.explain.gap import LayerGap

#: Channel multiple the sparse kernels need, and the width from which TensorRT tends to pick them.
CHANNEL_MULTIPLE = 32
LIKELY_MIN_CHANNELS = 256


def weight_shapes(model: Any) -> Dict[str, Dict[str, Any]]:
    """``{node: {op, C, K, kernel, group}}`` for every Conv/Gemm/MatMul whose weight is an initializer."""
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    producer = {o: m for m in model.graph.node for o in m.output}

    def weight(name: str) -> Optional[List[int]]:
        for _ in range(4):  # through the weight's Q/DQ pair (explicit quantization) to the initializer
            if name in inits:
                return inits[name]
            p = producer.get(name)
            if p is None or p.op_type not in ("QuantizeLinear", "DequantizeLinear", "Identity"):
                return None
            name = p.input[0]
        return None

    out: Dict[str, Dict[str, Any]] = {}
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        w = weight(n.input[1])
        if not w:
            continue
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "Conv" and len(w) >= 3:
            group = attrs["group"].i if "group" in attrs else 1
            out[n.name] = {"op": "Conv", "K": w[0], "C": w[1] * group, "kernel": w[2:], "group": group}
        elif len(w) == 2:
            trans_b = n.op_type == "Gemm" and "transB" in attrs and attrs["transB"].i
            c, k = (w[1], w[0]) if trans_b else (w[0], w[1])
            out[n.name] = {"op": n.op_type, "K": k, "C": c, "kernel": [], "group": 1}
    return out


def sparsity_payoff(gaps: Sequence[LayerGap], shapes: Mapping[str, Mapping[str, Any]],
                    end_to_end_s: Optional[float], built: Optional[Mapping[str, Sequence[str]]] = None) -> Dict[str, Any]:
    """Per layer eligibility and predicted time with 2:4 weights, and the predicted end-to-end gain.

    ``built`` is what the builder logged for an engine built with sparse weights allowed (the sidecar's ``sparsity``:
    ``{"eligible": [...], "picked": [...]}``): each row then also says whether TensorRT found the layer's weights
    2:4 (``trt_eligible``) and whether it timed a sparse tactic faster and kept it (``picked``).
    """
    rows: List[Dict[str, Any]] = []
    trt_eligible, picked = set((built or {}).get("eligible") or []), set((built or {}).get("picked") or [])
    saved = 0.0
    myelin = 0
    for g in gaps:
        if g.layer_type == "Myelin":  # one layer of many kernels: its own matmuls are not separable here
            myelin += 1
            continue
        anchors = [shapes[n] | {"node": n} for n in g.onnx_nodes if n in shapes]
        if not anchors:
            continue
        a = anchors[0]
        eligible = a["group"] == 1 and a["C"] % CHANNEL_MULTIPLE == 0 and a["K"] % CHANNEL_MULTIPLE == 0
        likely = eligible and min(a["C"], a["K"]) >= LIKELY_MIN_CHANNELS
        new_bound = max(g.compute_s / 2.0, g.memory_s)
        predicted = g.measured_s * (new_bound / g.bound_s) if eligible and g.bound_s > 0 else g.measured_s
        if eligible:
            saved += g.measured_s - predicted
        why = ("grouped/depthwise: no sparse kernels" if a["group"] != 1 else
               f"C={a['C']} or K={a['K']} not a multiple of {CHANNEL_MULTIPLE}" if not eligible else
               "memory-bound: halving the math saves nothing" if g.cause == "memory" else
               "compute-bound and wide: TensorRT likely picks a sparse tactic" if likely else
               f"eligible, but narrower than {LIKELY_MIN_CHANNELS} channels: a sparse tactic often times slower")
        rows.append({"layer": g.name, "node": a["node"], "op": a["op"], "C": a["C"], "K": a["K"],
                     "kernel": a["kernel"], "eligible": eligible, "likely": likely, "cause": g.cause,
                     "measured_ms": g.measured_s * 1e3, "predicted_sparse_ms": predicted * 1e3, "why": why,
                     **({"trt_eligible": g.name in trt_eligible, "picked": g.name in picked} if built else {})})
    total = end_to_end_s or sum(g.measured_s for g in gaps)
    return {"built": ({"eligible": len(trt_eligible), "picked": sorted(picked),
                       "picked_ms": sum(r["measured_ms"] for r in rows if r.get("picked"))} if built else None),"layers": rows, "eligible": sum(r["eligible"] for r in rows), "likely": sum(r["likely"] for r in rows),
            "predicted_saving_ms": saved * 1e3,
            "predicted_speedup": total / (total - saved) if total > saved > 0 else 1.0,
            "model": "each eligible layer keeps its measured efficiency with its compute bound halved",
            **({"myelin_layers_not_predicted": myelin} if myelin else {})}
