"""The report's "Layer-wise sensitivity" section, from the sensitivity stage's ``sensitivity.json``.

Two steps, so that report.json holds exactly what the section shows:

* :func:`compact_sensitivity` reduces ``sensitivity.json`` to ``report["sensitivity"]``: the budget, the
  plan, every layer's sensitivity, the evaluated plans and the Pareto front, the calibration method and
  threshold per tensor (candidate thresholds only for the tensors that feed the plan's float layers).
* :func:`sensitivity_section` renders it: a summary (budget, samples, plan, all-INT8 vs plan vs FP32,
  the held-out check, predicted times, calibration), the layers ranked by harm, what each float fallback
  costs, and the Pareto front. The plots (harm per layer, the all-INT8 error through the network, the
  Pareto front) are drawn by :mod:`pipeline.report.plots` from the same dict.

*Harm* is the stage's number: the drop of the budget metric when only that layer is INT8, in units of the
allowed drop (0 = no loss, 1 = that layer alone uses the whole budget).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from pipeline.report.blocks import Block, Figure, Para, Section, Table
from pipeline.report.fmt import MISSING, _num, fmt_time, fmt_value
from pipeline.report.quant import _METRIC_NAMES, _metric

#: Layers shown in the ranked table (the rest are counted, and are in report.json).
TOP_LAYERS = 20
#: Structural groups shown (ffn / attention blocks; single-layer groups are the layers themselves).
TOP_GROUPS = 10
#: Float layer names spelled out per Pareto row.
NAMES_PER_ROW = 3
#: Metric keys in display order (the stage's ``_KEYS``).
METRIC_ORDER = ("accuracy", "top1_agreement", "embedding_cosine", "output_cosine", "output_cosine_min",
                "nn_agreement", "max_abs_diff")
#: Per-layer keys kept in report.json (``weights`` and the sweep's wall time per layer are dropped).
_LAYER_KEYS = ("label", "op_type", "index", "group", "activations", "one_at_a_time", "harm", "all_but_one",
               "error_all_int8", "predicted_int8_s", "predicted_float_s", "in_plan_float")
_POINT_KEYS = ("float_layers", "num_float", "metrics", "predicted_s", "meets", "step", "measured")


# ---------------------------------------------------------------- report.json


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (report.json is strict JSON; an SNR of +inf
    means no error at all and renders as a dash, like any unknown)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _is_metrics(d: Any) -> bool:
    return isinstance(d, Mapping) and bool(d) and all(not isinstance(v, Mapping) for v in d.values())


def _calibration(cal: Mapping[str, Any], plan_inputs: Sequence[str]) -> Dict[str, Any]:
    """The calibration part: methods used, per-tensor vs uniform metrics, method + amax per tensor.

    ``per_tensor`` is either the all-INT8 metrics with the per-tensor choice or, in the stage's current
    files, the tensor -> choice map (the metrics were overwritten); both layouts are read.
    """
    per = cal.get("per_tensor")
    tensors = cal.get("tensors") if isinstance(cal.get("tensors"), Mapping) else None
    if tensors is None and isinstance(per, Mapping) and not _is_metrics(per):
        tensors = per
    metrics = cal.get("per_tensor_metrics") or (per if _is_metrics(per) else None)
    keep = set(plan_inputs)
    out_tensors: Dict[str, Any] = {}
    for name, t in (tensors or {}).items():
        if not isinstance(t, Mapping):
            continue
        row = {"method": t.get("method"), "amax": t.get("amax")}
        if name in keep and isinstance(t.get("candidates"), Mapping):
            row["candidates"] = dict(t["candidates"])
        out_tensors[str(name)] = row
    return {"kept": cal.get("kept"), "uniform_method": cal.get("uniform_method"),
            "methods_used": dict(cal.get("methods_used") or {}), "per_tensor_metrics": metrics,
            "uniform_metrics": cal.get("uniform") if _is_metrics(cal.get("uniform")) else None,
            "tensors": out_tensors}


def _point(p: Any, with_layers: bool = True) -> Optional[Dict[str, Any]]:
    if not isinstance(p, Mapping):
        return None
    keys = _POINT_KEYS if with_layers else tuple(k for k in _POINT_KEYS if k != "float_layers")
    out = {k: p[k] for k in keys if k in p}
    out.setdefault("num_float", len(p.get("float_layers") or []))
    return out


def compact_sensitivity(raw: Mapping[str, Any], plan_path: Optional[str] = None) -> Dict[str, Any]:
    """``report["sensitivity"]``: what the section shows, from a ``sensitivity.json`` dict.

    Args:
        raw: the stage's ``sensitivity.json``.
        plan_path: where the run's ``<model>.precision_plan.json`` is (None when unknown).

    Returns:
        A JSON-safe dict (non-finite numbers are None); evaluated plans other than the Pareto front and the
        chosen plan lose their float-layer lists, tensors lose their candidate thresholds unless they feed a
        float layer of the plan.
    """
    search = raw.get("search") if isinstance(raw.get("search"), Mapping) else {}
    layers = [{k: ly.get(k) for k in _LAYER_KEYS} for ly in raw.get("layers") or [] if isinstance(ly, Mapping)]
    plan = _point(search.get("plan")) or {"float_layers": [], "num_float": 0}
    floats = set(plan.get("float_layers") or [])
    plan_inputs = [t for ly in layers if ly["label"] in floats for t in ly.get("activations") or []]
    points = [p for p in (_point(q, with_layers=False) for q in search.get("points") or []) if p]
    all_int8 = next((_point(q) for q in search.get("points") or []
                     if isinstance(q, Mapping) and not q.get("float_layers")), None)
    groups = [{"name": g.get("name"), "kind": g.get("kind"), "num_layers": len(g.get("layers") or []),
               "harm": g.get("harm")} for g in raw.get("groups") or []
              if isinstance(g, Mapping) and g.get("kind") not in (None, "layer")]
    out = {
        "task": raw.get("task"), "budget": raw.get("budget"), "samples": raw.get("samples"),
        "reference": raw.get("reference"), "met": search.get("met"), "message": search.get("message"),
        "plan": plan, "all_int8": all_int8, "holdout": search.get("holdout"),
        "predicted_all_int8_s": search.get("predicted_all_int8_s"), "predicted_note": search.get("predicted_note"),
        "calibration": _calibration(raw.get("calibration") or {}, plan_inputs),
        "layers": layers, "groups": groups,
        "pareto": [p for p in (_point(q) for q in search.get("pareto") or []) if p], "points": points,
        "num_layers": raw.get("num_layers", len(layers)), "seconds": raw.get("seconds"),
        "settings": (raw.get("settings") or {}).get("sensitivity") if isinstance(raw.get("settings"), Mapping)
        else None,
        "plan_file": raw.get("plan_file"), "plan_path": plan_path,
    }
    return _finite(out)


# ---------------------------------------------------------------- helpers


def budget_metric(s: Mapping[str, Any]) -> str:
    """The metric the budget is on (``output_cosine`` when the file does not say)."""
    return str((s.get("budget") or {}).get("metric") or "output_cosine")


def metric_keys(s: Mapping[str, Any], extra: Sequence[str] = ("output_cosine",)) -> List[str]:
    """The budget metric, the budget's other constraints, then ``extra`` keys (no duplicates)."""
    keys = [budget_metric(s)] + [str(k) for k in ((s.get("budget") or {}).get("extra") or {})] + list(extra)
    return list(dict.fromkeys(keys))


def _name(key: str) -> str:
    return {"output_cosine_min": "output cosine (worst sample)", "max_abs_diff": "max |INT8 - FP32|"}.get(
        key, _METRIC_NAMES.get(key, key))


def _mval(m: Any, key: str) -> str:
    return _metric(m, key) if isinstance(m, Mapping) and key in m else MISSING


def _budget_text(b: Mapping[str, Any], full: bool = True) -> str:
    """``metric ≥ minimum`` and the other constraints; ``full`` adds where the minimum comes from."""
    key = str(b.get("metric") or "?")
    text = f"{_name(key)} ≥ {_mval({key: b.get('minimum')}, key)}"
    if full and _num(b.get("reference")) is not None and _num(b.get("max_drop")) is not None:
        text += (f" (FP32 {_mval({key: b['reference']}, key)} minus a drop of at most "
                 f"{_mval({key: b['max_drop']}, key)})")
    for k, lo in (b.get("extra") or {}).items():
        text += f"; {_name(str(k))} ≥ {_mval({k: lo}, str(k))}"
    return text


def _names(labels: Sequence[str], n: int = NAMES_PER_ROW) -> str:
    if not labels:
        return "none (all INT8)"
    shown = ", ".join(str(x) for x in labels[:n])
    return shown + (f" … (+{len(labels) - n})" if len(labels) > n else "")


def _delta_time(s: Mapping[str, Any], t: Any) -> str:
    """A plan's predicted time relative to all-INT8."""
    base, v = _num(s.get("predicted_all_int8_s")), _num(t)
    if base is None or v is None or base <= 0:
        return MISSING
    return f"{100 * (v - base) / base:+.1f}%"


def ranked_layers(s: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    """Layers by harm, most harmful first; ties (often all zero on an easy model) go to the layer whose
    all-INT8 output error is larger (lower SNR), then to graph order."""
    def key(ly: Mapping[str, Any]):
        snr = _num((ly.get("error_all_int8") or {}).get("snr_db"))
        return (-(_num(ly.get("harm")) or 0.0), snr if snr is not None else math.inf, _num(ly.get("index")) or 0)
    return sorted((ly for ly in s.get("layers") or [] if isinstance(ly, Mapping)), key=key)


def _input_methods(s: Mapping[str, Any], ly: Mapping[str, Any]) -> str:
    tensors = (s.get("calibration") or {}).get("tensors") or {}
    methods = [str((tensors.get(t) or {}).get("method") or MISSING) for t in ly.get("activations") or []]
    return ", ".join(dict.fromkeys(methods)) or MISSING


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    """``value`` formatted with ``spec`` (and ``suffix``), or the missing mark."""
    v = _num(value)
    return MISSING if v is None else f"{v:{spec}}{suffix}"


def _harm(value: Any) -> str:
    return _fmt(value, ".3g")


def _db(value: Any) -> str:
    return _fmt(value, ".1f", " dB")


# ---------------------------------------------------------------- summary


def _summary(s: Mapping[str, Any]) -> List[Block]:
    plan = s.get("plan") or {}
    floats = list(plan.get("float_layers") or [])
    samples = s.get("samples") or {}
    n = s.get("num_layers")
    base, pt = _num(s.get("predicted_all_int8_s")), _num(plan.get("predicted_s"))
    predicted = f"all INT8 {fmt_time(base)}, plan {fmt_time(pt)} ({_delta_time(s, pt)})"
    if s.get("predicted_note"):
        predicted += f"; {s['predicted_note']}"
    secs = s.get("seconds") or {}
    timing = fmt_time(secs.get("total")) + (" (" + ", ".join(
        f"{k} {fmt_time(v)}" for k, v in secs.items() if k != "total" and _num(v) is not None) + ")" if secs else "")
    rows = [
        ["Task", str(s.get("task") or MISSING)],
        ["Budget", _budget_text(s.get("budget") or {})],
        ["Samples", f"{fmt_value(samples.get('search'))} to search, {fmt_value(samples.get('holdout'))} held out "
                    "to check the plan"],
        ["Result", str(s.get("message") or MISSING)],
        ["Float layers in the plan", f"{len(floats)} of {fmt_value(n)}" + (f": {', '.join(floats)}" if floats
                                                                            else " (every layer INT8)")],
        ["Predicted time per batch", predicted],
        ["Plan file", str(s.get("plan_path") or s.get("plan_file") or MISSING)
         + " (quantize takes it: quant.plan=...)"],
        ["Sensitivity wall time", timing],
    ]
    blocks: List[Block] = [Table(["", ""], rows, caption="Summary")]
    if s.get("met") is False:
        blocks.append(Para("Budget NOT met: the plan below is the closest one the search found, not one inside "
                           "the budget (see the Pareto front).", "warning"))
    return blocks + _metrics_table(s) + _holdout(s) + _calibration_blocks(s)


def _metrics_table(s: Mapping[str, Any]) -> List[Block]:
    plan, full, held = s.get("plan") or {}, s.get("all_int8") or {}, s.get("holdout") or {}
    ref = s.get("reference") or {}
    cols = [("FP32", ref), ("all INT8", full.get("metrics")), ("plan", plan.get("metrics"))]
    if held:
        cols += [("all INT8, held out", held.get("all_int8")), ("plan, held out", held.get("plan"))]
    present = [k for k in METRIC_ORDER if any(isinstance(m, Mapping) and k in m for _, m in cols[1:])]
    keys = metric_keys(s, present)
    rows = []
    for k in keys:
        label = _name(k) + (" (budget)" if k == budget_metric(s) else "")
        rows.append([label] + [_mval(m, k) for _, m in cols])
    caption = (f"All INT8 vs the plan vs FP32 on the {fmt_value((s.get('samples') or {}).get('search'))} search "
               "samples" + (f" and the {fmt_value(held.get('samples'))} held-out samples" if held else ""))
    return [Table(["metric"] + [c for c, _ in cols], rows, caption=caption)]


def _holdout(s: Mapping[str, Any]) -> List[Block]:
    held = s.get("holdout")
    if not isinstance(held, Mapping):
        return [Para("No held-out check: sensitivity.holdout=0 or too few samples, so the plan was only "
                     "measured on the samples it was searched on.")]
    key = budget_metric(s)
    b = held.get("budget") or s.get("budget") or {}

    def verdict(which: str) -> str:
        ok = held.get(f"{which}_meets")
        return "meets" if ok else ("MISSES" if ok is False else "unknown vs")

    seen = (", which also validated every plan during the search (sensitivity.validate), so this check is not "
            "independent of it" if held.get("in_search") else " the search never saw")
    text = (f"Held-out check on {fmt_value(held.get('samples'))} samples{seen}: the plan has "
            f"{_name(key)} {_mval(held.get('plan'), key)} and {verdict('plan')} the budget "
            f"({_budget_text(b, full=False)}); all INT8 has {_mval(held.get('all_int8'), key)} and "
            f"{verdict('all_int8')} it.")
    if held.get("nn_pool"):
        text += (f" Nearest-neighbour agreement here looks for each sample's neighbour among all "
                 f"{fmt_value(held.get('nn_pool'))} samples (search and held out): agreement falls as the candidate "
                 "set grows, so a set's own agreement would overstate it.")
    if held.get("plan_meets") is False:
        return [Para(text + " The plan may be tuned to the search samples: add samples (data.num_samples) or "
                            "tighten sensitivity.max_drop.", "warning")]
    return [Para(text)]


def _calibration_blocks(s: Mapping[str, Any]) -> List[Block]:
    cal = s.get("calibration") or {}
    blocks: List[Block] = []
    used = cal.get("methods_used") or {}
    if used:
        total = sum(int(v) for v in used.values() if _num(v) is not None)
        blocks.append(Table(["method", "tensors"], [[str(k), fmt_value(v)] for k, v in
                                                     sorted(used.items(), key=lambda kv: -(_num(kv[1]) or 0))],
                            caption=f"Calibration method chosen per activation tensor ({total} tensors; each "
                                    "tensor takes the method with the least output error at its first "
                                    "quantized consumer)"))
    uni, per = cal.get("uniform_metrics"), cal.get("per_tensor_metrics")
    source = ""
    if not per and cal.get("kept") == "per_tensor":
        # The all-INT8 search point runs with the kept calibration, so it is the per-tensor result.
        per, source = (s.get("all_int8") or {}).get("metrics"), "; = the all-INT8 search point"
    if uni or per:
        method = cal.get("uniform_method") or "quant.calib"
        keys = [k for k in METRIC_ORDER if any(isinstance(m, Mapping) and k in m for m in (uni, per))]
        kept = cal.get("kept")
        rows = [[_name(k), _mval(per, k), _mval(uni, k)] for k in keys]
        per_head = "per-tensor choice" + (f" (kept{source})" if kept == "per_tensor" else "")
        uni_head = f"{method} everywhere" + (" (kept)" if kept == "uniform" else "")
        blocks.append(Table(["all INT8", per_head, uni_head], rows,
                            caption="Calibration per tensor vs one method everywhere (search samples)"))
        if kept:
            blocks.append(Para(f"Kept: {'the per-tensor choice' if kept == 'per_tensor' else method + ' everywhere'}"
                               " (the one with the smaller harm on the budget metric); the plan file records it."))
    return blocks


# ---------------------------------------------------------------- layers


def _layer_table(s: Mapping[str, Any]) -> List[Block]:
    ranked = ranked_layers(s)
    if not ranked:
        return [Para("sensitivity.json lists no quantized layers.", "warning")]
    keys = [k for k in metric_keys(s) if any(k in (ly.get("one_at_a_time") or {}) for ly in ranked)]
    abo = any(isinstance(ly.get("all_but_one"), Mapping) for ly in ranked)
    bkey = budget_metric(s)
    headers = (["#", "layer", "op", "group"] + [f"{_name(k)}, only it INT8" for k in keys] + ["harm"]
               + ([f"{_name(bkey)}, all but it INT8"] if abo else [])
               + ["all-INT8 error SNR", "all-INT8 error cosine", "INT8 time", "float time", "float in plan",
                  "input calibration"])
    rows, flagged = [], []
    for i, ly in enumerate(ranked[:TOP_LAYERS]):
        err = ly.get("error_all_int8") or {}
        group = ly.get("group")
        if ly.get("in_plan_float"):
            flagged.append(i)
        rows.append([str(i + 1), str(ly.get("label")), str(ly.get("op_type") or MISSING),
                     str(group) if group and group != ly.get("label") else MISSING]
                    + [_mval(ly.get("one_at_a_time"), k) for k in keys] + [_harm(ly.get("harm"))]
                    + ([_mval(ly.get("all_but_one"), bkey)] if abo else [])
                    + [_db(err.get("snr_db")), _mval({"output_cosine": err.get("cosine")}, "output_cosine"),
                       fmt_time(ly.get("predicted_int8_s")), fmt_time(ly.get("predicted_float_s")),
                       "FLOAT" if ly.get("in_plan_float") else "int8", _input_methods(s, ly)])
    blocks: List[Block] = [
        Para("Each layer was quantized alone (everything else FP32) and the model's metrics measured: harm is "
             "the drop of the budget metric in units of the allowed drop (1 = this layer alone uses the whole "
             "budget). Ties are ranked by the layer's own output error with every layer INT8 (lower SNR first). "
             "Rows in bold stay float in the plan."),
        Table(headers, rows, caption=f"Layers ranked by harm ({min(len(ranked), TOP_LAYERS)} of {len(ranked)})",
              flagged=flagged),
    ]
    if len(ranked) > TOP_LAYERS:
        rest = ranked[TOP_LAYERS:]
        worst = max((_num(ly.get("harm")) or 0.0 for ly in rest), default=0.0)
        blocks.append(Para(f"{len(rest)} more layers (harm ≤ {worst:.3g} each) are in report.json "
                           "(sensitivity.layers)."))
    blocks.append(Para(_harm_sentence(ranked)))
    return blocks


def _harm_sentence(ranked: Sequence[Mapping[str, Any]]) -> str:
    harms = [_num(ly.get("harm")) or 0.0 for ly in ranked]
    top = ranked[0]
    over = sum(h >= 1.0 for h in harms)
    zero = sum(h <= 0.0 for h in harms)
    if harms[0] <= 0:
        return (f"No layer alone moves the budget metric: all {len(ranked)} have zero harm; the ranking "
                "above is by each layer's output error.")
    text = (f"The most harmful layer, {top.get('label')} ({top.get('op_type')}), alone uses "
            f"{100 * harms[0]:.0f}% of the allowed drop.")
    if over:
        text += f" {over} layer{'s' if over != 1 else ''} alone would break the budget (harm ≥ 1)."
    if zero:
        text += f" {zero} of {len(ranked)} layers cause no measurable drop."
    return text


def _groups(s: Mapping[str, Any]) -> List[Block]:
    groups = sorted((g for g in s.get("groups") or [] if isinstance(g, Mapping)),
                    key=lambda g: -(_num(g.get("harm")) or 0.0))
    if not groups:
        return []
    rows = [[str(g.get("name")), str(g.get("kind")), fmt_value(g.get("num_layers")), _harm(g.get("harm"))]
            for g in groups[:TOP_GROUPS]]
    return [Table(["group", "kind", "layers", "harm (sum of its layers)"], rows,
                  caption=f"Structural groups the search moves as one unit ({min(len(groups), TOP_GROUPS)} of "
                          f"{len(groups)}, by harm)")]


def _fallback_costs(s: Mapping[str, Any]) -> List[Block]:
    by_label = {ly.get("label"): ly for ly in s.get("layers") or [] if isinstance(ly, Mapping)}
    floats = list((s.get("plan") or {}).get("float_layers") or [])
    blocks: List[Block] = [Para("What each float fallback costs", "heading")]
    if not floats:
        return blocks + [Para("The plan keeps no layer in float, so it costs nothing over all INT8.")]
    costs = []
    for label in floats:
        ly = by_label.get(label) or {}
        a, b = _num(ly.get("predicted_int8_s")), _num(ly.get("predicted_float_s"))
        costs.append((label, ly, a, b, b - a if a is not None and b is not None else None))
    total = sum(c for *_, c in costs if c is not None)
    rows = [[str(label), _harm(ly.get("harm")), fmt_time(a), fmt_time(b), fmt_time(c),
             f"{100 * c / total:.0f}%" if c is not None and total > 0 else MISSING]
            for label, ly, a, b, c in sorted(costs, key=lambda r: -(r[4] or 0.0))]
    blocks.append(Table(["float layer", "harm", "predicted INT8", "predicted float", "cost (float - INT8)",
                         "share of the cost"], rows, caption="Predicted time each float layer adds to the plan"))
    base = _num(s.get("predicted_all_int8_s"))
    if base:
        which = "this layer" if len(floats) == 1 else f"these {len(floats)} layers"
        blocks.append(Para(f"Keeping {which} in float adds {fmt_time(total)} to the predicted "
                           f"all-INT8 {fmt_time(base)} ({100 * total / base:+.1f}%)."))
    return blocks


# ---------------------------------------------------------------- Pareto


def is_plan(s: Mapping[str, Any], p: Mapping[str, Any]) -> bool:
    """Whether the evaluated plan ``p`` is the chosen one (same float layers)."""
    plan = s.get("plan") or {}
    if "float_layers" in p:
        return sorted(p.get("float_layers") or []) == sorted(plan.get("float_layers") or [])
    return p.get("num_float") == plan.get("num_float") and p.get("predicted_s") == plan.get("predicted_s")


def _measured_cells(p: Mapping[str, Any]) -> List[str]:
    m = p.get("measured") if isinstance(p.get("measured"), Mapping) else {}
    thr = _num(m.get("throughput"))
    return [f"{thr:.1f} samples/s" if thr is not None else MISSING,
            f"{_num(m.get('latency_ms')):.3f} ms" if _num(m.get("latency_ms")) is not None else MISSING,
            str(m.get("precision") or MISSING)]


def _pareto(s: Mapping[str, Any]) -> List[Block]:
    front = [p for p in s.get("pareto") or [] if isinstance(p, Mapping)]
    points = [p for p in s.get("points") or [] if isinstance(p, Mapping)]
    blocks: List[Block] = [Para("Accuracy vs predicted time", "heading")]
    if not front:
        return blocks + [Para("No Pareto front: the plans have no predicted time (no hardware peaks for the "
                              "roofline) or no budget metric.", "warning")]
    keys = metric_keys(s)
    measured = any(isinstance(p.get("measured"), Mapping) for p in front)
    headers = (["", "float layers", "which"] + [_name(k) for k in keys]
               + ["predicted time", "vs all INT8", "meets budget"]
               + (["measured throughput", "measured latency", "measured as"] if measured else []))
    rows, flagged = [], []
    for i, p in enumerate(front):
        mark = is_plan(s, p)
        if mark:
            flagged.append(i)
        rows.append(["★ plan" if mark else "", fmt_value(p.get("num_float")), _names(p.get("float_layers") or [])]
                    + [_mval(p.get("metrics"), k) for k in keys]
                    + [fmt_time(p.get("predicted_s")), _delta_time(s, p.get("predicted_s")), fmt_value(p.get("meets"))]
                    + (_measured_cells(p) if measured else []))
    n = len(points) or len(front)
    chosen = ("The chosen plan is the one with the fewest float layers that meets the budget." if s.get("met")
              is not False else "No plan met the budget; the chosen plan is the closest one found.")
    blocks.append(Para(f"The search evaluated {n} plan{'s' if n != 1 else ''}; {len(front)} "
                       f"{'are' if len(front) != 1 else 'is'} on the Pareto front (no other plan has both a "
                       f"higher {_name(keys[0])} and a shorter predicted time). {chosen}"))
    blocks.append(Table(headers, rows, caption="Pareto front (★ = the chosen plan)", flagged=flagged))
    blocks.append(Figure("sens_pareto", f"{_name(keys[0])} vs predicted time of every evaluated plan; the line is "
                         "the Pareto front, the star the chosen plan, the dashed line the budget"
                         + (", right: vs measured throughput" if measured else "") + ".",
                         "no plan has a predicted time", html_only=True))
    return blocks


def sensitivity_section(s: Mapping[str, Any]) -> Section:
    """The "Layer-wise sensitivity" section for ``report["sensitivity"]`` (see :func:`compact_sensitivity`)."""
    blocks: List[Block] = _summary(s)
    blocks.append(Para("Layers by sensitivity", "heading"))
    blocks += _layer_table(s)
    blocks.append(Figure("sens_harm", "Harm per quantized layer in graph order (red: float in the plan; dashed: "
                         "harm 1 = the whole budget).", "no per-layer harm"))
    blocks.append(Figure("sens_error", "Each layer's output error with every layer INT8 (SNR in dB, higher is "
                         "better) through the network; red marks the plan's float layers.",
                         "no per-layer error measurements"))
    blocks += _groups(s)
    blocks += _fallback_costs(s)
    blocks += _pareto(s)
    return Section("Layer-wise sensitivity", "sensitivity", blocks)
