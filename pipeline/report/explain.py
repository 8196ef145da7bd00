"""The report's "Per-layer gap to the roofline" section, from ``explain.json`` (:mod:`pipeline.explain`).

:func:`compact_explain` keeps what the section shows (report.json stays small): per engine the breakdown by cause,
the layers with the largest gaps, the planned-INT8 layers that ran wider, and the 2:4 sparsity prediction.
:func:`explain_section` renders it. The full per-layer rows stay in ``explain.json`` / ``explain.md``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from pipeline.report.blocks import Block, Para, Section, Table

#: Layers with the largest gaps kept per engine.
TOP = 15
_LAYER_KEYS = ("name", "layer_type", "precision", "planned", "cause", "detail", "measured_s", "bound_s", "efficiency")


def compact_explain(raw: Mapping[str, Any]) -> Dict[str, Any]:
    """``report["explain"]`` from an ``explain.json`` dict."""
    engines = []
    for e in raw.get("engines") or []:
        layers = list(e.get("layers") or [])
        top = sorted(layers, key=lambda ly: -(ly.get("gap_s") or 0.0))[:TOP]
        sp = dict(e.get("sparsity") or {})
        sp.pop("layers", None)
        engines.append({
            "label": e.get("label"), "backend": e.get("backend"), "hardware": e.get("hardware"),
            "batch_size": e.get("batch_size"), "end_to_end_ms": e.get("end_to_end_ms"), "rates": e.get("rates"),
            "breakdown": e.get("breakdown"), "layers": len(layers),
            "top": [{k: ly.get(k) for k in _LAYER_KEYS} | {"gap_s": ly.get("gap_s")} for ly in top],
            "fell_back": [{k: ly.get(k) for k in ("name", "precision", "measured_s")} for ly in layers
                          if ly.get("fell_back")],
            "planned_int8": sum(1 for ly in layers if ly.get("planned") == "int8"),
            "kernel_floor": _kernel_floor(layers),
            "sparsity": sp or None,
        })
    out: Dict[str, Any] = {"engines": engines}
    diff = raw.get("diff")
    if diff:
        a, b = diff["labels"]
        out["diff"] = {"labels": [a, b], "summary": diff.get("summary"),
                       "top": [{"nodes": len(r.get("nodes") or []), "first_node": (r.get("nodes") or ["(reformats)"])[0],
                                "delta_ms": r.get("delta_ms"), "ratio": r.get("ratio"),
                                a: _side(r.get(a) or {}), b: _side(r.get(b) or {})}
                               for r in list(diff.get("rows") or [])[:TOP]]}
    return out


def _side(side: Mapping[str, Any]) -> Dict[str, Any]:
    """One engine's part of a diff row, as the report shows it."""
    return {"ms": side.get("ms"), "precisions": list(side.get("precisions") or []),
            "tactics": list(side.get("tactics") or [])[:2], "reformats": dict(side.get("reformats") or {}),
            "standalone_qdq": side.get("standalone_qdq", 0)}


def _kernel_floor(layers: List[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The shortest measured compute/memory layer and the median roofline bound of those layers: when the first is
    many times the second, a fixed per-kernel cost (launch, ramp-up, tail) rather than FLOPs or bytes sets the time."""
    work = [ly for ly in layers if ly.get("cause") in ("compute", "memory") and (ly.get("measured_s") or 0) > 0]
    if not work:
        return None
    bounds = sorted(float(ly.get("bound_s") or 0.0) for ly in work)
    return {"layers": len(work), "fastest_s": min(float(ly["measured_s"]) for ly in work),
            "median_bound_s": bounds[len(bounds) // 2]}


def _ms(s: Any) -> str:
    return "-" if s is None else f"{float(s) * 1e3:.3f}"


def explain_section(ex: Mapping[str, Any]) -> Section:
    """The rendered section."""
    blocks: List[Block] = [Para("Each measured layer (engine layer on TensorRT, optimised node on ONNX Runtime) against "
                                "its roofline bound: the DRAM bytes the fused layer really moves and its FLOPs at the "
                                "peaks of the run's clocks. Full rows in explain.json / explain.md.")]
    for e in ex.get("engines") or []:
        b = e.get("breakdown") or {}
        blocks.append(Para(f"{e.get('label')} ({e.get('backend')}, {e.get('hardware')}, batch {e.get('batch_size')})",
                           "heading"))
        blocks.append(Para(f"End to end {float(e.get('end_to_end_ms') or 0):.3f} ms; {e.get('layers')} layers sum to "
                           f"{_ms(b.get('layers_sum_s'))} ms against bounds summing to {_ms(b.get('bound_sum_s'))} ms. "
                           + (b.get("note") or "")))
        by = b.get("by_cause") or {}
        share = b.get("share_of_gap") or {}
        blocks.append(Table(["cause", "layers", "measured ms", "bound ms", "gap ms", "share of gap"],
                            [[c, str(v["layers"]), _ms(v["measured_s"]), _ms(v["bound_s"]), _ms(v["gap_s"]),
                              f"{100 * share.get(c, 0):.0f}%"]
                             for c, v in sorted(by.items(), key=lambda kv: -kv[1]["gap_s"])], caption="gap by cause"))
        blocks.append(Table(["layer", "type", "precision", "cause", "measured ms", "bound ms", "efficiency"],
                            [[str(ly["name"])[:70], str(ly["layer_type"]), str(ly.get("precision") or "-"),
                              str(ly["cause"]), _ms(ly["measured_s"]), _ms(ly["bound_s"]),
                              "-" if ly.get("efficiency") is None else f"{100 * ly['efficiency']:.0f}%"]
                             for ly in e.get("top") or []], caption="largest gaps"))
        if e.get("planned_int8"):
            fell = e.get("fell_back") or []
            blocks.append(Para(f"Planned vs actual precision: {e['planned_int8']} layers planned INT8 by the Q/DQ; "
                               + (f"{len(fell)} ran wider: " + "; ".join(f"{f['name'][:50]} ({f['precision']})"
                                                                         for f in fell[:8]) if fell else
                                  "all ran in INT8") + ".", "warning" if fell else "text"))
        sp = e.get("sparsity")
        if sp:
            blocks.append(Para(f"2:4 sparsity, predicted: {sp.get('eligible')} eligible layers, {sp.get('likely')} "
                               f"likely to get sparse tactics, saving {float(sp.get('predicted_saving_ms') or 0):.3f} ms "
                               f"({float(sp.get('predicted_speedup') or 1):.2f}x)."))
    if ex.get("diff"):
        blocks += _diff_blocks(ex["diff"])
    return Section("Per-layer gap to the roofline", "explain", blocks)


def _diff_blocks(d: Mapping[str, Any]) -> List[Block]:
    """The engine diff (``profile.compare_to``): where the second engine loses and wins time against the first."""
    from pipeline.explain.diff import diff_sentence

    a, b = d["labels"]
    blocks: List[Block] = [Para(f"Engine diff: {b} against {a}", "heading"),
                           Para(diff_sentence(d["summary"], (a, b)) + " Chart: explain_diff.png.")]

    def tactic(side: Mapping[str, Any]) -> str:
        return str((side.get("tactics") or ["-"])[0])[:40]

    blocks.append(Table(
        ["ONNX nodes", f"{a} ms", f"{b} ms", f"{b}/{a}", f"{a} precision", f"{b} precision", f"{a} tactic",
         f"{b} tactic", f"{b} reformats"],
        [[str(r["first_node"])[:50] + (f" (+{r['nodes'] - 1})" if r["nodes"] > 1 else ""), _num(r[a]["ms"]),
          _num(r[b]["ms"]), "-" if r.get("ratio") is None else f"{r['ratio']:.2f}",
          "/".join(r[a]["precisions"]) or "-", "/".join(r[b]["precisions"]) or "-", tactic(r[a]), tactic(r[b]),
          f"{(r[b]['reformats'] or {}).get('count', 0)} ({float((r[b]['reformats'] or {}).get('ms') or 0):.3f} ms)"]
         for r in d.get("top") or []], caption="largest differences"))
    return blocks


def _num(ms: Any) -> str:
    return "-" if ms is None else f"{float(ms):.3f}"
