"""The report's "Pruning" and "Quantization-aware training" sections, from ``prune.json`` / ``qat.json``.

:func:`compact_prune` keeps what the section shows (report.json stays small): the unpruned and pruned model side by
side (parameters, MACs, FLOPs and roofline time on the configured hardware, accuracy), the fine-tune, the layers
whose channels changed and the 2:4 check. :func:`compact_qat` keeps PTQ against QAT accuracy.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from pipeline.report.blocks import Block, Para, Section, Table


def _side(d: Mapping[str, Any]) -> Dict[str, Any]:
    roof = d.get("roofline") or {}
    acc = d.get("accuracy") or {}
    return {"parameters": d.get("parameters"), "flops": roof.get("flops"), "bytes": roof.get("bytes"),
            "predicted_latency_s": roof.get("predicted_latency_s"), "accuracy": acc.get("value"),
            "metric": acc.get("metric"), "onnx": d.get("onnx")}


def compact_prune(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """``report["prune"]`` from a ``prune.json`` dict."""
    ch = raw.get("channels") or {}
    ft = dict(raw.get("finetune") or {})
    sp = raw.get("sparse24") or {}
    return {
        "config": raw.get("config"), "round_to": raw.get("round_to"),
        "dense": _side(raw.get("dense") or {}), "pruned": _side(raw.get("pruned") or {}),
        "accuracy_before_finetune": (raw.get("accuracy_before_finetune") or {}).get("value"),
        "finetune": {k: ft.get(k) for k in ("ran", "why", "epochs", "samples", "seconds", "loss") if k in ft},
        "macs": [ch.get("macs_before"), ch.get("macs_after")] if ch else None,
        "layers": [ly for ly in ch.get("layers") or [] if ly.get("out_after") != ly.get("out_before")
                   or ly.get("in_after") != ly.get("in_before")],
        "warnings": ch.get("warnings") or [],
        "sparse24": sp.get("check"),
    }


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def prune_section(p: Mapping[str, Any]) -> Section:
    """Unpruned vs pruned, the fine-tune, the channel changes and the 2:4 check."""
    d, q = p.get("dense") or {}, p.get("pruned") or {}
    rows = [["parameters", _num(d.get("parameters"), ","), _num(q.get("parameters"), ",")],
            ["FLOPs / batch", _num(d.get("flops"), ",.0f"), _num(q.get("flops"), ",.0f")],
            ["DRAM bytes / batch (roofline)", _num(d.get("bytes"), ",.0f"), _num(q.get("bytes"), ",.0f")],
            ["predicted latency (roofline)", _num((d.get("predicted_latency_s") or 0) * 1e3 or None, ".4f") + " ms",
             _num((q.get("predicted_latency_s") or 0) * 1e3 or None, ".4f") + " ms"],
            [f"accuracy ({d.get('metric') or '-'})", _num(d.get("accuracy"), ".4f"), _num(q.get("accuracy"), ".4f")]]
    if p.get("macs"):
        rows.insert(1, ["MACs per sample (Torch-Pruning count)", _num(p["macs"][0], ","), _num(p["macs"][1], ",")])
    cfg = p.get("config") or {}
    blocks: List[Block] = [Para(f"prune.channels={cfg.get('channels')} (L1 norm, "
                                f"{'global' if cfg.get('global_ranking') else 'per-layer'} ranking, channel counts "
                                f"multiples of {p.get('round_to')}), prune.sparse24={cfg.get('sparse24')}. The pruned "
                                "ONNX is what the later stages of this run analyzed, quantized, built and measured."),
                           Table(["", "unpruned", "pruned"], rows, caption="Before and after pruning")]
    ft = p.get("finetune") or {}
    before = p.get("accuracy_before_finetune")
    blocks.append(Para(f"Fine-tune: {ft.get('epochs')} epoch(s) on {ft.get('samples')} labelled samples in "
                       f"{_num(ft.get('seconds'), '.1f')} s; accuracy right after pruning {_num(before, '.4f')}, after "
                       f"the fine-tune {_num(q.get('accuracy'), '.4f')}." if ft.get("ran") else
                       f"No fine-tune: {ft.get('why')}.", None if ft.get("ran") else "warning"))
    if p.get("layers"):
        blocks.append(Table(["layer", "in", "out"], [[ly["name"], f"{ly['in_before']} -> {ly['in_after']}",
                                                       f"{ly['out_before']} -> {ly['out_after']}"] for ly in p["layers"]],
                            caption="Channels removed"))
    blocks += [Para(w, "warning") for w in p.get("warnings") or []]
    s24 = p.get("sparse24")
    if s24:
        blocks.append(Para(f"2:4 check of the pruned ONNX: {s24.get('sparse_24')} of {s24.get('checked')} eligible "
                           f"layers hold the pattern ({_num(s24.get('share_24'), '.0%')} of the weights), "
                           f"{s24.get('violating')} violate it, {s24.get('ineligible')} ineligible (grouped/depthwise "
                           "or channels not a multiple of 4). Build with build.sparse_weights=true to let TensorRT "
                           "pick sparse tactics; the explain section then says which layers got them."))
    return Section("Pruning", "prune", blocks)


def compact_qat(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """``report["qat"]`` from a ``qat.json`` dict."""
    keep = ("config", "fp32", "ptq", "qat", "finetune", "wrapped", "qdq_onnx", "same_placement", "notes")
    return {k: raw.get(k) for k in keep if k in raw}


def qat_section(q: Mapping[str, Any]) -> Section:
    """FP32, PTQ and QAT accuracy side by side."""
    rows = []
    for key, label in (("fp32", "FP32 (ONNX Runtime)"), ("ptq", "PTQ Q/DQ (ONNX Runtime)"),
                       ("qat", "QAT Q/DQ (ONNX Runtime)")):
        v: Optional[Mapping[str, Any]] = q.get(key)
        if v:
            rows.append([label, str(v.get("metric")), _num(v.get("value"), ".4f"), str(v.get("samples"))])
    ft = q.get("finetune") or {}
    blocks: List[Block] = [Para(f"Quantization-aware training: {len(q.get('wrapped') or [])} layers fake-quantized "
                                "from the PTQ ranges (per-channel weights, per-tensor activations, straight-through "
                                f"estimator), {ft.get('epochs')} epoch(s) on {ft.get('samples')} labelled samples; "
                                "exported with the PTQ placement, so TensorRT fuses it as the PTQ Q/DQ"
                                + (" (same Q/DQ nodes checked)." if q.get("same_placement") else ".")),
                           Table(["model", "metric", "value", "samples"], rows, caption="PTQ vs QAT")]
    blocks += [Para(n) for n in q.get("notes") or []]
    return Section("Quantization-aware training", "qat", blocks)
