"""The report's content as a renderer-neutral document: sections of paragraphs, tables and figures.

Markdown and HTML render the same :class:`Document`, so both always say the same thing. Every
sentence that interprets the numbers is generated from the data here.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, List, Mapping, Optional

from pipeline.report import data
from pipeline.report.blocks import Block, Document, Figure, Para, Section, Table, generic_blocks
from pipeline.report.fmt import (
    MISSING,
    _num,
    fmt_bandwidth,
    fmt_bytes,
    fmt_count,
    fmt_intensity,
    fmt_ms,
    fmt_ops_per_s,
    fmt_pct,
    fmt_time,
    fmt_value,
    is_integer_precision,
)
from pipeline.report.schema import stage_reason

#: Layers listed in "where the time goes".
TOP_N = 15
#: A category whose predicted-time share exceeds this multiple of its FLOPs share is called out.
SHARE_RATIO = 1.5
#: ...if its share is at least this large (tiny categories are noise).
MIN_SHARE = 0.01

_BOUND_SENTENCE = (
    "The predicted latency is a lower bound: each layer takes at least max(FLOPs / peak, bytes / bandwidth)."
)
_FUSED_BOUND_SENTENCE = (
    "The predicted latency is a lower bound: each fused group takes at least max(FLOPs / peak, bytes / bandwidth)."
)


# ---------------------------------------------------------------- helpers


def _ops_unit(report: Mapping[str, Any]) -> bool:
    """Whether this run's arithmetic is integer (TOPS rather than TFLOPS)."""
    return is_integer_precision(data.peak_key(report)) or is_integer_precision(
        data.section(report, "precision").get("name")
    )


# ---------------------------------------------------------------- sections


def _alerts(report: Mapping[str, Any]) -> List[Para]:
    out = []
    for name, info in (report.get("stages") or {}).items():
        if info.get("status") in ("skipped", "failed"):
            verb = "SKIPPED" if info["status"] == "skipped" else "FAILED"
            out.append(Para(f"{name} {verb}: {info.get('reason') or 'no reason recorded'}", "warning"))
    if report.get("measured") is None and "profile" not in (report.get("stages") or {}):
        out.append(Para("No measurement: " + stage_reason(report, "profile") + ".", "warning"))
    return out


def _summary(report: Mapping[str, Any]) -> Section:
    model, prec = data.section(report, "model"), data.section(report, "precision")
    hw, meas, env = (
        data.section(report, "hardware"),
        data.section(report, "measured"),
        data.section(report, "environment"),
    )
    backend = meas.get("backend") or f"none ({stage_reason(report, 'profile')})"
    rows = [
        ["Model", f"{model.get('name', MISSING)}" + (f" ({model['task']})" if model.get("task") else "")],
        ["Precision", f"{prec.get('name', MISSING)} (peak: {data.peak_key(report) or MISSING})"],
        ["Hardware", f"{hw.get('name', MISSING)}" + (f" ({hw['kind']})" if hw.get("kind") else "")],
        ["Backend", str(backend)],
        ["Device measured", str(meas.get("device") or MISSING)],
        ["Batch size", fmt_value(data.batch_size(report))],
        ["Predicted lower-bound latency", fmt_time(data.predicted_latency_s(report))],
        ["Measured median latency", fmt_ms((meas.get("latency_ms") or {}).get("median"))],
    ]
    if data.predicted_latency_unfused_s(report) is not None:
        rows.insert(-1, ["Predicted latency, unfused", fmt_time(data.predicted_latency_unfused_s(report))])
    pkgs = env.get("packages") or {}
    made = [
        ["Command line", str(env.get("command_line") or MISSING)],
        ["Started at", str(env.get("started_at") or MISSING)],
        ["Report written at", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")],
        ["Git commit", str(env.get("git_commit") or MISSING)],
        ["Host", str(env.get("hostname") or MISSING)],
        ["GPU/CPU", f"{hw.get('name', MISSING)}; measured on {meas.get('device') or MISSING}"],
        ["Python / platform", f"{env.get('python', MISSING)} / {env.get('platform', MISSING)}"],
        ["Packages", ", ".join(f"{k} {v}" for k, v in pkgs.items()) if isinstance(pkgs, Mapping) and pkgs else MISSING],
    ]
    return Section(
        "Summary",
        "summary",
        [Table(["", ""], rows), Table(["", ""], made, caption="How this report was made")],
    )


def _stages(report: Mapping[str, Any]) -> Section:
    rows, flagged = [], []
    for i, (name, info) in enumerate((report.get("stages") or {}).items()):
        status = str(info.get("status"))
        if status not in ("ran", "reused"):
            flagged.append(i)
        outputs = info.get("outputs") or {}
        out_text = (
            ", ".join(f"{k}: {fmt_value(v)}" for k, v in outputs.items())
            if isinstance(outputs, Mapping)
            else fmt_value(outputs)
        )
        seconds = fmt_time(info.get("seconds")) if status in ("ran", "reused", "failed") else MISSING
        rows.append(
            [
                name,
                status.upper() if status not in ("ran", "reused") else status,
                seconds,
                str(info.get("reason") or ""),
                out_text or MISSING,
            ]
        )
    blocks: List[Block] = [Table(["stage", "status", "time", "reason", "outputs"], rows, flagged=flagged)]
    if not rows:
        blocks = [Para("No stage records in this report.", "warning")]
    return Section("Stages", "stages", blocks)


def _peaks(report: Mapping[str, Any]) -> Section:
    used = data.peak_key(report)
    rows = []
    for p in data.peaks(report):
        rows.append(
            [
                p.key + (" (used)" if p.key == used else ""),
                fmt_ops_per_s(p.dense, p.integer),
                fmt_ops_per_s(p.sparse, p.integer) if p.sparse and p.sparse != p.dense else MISSING,
                (p.formula or MISSING) + (f" (note: {p.note})" if p.note else ""),
                p.source or MISSING,
            ]
        )
    bw = data.bandwidth(report)
    if bw.bytes_per_s:
        rows.append(
            ["memory bandwidth", fmt_bandwidth(bw.bytes_per_s), MISSING, bw.formula or MISSING, bw.source or MISSING]
        )
    if not rows:
        return Section(
            "Theoretical peaks",
            "peaks",
            [Para("No hardware peaks: " + stage_reason(report, "analyze") + ".", "warning")],
        )
    blocks: List[Block] = [Table(["unit", "peak (dense)", "peak (2:4 sparse)", "formula", "source"], rows)]
    hw = data.section(report, "hardware")
    if isinstance(hw.get("sources"), Mapping) and hw["sources"]:
        blocks.append(Table(["ref", "source"], [[str(k), fmt_value(v)] for k, v in hw["sources"].items()], "Sources"))
    if isinstance(hw.get("detection"), Mapping) and hw["detection"]:
        blocks += generic_blocks(hw["detection"], caption="How the hardware was detected")
    if hw.get("notes"):
        blocks.append(Para("Hardware notes: " + fmt_value(hw["notes"])))
    return Section("Theoretical peaks", "peaks", blocks)


def _model_totals(report: Mapping[str, Any]) -> Section:
    if report.get("analysis") is None:
        return Section(
            "Model totals and roofline",
            "totals",
            [Para("No analysis: " + stage_reason(report, "analyze") + ".", "warning")],
        )
    t = data.totals(report)
    ridge = data.ridge_point(report)
    pred = data.predicted_latency_s(report)
    rows = [
        [
            "FLOPs per inference",
            f"{fmt_count(t['flops'], 'FLOPs')}"
            + (f" ({t['flops'] / 1e9:.3f} GFLOPs)" if t["flops"] is not None else ""),
        ],
        [
            "MACs per inference",
            f"{fmt_count(t['macs'], 'MACs')}" + (f" ({t['macs'] / 1e9:.3f} GMACs)" if t["macs"] is not None else ""),
        ],
        ["Parameters", fmt_count(t["params"])],
        ["Weight bytes", fmt_bytes(t["weight_bytes"])],
        ["Activation bytes", fmt_bytes(t["activation_bytes"])],
        ["Total bytes moved", fmt_bytes(t["bytes"])],
        ["Arithmetic intensity", fmt_intensity(t["intensity"])],
        ["Ridge point", fmt_intensity(ridge)],
    ]
    unfused = data.predicted_latency_unfused_s(report)
    if unfused is None:
        rows.append(["Predicted lower-bound latency", fmt_time(pred)])
    else:
        rows.append(["Predicted latency, fused (TensorRT-style groups)", fmt_time(pred)])
        rows.append(["Predicted latency, unfused (node by node)", fmt_time(unfused)])
    blocks: List[Block] = [Table(["quantity", "value"], rows)]
    if unfused is not None:
        ratio = f" ({unfused / pred:.2f}x the fused one)" if pred else ""
        blocks.append(
            Para(
                "Fused: ONNX nodes grouped as TensorRT fuses them (conv/gemm + bias, BatchNorm, activation and "
                "residual add; pointwise chains; Q/DQ absorbed; views free), each group reading its inputs and "
                "weights and writing its outputs once: a bound for an engine that fuses this way, not a "
                "prediction of the tactics TensorRT picks. Unfused: every node runs alone and round-trips its "
                f"output through DRAM, the bound for node-by-node execution{ratio}."
            )
        )
    if t["intensity"] is not None and ridge:
        side = "below" if t["intensity"] < ridge else "above"
        kind = "memory-bound" if side == "below" else "compute-bound"
        blocks.append(
            Para(
                f"The model's overall intensity ({fmt_intensity(t['intensity'])}) is {side} the ridge point "
                f"({fmt_intensity(ridge)}) of {data.peak_key(report) or 'the selected peak'}, "
                f"so as a whole it is {kind} on this hardware. "
                + (_BOUND_SENTENCE if unfused is None else _FUSED_BOUND_SENTENCE)
            )
        )
    blocks.append(
        Figure(
            "roofline",
            "Roofline (log-log). Each ceiling is a theoretical peak; points are layers.",
            "no hardware peaks or bandwidth to draw",
        )
    )
    return Section("Model totals and roofline", "totals", blocks)


def _measured(report: Mapping[str, Any]) -> Section:
    m = report.get("measured")
    if not isinstance(m, Mapping):
        return Section(
            "Measured", "measured", [Para("Nothing was measured: " + stage_reason(report, "profile") + ".", "warning")]
        )
    lat = m.get("latency_ms") or {}
    ach = data.measured_achieved(report)
    integer = _ops_unit(report)
    peak_key = m.get("peak_key") or data.peak_key(report)
    rows = [
        ["Backend", str(m.get("backend") or MISSING)],
        ["Device", str(m.get("device") or MISSING)],
        ["Precision executed", str(m.get("precision_executed") or MISSING)],
        ["Batch size", fmt_value(m.get("batch_size"))],
        ["Latency median", fmt_ms(lat.get("median"))],
        ["Latency p90", fmt_ms(lat.get("p90"))],
        ["Latency p99", fmt_ms(lat.get("p99"))],
        ["Latency mean / min / max", " / ".join(fmt_ms(lat.get(k)) for k in ("mean", "min", "max"))],
        [
            "Throughput",
            f"{_num(m.get('throughput_samples_s')):.1f} samples/s"
            if _num(m.get("throughput_samples_s")) is not None
            else MISSING,
        ],
        [
            "Achieved",
            fmt_ops_per_s(ach["achieved_ops_per_s"], integer) + (" (derived in report)" if ach["derived"] else ""),
        ],
        ["% of peak", fmt_pct(ach["pct_of_peak"]) + (f" of {peak_key}" if peak_key else "")
         + (f" ({m['peak_hardware']})" if m.get("peak_hardware") else "")],
        [
            "Iterations",
            fmt_value(m.get("iterations"))
            + (f" over {fmt_time(m.get('duration_s'))}" if m.get("duration_s") is not None else ""),
        ],
        ["Includes copies", fmt_value(m.get("includes_copies"))],
    ]
    if m.get("providers"):
        rows.append(["Providers", fmt_value(m.get("providers"))])
    known = {
        "backend",
        "device",
        "precision_executed",
        "batch_size",
        "latency_ms",
        "throughput_samples_s",
        "achieved_ops_per_s",
        "pct_of_peak",
        "peak_key",
        "iterations",
        "duration_s",
        "includes_copies",
        "providers",
        "notes",
    }
    for k, v in m.items():
        if k not in known and not isinstance(v, (Mapping, list)):
            rows.append([k, fmt_value(v)])
    blocks: List[Block] = [Table(["metric", "value"], rows)]
    pred, median = data.predicted_latency_s(report), _num(lat.get("median"))
    if pred and median:
        blocks.append(
            Para(
                f"Measured median latency {fmt_ms(median)} is {median / 1e3 / pred:.2f}x the predicted lower bound "
                f"{fmt_time(pred)} (1.00x would mean every layer ran at the roofline)."
            )
        )
    for note in m.get("notes") or []:
        blocks.append(Para(f"Note: {note}"))
    return Section("Measured", "measured", blocks)


def _where_time_goes_groups(report: Mapping[str, Any], top: List[dict]) -> Section:
    """Top fusion groups by predicted (fused) time, with measured time summed over their layers."""
    all_groups = data.groups(report)
    total = sum(_num(g.get("bound_s")) or 0.0 for g in all_groups)
    measured = any(_num(g.get("measured_s")) is not None for g in all_groups)
    headers = ["#", "fused group", "anchor", "category", "nodes", "FLOPs", "bytes", "intensity", "bound",
               "predicted", "% of predicted"]
    if measured:
        headers += ["measured", "efficiency"]
    rows = []
    for i, g in enumerate(top, 1):
        b = float(g["bound_s"])
        row = [
            str(i),
            str(g.get("name", MISSING)),
            str(g.get("anchor_op", MISSING)),
            str(g.get("category", MISSING)),
            str(len(g.get("nodes") or [])),
            fmt_count(g.get("flops")),
            fmt_bytes(g.get("bytes")),
            fmt_intensity(g.get("intensity")),
            str(g.get("bound", MISSING)),
            fmt_time(b),
            fmt_pct(100 * b / total if total else None),
        ]
        if measured:
            ms = _num(g.get("measured_s"))
            row += [fmt_time(ms), fmt_pct(100 * b / ms) if ms else MISSING]
        rows.append(row)
    covered = sum(float(g["bound_s"]) for g in top)
    n_layers = len(data.layers(report))
    blocks: List[Block] = [
        Para(
            f"The {len(top)} slowest of {len(all_groups)} fused groups ({n_layers} ONNX nodes) by predicted time "
            f"account for {fmt_pct(100 * covered / total if total else None)} of the predicted (fused) total. "
            "A group's bytes are only the tensors crossing its boundary plus its weights."
            + (" Measured = sum of the measured times of the group's layers; efficiency = predicted bound / "
               "measured time (100% = at the roofline)." if measured else "")
        ),
        Table(headers, rows),
        Figure("top_layers", f"Top {len(top)} fused groups by predicted time.", "no per-group predictions"),
    ]
    return Section("Where the time goes", "layers", blocks)


def _where_time_goes(report: Mapping[str, Any]) -> Section:
    top_groups = data.top_groups(report, TOP_N)
    if top_groups:
        return _where_time_goes_groups(report, top_groups)
    top = data.top_layers(report, TOP_N)
    if not top:
        return Section(
            "Where the time goes",
            "layers",
            [Para("No per-layer data: " + stage_reason(report, "analyze") + ".", "warning")],
        )
    all_layers = data.layers(report)
    total = sum(_num(layer.get("bound_s")) or 0.0 for layer in all_layers)
    measured = data.has_measured_layers(report)
    headers = ["#", "layer", "op", "category", "FLOPs", "bytes", "intensity", "bound", "predicted", "% of predicted"]
    if measured:
        headers += ["measured", "efficiency"]
    rows = []
    for i, layer in enumerate(top, 1):
        b = float(layer["bound_s"])
        row = [
            str(i),
            str(layer["name"]),
            str(layer.get("op_type", MISSING)),
            str(layer.get("category", MISSING)),
            fmt_count(layer.get("flops")),
            fmt_bytes(layer.get("bytes")),
            fmt_intensity(layer.get("intensity")),
            str(layer.get("bound", MISSING)),
            fmt_time(b),
            fmt_pct(100 * b / total if total else None),
        ]
        if measured:
            ms = _num(layer.get("measured_s"))
            row += [fmt_time(ms), fmt_pct(100 * b / ms) if ms else MISSING]
        rows.append(row)
    covered = sum(float(layer["bound_s"]) for layer in top)
    blocks: List[Block] = [
        Para(
            f"The {len(top)} slowest of {len(all_layers)} layers by predicted time account for "
            f"{fmt_pct(100 * covered / total if total else None)} of the predicted total."
            + (" Efficiency = predicted bound / measured time (100% = at the roofline)." if measured else "")
        ),
        Table(headers, rows),
        Figure("top_layers", f"Top {len(top)} layers by predicted time.", "no per-layer predictions"),
    ]
    return Section("Where the time goes", "layers", blocks)


def _share(fraction: float) -> str:
    """A share in [0, 1] as a percentage that never rounds a non-zero share down to 0.0%."""
    return "<0.1%" if 0 < fraction < 0.0005 else f"{fraction:.1%}"


def category_sentences(cats: List[data.CategoryShare], ridge: Optional[float]) -> List[str]:
    """Sentences explaining where FLOPs share and predicted-time share disagree, from the data."""
    ridge_text = f" of {fmt_intensity(ridge)}" if ridge else ""
    over = [c for c in cats if c.time_share >= MIN_SHARE and c.time_share > SHARE_RATIO * c.flops_share]
    under = [c for c in cats if c.flops_share >= MIN_SHARE and c.flops_share > SHARE_RATIO * c.time_share]
    out = []
    for c in over:
        unit, one = c.unit, ("group" if c.unit == "fused groups" else "layer")
        if c.memory_bound:
            which = f"its only {one} is" if c.layers == 1 else f"{c.memory_bound} of its {c.layers} {unit} are"
            why = (
                f"{which} memory-bound (intensity below the ridge point{ridge_text}), "
                "so bytes moved, not arithmetic, set the time"
            )
        else:
            why = "its time is not proportional to its arithmetic"
        out.append(
            f"{c.category} does {_share(c.flops_share)} of the FLOPs "
            f"but takes {_share(c.time_share)} of the predicted time: {why}."
        )
    for c in under:
        unit, one = c.unit, ("group" if c.unit == "fused groups" else "layer")
        compute = c.layers - c.memory_bound
        which = f"its only {one} is" if c.layers == 1 else f"{compute} of its {c.layers} {unit} are"
        out.append(
            f"{c.category} does {_share(c.flops_share)} of the FLOPs "
            f"but takes only {_share(c.time_share)} of the predicted time ({which} compute-bound, at the peak)."
        )
    if over:
        names = ", ".join(c.category for c in over if c.memory_bound) or ", ".join(c.category for c in over)
        out.append(f"So FLOPs alone do not predict speed here: {names} cost time out of proportion to their FLOPs.")
    elif cats:
        out.append(
            f"Here predicted time tracks FLOPs: no category's time share exceeds {SHARE_RATIO}x its FLOPs share, "
            "so FLOPs are a fair proxy for speed at this precision."
        )
    return out


def _categories(report: Mapping[str, Any]) -> Section:
    cats = data.category_shares(report)
    if not cats:
        return Section(
            "FLOPs vs time by category",
            "categories",
            [Para("No per-category data: " + stage_reason(report, "analyze") + ".", "warning")],
        )
    measured = any(c.measured_share is not None for c in cats)
    unit = cats[0].unit
    headers = [
        "category",
        unit,
        f"memory-bound {unit}",
        "FLOPs",
        "FLOPs share",
        "predicted time",
        "time share",
        "time/FLOPs share",
    ]
    if measured:
        headers.append("measured time share")
    rows = []
    for c in cats:
        ratio = f"{c.time_share / c.flops_share:.2f}x" if c.flops_share else ("∞" if c.time_share else MISSING)
        row = [
            c.category,
            str(c.layers),
            str(c.memory_bound),
            fmt_count(c.flops),
            _share(c.flops_share),
            fmt_time(c.time_s),
            _share(c.time_share),
            ratio,
        ]
        if measured:
            row.append(fmt_pct(100 * c.measured_share) if c.measured_share is not None else MISSING)
        rows.append(row)
    blocks: List[Block] = [Table(headers, rows)]
    if unit == "fused groups":
        blocks.append(Para("Shares are over fused groups: a group counts for the category of its anchor "
                           "(a conv + activation + residual add group is conv time), so fused elementwise "
                           "ops no longer show up as elementwise time."))
    blocks += [Para(s) for s in category_sentences(cats, data.ridge_point(report))]
    blocks.append(
        Figure("category_share", "Share of FLOPs vs share of predicted time per category.", "no per-category data")
    )
    return Section("FLOPs vs time by category", "categories", blocks)


def _generic(report: Mapping[str, Any], key: str, title: str, stages: tuple) -> Section:
    """A free-form section (accuracy, quantization) rendered as tables, or why it is empty."""
    value = report.get(key)
    if value is None:
        infos = report.get("stages") or {}
        why = [stage_reason(report, s) for s in stages if (infos.get(s) or {}).get("status") not in ("ran", "reused")]
        text = "; ".join(why) if why else f"the {'/'.join(stages)} stage(s) ran but recorded no {key} results"
        return Section(title, key, [Para(f"No {key} results: {text}.", "warning")])
    return Section(title, key, generic_blocks(value) or [Para("(empty)")])


def _quantization(report: Mapping[str, Any]) -> Section:
    """Quantization: summary, metrics, ranges and calibration comparison (see :mod:`pipeline.report.quant`)."""
    q = report.get("quantization")
    if not isinstance(q, Mapping):
        return _generic(report, "quantization", "Quantization", ("quantize",))
    from pipeline.report.quant import quantization_section

    return quantization_section(q)


def _sensitivity(report: Mapping[str, Any]) -> List[Section]:
    """Layer-wise sensitivity (see :mod:`pipeline.report.sensitivity`); no section when the run has none."""
    s = report.get("sensitivity")
    if not isinstance(s, Mapping):
        return []
    from pipeline.report.sensitivity import sensitivity_section

    return [sensitivity_section(s)]


def _explain(report: Mapping[str, Any]) -> List[Section]:
    """Per-layer gap to the roofline (see :mod:`pipeline.report.explain`); none when the run was not explained."""
    ex = report.get("explain")
    if not isinstance(ex, Mapping):
        return []
    from pipeline.report.explain import explain_section

    return [explain_section(ex)]


def _prune_qat(report: Mapping[str, Any]) -> List[Section]:
    """Pruning and QAT (see :mod:`pipeline.report.prune`); none when the run had neither stage."""
    from pipeline.report.prune import prune_section, qat_section

    out = []
    if isinstance(report.get("prune"), Mapping):
        out.append(prune_section(report["prune"]))
    if isinstance(report.get("qat"), Mapping):
        out.append(qat_section(report["qat"]))
    return out


def _model_io(report: Mapping[str, Any]) -> Section:
    model = data.section(report, "model")
    blocks: List[Block] = []
    for key in ("inputs", "outputs"):
        items = model.get(key) or []
        if items and all(isinstance(i, Mapping) for i in items):
            blocks.append(
                Table(
                    ["name", "shape", "dtype"],
                    [[str(i.get("name")), fmt_value(i.get("shape")), str(i.get("dtype", MISSING))] for i in items],
                    caption=key,
                )
            )
        elif items:
            blocks.append(Para(f"{key}: {fmt_value(items)}"))
    extra = {k: v for k, v in model.items() if k not in ("inputs", "outputs")}
    blocks += generic_blocks(extra)
    return Section("Model", "model", blocks)


def _environment(report: Mapping[str, Any]) -> Section:
    env = data.section(report, "environment")
    blocks: List[Block] = generic_blocks({k: v for k, v in env.items() if k != "config"})
    if env.get("config") is not None:
        blocks.append(Para("Resolved configuration:"))
        blocks.append(Para(json.dumps(env["config"], indent=2, default=str), "code"))
    return Section("Environment", "environment", blocks)


def build_document(report: Mapping[str, Any]) -> Document:
    """Turn a validated report dict into the renderer-neutral :class:`Document`."""
    model, prec, hw = data.section(report, "model"), data.section(report, "precision"), data.section(report, "hardware")
    backend = data.section(report, "measured").get("backend") or "not measured"
    title = f"{model.get('name', 'model')} · {prec.get('name', '?')} · {hw.get('name', 'unknown hardware')} · {backend}"
    sections = [
        _summary(report),
        _stages(report),
        _peaks(report),
        _model_totals(report),
        _measured(report),
        _where_time_goes(report),
        *_explain(report),
        _categories(report),
        _generic(report, "accuracy", "Accuracy", ("export", "profile")),
        *_prune_qat(report),
        _quantization(report),
        *_sensitivity(report),
        _model_io(report),
        _environment(report),
    ]
    return Document(title=title, alerts=_alerts(report), sections=sections)
