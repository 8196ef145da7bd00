"""Profile a TensorRT engine: accuracy against ONNX Runtime, honest timing, per-layer times, GPU telemetry.

* **Accuracy**: :func:`pipeline.core.accuracy.compare_with_onnxruntime` runs the engine (the
  :func:`pipeline.trt.runtime.engine_runner`, inputs bound in the engine's dtypes) and the FP32 ONNX on
  ONNX Runtime over the same batches with Polygraphy's ``Comparator``; tolerances depend on the
  precision. That runner's timing is *not* used for speed.
* **Timing** the way trtexec does it: fixed shapes, device-resident buffers allocated once,
  ``set_tensor_address`` once, one stream; warm up for ``warmup_s``, then enqueue back to back for at
  least ``duration_s`` and ``min_iterations`` with CUDA events around every run. Throughput is
  runs x batch / (first start event -> last end event): GPU compute without copies (trtexec
  ``--noDataTransfers``). A second loop adds pinned host<->device copies to every run. A CUDA graph
  (``cuda_graph=true``) replays the enqueue to remove its CPU cost.
* **Telemetry**: :class:`pipeline.core.gpu.NvmlSampler` samples SM/memory clocks, power, temperature
  and utilization every ~20 ms during each timed loop (``gpu_telemetry`` in the measured dict).
* **Per-layer** times through ``trt.IProfiler`` over ``layer_runs`` extra runs (profiling slows
  each run, so it is kept out of the timed loops), mapped to ONNX nodes by :mod:`pipeline.trt.layers`.

TensorRT, pycuda, Polygraphy, NVML and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from pipeline.core.config import PrecisionConfig, ProfileConfig
from pipeline.core.measurement import Measurement, latency_stats
from pipeline.core.errors import PipelineError, StageSkipped


@dataclass
class TrtProfile:
    """What :func:`profile_engine` measured.

    Attributes:
        measurement: GPU compute without copies (the headline number, ``includes_copies=False``).
        with_copies: the same engine with pinned host->device input and device->host output copies
            in every timed run; None when ``with_copies`` is off.
        layer_times: ONNX node name -> seconds per run (fused layer times split over their nodes).
        layers: one row per engine layer (see :func:`pipeline.trt.layers.layer_rows`).
        accuracy: metrics against ONNX Runtime, the tolerance and ``passed``; {} when not checked.
        engine: engine facts (I/O tensors, TensorRT version, GPU, CUDA binding used).
        telemetry: NVML samples over the timed loop without copies (see
            :class:`pipeline.core.gpu.NvmlSampler`); ``telemetry_with_copies`` over the loop with copies.
    """

    measurement: Measurement
    with_copies: Optional[Measurement] = None
    layer_times: Dict[str, float] = field(default_factory=dict)
    layers: List[Dict[str, Any]] = field(default_factory=list)
    accuracy: Dict[str, Any] = field(default_factory=dict)
    engine: Dict[str, Any] = field(default_factory=dict)
    telemetry: Dict[str, Any] = field(default_factory=dict)
    telemetry_with_copies: Dict[str, Any] = field(default_factory=dict)

    def measured_dict(self) -> Dict[str, Any]:
        """``measurement.to_dict()`` plus ``gpu_telemetry``, ``with_copies`` (with its own) and ``engine``."""
        d = self.measurement.to_dict()
        d["gpu_telemetry"] = dict(self.telemetry)
        d["with_copies"] = self.with_copies.to_dict() if self.with_copies else None
        if d["with_copies"] is not None:
            d["with_copies"]["gpu_telemetry"] = dict(self.telemetry_with_copies)
        d["engine"] = dict(self.engine)
        return d


def make_layer_profiler(trt: ModuleType) -> Any:
    """A ``trt.IProfiler`` that sums each layer's time over runs.

    The returned object has ``totals`` (layer name -> summed ms), ``counts`` (runs seen per layer),
    ``order`` (first-seen order) and ``reset()``.
    """
    base = trt.IProfiler

    class LayerProfiler(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.reset()

        def reset(self) -> None:
            self.totals: Dict[str, float] = {}
            self.counts: Dict[str, int] = {}
            self.order: List[str] = []

        def report_layer_time(self, layer_name: str, ms: float) -> None:  # TensorRT callback
            if layer_name not in self.totals:
                self.order.append(layer_name)
                self.totals[layer_name] = 0.0
                self.counts[layer_name] = 0
            self.totals[layer_name] += float(ms)
            self.counts[layer_name] += 1

        def mean_ms(self) -> Dict[str, float]:
            return {k: self.totals[k] / max(self.counts[k], 1) for k in self.order}

    return LayerProfiler()


# ------------------------------------------------------------------------------------------- timing
def timed_loop(enqueue: Callable[[], None], cuda: Any, stream: int, warmup_s: float, duration_s: float,
               min_iterations: int, in_flight: int = 3) -> Dict[str, Any]:
    """Warm up, then run ``enqueue`` back to back with events around each run.

    The host waits only for the run ``in_flight`` places back, so the GPU always has queued work,
    as trtexec measures throughput.

    Args:
        enqueue: puts one inference (and any copies) on ``stream``.
        cuda: :class:`pipeline.trt.cuda.CudaApi`.
        stream: stream handle.
        warmup_s: warm-up wall time, seconds (at least one run).
        duration_s: minimum timed wall time, seconds.
        min_iterations: minimum timed runs.
        in_flight: runs queued ahead of the GPU (>= 2 keeps it busy while the host enqueues).

    Returns:
        ``{latencies_ms, gpu_span_ms, wall_s, iterations, warmup_iterations, warmup_s, streams}``.
    """
    return timed_streams([enqueue], [stream], cuda, warmup_s, duration_s, min_iterations, in_flight)


def timed_streams(enqueues: Sequence[Callable[[], None]], streams: Sequence[int], cuda: Any, warmup_s: float,
                  duration_s: float, min_iterations: int, in_flight: int = 3) -> Dict[str, Any]:
    """:func:`timed_loop` over several execution contexts, each on its own stream, enqueued round-robin (MLPerf's
    offline habit: the GPU overlaps one context's tail with the next one's head).

    ``iterations`` counts every run on every stream; ``gpu_span_ms`` runs from the first start to the last end
    (events of one device share its clock), so ``batch x iterations / span`` is the throughput of all streams
    together. ``latencies_ms`` are per run and include the contention between streams.
    """
    t0, warm = time.perf_counter(), 0
    while True:
        for enqueue in enqueues:
            enqueue()
        warm += 1
        if warm % 8 == 0 or time.perf_counter() - t0 >= warmup_s:
            for st in streams:
                cuda.synchronize(st)
            if time.perf_counter() - t0 >= warmup_s:
                break
    warm_s = time.perf_counter() - t0
    starts, ends = [], []
    last: List[List[Any]] = [[] for _ in enqueues]  # end events per stream
    t1 = time.perf_counter()
    while True:
        for i, (enqueue, st) in enumerate(zip(enqueues, streams)):
            if len(last[i]) >= in_flight:
                # Keep `in_flight` runs queued per stream: the GPU never idles, and the host cannot run seconds
                # ahead of it (which would stretch the timed span far past duration_s).
                cuda.wait(last[i][-in_flight])
            s, e = cuda.create_event(), cuda.create_event()
            cuda.record(s, st)
            enqueue()
            cuda.record(e, st)
            starts.append(s)
            ends.append(e)
            last[i].append(e)
        if len(starts) >= min_iterations and time.perf_counter() - t1 >= duration_s:
            break
    for st in streams:
        cuda.synchronize(st)
    wall = time.perf_counter() - t1
    lat = [cuda.elapsed_ms(a, b) for a, b in zip(starts, ends)]
    span = max(cuda.elapsed_ms(starts[0], per[-1]) for per in last)
    return {"latencies_ms": lat, "gpu_span_ms": span, "wall_s": wall, "iterations": len(lat),
            "warmup_iterations": warm, "warmup_s": warm_s, "streams": len(enqueues)}


def _measurement(loop: Mapping[str, Any], batch: int, device: str, precision: str, copies: bool,
                 notes: List[str]) -> Measurement:
    span_s = loop["gpu_span_ms"] / 1e3
    return Measurement(
        backend="tensorrt", device=device, batch_size=batch, iterations=loop["iterations"],
        warmup_s=round(loop["warmup_s"], 4), duration_s=round(span_s, 6),
        latency_ms=latency_stats(loop["latencies_ms"]),
        throughput_samples_s=batch * loop["iterations"] / span_s,
        precision_executed=precision, includes_copies=copies, notes=list(notes),
        warmup_iterations=loop["warmup_iterations"],
    )


def _read_sidecar(plan_path: Path) -> Dict[str, Any]:
    side = Path(str(plan_path) + ".json")
    try:
        return json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, ValueError):
        return {}


def timed_with_telemetry(enqueue: Callable[[], None], cuda: Any, stream: int, warmup_s: float, duration_s: float,
                         min_iterations: int) -> tuple:
    """:func:`timed_loop` inside an :class:`pipeline.core.gpu.NvmlSampler`; returns ``(loop, telemetry)``."""
    from pipeline.core.gpu import NvmlSampler  # noqa: PLC0415

    with NvmlSampler() as sampler:
        loop = timed_loop(enqueue, cuda, stream, warmup_s, duration_s, min_iterations)
    return loop, sampler.result()


def graph_enqueue(sess: Any, cuda: Any, notes: List[str]) -> Callable[[], None]:
    """A CUDA-graph replay of ``sess.execute`` (or ``sess.execute`` itself when capture fails, noted)."""
    from pipeline.trt.cuda import CudaGraph  # noqa: PLC0415

    try:
        sess.execute()  # TensorRT allocates lazily in the first enqueue: never capture it
        cuda.synchronize(sess.stream)
        graph = CudaGraph(sess.stream, cuda)
        graph.capture(sess.execute)
        notes.append("CUDA graph replay")
        return graph.launch
    except (RuntimeError, OSError, PipelineError) as err:
        notes.append(f"CUDA graph capture failed ({err}); plain enqueues timed")
        return sess.execute


def per_layer(trt: ModuleType, sess: Any, cuda: Any, engine: Any, plan_path: Path, runs: int,
              onnx_path: Optional[str | Path], onnx_costs: Optional[Sequence[Mapping[str, Any]]],
              peak_ops_per_s: Optional[float], inspector: bool) -> tuple:
    """IProfiler times over ``runs`` runs: ``(rows, node_times, summary)``."""
    from pipeline.trt.inspector import layer_info_from_engine  # noqa: PLC0415
    from pipeline.trt.layers import engine_layers, layer_rows, onnx_graph_index, onnx_layer_times  # noqa: PLC0415

    prof = make_layer_profiler(trt)
    sess.context.profiler = prof
    sess.execute()  # the first profiled run includes profiler setup: dropped
    cuda.synchronize(sess.stream)
    prof.reset()
    for _ in range(max(runs, 1)):
        sess.execute()
        cuda.synchronize(sess.stream)
    info = _read_sidecar(plan_path).get("layers") or (layer_info_from_engine(trt, engine) if inspector else [])
    index = onnx_graph_index(onnx_path) if onnx_path is not None else None
    rows = layer_rows(prof.mean_ms(), engine_layers(info), index, onnx_costs, peak_ops_per_s)
    summary = {"runs": max(runs, 1), "sum_of_layers_ms": sum(r["measured_ms"] for r in rows),
               "note": "IProfiler synchronizes per layer: the sum exceeds the timed latency"}
    return rows, onnx_layer_times(rows, onnx_costs), summary


def time_session(sess: Any, cuda: Any, profile: ProfileConfig, batch: int, device: str, precision: str,
                 notes: List[str], more: Sequence[Any] = ()) -> Dict[str, Any]:
    """The timed loops (GPU compute, then with copies), each inside an NVML sampler; with ``more`` sessions (extra
    execution contexts of the same engine, ``profile.streams``), the compute loop runs them all round-robin.

    Returns:
        ``{measurement, with_copies, telemetry, telemetry_with_copies}``.
    """
    sessions = [sess, *more]
    enqueues = [graph_enqueue(x, cuda, notes) if profile.cuda_graph else x.execute for x in sessions]
    enqueue = enqueues[0]
    if len(sessions) > 1:
        from pipeline.core.gpu import NvmlSampler  # noqa: PLC0415

        notes.append(f"{len(sessions)} execution contexts on {len(sessions)} streams, enqueued round-robin; "
                     "throughput counts all of them, latency is per run under that contention")
        with NvmlSampler() as sampler:
            loop = timed_streams(enqueues, [x.stream for x in sessions], cuda, profile.warmup_s, profile.duration_s,
                                 profile.min_iterations)
        telemetry = sampler.result()
    else:
        loop, telemetry = timed_with_telemetry(enqueue, cuda, sess.stream, profile.warmup_s, profile.duration_s,
                                               profile.min_iterations)
    if telemetry.get("available"):
        notes.append(f"NVML sampled clocks, power, temperature and utilization every {telemetry['period_ms']:g} ms "
                     "in a background thread during the timed runs (gpu_telemetry)")
    out: Dict[str, Any] = {"measurement": _measurement(loop, batch, device, precision, False, notes),
                           "with_copies": None, "telemetry": telemetry, "telemetry_with_copies": {}}
    if profile.with_copies:
        def enqueue_with_copies() -> None:
            sess.copy_inputs()
            enqueue()
            sess.copy_outputs()

        loop_c, out["telemetry_with_copies"] = timed_with_telemetry(
            enqueue_with_copies, cuda, sess.stream, min(profile.warmup_s, 0.5), profile.duration_s,
            profile.min_iterations)
        out["with_copies"] = _measurement(loop_c, batch, device, precision, True,
                                          [f"pinned host->device inputs and device->host outputs in every run; "
                                           f"binding {cuda.name}"])
    return out


def _check_accuracy(trt: ModuleType, engine: Any, cuda: Any, checked: List[Mapping[str, np.ndarray]], onnx_path: Any,
                    precision: str, log: Callable[[str], None], task: Optional[str] = None) -> Dict[str, Any]:
    """The engine's outputs against ONNX Runtime's on ``checked`` (Polygraphy's Comparator)."""
    from pipeline.core.accuracy import compare_with_onnxruntime  # noqa: PLC0415
    from pipeline.trt.runtime import engine_runner  # noqa: PLC0415

    log(f"[profile] accuracy: engine vs ONNX Runtime on {len(checked)} batch(es) (Polygraphy Comparator)")
    runner = engine_runner(trt, engine, cuda, {n: np.asarray(a).dtype for n, a in checked[0].items()})
    accuracy = compare_with_onnxruntime(runner, checked, onnx_path, precision, task)
    accuracy["runner"] = "pipeline.trt engine runner (inputs in the engine dtypes) via Polygraphy Comparator"
    return accuracy


def _time_with_contexts(new_session: Callable[[], Any], sess: Any, cuda: Any, profile: ProfileConfig, batch: int,
                        device: str, precision: str, notes: List[str]) -> Dict[str, Any]:
    """:func:`time_session` with ``profile.streams - 1`` more execution contexts, freed afterwards."""
    more = [new_session() for _ in range(max(1, profile.streams) - 1)]
    try:
        return time_session(sess, cuda, profile, batch, device, precision, notes, more)
    finally:
        for extra in more:
            extra.close()


def _tensorrt(trt: Optional[ModuleType]) -> tuple:
    """``(trt, features)``; StageSkipped without TensorRT, PipelineError without name-based I/O."""
    from pipeline.trt.features import detect_features, import_tensorrt  # noqa: PLC0415

    try:
        trt = trt or import_tensorrt()
    except PipelineError as err:
        raise StageSkipped(err.message) from err
    features = detect_features(trt)
    if not features.tensor_api:
        raise PipelineError(f"TensorRT {features.library_version} has no name-based I/O (execute_async_v3).",
                            "Profile with TensorRT 8.5 or newer.")
    return trt, features


def profile_engine(
    plan_path: str | Path,
    inputs: Mapping[str, np.ndarray],
    profile: ProfileConfig,
    onnx_path: Optional[str | Path] = None,
    precision: Optional[PrecisionConfig] = None,
    onnx_costs: Optional[Sequence[Mapping[str, Any]]] = None,
    peak_ops_per_s: Optional[float] = None,
    cuda: Any = None,
    log: Callable[[str], None] = print,
    accuracy_batches: Optional[Sequence[Mapping[str, np.ndarray]]] = None,
    trt: Optional[ModuleType] = None,
    task: Optional[str] = None,
) -> TrtProfile:
    """Check, time and per-layer profile a serialized TensorRT engine.

    Args:
        plan_path: ``.plan`` file (its ``.plan.json`` sidecar adds layer info when present).
        inputs: one batch of host inputs ``{name: array}`` in the model's dtypes (converted to the
            engine's); the batch is their leading dimension.
        profile: warmup_s, duration_s, min_iterations, cuda_graph, with_copies, layer_times, layer_runs, ...
        onnx_path: the FP32 ONNX: reference for accuracy, and node names for per-layer mapping.
        precision: the engine's precision (tolerances; ``precision_executed``).
        onnx_costs: the analyze stage's per-node rows (``name, flops, bytes, ..., bound_s``): per-layer efficiency.
        peak_ops_per_s: theoretical peak of the precision, ops/s (per-layer ``pct_of_peak``).
        cuda: a CUDA binding with events (:func:`pipeline.trt.cuda.cuda_api` when None).
        log: progress messages.
        accuracy_batches: feed dicts (each of ``inputs``' shapes) for the accuracy check; default ``[inputs]``.
        trt: the tensorrt module; imported when None.
        task: the model's task (export summary): which checks apply (:func:`~pipeline.core.accuracy.precision_check`).

    Returns:
        :class:`TrtProfile`.

    Raises:
        StageSkipped: TensorRT is not installed.
        PipelineError: the engine cannot be loaded here, inputs do not match or do not fit the
            engine's dtypes, execution fails.
    """
    from pipeline.trt.cuda import cuda_api  # noqa: PLC0415
    from pipeline.trt.features import gpu_info  # noqa: PLC0415
    from pipeline.trt.runtime import EngineSession, load_engine  # noqa: PLC0415

    trt, features = _tensorrt(trt)
    plan_path = Path(plan_path)
    prec = precision.name if precision is not None else "fp32"
    own_cuda = cuda is None
    cuda = cuda or cuda_api(events=True)
    gpu = gpu_info()
    engine = load_engine(trt, plan_path)
    batch = int(next(iter(inputs.values())).shape[0]) if inputs else 1
    notes = [f"GPU compute only: inputs already on the device, no copies (trtexec --noDataTransfers); "
             f"CUDA events around each run; binding {cuda.name}"]
    info: Dict[str, Any] = {"plan": str(plan_path), "tensorrt": features.library_version, "gpu": gpu.name,
                            "compute_capability": gpu.compute_capability, "cuda_binding": cuda.name}
    accuracy: Dict[str, Any] = {}
    sess = None
    try:
        if profile.accuracy_check and onnx_path is not None:
            accuracy = _check_accuracy(trt, engine, cuda, list(accuracy_batches) if accuracy_batches else [inputs],
                                       onnx_path, prec, log, task)
        sess = EngineSession(trt, engine, inputs, cuda)
        log(f"[profile] timing {plan_path.name}: warm-up {profile.warmup_s} s, >= {profile.duration_s} s"
            + (f", {profile.streams} streams" if profile.streams > 1 else ""))
        timed = _time_with_contexts(lambda: EngineSession(trt, engine, inputs, cuda), sess, cuda, profile, batch,
                                    gpu.name, prec, notes)
        rows: List[Dict[str, Any]] = []
        node_times: Dict[str, float] = {}
        if profile.layer_times:
            rows, node_times, info["layer_profile"] = per_layer(trt, sess, cuda, engine, plan_path, profile.layer_runs,
                                                                onnx_path, onnx_costs, peak_ops_per_s,
                                                                features.engine_inspector)
    finally:
        if sess is not None:
            sess.close()
        if own_cuda:
            cuda.close()
    return TrtProfile(timed["measurement"], timed["with_copies"], node_times, rows, accuracy, info,
                      timed["telemetry"], timed["telemetry_with_copies"])
