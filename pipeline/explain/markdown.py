"""``explain.md``: the gap breakdown of each engine, its slowest layers against their bounds, and the diff."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

from pipeline.explain.diff import diff_sentence


def _ms(s: Any) -> str:
    return "-" if s is None else f"{float(s) * 1e3:.3f}"


def _precision_note(e: Mapping[str, Any]) -> List[str]:
    """For a quantized model: how much of the time ran in integer kernels and how much went to Q/DQ conversions."""
    layers = e["layers"]
    if (e.get("precision") or {}).get("name") not in ("int8", "best"):
        return []
    fell = [ly for ly in layers if ly.get("fell_back")]
    planned = sum(1 for ly in layers if ly.get("planned") == "int8")
    unknown = sum(1 for ly in layers if ly.get("planned") == "int8" and ly.get("precision") is None)
    fallback = ([f"Planned vs actual: {planned} layer(s) planned INT8 by the Q/DQ in the ONNX; "
                 + (f"{len(fell)} ran wider: " + "; ".join(f"{ly['name'][:60]} ({ly['precision']}, "
                                                          f"{ly['measured_s'] * 1e3:.3f} ms)" for ly in fell[:6])
                    if fell else f"{unknown} in a precision TensorRT does not report (Myelin)" if unknown
                    else "all ran in INT8") + ".", ""] if planned else [])
    work = [ly for ly in layers if ly["cause"] in ("compute", "memory")]
    int8 = sum(ly["measured_s"] for ly in work if ly.get("precision") == "int8")
    total = sum(ly["measured_s"] for ly in work) or 1e-30
    qdq = sum(ly["measured_s"] for ly in layers if "Q/DQ" in (ly.get("detail") or ""))
    text = (f"Integer kernels ran {100 * int8 / total:.0f}% of the compute and memory layers' time; standalone "
            f"Q/DQ conversions took {qdq * 1e3:.3f} ms.")
    if any(ly.get("layer_type") == "Myelin" for ly in work):
        text = ("A Myelin layer runs here: TensorRT 8.6 reports neither its kernels nor their precisions, so the share "
                "of INT8 kernels inside it is unknown (its work by kind and bound is below).")
    elif int8 == 0 and work:
        text += (" No layer computed in INT8: the runtime kept every conv/matmul in float and ran the Q/DQ as "
                 "separate kernels, so the quantized model can only be slower than the float one here.")
    return fallback + [text, ""]


def _engine(e: Mapping[str, Any], top: int) -> List[str]:
    b = e["breakdown"]
    runtime = "ONNX Runtime (CPU)" if e.get("backend") == "onnxruntime" else f"TensorRT {e.get('tensorrt') or '?'}"
    lines = [f"## {e['label']}: {e['hardware']}, batch {e['batch_size']}, {runtime}", "",
             f"End to end {e.get('end_to_end_ms') or 0:.3f} ms; per-layer sum {b['layers_sum_s'] * 1e3:.3f} ms; sum of "
             f"roofline bounds {b['bound_sum_s'] * 1e3:.3f} ms. Rates: {e['rates']['peak_ops_s'] / 1e12:.1f} T ops/s "
             f"({e['rates']['peak_key']}; {e['rates']['clock_note']}), "
             f"{e['rates']['bandwidth_bytes_s'] / 1e12:.2f} TB/s.", ""]
    if b.get("note"):
        lines += [b["note"] + ".", ""]
    lines += _precision_note(e)
    lines += ["| cause | layers | measured ms | bound ms | gap ms | share of gap |", "|---|---:|---:|---:|---:|---:|"]
    for cause, v in sorted(b["by_cause"].items(), key=lambda kv: -kv[1]["gap_s"]):
        lines.append(f"| {cause} | {v['layers']} | {_ms(v['measured_s'])} | {_ms(v['bound_s'])} | {_ms(v['gap_s'])} | "
                     f"{100 * b['share_of_gap'].get(cause, 0):.0f}% |")
    sp = e.get("sparsity")
    myelin = (sp or {}).get("myelin_layers_not_predicted")
    if myelin:
        lines += ["", f"2:4 sparsity payoff: not predicted for {myelin} Myelin layer(s) (TensorRT times its matmuls and "
                  "the rest as one layer)."]
    if sp and sp["layers"]:
        lines += ["", f"2:4 sparsity payoff, predicted from the shapes and these measurements: {sp['eligible']} of "
                  f"{len(sp['layers'])} conv/matmul layers eligible, {sp['likely']} wide enough that TensorRT likely "
                  f"picks a sparse tactic; predicted saving {sp['predicted_saving_ms']:.3f} ms "
                  f"({sp['predicted_speedup']:.2f}x end to end, {sp['model']})."]
    bt = (sp or {}).get("built")
    if bt and (bt["eligible"] or bt["picked"] or not myelin):
        lines += ["", f"Built with 2:4 sparse weights allowed: TensorRT found {bt['eligible']} layer(s) eligible for "
                  f"sparse math and kept a sparse tactic in {len(bt['picked'])}, which run {bt['picked_ms']:.3f} ms"
                  + (f": {', '.join(n[:40] for n in bt['picked'][:8])}" if bt["picked"] else
                     " (every sparse tactic timed slower than the dense one)" if bt["eligible"] else "") + "."]
    elif bt:
        lines += ["", "Built with 2:4 sparse weights allowed: the builder printed no sparsity line for the Myelin "
                  "layer(s), so the engine does not say whether sparse kernels run inside them; only the measured "
                  "time against a dense build answers it."]
    lines += _myelin(e)
    lines += ["", f"Largest gaps (top {top}):", "",
              "| layer | type | precision | cause | measured ms | bound ms | efficiency |", "|---|---|---|---|---:|---:|---:|"]
    for ly in sorted(e["layers"], key=lambda x: -x["gap_s"])[:top]:
        eff = "-" if ly["efficiency"] is None else f"{100 * ly['efficiency']:.0f}%"
        lines.append(f"| {ly['name'][:70]} | {ly['layer_type']} | {ly.get('precision') or '-'} | {ly['cause']} | "
                     f"{_ms(ly['measured_s'])} | {_ms(ly['bound_s'])} | {eff} |")
    return lines + [""]


def _myelin(e: Dict[str, Any]) -> List[str]:
    """Inside each Myelin layer: the work by kind, node by node at the run's rates (TensorRT times the layer whole)."""
    lines: List[str] = []
    for m in e.get("myelin") or []:
        lines += ["", f"Inside the Myelin layer {m['layer'][:60]} ({m['nodes']} ONNX nodes; TensorRT times it as one "
                  f"layer): measured {_ms(m['measured_s'])} ms, between its fused bound {_ms(m['fused_bound_s'])} ms "
                  f"(no DRAM traffic inside the layer) and its node-by-node bound {_ms(m['unfused_bound_s'])} ms "
                  "(every node's tensors through DRAM), split by kind of work:", "",
                  "| work | nodes | GFLOPs | node-by-node bound ms | share |", "|---|---:|---:|---:|---:|"]
        total = m["unfused_bound_s"] or 1e-30
        for kind, k in sorted(m["kinds"].items(), key=lambda kv: -kv[1]["bound_s"]):
            lines.append(f"| {kind} | {int(k['nodes'])} | {k['flops'] / 1e9:.1f} | {_ms(k['bound_s'])} | "
                         f"{100 * k['bound_s'] / total:.0f}% |")
    return lines


def _myelin_diff(result: Dict[str, Any]) -> List[str]:
    """Two engines with one Myelin layer each: the speed-up the node-by-node bounds predict against the measured one."""
    ms = [(e.get("label"), (e.get("myelin") or [None])[0]) for e in result["engines"]]
    if len(ms) != 2 or not all(m for _, m in ms):
        return []
    (la, a), (lb, b) = ms
    kinds = sorted(set(a["kinds"]) | set(b["kinds"]), key=lambda k: -(a["kinds"].get(k) or {}).get("bound_s", 0.0))
    lines = ["", f"Myelin layer, {lb} against {la}: measured {_ms(a['measured_s'])} -> {_ms(b['measured_s'])} ms "
             f"({a['measured_s'] / b['measured_s']:.2f}x); node-by-node bounds {_ms(a['unfused_bound_s'])} -> "
             f"{_ms(b['unfused_bound_s'])} ms ({a['unfused_bound_s'] / max(1e-30, b['unfused_bound_s']):.2f}x "
             "predicted). By kind of work:", "", f"| work | {la} bound ms | {lb} bound ms |", "|---|---:|---:|"]
    for k in kinds:
        lines.append(f"| {k} | {_ms((a['kinds'].get(k) or {}).get('bound_s'))} | "
                     f"{_ms((b['kinds'].get(k) or {}).get('bound_s'))} |")
    return lines


def markdown(result: Dict[str, Any], top: int = 12) -> str:
    """The whole document."""
    lines = ["# Engine explained: measured layers against their roofline bounds", ""]
    for e in result["engines"]:
        lines += _engine(e, top)
    d = result.get("diff")
    if d:
        a, b = d["labels"]
        lines += [f"## {b} against {a}", "", diff_sentence(d["summary"], (a, b)), "",
                  f"| ONNX nodes | {a} ms | {b} ms | {b}/{a} | {a} precision | {b} precision | {b} reformats |",
                  "|---|---:|---:|---:|---|---|---:|"]
        for r in d["rows"][:top * 2]:
            nodes = r["nodes"][0] + (f" (+{len(r['nodes']) - 1})" if len(r["nodes"]) > 1 else "") if r["nodes"] else "(reformats)"
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
            lines.append(f"| {nodes[:60]} | {r[a]['ms']:.3f} | {r[b]['ms']:.3f} | {ratio} | "
                         f"{'/'.join(r[a]['precisions']) or '-'} | {'/'.join(r[b]['precisions']) or '-'} | "
                         f"{r[b]['reformats']['count']} ({r[b]['reformats']['ms']:.3f} ms) |")
        lines += _myelin_diff(result)
        lines.append("")
    return "\n".join(lines)
