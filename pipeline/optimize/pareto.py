"""Throughput / latency Pareto front of the runs of a sweep, and the engine to pick.

A run takes part when it was measured and its accuracy did not fail (a run whose INT8 outputs miss the tolerance
is never picked, however fast). A run is on the front when no other run has both a lower median latency and a
higher throughput. The pick is the highest throughput within ``max_latency_ms`` (when given); the fastest run at
batch 1, if the sweep has one, is reported as the latency pick.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence


def eligible(row: Mapping[str, Any]) -> bool:
    """Measured, and its accuracy did not fail."""
    return (row.get("measured_median_ms") is not None and row.get("throughput_samples_s") is not None
            and not str(row.get("accuracy") or "").upper().startswith("FAIL"))


def pareto_front(rows: Sequence[Mapping[str, Any]]) -> List[int]:
    """Indices of the eligible rows no other eligible row beats on both latency (lower) and throughput (higher),
    by increasing latency."""
    idx = [i for i, r in enumerate(rows) if eligible(r)]
    front = []
    for i in idx:
        li, ti = rows[i]["measured_median_ms"], rows[i]["throughput_samples_s"]
        dominated = any((rows[j]["measured_median_ms"] <= li and rows[j]["throughput_samples_s"] >= ti)
                        and (rows[j]["measured_median_ms"] < li or rows[j]["throughput_samples_s"] > ti)
                        for j in idx if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: rows[i]["measured_median_ms"])


def pick(rows: Sequence[Mapping[str, Any]], max_latency_ms: Optional[float] = None) -> Dict[str, Any]:
    """``{"throughput": index or None, "latency": index or None, "why": text}``."""
    ok = [i for i, r in enumerate(rows) if eligible(r)
          and (max_latency_ms is None or r["measured_median_ms"] <= max_latency_ms)]
    best = max(ok, key=lambda i: rows[i]["throughput_samples_s"], default=None)
    bs1 = [i for i, r in enumerate(rows) if eligible(r) and r.get("batch") == 1]
    fastest = min(bs1, key=lambda i: rows[i]["measured_median_ms"], default=None)
    skipped = sum(1 for r in rows if not eligible(r))
    why = (f"highest throughput of {len(ok)} eligible run(s)"
           + (f" within {max_latency_ms} ms" if max_latency_ms is not None else "")
           + (f"; {skipped} run(s) left out (not measured or accuracy failed)" if skipped else ""))
    if best is None:
        why = "no run is eligible: " + why
    return {"throughput": best, "latency": fastest, "why": why}
