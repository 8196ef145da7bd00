"""Read the numbers the report shows out of a (validated) report dict.

The renderers and plots go through these functions, so each number is derived in one place. They
tolerate partial sections (a stage that failed half-way) by returning ``None``/empty rather than
raising: a report about a broken run is still worth writing.

Memory bandwidth is read from ``hardware.memory_bandwidth_bytes_s`` (what ``HardwareSpec.to_dict``
writes), else ``hardware.bandwidth`` as a number (bytes/s) or a dict with ``bytes_per_s`` (or
``gbs``) plus ``formula``/``source``, else ``hardware.memory_bandwidth_gbs``. ``analysis.ridge_point``
may be a number (FLOP/byte) or a dict with ``flop_per_byte``/``intensity``/``value``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from pipeline.report.fmt import _num, is_integer_precision


@dataclass
class Peak:
    """One theoretical peak of the hardware (ops/s) with how it was derived."""

    key: str
    dense: Optional[float]
    sparse: Optional[float]
    formula: str
    source: str
    precision: str = ""
    note: str = ""

    @property
    def integer(self) -> bool:
        """Whether the unit counts integer ops (quoted in TOPS rather than TFLOPS)."""
        return is_integer_precision(self.precision or self.key)


@dataclass
class Bandwidth:
    """Peak memory bandwidth, bytes/s, with how it was derived."""

    bytes_per_s: Optional[float]
    formula: str
    source: str


@dataclass
class CategoryShare:
    """Aggregate of one layer category (conv, depthwise_conv, matmul...).

    Shares are fractions in [0, 1] of the model totals; times are seconds.
    """

    category: str
    layers: int
    flops: float
    bytes: float
    time_s: float
    flops_share: float
    time_share: float
    memory_bound: int
    measured_s: Optional[float] = None
    measured_share: Optional[float] = None
    unit: str = "layers"  # what ``layers``/``memory_bound`` count: "layers" or "fused groups"


def section(report: Mapping[str, Any], key: str) -> Dict[str, Any]:
    """``report[key]`` as a dict ({} when null)."""
    value = report.get(key)
    return dict(value) if isinstance(value, Mapping) else {}


def first(d: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` present (and not None) in ``d``."""
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def peak_key(report: Mapping[str, Any]) -> Optional[str]:
    """Key of the peak the analysed precision runs at (analysis, then precision config, then measured).

    The measured section keeps its own ``peak_key``: ONNX Runtime on the CPU is measured against the
    CPU's peak even when the analysis is for a GPU.
    """
    return (
        first(section(report, "analysis"), "peak_key")
        or first(section(report, "precision"), "peak")
        or first(section(report, "measured"), "peak_key")
    )


def peaks(report: Mapping[str, Any]) -> List[Peak]:
    """Theoretical peaks from ``hardware.peaks``, fastest first."""
    raw = section(report, "hardware").get("peaks") or {}
    out = []
    if isinstance(raw, Mapping):
        for key, p in raw.items():
            p = p if isinstance(p, Mapping) else {"ops_per_s_dense": p}
            out.append(
                Peak(
                    key=str(key),
                    dense=_num(first(p, "ops_per_s_dense", "ops_per_s")),
                    sparse=_num(p.get("ops_per_s_sparse")),
                    formula=str(p.get("formula") or ""),
                    source=str(p.get("source") or ""),
                    precision=str(p.get("precision") or ""),
                    note=str(p.get("note") or ""),
                )
            )
    return sorted(out, key=lambda p: -(p.dense or 0.0))


def peak_value(report: Mapping[str, Any], key: Optional[str] = None) -> Optional[float]:
    """Dense ops/s of peak ``key`` (default: :func:`peak_key`)."""
    key = key or peak_key(report)
    for p in peaks(report):
        if p.key == key:
            return p.dense
    return None


def bandwidth(report: Mapping[str, Any]) -> Bandwidth:
    """Peak memory bandwidth (see module docstring for the accepted shapes)."""
    hw = section(report, "hardware")
    raw = hw.get("bandwidth")
    detection = hw.get("detection") if isinstance(hw.get("detection"), Mapping) else {}
    sources = hw.get("sources") if isinstance(hw.get("sources"), Mapping) else {}
    # Where the number came from: a CPU estimate says so in detection; a GPU file is its own source.
    source = str(
        first(detection, "memory_bandwidth")
        or first(sources, "bandwidth", "memory_bandwidth")
        or (f"{detection['file']} (memory_bandwidth_gbs)" if detection.get("file") else "")
        or (f"hardware config '{hw['name']}' (memory_bandwidth_gbs)" if hw.get("name") else "")
    )
    if isinstance(raw, Mapping):
        bps = _num(first(raw, "bytes_per_s", "bytes_per_s_peak", "value"))
        if bps is None and _num(first(raw, "gbs", "gb_s")) is not None:
            bps = _num(first(raw, "gbs", "gb_s")) * 1e9
        return Bandwidth(bps, str(raw.get("formula") or ""), str(raw.get("source") or source))
    bps = _num(hw.get("memory_bandwidth_bytes_s"))
    if bps is None:
        bps = _num(raw)
    if bps is None and _num(hw.get("memory_bandwidth_gbs")):
        bps = _num(hw.get("memory_bandwidth_gbs")) * 1e9
    return Bandwidth(bps, "DRAM peak bandwidth (datasheet or estimate)", source)


def ridge_point(report: Mapping[str, Any]) -> Optional[float]:
    """Arithmetic intensity (FLOP/byte) where the bandwidth slope meets the precision's peak."""
    raw = section(report, "analysis").get("ridge_point")
    if isinstance(raw, Mapping):
        raw = first(raw, "flop_per_byte", "intensity", "value")
    value = _num(raw)
    if value is None:  # derive it: peak / bandwidth
        peak, bw = peak_value(report), bandwidth(report).bytes_per_s
        if peak and bw:
            value = peak / bw
    return value


def totals(report: Mapping[str, Any]) -> Dict[str, Optional[float]]:
    """Model totals: flops, macs, params, weight_bytes, activation_bytes, bytes, intensity."""
    t = section(report, "analysis").get("totals") or {}
    model = section(report, "model")
    out = {
        "flops": _num(first(t, "flops", "total_flops")),
        "macs": _num(first(t, "macs", "total_macs")),
        "params": _num(first(t, "params", "parameters")) or _num(model.get("parameters")),
        "weight_bytes": _num(t.get("weight_bytes")),
        "activation_bytes": _num(t.get("activation_bytes")),
        "bytes": _num(first(t, "bytes", "total_bytes")),
        "intensity": _num(t.get("intensity")),
    }
    if out["intensity"] is None and out["flops"] is not None and out["bytes"]:
        out["intensity"] = out["flops"] / out["bytes"]
    return out


def predicted_latency_s(report: Mapping[str, Any]) -> Optional[float]:
    """Roofline lower-bound latency of one inference, seconds (fused estimate when the analysis has
    fusion groups)."""
    return _num(section(report, "analysis").get("predicted_latency_s"))


def predicted_latency_unfused_s(report: Mapping[str, Any]) -> Optional[float]:
    """Sum of per-node bounds (every ONNX node run alone), seconds; None for older reports."""
    return _num(section(report, "analysis").get("predicted_latency_unfused_s"))


def groups(report: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The fusion groups (``analysis.groups``), each with ``measured_s`` = the sum of the measured
    times of its layers when any of them carries one (else no ``measured_s``)."""
    raw = section(report, "analysis").get("groups") or []
    out = [dict(g) for g in raw if isinstance(g, Mapping)]
    measured: Dict[Any, float] = {}
    for layer in layers(report):
        m = _num(layer.get("measured_s"))
        if m is not None and layer.get("group") is not None:
            measured[layer["group"]] = measured.get(layer["group"], 0.0) + m
    for i, g in enumerate(out):
        key = g.get("index", i)
        if key in measured:
            g["measured_s"] = measured[key]
    return out


def top_groups(report: Mapping[str, Any], n: int = 15) -> List[Dict[str, Any]]:
    """The ``n`` fusion groups with the largest predicted time (``bound_s``), largest first."""
    gs = [g for g in groups(report) if _num(g.get("bound_s")) is not None]
    return sorted(gs, key=lambda g: -float(g["bound_s"]))[:n]


def layers(report: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The per-layer list (empty when analysis did not run)."""
    return [dict(layer) for layer in (report.get("layers") or [])]


def has_measured_layers(report: Mapping[str, Any]) -> bool:
    """Whether any layer carries a measured time (``measured_s``)."""
    return any(_num(layer.get("measured_s")) is not None for layer in layers(report))


def top_layers(report: Mapping[str, Any], n: int = 15) -> List[Dict[str, Any]]:
    """The ``n`` layers with the largest predicted time (``bound_s``), largest first."""
    ls = [layer for layer in layers(report) if _num(layer.get("bound_s")) is not None]
    return sorted(ls, key=lambda layer: -float(layer["bound_s"]))[:n]


def category_shares(report: Mapping[str, Any]) -> List[CategoryShare]:
    """FLOPs and predicted-time share per layer category, largest time share first.

    Derived from ``analysis.groups`` when present (fused: a group counts for its anchor's category,
    ``unit`` "fused groups", measured time summed over each group's layers), else from ``layers``
    (exact and consistent with the layer table); falls back to
    ``analysis.by_category`` (dict of dicts or list of dicts with ``flops`` and ``bound_s``/
    ``time_s``) when the layer list is empty.
    """
    rows: Dict[str, Dict[str, Any]] = {}
    gs = groups(report)
    ls = gs or layers(report)
    unit = "fused groups" if gs else "layers"
    if ls:
        for layer in ls:
            cat = str(layer.get("category") or layer.get("op_type") or "other")
            r = rows.setdefault(cat, {"layers": 0, "flops": 0.0, "bytes": 0.0, "time_s": 0.0, "mb": 0, "meas": None})
            r["layers"] += 1
            r["flops"] += _num(layer.get("flops")) or 0.0
            r["bytes"] += _num(layer.get("bytes")) or 0.0
            r["time_s"] += _num(layer.get("bound_s")) or 0.0
            r["mb"] += 1 if str(layer.get("bound", "")).startswith("mem") else 0
            m = _num(layer.get("measured_s"))
            if m is not None:
                r["meas"] = (r["meas"] or 0.0) + m
    else:
        raw = section(report, "analysis").get("by_category") or {}
        items = (
            raw.items() if isinstance(raw, Mapping) else ((c.get("category"), c) for c in raw if isinstance(c, Mapping))
        )
        for cat, c in items:
            if c.get("groups") is not None:
                unit = "fused groups"
            rows[str(cat)] = {
                "layers": int(_num(first(c, "groups", "layers", "count")) or 0),
                "flops": _num(c.get("flops")) or 0.0,
                "bytes": _num(c.get("bytes")) or 0.0,
                "time_s": _num(first(c, "bound_s", "time_s", "predicted_s")) or 0.0,
                "mb": int(_num(first(c, "memory_bound", "memory_bound_groups", "memory_bound_layers")) or 0),
                "meas": _num(c.get("measured_s")),
            }
    total_flops = sum(r["flops"] for r in rows.values())
    total_time = sum(r["time_s"] for r in rows.values())
    total_meas = sum(r["meas"] for r in rows.values() if r["meas"] is not None)
    out = [
        CategoryShare(
            category=cat,
            layers=r["layers"],
            flops=r["flops"],
            bytes=r["bytes"],
            time_s=r["time_s"],
            flops_share=r["flops"] / total_flops if total_flops else 0.0,
            time_share=r["time_s"] / total_time if total_time else 0.0,
            memory_bound=r["mb"],
            measured_s=r["meas"],
            measured_share=(r["meas"] / total_meas) if (r["meas"] is not None and total_meas) else None,
            unit=unit,
        )
        for cat, r in rows.items()
    ]
    return sorted(out, key=lambda c: (-c.time_share, -c.flops_share, c.category))


def measured_achieved(report: Mapping[str, Any]) -> Dict[str, Optional[float]]:
    """Achieved ops/s and % of peak: as recorded in ``measured``, else derived from totals and median.

    Returns:
        ``{"achieved_ops_per_s", "pct_of_peak", "derived"}`` (``derived`` is 1.0 when computed here).
    """
    m = section(report, "measured")
    ach, pct = _num(m.get("achieved_ops_per_s")), _num(m.get("pct_of_peak"))
    derived = 0.0
    median_ms = _num((m.get("latency_ms") or {}).get("median"))
    flops = totals(report)["flops"]
    if ach is None and median_ms and flops is not None:
        ach, derived = flops / (median_ms / 1e3), 1.0
    peak = peak_value(report, m.get("peak_key"))
    if pct is None and ach is not None and peak:
        pct, derived = 100.0 * ach / peak, 1.0
    return {"achieved_ops_per_s": ach, "pct_of_peak": pct, "derived": derived}


def batch_size(report: Mapping[str, Any]) -> Optional[int]:
    """Batch size of the run (measured, analysis, then resolved config)."""
    cfg = section(report, "environment").get("config") or {}
    value = first(section(report, "measured"), "batch_size") or first(
        section(report, "analysis"), "batch_size", "batch"
    )
    if value is None and isinstance(cfg, Mapping):
        value = cfg.get("batch_size")
    v = _num(value)
    return int(v) if v is not None else None


def accuracy_verdict(report: Mapping[str, Any]) -> str:
    """One word for the accuracy section: ``pass``, ``FAIL (k of n checks)``, ``recorded`` or ``n/a``.

    Looks for boolean ``passed`` keys anywhere in ``accuracy`` (e.g. one per check).
    """
    acc = report.get("accuracy")
    if not isinstance(acc, Mapping):
        return "n/a"
    verdicts: List[bool] = []

    def walk(obj: Any) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                if k in ("passed", "ok") and isinstance(v, bool):
                    verdicts.append(v)
                else:
                    walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk(acc)
    if not verdicts:
        status = acc.get("status")
        return str(status) if status else "recorded"
    failed = verdicts.count(False)
    return "pass" if not failed else f"FAIL ({failed} of {len(verdicts)} checks)"
