"""Backend-neutral measurement record and the statistics behind it.

Both runners (pipeline.ort and pipeline.trt) return a :class:`Measurement`, so the
report and the comparison table read one shape whatever executed the model. Nothing heavy is
imported here: this module is pure Python.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Sequence

#: Percentiles reported for every latency distribution (keys are ``p<q>``).
PERCENTILES = (90.0, 99.0)


@dataclass
class Measurement:
    """What one timed run of a backend measured.

    Attributes:
        backend: ``onnxruntime`` or ``tensorrt``.
        device: what executed the model, e.g. the CPU model name or the GPU name.
        batch_size: samples per inference (leading dimension of the inputs).
        iterations: number of timed inferences.
        warmup_s: wall time spent warming up, seconds.
        duration_s: wall time of the timed loop, seconds.
        latency_ms: per-inference latency statistics in milliseconds (see :func:`latency_stats`).
        throughput_samples_s: ``batch_size * iterations / duration_s``, samples per second.
        providers: ONNX Runtime execution providers in priority order (empty for TensorRT).
        threads: intra-op threads requested (0 = the backend's default).
        precision_executed: precision the backend actually ran, e.g. ``fp32`` on a CPU even when an
            int8 engine was asked for.
        includes_copies: whether each timed run includes host<->device / input/output copies.
        notes: caveats a reader needs to interpret the numbers.
        warmup_iterations: number of untimed warm-up inferences.
    """

    backend: str
    device: str
    batch_size: int
    iterations: int
    warmup_s: float
    duration_s: float
    latency_ms: Dict[str, float]
    throughput_samples_s: float
    providers: List[str] = field(default_factory=list)
    threads: int = 0
    precision_executed: str = "fp32"
    includes_copies: bool = True
    notes: List[str] = field(default_factory=list)
    warmup_iterations: int = 0

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-ready dict (the ``measured`` section of the report, before achieved-peak keys)."""
        return asdict(self)


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """Percentile by linear interpolation between closest ranks (numpy's default ``linear`` method).

    For ``n`` ascending samples ``x[0..n-1]`` the ``q``-th percentile sits at fractional index
    ``h = (n - 1) * q / 100``; the result is ``x[floor(h)] + (h - floor(h)) * (x[floor(h)+1] -
    x[floor(h)])``. So p50 of ``[1, 2, 3, 4]`` is 2.5 and p90 of ``1..10`` is 9.1.

    Args:
        sorted_samples: samples in ascending order (not checked, callers sort once).
        q: percentile in [0, 100].

    Returns:
        The interpolated value, in the samples' unit.
    """
    if not sorted_samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    h = (len(sorted_samples) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return float(sorted_samples[lo] + (h - lo) * (sorted_samples[hi] - sorted_samples[lo]))


def latency_stats(samples_ms: Sequence[float]) -> Dict[str, float]:
    """Summary statistics of per-inference latencies.

    Percentiles use :func:`percentile` (linear interpolation, numpy's default); ``median`` is p50.
    ``std`` is the population standard deviation (divide by ``n``), so one sample gives 0.

    Args:
        samples_ms: latencies in milliseconds, any order, at least one.

    Returns:
        ``{median, p90, p99, mean, min, max, std}`` in milliseconds.

    Raises:
        ValueError: no samples, or a sample that is negative or not finite (a timing bug).
    """
    xs = sorted(float(x) for x in samples_ms)
    if not xs:
        raise ValueError("latency_stats needs at least one sample")
    if any(not math.isfinite(x) or x < 0 for x in xs):
        raise ValueError("latency samples must be finite and non-negative")
    n = len(xs)
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / n
    stats = {"median": percentile(xs, 50.0)}
    for q in PERCENTILES:
        stats[f"p{q:g}"] = percentile(xs, q)
    stats.update({"mean": mean, "min": xs[0], "max": xs[-1], "std": math.sqrt(var)})
    return stats


def achieved(ops: float, latency_s: float, peak_ops_per_s: float) -> Dict[str, float | None]:
    """Achieved throughput of the model's arithmetic and its share of a theoretical peak.

    Args:
        ops: operations per inference (FLOPs, or integer ops for int8), for the whole batch.
        latency_s: measured latency of one inference, seconds (typically the median).
        peak_ops_per_s: theoretical peak of the unit the precision runs on, ops/s.

    Returns:
        ``{"achieved_ops_per_s": ops / latency_s, "pct_of_peak": 100 * achieved / peak}``;
        ``pct_of_peak`` is ``None`` when the peak is unknown (<= 0).

    Raises:
        ValueError: ``latency_s`` <= 0 or ``ops`` < 0.
    """
    if latency_s <= 0:
        raise ValueError(f"latency must be positive, got {latency_s} s")
    if ops < 0:
        raise ValueError(f"ops must be non-negative, got {ops}")
    ops_per_s = ops / latency_s
    pct = 100.0 * ops_per_s / peak_ops_per_s if peak_ops_per_s and peak_ops_per_s > 0 else None
    return {"achieved_ops_per_s": ops_per_s, "pct_of_peak": pct}


def cpu_name() -> str:
    """Human-readable CPU model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    from pipeline.core.environment import cpu_model

    return cpu_model() or "unknown CPU"
