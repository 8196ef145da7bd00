"""The report's plots as inline SVG strings (matplotlib, no pyplot, no global backend state).

Each function returns ``None`` when the data it needs is missing, so the caller can say why in
place of the plot. matplotlib is imported inside the functions.
"""

from __future__ import annotations

import io
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence

from pipeline.report import data
from pipeline.report.fmt import _num, fmt_ops_per_s
from pipeline.report.quant import _METRIC_NAMES, MAX_HISTOGRAMS, PLOT_BINS, _variant_name, is_best
from pipeline.report.sensitivity import budget_metric, is_plan

#: How many layers the "top layers" bar chart shows.
TOP_N = 15

_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _label(text: str, width: int = 42) -> str:
    """Plot-safe label: '$' would start matplotlib mathtext; long ONNX names are shortened in the middle."""
    text = str(text).replace("$", r"\$")
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width // 2) :]


def _to_svg(fig: Any, salt: str) -> str:
    """Serialize ``fig`` as an SVG fragment fit for inlining in HTML (no XML prolog/DOCTYPE/metadata)."""
    import matplotlib

    buf = io.StringIO()
    # Text stays text (smaller, searchable); a per-plot salt keeps element ids unique within a page.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    return re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _same_ceiling(peaks: List[data.Peak], rel: float = 0.005) -> List[List[data.Peak]]:
    """Group peaks (sorted fastest first) whose values agree within ``rel``: one line, one label."""
    groups: List[List[data.Peak]] = []
    for p in peaks:
        if groups and abs(groups[-1][0].dense - p.dense) <= rel * groups[-1][0].dense:
            groups[-1].append(p)
        else:
            groups.append([p])
    return groups


def _roofline_ceilings(ax: Any, peaks: Sequence[Any], bw: float, lo: float, hi: float, used: Optional[str]) -> None:
    """The bandwidth slope and one ceiling per distinct peak (the precision's own drawn bold)."""
    top = max((p.dense for p in peaks), default=bw * hi if bw else 1.0)
    if bw:
        x_end = (top / bw) if peaks else hi
        ax.plot([lo, x_end], [bw * lo, bw * x_end], color="black", lw=1.8, label=f"memory {bw / 1e9:.0f} GB/s")
    for group in _same_ceiling(peaks):
        value, is_used = group[0].dense, any(p.key == used for p in group)
        x0 = value / bw if bw else lo
        style = {"lw": 2.2, "ls": "-", "color": "black"} if is_used else {"lw": 1.2, "ls": "--", "color": "0.35"}
        ax.plot([x0, hi], [value, value], **style)
        kinds = {p.integer for p in group}
        amount = fmt_ops_per_s(value, True in kinds) if len(kinds) == 1 else f"{value / 1e12:.1f} T(FL)OPS"
        ax.annotate(
            " = ".join(p.key for p in group) + f": {amount}" + (" (used)" if is_used else ""),
            (hi, value),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            fontsize=8,
            fontweight="bold" if is_used else "normal",
        )


def _roofline_layers(ax: Any, layers: Sequence[Mapping[str, Any]]) -> None:
    """Layers by category: predicted points at flops / bound, measured ones hollow at flops / measured time."""
    cats = sorted({str(layer.get("category") or layer.get("op_type") or "other") for layer in layers})
    color = {c: _COLORS[i % len(_COLORS)] for i, c in enumerate(cats)}
    any_measured = False
    for cat in cats:
        mine = [layer for layer in layers if str(layer.get("category") or layer.get("op_type") or "other") == cat]
        pred = [
            (float(layer["intensity"]), float(layer["flops"]) / float(layer["bound_s"]))
            for layer in mine
            if (_num(layer.get("bound_s")) or 0) > 0
        ]
        if pred:
            ax.scatter(*zip(*pred, strict=True), s=22, color=color[cat], label=_label(cat, 24), zorder=3, alpha=0.85)
        meas = [
            (float(layer["intensity"]), float(layer["flops"]) / float(layer["measured_s"]))
            for layer in mine
            if (_num(layer.get("measured_s")) or 0) > 0
        ]
        if meas:
            any_measured = True
            ax.scatter(*zip(*meas, strict=True), s=30, facecolors="none", edgecolors=color[cat], marker="D", zorder=3)
    if any_measured:
        ax.scatter([], [], s=30, facecolors="none", edgecolors="black", marker="D", label="measured (per layer)")


def _roofline_model(ax: Any, report: Mapping[str, Any]) -> None:
    """The whole model as a star: predicted (gold) and measured (hollow red)."""
    t = data.totals(report)
    pred_lat = data.predicted_latency_s(report)
    if t["intensity"] and t["flops"] and pred_lat:
        ax.scatter(
            [t["intensity"]],
            [t["flops"] / pred_lat],
            marker="*",
            s=160,
            color="gold",
            edgecolors="black",
            zorder=4,
            label="model (predicted)",
        )
    median_ms = _num((data.section(report, "measured").get("latency_ms") or {}).get("median"))
    if t["intensity"] and t["flops"] and median_ms:
        ax.scatter(
            [t["intensity"]],
            [t["flops"] / (median_ms / 1e3)],
            marker="*",
            s=160,
            facecolors="none",
            edgecolors="red",
            zorder=4,
            label="model (measured)",
        )


def roofline_svg(report: Mapping[str, Any]) -> Optional[str]:
    """Log-log roofline: one ceiling per hardware peak, the bandwidth slope, layers as points.

    x = arithmetic intensity (FLOP/byte), y = attainable ops/s. Predicted points sit at
    ``flops / bound_s``; measured layers (``measured_s``) get a second, hollow marker at
    ``flops / measured_s``. Returns None when the hardware has neither peaks nor bandwidth.
    """
    peaks = [p for p in data.peaks(report) if p.dense and p.dense > 0]
    bw = data.bandwidth(report).bytes_per_s
    if not peaks and not bw:
        return None
    layers = [
        layer
        for layer in data.layers(report)
        if (_num(layer.get("intensity")) or 0) > 0 and (_num(layer.get("flops")) or 0) > 0
    ]
    xs = [float(layer["intensity"]) for layer in layers]
    ridges = [p.dense / bw for p in peaks] if bw else []
    lo = min(xs + ridges + [1.0]) / 4
    hi = max(xs + ridges + [1.0]) * 4

    fig = _figure(8.0, 5.2)
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_yscale("log")
    _roofline_ceilings(ax, peaks, bw, lo, hi, data.peak_key(report))
    _roofline_layers(ax, layers)
    _roofline_model(ax, report)

    ax.set_xlim(lo, hi)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("attainable performance (ops/s)")
    ax.set_title("Roofline: " + _label(data.section(report, "hardware").get("name") or "hardware", 60))
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    return _to_svg(fig, "roofline")


def top_layers_svg(report: Mapping[str, Any], n: int = TOP_N) -> Optional[str]:
    """Horizontal bars of the ``n`` fusion groups (else layers, for reports without groups) with the
    largest predicted time (and measured time if any)."""
    top = data.top_groups(report, n)
    what = "fused groups"
    if top:
        names = [_label(f"{g['name']} ({g.get('anchor_op', '?')})") for g in top]
    else:
        top, what = data.top_layers(report, n), "layers"
        names = [_label(f"{layer['name']} ({layer.get('op_type', '?')})") for layer in top]
    if not top:
        return None
    longest = max(max(float(layer["bound_s"]), _num(layer.get("measured_s")) or 0.0) for layer in top)
    scale, unit = (1e3, "ms") if longest >= 1e-3 else (1e6, "µs")  # keep tick labels readable
    pred_ms = [float(layer["bound_s"]) * scale for layer in top]
    meas_ms = [(_num(layer.get("measured_s")) or 0.0) * scale for layer in top]
    has_meas = any(meas_ms)
    fig = _figure(8.0, 0.32 * len(top) + 1.4)
    ax = fig.add_subplot()
    ys = list(range(len(top)))
    h = 0.4 if has_meas else 0.7
    colors = ["#d62728" if str(layer.get("bound", "")).startswith("mem") else "#1f77b4" for layer in top]
    ax.barh(
        [y - (h / 2 if has_meas else 0) for y in ys],
        pred_ms,
        height=h,
        color=colors,
        label="predicted (roofline bound)",
    )
    if has_meas:
        ax.barh([y + h / 2 for y in ys], meas_ms, height=h, color="0.55", label="measured")
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"time per inference ({unit})")
    ax.set_title(f"Top {len(top)} {what} by predicted time (red = memory-bound, blue = compute-bound)", fontsize=9)
    ax.grid(True, axis="x", alpha=0.25)
    if has_meas:
        ax.legend(fontsize=7, loc="lower right")
    return _to_svg(fig, "top_layers")


def category_share_svg(report: Mapping[str, Any]) -> Optional[str]:
    """Grouped bars per category: share of FLOPs vs share of predicted time (and measured time)."""
    cats = data.category_shares(report)
    if not cats:
        return None
    has_meas = any(c.measured_share is not None for c in cats)
    series: List[Dict[str, Any]] = [
        {"label": "FLOPs share", "values": [c.flops_share * 100 for c in cats], "color": "#1f77b4"},
        {"label": "predicted time share", "values": [c.time_share * 100 for c in cats], "color": "#d62728"},
    ]
    if has_meas:
        series.append(
            {"label": "measured time share", "values": [(c.measured_share or 0) * 100 for c in cats], "color": "0.55"}
        )
    fig = _figure(max(6.0, 0.9 * len(cats) + 2.5), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(cats))]
        ax.bar(xs, s["values"], width=width, color=s["color"], label=s["label"])
    ax.set_xticks(range(len(cats)), [_label(c.category, 18) for c in cats], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("% of model total")
    ax.set_title("FLOPs share vs time share by layer category", fontsize=10)
    ax.grid(True, axis="y", alpha=0.25)
    ax.legend(fontsize=8)
    return _to_svg(fig, "category_share")


def all_plots(report: Mapping[str, Any]) -> Dict[str, Optional[str] | Exception]:
    """Every plot by key (``roofline``, ``top_layers``, ``category_share``, ``quant_metric``,
    ``quant_histograms``, ``sens_harm``, ``sens_error``, ``sens_pareto``).

    A plot that fails to render becomes its exception, so the HTML still gets written with the
    error in place of that one plot.
    """

    out: Dict[str, Optional[str] | Exception] = {}
    fns = (("roofline", roofline_svg), ("top_layers", top_layers_svg), ("category_share", category_share_svg),
           ("quant_metric", metric_svg), ("quant_histograms", histograms_svg),
           ("sens_harm", sensitivity_harm_svg), ("sens_error", sensitivity_error_svg),
           ("sens_pareto", sensitivity_pareto_svg))
    for key, fn in fns:
        try:
            out[key] = fn(report)
        except Exception as err:  # noqa: BLE001 - one bad plot must not lose the whole report
            out[key] = err
    return out


# ---------------------------------------------------------------- quantization plots


def _gid(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)


def _fold(counts: List[float], edges: List[float], bins: int):
    """Sum adjacent bins down to at most ``bins`` (keeps the SVG small); edges follow."""
    f = max(1, -(-len(counts) // bins))
    out = [sum(counts[i : i + f]) for i in range(0, len(counts), f)]
    return out, [edges[min(i, len(edges) - 1)] for i in range(0, len(counts) + 1, f)][: len(out)] + [
        edges[min(len(counts), len(edges) - 1)]]


def histograms_svg(report: Mapping[str, Any]) -> Optional[str]:
    """Small multiples of |x| histograms with one vertical line per method threshold.

    Each threshold line is an SVG group with id ``quant-thr-<i>-<method>``.
    """
    c = (report.get("quantization") or {}).get("comparison") or {}
    hists = [h for h in (c.get("histograms") or []) if isinstance(h, Mapping) and h.get("counts")]
    hists = hists[:MAX_HISTOGRAMS]
    if not hists:
        return None
    methods: List[str] = []
    for h in hists:
        methods += [k for k in (h.get("thresholds") or {}) if k not in methods]
    color = {k: _COLORS[(i + 1) % len(_COLORS)] for i, k in enumerate(methods)}
    styles = ("-", "--", "-.", ":")
    cols = min(3, len(hists))
    nrows = (len(hists) + cols - 1) // cols
    fig = _figure(4.0 * cols, 2.9 * nrows + 0.5)
    axes = fig.subplots(nrows, cols, squeeze=False)
    for i, (ax, h) in enumerate(zip(axes.ravel(), hists)):
        counts, edges = _fold([float(v) for v in h["counts"]], [float(e) for e in h["edges"]], PLOT_BINS)
        ax.stairs([max(v, 0.5) for v in counts], edges, fill=True, color="0.7", label="|x| histogram")
        for j, (k, a) in enumerate((h.get("thresholds") or {}).items()):
            if _num(a) is None:
                continue
            ax.axvline(float(a), color=color[k], lw=1.3, ls=styles[j % len(styles)], label=k,
                       gid=f"quant-thr-{i}-{_gid(k)}")
        last = max((i for i, v in enumerate(counts) if v > 0), default=len(counts) - 1)
        thr = [float(a) for a in (h.get("thresholds") or {}).values() if _num(a) is not None]
        ax.set_xlim(edges[0], max([edges[last + 1]] + thr) * 1.05)
        ax.set_yscale("log")
        ax.minorticks_off()  # log-scale minor ticks would be most of the SVG
        ax.set_title(_label(h.get("name", "?"), 40), fontsize=8)
        ax.set_xlabel("|x|" if h.get("abs", True) else "x", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(hists):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7), fontsize=7)
    fig.suptitle("Activation histograms and calibration thresholds", fontsize=10)
    return _to_svg(fig, "quant_histograms")


def metric_svg(report: Mapping[str, Any]) -> Optional[str]:
    """Bars of the primary metric (and output cosine) per method x granularity; best bar outlined."""
    c = (report.get("quantization") or {}).get("comparison") or {}
    rows = [r for r in (c.get("results") or []) if isinstance(r, Mapping) and isinstance(r.get("metrics"), Mapping)]
    if not rows:
        return None
    primary = str(c.get("primary") or "output_cosine")
    best = c.get("best") if isinstance(c.get("best"), Mapping) else None
    gran_color = {"per_channel": "#1f77b4", "per_tensor": "#ff7f0e"}
    labels = [_label(_variant_name(r), 40) for r in rows]
    colors = [gran_color.get(str(r.get("granularity")), "#2ca02c") if str(r.get("scheme", "")).startswith("sym")
              else "#2ca02c" for r in rows]
    panels = [(primary, _METRIC_NAMES.get(primary, primary))]
    if primary != "output_cosine":
        panels.append(("output_cosine", "output cosine"))
    fig = _figure(max(7.0, 0.75 * len(rows) + 2.0), 3.2 * len(panels) + 0.6)
    axes = fig.subplots(len(panels), 1, squeeze=False).ravel()
    ref_acc = _num((c.get("reference") or {}).get("accuracy"))
    for ax, (key, name) in zip(axes, panels):
        vals = [_num(r["metrics"].get(key)) or 0.0 for r in rows]
        xs = list(range(len(rows)))
        bars = ax.bar(xs, vals, color=colors, gid=f"quant-metric-{_gid(key)}")
        for x, r, bar in zip(xs, rows, bars):
            if is_best(r, best):
                bar.set_edgecolor("black")
                bar.set_linewidth(2)
                ax.annotate("★ best", (x, bar.get_height()), xytext=(0, 2), textcoords="offset points",
                            ha="center", fontsize=7, fontweight="bold")
        if key == "accuracy":
            lo = [v - (_num((r["metrics"].get("accuracy_ci95") or [v, v])[0]) or v) for v, r in zip(vals, rows)]
            hi = [(_num((r["metrics"].get("accuracy_ci95") or [v, v])[1]) or v) - v for v, r in zip(vals, rows)]
            ax.errorbar(xs, vals, yerr=[lo, hi], fmt="none", ecolor="0.2", lw=0.8, capsize=2)
            if ref_acc is not None:
                ax.axhline(ref_acc, color="black", ls="--", lw=1, label=f"FP32 {100 * ref_acc:.2f}%")
                ax.legend(fontsize=7, loc="lower right")
            low, top = min(v - d for v, d in zip(vals, lo)), max(v + d for v, d in zip(vals, hi))
        else:
            low, top = min(vals), max(vals)
        top = max([top] + ([ref_acc] if key == "accuracy" and ref_acc else []))
        pad = max((top - low) * 0.3, 1e-4 if "cosine" in key else 5e-3)
        ax.set_ylim(max(0.0, low - pad), min(1.0, top) + pad * 0.5)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_ylabel(f"{name} vs FP32", fontsize=8)
        ax.set_xticks(xs, labels, fontsize=7, rotation=35, ha="right")
        ax.grid(True, axis="y", alpha=0.25)
    axes[0].set_title("INT8 variants (blue: per-channel weights, orange: per-tensor, green: asymmetric uint8)",
                      fontsize=9)
    return _to_svg(fig, "quant_metric")


# ---------------------------------------------------------------- sensitivity plots

#: Up to this many layers get their names as tick labels (more would overlap; ticks are positions then).
NAMED_TICKS = 40


def _sens_layers(report: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    s = report.get("sensitivity") or {}
    return sorted((ly for ly in s.get("layers") or [] if isinstance(ly, Mapping)),
                  key=lambda ly: _num(ly.get("index")) or 0)


def _layer_ticks(ax: Any, layers: List[Mapping[str, Any]]) -> None:
    xs = list(range(len(layers)))
    if len(layers) <= NAMED_TICKS:
        ax.set_xticks(xs, [_label(ly.get("label", "?"), 28) for ly in layers], rotation=60, ha="right", fontsize=6)
        ax.set_xlabel("quantized layer (graph order)", fontsize=8)
    else:
        ax.set_xlabel("quantized layer, position in graph order", fontsize=8)


def sensitivity_harm_svg(report: Mapping[str, Any]) -> Optional[str]:
    """Bars of each layer's harm in graph order; plan-float layers red; a dashed line at harm 1."""
    layers = [ly for ly in _sens_layers(report) if _num(ly.get("harm")) is not None]
    if not layers:
        return None
    harms = [float(ly["harm"]) for ly in layers]
    fig = _figure(max(7.0, min(0.22 * len(layers) + 2.5, 16.0)), 4.0)
    ax = fig.add_subplot()
    colors = ["#d62728" if ly.get("in_plan_float") else "#1f77b4" for ly in layers]
    ax.bar(range(len(layers)), harms, color=colors, gid="sens-harm-bars")
    if max(harms) >= 0.5:
        ax.axhline(1.0, color="black", ls="--", lw=1, label="harm 1 = the whole budget")
        ax.legend(fontsize=7, loc="upper right")
    ax.set_ylim(0, max(max(harms) * 1.1, 0.05))
    _layer_ticks(ax, layers)
    ax.set_ylabel("harm (drop / allowed drop)", fontsize=8)
    ax.set_title("Sensitivity per layer: quantized alone, everything else FP32 (red = float in the plan)",
                 fontsize=9)
    ax.grid(True, axis="y", alpha=0.25)
    return _to_svg(fig, "sens_harm")


def sensitivity_error_svg(report: Mapping[str, Any]) -> Optional[str]:
    """SNR (dB) of each layer's output error with every layer INT8, through the network; plan-float red."""
    layers = _sens_layers(report)
    pts = [(i, _num((ly.get("error_all_int8") or {}).get("snr_db"))) for i, ly in enumerate(layers)]
    pts = [(i, v) for i, v in pts if v is not None]
    if not pts:
        return None
    fig = _figure(max(7.0, min(0.22 * len(layers) + 2.5, 16.0)), 4.0)
    ax = fig.add_subplot()
    ax.plot(*zip(*pts, strict=True), marker="o", ms=3, lw=1.2, color="#1f77b4", label="all INT8")
    floats = [(i, v) for i, v in pts if layers[i].get("in_plan_float")]
    if floats:
        ax.scatter(*zip(*floats, strict=True), s=60, color="#d62728", zorder=3, label="float in the plan",
                   gid="sens-error-float")
    _layer_ticks(ax, layers)
    ax.set_ylabel("output SNR vs FP32 (dB)", fontsize=8)
    ax.set_title("Quantization error through the network (every layer INT8)", fontsize=9)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7)
    return _to_svg(fig, "sens_error")


def sensitivity_pareto_svg(report: Mapping[str, Any]) -> Optional[str]:
    """Budget metric vs predicted time of every evaluated plan (and vs measured throughput when present)."""
    s = report.get("sensitivity") or {}
    key = budget_metric(s)
    pts = [p for p in s.get("points") or [] if isinstance(p, Mapping) and _num(p.get("predicted_s")) is not None
           and _num((p.get("metrics") or {}).get(key)) is not None]
    front = [p for p in s.get("pareto") or [] if isinstance(p, Mapping) and _num(p.get("predicted_s")) is not None
             and _num((p.get("metrics") or {}).get(key)) is not None]
    if not front:
        return None
    measured = [p for p in front if _num((p.get("measured") or {}).get("throughput")) is not None]
    longest = max(float(p["predicted_s"]) for p in pts + front)
    scale, unit = (1e3, "ms") if longest >= 1e-3 else (1e6, "µs")
    fig = _figure(11.0 if measured else 7.0, 4.4)
    axes = fig.subplots(1, 2 if measured else 1, squeeze=False).ravel()

    def y(p: Mapping[str, Any]) -> float:
        return float(p["metrics"][key])

    ax = axes[0]
    for meets in (True, False):
        mine = [p for p in pts if bool(p.get("meets")) == meets]
        if mine:
            ax.scatter([float(p["predicted_s"]) * scale for p in mine], [y(p) for p in mine], s=22, color="0.5",
                       facecolors="0.5" if meets else "none", label="plan meeting the budget" if meets
                       else "plan missing the budget", zorder=2)
    ax.plot([float(p["predicted_s"]) * scale for p in front], [y(p) for p in front], color="#1f77b4", lw=1.5,
            marker="o", ms=4, label="Pareto front", zorder=3, gid="sens-pareto-front")
    for p in front:
        ax.annotate(str(p.get("num_float", len(p.get("float_layers") or []))), (float(p["predicted_s"]) * scale, y(p)),
                    xytext=(3, 3), textcoords="offset points", fontsize=7)
    _plan_and_budget(ax, s, key, [p for p in front if is_plan(s, p)], lambda p: float(p["predicted_s"]) * scale)
    ax.set_xlabel(f"predicted time per batch ({unit}); labels = float layers", fontsize=8)
    ax.set_ylabel(f"{_METRIC_NAMES.get(key, key)} vs FP32", fontsize=8)
    ax.set_title("Evaluated plans", fontsize=9)
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    if measured:
        ax2 = axes[1]
        ax2.plot([float(p["measured"]["throughput"]) for p in measured], [y(p) for p in measured], marker="s",
                 color="#2ca02c", lw=1.2, label="Pareto plans, measured", gid="sens-pareto-measured")
        _plan_and_budget(ax2, s, key, [p for p in measured if is_plan(s, p)],
                         lambda p: float(p["measured"]["throughput"]))
        ax2.set_xlabel("measured throughput (samples/s)", fontsize=8)
        ax2.set_title("Measured", fontsize=9)
        ax2.grid(True, alpha=0.25)
        ax2.legend(fontsize=7, loc="lower left")
    return _to_svg(fig, "sens_pareto")


def _plan_and_budget(ax: Any, s: Mapping[str, Any], key: str, plan: List[Mapping[str, Any]], x: Any) -> None:
    """The chosen plan as a star, the budget minimum and FP32's value as horizontal lines."""
    for p in plan:
        ax.scatter([x(p)], [float(p["metrics"][key])], marker="*", s=220, color="gold", edgecolors="black",
                   zorder=4, label="chosen plan", gid="sens-pareto-plan")
    budget = s.get("budget") or {}
    if _num(budget.get("minimum")) is not None:
        ax.axhline(float(budget["minimum"]), color="#d62728", ls="--", lw=1, label="budget minimum")
    if _num(budget.get("reference")) is not None:
        ax.axhline(float(budget["reference"]), color="black", ls=":", lw=1, label="FP32")
    ax.ticklabel_format(axis="y", useOffset=False)
