"""Did the search reach its targets, and if not, what measured evidence holds the best run back.

A target is a throughput to reach (samples/s, the best eligible run of the sweep) or a batch-1 latency to stay
under (ms, the fastest eligible batch-1 run). For a missed target the evidence comes from that run's own
measurement, never from assumptions:

- **power**: NVML's median board power against the enforced power limit, and the share of samples in which the
  power cap held the SM clock down (NVML clock-event reasons);
- **clock**: the median SM clock against the board's maximum (every peak scales with it);
- **peak**: the achieved share of the precision's dense peak, and the same share at the clock the run really had;
- **roofline gap**: where the explain stage ran (per-layer times), how much of the time above the roofline bound
  sits in memory-bound, compute-bound and overhead layers, and what the bound alone would allow;
- **per-kernel floor** (batch-1 latency): the number of engine layers times the fastest layer's time against the
  layers' roofline bounds, which shows a fixed cost per kernel rather than FLOPs or bytes.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from pipeline.optimize.pareto import eligible

#: A median power at or above this share of the limit counts as running at the power limit.
POWER_BOUND_SHARE = 0.95


def _median(tel: Mapping[str, Any], key: str) -> Optional[float]:
    v = (tel.get(key) or {}).get("median") if isinstance(tel.get(key), Mapping) else None
    return float(v) if v is not None else None


def telemetry_evidence(tel: Optional[Mapping[str, Any]]) -> List[str]:
    """Sentences on power and clock from a run's ``gpu_telemetry`` (empty when NVML did not run)."""
    if not tel or not tel.get("available"):
        return []
    out: List[str] = []
    power, limit = _median(tel, "power_w"), tel.get("power_limit_w")
    capped = (tel.get("clock_limited") or {}).get("power_cap")
    if power is not None and limit:
        share = power / float(limit)
        verdict = "at the power limit" if share >= POWER_BOUND_SHARE else "below the power limit"
        out.append(f"power: median {power:.0f} W of the {float(limit):.0f} W limit ({share:.0%}), {verdict}"
                   + (f"; the power cap held the SM clock down in {capped:.0%} of NVML samples"
                      if capped is not None else ""))
    clock, max_clock = _median(tel, "sm_clock_mhz"), tel.get("max_sm_clock_mhz")
    if clock is not None and max_clock:
        out.append(f"clock: median SM clock {clock:.0f} MHz, {clock / float(max_clock):.0%} of the "
                   f"{float(max_clock):.0f} MHz maximum every peak is quoted at")
    for name in ("sw_thermal", "hw_thermal", "hw_slowdown", "hw_power_brake"):
        share = (tel.get("clock_limited") or {}).get(name)
        if share:
            out.append(f"clock: {name.replace('_', ' ')} slowdown in {share:.0%} of NVML samples")
    return out


def peak_evidence(row: Mapping[str, Any]) -> List[str]:
    """The achieved share of the dense peak, also at the SM clock the run really had."""
    pct = row.get("pct_of_peak")
    if pct is None:
        return []
    tel = row.get("gpu_telemetry") or {}
    clock, max_clock = _median(tel, "sm_clock_mhz"), tel.get("max_sm_clock_mhz")
    text = f"peak: {pct:.1f}% of the dense peak at the maximum clock"
    if clock and max_clock:
        text += f", {pct * float(max_clock) / clock:.1f}% of it at the measured {clock:.0f} MHz"
    return [text]


def gap_evidence(row: Mapping[str, Any]) -> List[str]:
    """Where the time above the roofline goes, from the run's explain breakdown (per-layer times)."""
    bd = row.get("explain_breakdown") or {}
    share, gap, bound = bd.get("share_of_gap") or {}, bd.get("gap_sum_s"), bd.get("bound_sum_s")
    if not share or gap is None:
        return []
    parts = ", ".join(f"{k} {v:.0%}" for k, v in sorted(share.items(), key=lambda kv: -kv[1]) if v)
    out = [f"roofline gap: the layers take {gap * 1e3:.3f} ms above their roofline bound; by cause: {parts}"]
    if bound and row.get("batch"):
        out.append(f"roofline bound: {bound * 1e3:.3f} ms per batch at the run's clocks, at most "
                   f"{row['batch'] / bound:,.0f} samples/s if every layer ran at its bound")
    return out


def kernel_floor_evidence(row: Mapping[str, Any]) -> List[str]:
    """At small batches: how many layers run back to back and what the fastest one costs against its bound."""
    floor, n, ms = row.get("kernel_floor") or {}, row.get("explain_layers"), row.get("measured_median_ms")
    if not floor or not n or not ms:
        return []
    fastest, bound = floor["fastest_s"] * 1e6, floor["median_bound_s"] * 1e6
    each = ms * 1e3 / n
    return [f"per kernel: {n} engine layers share {ms:.3f} ms end to end, {each:.1f} us each, "
            + (f"{each / bound:.0f}x" if bound > 0 else "far above")
            + f" the median layer's roofline bound of {bound:.2f} us; even the fastest compute/memory layer takes "
            f"{fastest:.1f} us under the per-layer profiler: a fixed cost per kernel (launch, ramp-up, tail), not FLOPs "
            f"or bytes, sets this latency, so only fewer or fused layers move it"]


def check_targets(rows: Sequence[Mapping[str, Any]], target_throughput: Optional[float] = None,
                  target_latency_ms: Optional[float] = None) -> List[Dict[str, Any]]:
    """One verdict per target given: ``{target, goal, run, value, met, evidence}``.

    ``run`` is the index of the row the verdict is about (the best eligible one for that target; None when no run
    is eligible) and ``evidence`` lists the measured facts that hold a missed target back.
    """
    out: List[Dict[str, Any]] = []
    ok = [i for i, r in enumerate(rows) if eligible(r)]
    if target_throughput is not None:
        best = max(ok, key=lambda i: rows[i]["throughput_samples_s"], default=None)
        value = rows[best]["throughput_samples_s"] if best is not None else None
        out.append(_verdict("throughput_samples_s", float(target_throughput), best, value,
                            value is not None and value >= float(target_throughput), rows))
    if target_latency_ms is not None:
        bs1 = [i for i in ok if rows[i].get("batch") == 1]
        best = min(bs1, key=lambda i: rows[i]["measured_median_ms"], default=None)
        value = rows[best]["measured_median_ms"] if best is not None else None
        out.append(_verdict("batch1_latency_ms", float(target_latency_ms), best, value,
                            value is not None and value <= float(target_latency_ms), rows))
    return out


def _verdict(target: str, goal: float, best: Optional[int], value: Optional[float], met: bool,
             rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    evidence: List[str] = []
    if best is None:
        evidence.append("no eligible run for this target (none measured with its accuracy kept"
                        + (", none at batch 1" if target.startswith("batch1") else "") + ")")
    elif not met:
        row = rows[best]
        evidence = telemetry_evidence(row.get("gpu_telemetry")) + peak_evidence(row) + gap_evidence(row)
        if target.startswith("batch1"):
            evidence += kernel_floor_evidence(row)
        if not evidence:
            evidence.append("the run recorded no GPU telemetry or per-layer times to explain the miss")
    return {"target": target, "goal": goal, "run": best, "value": value, "met": bool(met), "evidence": evidence}


def targets_markdown(verdicts: Sequence[Mapping[str, Any]], label: Any) -> List[str]:
    """The comparison's "Targets" section (``label(index)`` names a run)."""
    if not verdicts:
        return []
    md = ["", "## Targets", ""]
    for v in verdicts:
        unit = "samples/s" if v["target"] == "throughput_samples_s" else "ms"
        cmp = ">=" if v["target"] == "throughput_samples_s" else "<="
        got = "no run" if v["value"] is None else f"{v['value']:,.3f} {unit}" if unit == "ms" \
            else f"{v['value']:,.0f} {unit}"
        md.append(f"- {v['target']} {cmp} {v['goal']:,g} {unit}: **{'met' if v['met'] else 'missed'}**, best {got}"
                  + (f" ({label(v['run'])})" if v["run"] is not None else ""))
        md += [f"  - {e}" for e in v["evidence"]]
    return md
