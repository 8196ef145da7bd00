"""The report's Quantization section (seed 4.3): what a deployment engineer reads about an INT8 run.

Builds the section from ``report["quantization"]`` (:meth:`pipeline.quantize.QuantResult.to_dict`,
plus ``comparison`` from :func:`pipeline.quantize.compare_calibrations` when ``quant.compare=true``):
a summary, INT8-vs-FP32 metrics, the per-tensor ranges, and the calibration comparison (variants,
clipping vs rounding error, per-channel vs per-tensor weight error). The HTML also gets two inline
SVG plots (histograms with each method's threshold, the metric per variant); Markdown gets the same
numbers as tables. Rendering only: report.json is untouched. matplotlib is imported lazily.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from pipeline.report.blocks import Block, Figure, Para, Section, Table, generic_blocks
from pipeline.report.fmt import MISSING, _num, fmt_time, fmt_value

#: Row cap of the per-tensor tables (ranges, errors, weights).
MAX_ROWS = 40
#: Histograms drawn (and summarized in Markdown).
MAX_HISTOGRAMS = 6
#: Bins per histogram in the plot (the report.json histograms have more).
PLOT_BINS = 64
#: Keys of ``quantization`` this module renders; anything else falls back to generic tables.
_KNOWN = {
    "qdq_onnx_path", "calibration_cache_path", "algorithm", "settings", "ranges", "seconds", "plan",
    "calib_batches", "calib_samples", "metrics", "float_nodes", "num_quantized_nodes", "comparison",
}
_METRIC_NAMES = {
    "accuracy": "top-1 accuracy",
    "top1_agreement": "top-1 agreement",
    "output_cosine": "output cosine",
    "embedding_cosine": "embedding cosine",
    "nn_agreement": "NN agreement",
}


def _g(value: Any, digits: int = 4) -> str:
    v = _num(value)
    return MISSING if v is None else f"{v:.{digits}g}"


def _frac(value: Any) -> str:
    v = _num(value)
    return MISSING if v is None else f"{100 * v:.2f}%"


def _cos(value: Any) -> str:
    v = _num(value)
    return MISSING if v is None else f"{v:.6f}"


def _metric(m: Mapping[str, Any], key: str) -> str:
    """One end-to-end metric of a ``compare_outputs`` dict, formatted (accuracy with its 95 % CI)."""
    v = m.get(key)
    if key == "accuracy":
        ci = m.get("accuracy_ci95")
        if _num(v) is None:
            return MISSING
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            return f"{_frac(v)} [{_frac(ci[0])}, {_frac(ci[1])}]"
        return _frac(v)
    if key in ("output_cosine", "embedding_cosine", "output_cosine_min"):
        return _cos(v)
    if key in ("top1_agreement", "nn_agreement", "reference_accuracy"):
        return _frac(v)
    return fmt_value(v)


def _cap_line(shown: int, total: int, where: str) -> List[Block]:
    if total <= shown:
        return []
    return [Para(f"Showing {shown} of {total}; {total - shown} more in report.json ({where}).")]


def _scheme(settings: Mapping[str, Any]) -> str:
    sym = settings.get("symmetric")
    if sym is None:
        return MISSING
    return "symmetric int8 (zero point 0)" if sym else "asymmetric uint8 activations (zero point from min)"


def _algorithm(q: Mapping[str, Any]) -> str:
    s = q.get("settings") or {}
    algo = str(q.get("algorithm") or s.get("calib") or MISSING)
    if algo == "percentile" and s.get("percentile") is not None:
        algo += f" @ {fmt_value(s['percentile'])}"
    return algo


def _summary(q: Mapping[str, Any]) -> List[Block]:
    s = q.get("settings") if isinstance(q.get("settings"), Mapping) else {}
    plan = q.get("plan") if isinstance(q.get("plan"), Mapping) else {}
    secs = q.get("seconds") if isinstance(q.get("seconds"), Mapping) else {}
    float_nodes = q.get("float_nodes") or []
    skipped = plan.get("skipped_nodes") or {}
    nq = q.get("num_quantized_nodes", len(plan.get("quantized_nodes") or []))
    wgran = s.get("weight_granularity") or (
        None if s.get("per_channel") is None else ("per_channel" if s["per_channel"] else "per_tensor")
    )
    timing = fmt_time(secs.get("total"))
    parts = [f"{k} {fmt_time(secs[k])}" for k in ("statistics", "thresholds", "sensitivity", "write", "evaluate")
             if _num(secs.get(k))]
    if parts:
        timing += " (" + ", ".join(parts) + ")"
    rows = [
        ["Calibration algorithm", _algorithm(q)],
        ["Weights", f"{s.get('weight_dtype', 'int8')}, {wgran or MISSING}"],
        ["Activations", f"{s.get('activation_dtype', MISSING)}, {s.get('activation_granularity', 'per_tensor')}"],
        ["Scheme", _scheme(s)],
        ["Quantized nodes", fmt_value(nq)],
        ["Kept in float", f"{len(float_nodes)} by the precision plan (quant.plan), {len(skipped)} skipped by placement"],
        ["Q/DQ'd activation tensors / weights",
         f"{len(plan.get('activation_tensors') or q.get('ranges') or [])} / {len(plan.get('weights') or {})}"],
        ["Calibration data", f"{fmt_value(q.get('calib_samples'))} samples in {fmt_value(q.get('calib_batches'))} "
                             f"batches (histogram bins: {fmt_value(s.get('num_bins'))})"],
        ["Quantize wall time", timing],
        ["Q/DQ ONNX", str(q.get("qdq_onnx_path") or MISSING)],
        ["Calibration cache", str(q.get("calibration_cache_path") or "not written")],
    ]
    placement = {k: s[k] for k in ("op_types", "residual_add", "pooling", "quantize_bmm", "exclude_nodes") if k in s}
    if placement:
        rows.append(["Placement options", ", ".join(f"{k}={fmt_value(v)}" for k, v in placement.items())])
    return [Table(["", ""], rows, caption="Summary")]


def _metrics(q: Mapping[str, Any]) -> List[Block]:
    m = q.get("metrics")
    if not isinstance(m, Mapping):
        return [Para("INT8 was not compared with FP32 (no evaluation data was given to the quantize stage).",
                     "warning")]
    kern = m.get("onnxruntime_int8_kernels") if isinstance(m.get("onnxruntime_int8_kernels"), Mapping) else None
    headers = ["metric", f"INT8 ({m.get('execution') or 'simulated'} Q/DQ)"]
    if kern:
        headers.append("INT8 (ORT integer CPU kernels)")
    rows = []
    keys = (["accuracy"] if "accuracy" in m else []) + [
        k for k in ("top1_agreement", "output_cosine", "output_cosine_min", "nn_agreement", "embedding_cosine",
                    "max_abs_diff", "samples") if k in m]
    for k in keys:
        name = {"accuracy": "top-1 accuracy [95% CI]", "output_cosine_min": "output cosine (worst sample)",
                "max_abs_diff": "max |INT8 - FP32|"}.get(k, _METRIC_NAMES.get(k, k))
        rows.append([name + (" (primary)" if k == m.get("primary") else ""), _metric(m, k)]
                    + ([_metric(kern, k)] if kern else []))
    blocks: List[Block] = [Table(headers, rows, caption="INT8 vs FP32 on held-out data")]
    ref, acc = _num(m.get("reference_accuracy")), _num(m.get("accuracy"))
    if ref is not None and acc is not None:
        blocks.append(Para(f"FP32 top-1 accuracy is {_frac(ref)}; INT8 is {_frac(acc)} "
                           f"({100 * (acc - ref):+.2f} points). Agreement and cosine compare INT8 with FP32 "
                           "sample by sample, so they show changes that accuracy alone can hide."))
    return blocks


def _ranges(q: Mapping[str, Any]) -> List[Block]:
    ranges = q.get("ranges")
    if not isinstance(ranges, Mapping) or not ranges:
        return []
    rows = []
    for name, r in list(ranges.items())[:MAX_ROWS]:
        r = r if isinstance(r, Mapping) else {}
        amax, mx, mn = _num(r.get("amax")), _num(r.get("max")), _num(r.get("min"))
        peak = max(abs(mx or 0.0), abs(mn or 0.0))
        clip = f"{100 * (1 - amax / peak):.1f}%" if amax is not None and peak > 0 and amax < peak else "0%"
        rows.append([str(name), _g(mn), _g(mx), _g(amax), clip, _g(r.get("scale")), fmt_value(r.get("zero_point"))])
    return [Table(["tensor", "min", "max", "amax", "range clipped", "scale", "zero point"], rows,
                  caption="Per-tensor activation ranges (tensor units; range clipped = 1 - amax / max|x|)")] \
        + _cap_line(len(rows), len(ranges), "quantization.ranges")


def _float_nodes(q: Mapping[str, Any]) -> List[Block]:
    blocks: List[Block] = []
    steps = [s for s in (q.get("float_nodes") or []) if isinstance(s, Mapping)]
    if steps:
        rows = [[str(s.get("node")), _cos(s.get("isolated_score")), _cos(s.get("score_after"))]
                for s in steps[:MAX_ROWS]]
        blocks.append(Table(["node returned to float", "score with only it quantized", "score after"], rows,
                            caption="Sensitivity search (score = min(output cosine, NN agreement) vs FP32)"))
        blocks += _cap_line(len(rows), len(steps), "quantization.float_nodes")
    skipped = ((q.get("plan") or {}).get("skipped_nodes") or {}) if isinstance(q.get("plan"), Mapping) else {}
    if skipped:
        items = list(skipped.items())
        blocks.append(Table(["node", "why not quantized"], [[str(k), str(v)] for k, v in items[:MAX_ROWS]],
                            caption="Nodes skipped by Q/DQ placement"))
        blocks += _cap_line(min(len(items), MAX_ROWS), len(items), "quantization.plan.skipped_nodes")
    return blocks


# ---------------------------------------------------------------- comparison


def _variant_name(r: Mapping[str, Any]) -> str:
    scheme = str(r.get("scheme") or "")
    return f"{r.get('label')} · {r.get('granularity')}" + ("" if scheme.startswith("sym") else " · uint8")


def is_best(r: Mapping[str, Any], best: Optional[Mapping[str, Any]]) -> bool:
    """Whether comparison row ``r`` is the variant ``comparison["best"]`` names."""
    return bool(best) and all(r.get(k) == best.get(k) for k in ("label", "granularity", "scheme"))


def _comparison_table(c: Mapping[str, Any]) -> List[Block]:
    rows_in = [r for r in (c.get("results") or []) if isinstance(r, Mapping)]
    if not rows_in:
        return [Para("The calibration comparison produced no variants.", "warning")]
    primary = str(c.get("primary") or "output_cosine")
    best = c.get("best") if isinstance(c.get("best"), Mapping) else None
    ref = c.get("reference") if isinstance(c.get("reference"), Mapping) else {}
    has_acc = any("accuracy" in (r.get("metrics") or {}) for r in rows_in)
    headers = ["", "method", "weights", "activations"] + (["top-1 accuracy [95% CI]"] if has_acc else []) + [
        "top-1 agreement", "output cosine", "NN agreement", "max |diff|", "time"]
    rows, flagged = [], []
    for i, r in enumerate(rows_in):
        m = r.get("metrics") or {}
        mark = is_best(r, best)
        if mark:
            flagged.append(i)
        scheme = str(r.get("scheme") or MISSING)
        rows.append(["★ best" if mark else "", str(r.get("label")), str(r.get("granularity")),
                     "int8 symmetric" if scheme.startswith("sym") else "uint8 asymmetric"]
                    + ([_metric(m, "accuracy")] if has_acc else [])
                    + [_metric(m, "top1_agreement"), _metric(m, "output_cosine"), _metric(m, "nn_agreement"),
                       _g(m.get("max_abs_diff")), fmt_time(r.get("seconds"))])
    pname = _METRIC_NAMES.get(primary, primary)
    blocks: List[Block] = [
        Para("Every calibration method x weight granularity, evaluated against FP32 on "
             f"{fmt_value(ref.get('samples'))} "
             f"held-out samples ({c.get('execution', 'simulated')} Q/DQ execution). Ranked by {pname}; "
             "activations are per-tensor in every variant."
             + (f" FP32 top-1 accuracy: {_frac(ref['accuracy'])}." if _num(ref.get("accuracy")) is not None else "")),
        Table(headers, rows, caption="Calibration comparison (★ = best by the primary metric)", flagged=flagged),
    ]
    vals = [_num((r.get("metrics") or {}).get(primary)) for r in rows_in]
    top = max((v for v in vals if v is not None), default=None)
    if best and top is not None:
        ties = sum(1 for v in vals if v is not None and abs(v - top) <= 1e-12)
        text = f"Best by {pname}: {_variant_name(best)} ({_metric(best, primary) if primary in best else _g(top)})."
        if ties > 1:
            text += (f" {ties} of {len(rows_in)} variants tie on {pname}; the secondary columns "
                     "(agreement, cosine) separate them.")
        worst = min((v for v in vals if v is not None), default=None)
        if worst is not None and primary in ("accuracy", "top1_agreement", "nn_agreement"):
            text += f" Spread between best and worst variant: {100 * (top - worst):.2f} points."
        tied = [r for r, v in zip(rows_in, vals) if v is not None and abs(v - top) <= 1e-12]
        if ties > 1 and primary != "output_cosine":
            alt = max(tied, key=lambda r: _num((r.get("metrics") or {}).get("output_cosine")) or 0.0)
            text += (f" Among the tied, {_variant_name(alt)} has the highest output cosine "
                     f"({_metric(alt.get('metrics') or {}, 'output_cosine')}).")
        blocks.append(Para(text))
    return blocks


def _error_tables(c: Mapping[str, Any]) -> List[Block]:
    tensors = [t for t in (c.get("tensors") or []) if isinstance(t, Mapping) and isinstance(t.get("error"), Mapping)]
    if not tensors:
        return []
    methods = list(tensors[0]["error"])
    # Per-method totals: error normalized by each tensor's range^2 so tensors are comparable.
    summary = []
    for k in methods:
        clip = rnd = sqnr = frac = 0.0
        n = 0
        for t in tensors:
            e = t["error"].get(k) or {}
            span = max((_num(t.get("max")) or 0.0) - (_num(t.get("min")) or 0.0), 1e-12) ** 2
            clip += (_num(e.get("clip_mse")) or 0.0) / span
            rnd += (_num(e.get("round_mse")) or 0.0) / span
            sqnr += _num(e.get("sqnr_db")) or 0.0
            frac += _num(e.get("clipped_fraction")) or 0.0
            n += 1
        tot = clip + rnd
        summary.append([k, f"{clip:.3g}", f"{rnd:.3g}", f"{100 * clip / tot:.0f}%" if tot else MISSING,
                        f"{sqnr / max(n, 1):.1f} dB", f"{100 * frac / max(n, 1):.3f}%"])
    blocks: List[Block] = [
        Para("Each method trades clipping error (values beyond the threshold saturate) against rounding error "
             "(a larger threshold means a coarser step). max never clips; percentile, entropy and mse clip "
             "outliers to refine the step."),
        Table(["method", "clipping (Σ MSE/range²)", "rounding (Σ MSE/range²)", "clipping share", "mean SQNR",
               "mean share clipped"], summary, caption=f"Activation error by cause, over {len(tensors)} tensors"),
    ]
    rows = []
    for t in tensors[:MAX_ROWS]:
        cells = [str(t.get("name"))]
        for k in methods:
            e = t["error"].get(k) or {}
            cells.append(f"{_g(e.get('clip_mse'), 2)} / {_g(e.get('round_mse'), 2)}")
        rows.append(cells)
    blocks.append(Table(["tensor"] + methods, rows, caption="Per-tensor MSE, clipping / rounding, per method"))
    blocks += _cap_line(len(rows), len(tensors), "quantization.comparison.tensors")
    return blocks


def _weight_table(c: Mapping[str, Any]) -> List[Block]:
    weights = [w for w in (c.get("weights") or []) if isinstance(w, Mapping)]
    if not weights:
        return []
    rows = []
    gains = []
    for w in weights[:MAX_ROWS]:
        pc, pt = w.get("per_channel") or {}, w.get("per_tensor") or {}
        a, b = _num(pc.get("sqnr_db")), _num(pt.get("sqnr_db"))
        gain = a - b if a is not None and b is not None else None
        rows.append([str(w.get("name")), fmt_value(w.get("shape")), fmt_value(w.get("axis")),
                     _g(pc.get("total_mse"), 3), _g(pt.get("total_mse"), 3),
                     f"{a:.1f} dB" if a is not None else MISSING, f"{b:.1f} dB" if b is not None else MISSING,
                     f"{gain:+.1f} dB" if gain is not None else MISSING])
    for w in weights:
        a, b = _num((w.get("per_channel") or {}).get("sqnr_db")), _num((w.get("per_tensor") or {}).get("sqnr_db"))
        if a is not None and b is not None:
            gains.append(a - b)
    blocks: List[Block] = [Table(["weight", "shape", "channel axis", "MSE per-channel", "MSE per-tensor",
                                  "SQNR per-channel", "SQNR per-tensor", "per-channel gain"], rows,
                                 caption="Weight quantization error: per-channel vs per-tensor scales")]
    blocks += _cap_line(len(rows), len(weights), "quantization.comparison.weights")
    if gains:
        blocks.append(Para(f"Per-channel scales gain {sum(gains) / len(gains):.1f} dB SQNR on average over "
                           f"{len(gains)} weights (max {max(gains):.1f} dB): each output channel gets its own step "
                           "instead of sharing the step of the channel with the largest weight."))
    return blocks


def _histogram_blocks(c: Mapping[str, Any]) -> List[Block]:
    hists = [h for h in (c.get("histograms") or []) if isinstance(h, Mapping)][:MAX_HISTOGRAMS]
    if not hists:
        return []
    methods: List[str] = []
    for h in hists:
        methods += [k for k in (h.get("thresholds") or {}) if k not in methods]
    tmax = {str(t.get("name")): _num(t.get("max")) for t in (c.get("tensors") or []) if isinstance(t, Mapping)}
    rows = [[str(h.get("name")), _g(tmax.get(str(h.get("name"))))]
            + [_g((h.get("thresholds") or {}).get(k)) for k in methods] for h in hists]
    return [
        Table(["tensor", "observed max"] + methods, rows,
              caption="Thresholds (amax) of the tensors where the methods disagree most"),
        Figure("quant_histograms", "|x| histograms (log counts) of those tensors; each vertical line is one "
               "method's threshold.", "no histograms in the comparison", html_only=True),
    ]


def _comparison(c: Mapping[str, Any]) -> List[Block]:
    blocks: List[Block] = [Para("Calibration comparison", "heading")]
    blocks += _comparison_table(c)
    blocks.append(Figure("quant_metric", "End-to-end metric per method x weight granularity (★ = best).",
                         "no comparison results", html_only=True))
    blocks += _histogram_blocks(c)
    blocks += _error_tables(c)
    blocks += _weight_table(c)
    secs = c.get("seconds") if isinstance(c.get("seconds"), Mapping) else {}
    if secs:
        blocks.append(Para("Comparison wall time: " + ", ".join(f"{k} {fmt_time(v)}" for k, v in secs.items()) + "."))
    return blocks


def quantization_section(q: Mapping[str, Any]) -> Section:
    """The Quantization section for a non-null ``report["quantization"]``."""
    blocks: List[Block] = []
    if any(k in q for k in ("algorithm", "settings", "qdq_onnx_path", "plan")):
        blocks += _summary(q)
        blocks += _metrics(q)
        blocks += _float_nodes(q)
        blocks += _ranges(q)
    elif isinstance(q.get("ranges"), Mapping):
        blocks += _ranges(q)
    if isinstance(q.get("comparison"), Mapping):
        blocks += _comparison(q["comparison"])
    rest = {k: v for k, v in q.items() if k not in _KNOWN or (k == "ranges" and not isinstance(v, Mapping))}
    if rest:
        blocks += generic_blocks(rest, caption="Other fields" if blocks else "")
    return Section("Quantization", "quantization", blocks or [Para("(empty)")])
