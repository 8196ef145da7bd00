"""Time an ONNX model with ONNX Runtime (the CPU backend).

Timing follows trtexec's approach: warm up for a fixed time, then time individual synchronous runs
until both a minimum duration and a minimum number of iterations are reached.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

from pipeline.core.config import ProfileConfig
from pipeline.core.measurement import Measurement, cpu_name, latency_stats
from pipeline.core.errors import PipelineError
from pipeline.ort.session import ort_session, validate_inputs

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

#: Warm-up runs done even when ``warmup_s`` is 0 (first runs allocate arenas and pick kernels).
MIN_WARMUP_RUNS = 3


def _batch_size(inputs: Mapping[str, "np.ndarray"]) -> int:
    """Leading dimension of the first input with a batch axis (1 for scalar-only feeds)."""
    for arr in inputs.values():
        if getattr(arr, "ndim", 0) >= 1:
            return int(arr.shape[0])
    return 1


def measure_onnxruntime(
    onnx_path: str | os.PathLike,
    inputs: Dict[str, "np.ndarray"],
    cfg: ProfileConfig,
    precision_executed: str = "fp32",
    providers: Optional[Sequence[str]] = None,
) -> Measurement:
    """Time the model with ONNX Runtime.

    Warm-up runs for ``cfg.warmup_s`` (at least :data:`MIN_WARMUP_RUNS` runs), then timed runs until
    both ``cfg.duration_s`` and ``cfg.min_iterations`` are reached. Each run is timed alone with
    ``time.perf_counter``, with a pre-built feed dict; outputs are discarded.

    Args:
        onnx_path: ONNX model file.
        inputs: feed dict ``{input name: array}``; its leading dimension is the batch size.
        cfg: timing settings (``warmup_s``, ``duration_s``, ``min_iterations``, ``threads``).
        precision_executed: precision ORT actually computes in (recorded, not enforced).
        providers: execution providers (default CPU).

    Returns:
        A :class:`Measurement` with per-inference latency statistics in ms and throughput in samples/s.

    Raises:
        PipelineError: bad model, bad inputs or bad settings (see :func:`ort_session`).
    """
    if cfg.duration_s < 0 or cfg.warmup_s < 0 or cfg.min_iterations < 1:
        raise PipelineError(
            f"invalid profile settings: warmup_s={cfg.warmup_s}, duration_s={cfg.duration_s}, "
            f"min_iterations={cfg.min_iterations}",
            "use warmup_s >= 0, duration_s >= 0 and min_iterations >= 1",
        )
    sess = ort_session(onnx_path, threads=cfg.threads, providers=providers)
    validate_inputs(sess, inputs)
    feed = dict(inputs)  # built once: the loop must time inference, not dict construction
    run = sess.run

    try:
        warm_n = 0
        t0 = time.perf_counter()
        while warm_n < MIN_WARMUP_RUNS or time.perf_counter() - t0 < cfg.warmup_s:
            run(None, feed)
            warm_n += 1
        warm_s = time.perf_counter() - t0

        samples_ms: List[float] = []
        start = time.perf_counter()
        while True:
            t = time.perf_counter()
            run(None, feed)
            end = time.perf_counter()
            samples_ms.append((end - t) * 1e3)
            if len(samples_ms) >= cfg.min_iterations and end - start >= cfg.duration_s:
                break
        duration_s = time.perf_counter() - start
    except Exception as err:
        raise PipelineError(
            f"ONNX Runtime failed running {onnx_path}: {err}", "check the inputs the model accepts"
        ) from err

    batch = _batch_size(feed)
    used_providers = list(sess.get_providers())
    notes = [
        "ONNX Runtime, synchronous runs; latency includes converting outputs to numpy (host memory).",
        f"intra-op threads: {cfg.threads if cfg.threads else 'ORT default (one per physical core)'}; "
        f"{os.cpu_count()} logical CPUs visible.",
    ]
    return Measurement(
        backend="onnxruntime",
        device=cpu_name() if used_providers[0] == "CPUExecutionProvider" else used_providers[0],
        batch_size=batch,
        iterations=len(samples_ms),
        warmup_s=warm_s,
        duration_s=duration_s,
        latency_ms=latency_stats(samples_ms),
        throughput_samples_s=batch * len(samples_ms) / duration_s if duration_s > 0 else 0.0,
        providers=used_providers,
        threads=int(cfg.threads),
        precision_executed=precision_executed,
        includes_copies=True,
        notes=notes,
        warmup_iterations=warm_n,
    )
