"""Profile a TensorRT engine: accuracy against ONNX Runtime, honest timing, per-layer times.

* **Accuracy**: Polygraphy's ``TrtRunner`` runs the engine once on the real inputs; ONNX Runtime runs
  the FP32 ONNX; tolerances depend on the precision (:data:`TOLERANCES`). Polygraphy's own timing
  (host wall-clock around copies + execute + sync, one query in flight) is *not* used for speed.
* **Timing** the way trtexec does it: fixed shapes, device-resident buffers allocated once,
  ``set_tensor_address`` once, one stream; warm up for ``warmup_s``, then enqueue back to back for at
  least ``duration_s`` and ``min_iterations`` with CUDA events around every run. Throughput is
  runs x batch / (first start event -> last end event): GPU compute without copies (trtexec
  ``--noDataTransfers``). A second loop adds pinned host<->device copies to every run. A CUDA graph
  (``cuda_graph=true``) replays the enqueue to remove its CPU cost.
* **Per-layer** times through ``trt.IProfiler`` over ``layer_runs`` extra runs (profiling slows
  each run, so it is kept out of the timed loops), mapped to ONNX nodes by
  :mod:`pipeline.profile.tensorrt_layers`.

TensorRT, pycuda, Polygraphy and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pipeline.config import PrecisionConfig, ProfileConfig
from pipeline.errors import PipelineError, StageSkipped
from pipeline.profile.measurement import Measurement, latency_stats

#: Accuracy limits per precision: relative L2 error of the outputs (||trt - ref|| / ||ref||) for
#: float precisions; cosine similarity and top-1 agreement (classifiers) for quantized ones.
TOLERANCES: Dict[str, Dict[str, float]] = {
    "fp32": {"rel_l2": 1e-4},
    "tf32": {"rel_l2": 5e-3},
    "fp16": {"rel_l2": 1e-2},
    "bf16": {"rel_l2": 5e-2},
    "int8": {"cosine": 0.99, "top1_agreement": 0.99},
    "fp8": {"cosine": 0.99, "top1_agreement": 0.99},
    "best": {"cosine": 0.99, "top1_agreement": 0.99},
}


@dataclass
class TrtProfile:
    """What :func:`profile_engine` measured.

    Attributes:
        measurement: GPU compute without copies (the headline number, ``includes_copies=False``).
        with_copies: the same engine with pinned host->device input and device->host output copies
            in every timed run; None when ``with_copies`` is off.
        layer_times: ONNX node name -> seconds per run (fused layer times split over their nodes).
        layers: one row per engine layer (see :func:`pipeline.profile.tensorrt_layers.layer_rows`).
        accuracy: metrics against ONNX Runtime, the tolerance and ``passed``; {} when not checked.
        engine: engine facts (I/O tensors, TensorRT version, GPU, CUDA binding used).
    """

    measurement: Measurement
    with_copies: Optional[Measurement] = None
    layer_times: Dict[str, float] = field(default_factory=dict)
    layers: List[Dict[str, Any]] = field(default_factory=list)
    accuracy: Dict[str, Any] = field(default_factory=dict)
    engine: Dict[str, Any] = field(default_factory=dict)

    def measured_dict(self) -> Dict[str, Any]:
        """``measurement.to_dict()`` plus ``with_copies`` and ``engine`` (the report's ``measured``)."""
        d = self.measurement.to_dict()
        d["with_copies"] = self.with_copies.to_dict() if self.with_copies else None
        d["engine"] = dict(self.engine)
        return d


# ------------------------------------------------------------------------------------------- accuracy
def compare_outputs(ref: np.ndarray, test: np.ndarray, precision: str) -> Dict[str, Any]:
    """Accuracy of ``test`` against ``ref`` with the precision's tolerance.

    Args:
        ref: reference output (ONNX Runtime, FP32), leading dimension = batch.
        test: engine output, same shape.
        precision: selects :data:`TOLERANCES`.

    Returns:
        ``{rel_l2, cosine, max_abs, top1_agreement?, tolerance, passed, failed_checks}``;
        ``top1_agreement`` only for 2-D outputs with more than one class.
    """
    if ref.shape != test.shape:
        raise PipelineError(f"Engine output shape {test.shape} differs from ONNX Runtime's {ref.shape}.",
                            "Rebuild the engine from the same ONNX (build.force_rebuild=true).")
    r = ref.reshape(len(ref), -1).astype(np.float64) if ref.ndim else ref.astype(np.float64).reshape(1, 1)
    t = test.reshape(len(test), -1).astype(np.float64) if test.ndim else test.astype(np.float64).reshape(1, 1)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(t, axis=1)
    out: Dict[str, Any] = {
        "rel_l2": float(np.linalg.norm(r - t) / (np.linalg.norm(r) + 1e-30)),
        "cosine": float(np.mean(np.sum(r * t, axis=1) / np.maximum(norms, 1e-30))),
        "max_abs": float(np.max(np.abs(r - t))) if r.size else 0.0,
    }
    if ref.ndim == 2 and ref.shape[1] > 1:
        out["top1_agreement"] = float(np.mean(r.argmax(1) == t.argmax(1)))
    tol = TOLERANCES.get(precision, TOLERANCES["fp32"])
    failed = []
    for key, limit in tol.items():
        if key not in out:
            continue
        ok = out[key] <= limit if key == "rel_l2" else out[key] >= limit
        if not ok:
            failed.append(f"{key}={out[key]:.4g} (limit {limit:g})")
    ref_max = float(np.max(np.abs(r))) if r.size else 0.0
    if ref_max < 1e-6:
        # Relative metrics divide by the reference: on near-zero outputs (e.g. a random-weight
        # network whose activations vanish) they measure noise, and FP16 flushes values < 6e-8 to 0.
        failed.append(f"reference outputs are ~0 (max |ref| = {ref_max:.3g}): relative metrics are meaningless; "
                      "check the model's weights/inputs")
    out.update(ref_max_abs=ref_max, tolerance=dict(tol), passed=not failed, failed_checks=failed)
    return out


def outputs_vs_onnxruntime(run_test: Callable[[Dict[str, np.ndarray]], Tuple[str, np.ndarray]],
                           batches: Sequence[Mapping[str, np.ndarray]], onnx_path: str | Path,
                           precision: str) -> Dict[str, Any]:
    """Compare output 0 of a runner under test with ONNX Runtime's over several batches.

    Args:
        run_test: runs one feed dict, returns ``(output name, output array)`` (a copy: runners
            may reuse their output buffers).
        batches: feed dicts; their outputs are concatenated before comparing, so top-1 agreement
            and cosine are over every sample.
        onnx_path: the FP32 reference ONNX (one ONNX Runtime session for all batches).
        precision: selects the tolerance (:data:`TOLERANCES`).
    """
    from pipeline.profile.onnxruntime_runner import ort_session, validate_inputs  # noqa: PLC0415

    if not batches:
        raise PipelineError("No input batches for the accuracy check.", "Set data.num_samples >= 1.")
    sess = ort_session(onnx_path)
    refs, tests, name = [], [], ""
    for feed in batches:
        feed = dict(feed)
        validate_inputs(sess, feed)
        try:
            refs.append(np.asarray(sess.run(None, feed)[0]))
        except Exception as err:  # ORT runtime errors (e.g. a shape mismatch inside the graph)
            raise PipelineError(f"ONNX Runtime failed running {onnx_path} for the accuracy check: {err}",
                                "check the input values/shapes the model accepts") from err
        name, out = run_test(feed)
        tests.append(np.asarray(out, dtype=np.float32))
    ref, test = (np.concatenate(a) if a[0].ndim else np.stack(a) for a in (refs, tests))
    res = compare_outputs(ref, test, precision)
    res.update(reference="onnxruntime (CPU, FP32 ONNX)", output=name, batches=len(batches),
               samples=int(test.shape[0]) if test.ndim else 1)
    return res


def accuracy_vs_onnxruntime(engine: Any, batches: Sequence[Mapping[str, np.ndarray]], onnx_path: str | Path,
                            precision: str) -> Dict[str, Any]:
    """Run the engine with Polygraphy's TrtRunner and the ONNX with ONNX Runtime on ``batches``; compare output 0."""
    from polygraphy.backend.trt import TrtRunner  # noqa: PLC0415

    with TrtRunner(engine) as runner:
        names = list(runner.get_output_metadata().keys()) if hasattr(runner, "get_output_metadata") else []

        def run_engine(feed: Dict[str, np.ndarray]) -> Tuple[str, np.ndarray]:
            outs = runner.infer(feed_dict=feed)
            name = names[0] if names and names[0] in outs else next(iter(outs))
            return name, np.array(outs[name], copy=True)  # TrtRunner reuses its output buffers

        res = outputs_vs_onnxruntime(run_engine, batches, onnx_path, precision)
    res["runner"] = "polygraphy TrtRunner"
    return res


# ------------------------------------------------------------------------------------------- timing
def timed_loop(enqueue: Callable[[], None], cuda: Any, stream: int, warmup_s: float, duration_s: float,
               min_iterations: int, in_flight: int = 3) -> Dict[str, Any]:
    """Warm up, then run ``enqueue`` back to back with events around each run.

    The host waits only for the run ``in_flight`` places back, so the GPU always has queued work,
    as trtexec measures throughput.

    Args:
        enqueue: puts one inference (and any copies) on ``stream``.
        cuda: :class:`pipeline.build.cuda_mem.CudaApi`.
        stream: stream handle.
        warmup_s: warm-up wall time, seconds (at least one run).
        duration_s: minimum timed wall time, seconds.
        min_iterations: minimum timed runs.
        in_flight: runs queued ahead of the GPU (>= 2 keeps it busy while the host enqueues).

    Returns:
        ``{latencies_ms, gpu_span_ms, wall_s, iterations, warmup_iterations, warmup_s}``.
    """
    t0, warm = time.perf_counter(), 0
    while True:
        enqueue()
        warm += 1
        if warm % 8 == 0 or time.perf_counter() - t0 >= warmup_s:
            cuda.synchronize(stream)
            if time.perf_counter() - t0 >= warmup_s:
                break
    warm_s = time.perf_counter() - t0
    starts, ends = [], []
    t1 = time.perf_counter()
    while True:
        if len(ends) >= in_flight:
            # Keep `in_flight` runs queued: the GPU never idles, and the host cannot run seconds
            # ahead of it (which would stretch the timed span far past duration_s).
            cuda.wait(ends[-in_flight])
        s, e = cuda.create_event(), cuda.create_event()
        cuda.record(s, stream)
        enqueue()
        cuda.record(e, stream)
        starts.append(s)
        ends.append(e)
        if len(starts) >= min_iterations and time.perf_counter() - t1 >= duration_s:
            break
    cuda.synchronize(stream)
    wall = time.perf_counter() - t1
    lat = [cuda.elapsed_ms(a, b) for a, b in zip(starts, ends)]
    span = cuda.elapsed_ms(starts[0], ends[-1])
    return {"latencies_ms": lat, "gpu_span_ms": span, "wall_s": wall, "iterations": len(lat),
            "warmup_iterations": warm, "warmup_s": warm_s}


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


class EngineSession:
    """An engine, one execution context, device buffers for every I/O tensor, one stream.

    Args:
        trt: the tensorrt module.
        engine: a deserialized ``ICudaEngine``.
        inputs: host arrays; their shapes are set on the context (explicit batch).
        cuda: :class:`pipeline.build.cuda_mem.CudaApi`.
    """

    def __init__(self, trt: ModuleType, engine: Any, inputs: Mapping[str, np.ndarray], cuda: Any):
        self.trt, self.engine, self.cuda = trt, engine, cuda
        self.context = engine.create_execution_context()
        self.stream = cuda.create_stream()
        self.inputs: Dict[str, np.ndarray] = {}
        self.outputs: Dict[str, np.ndarray] = {}
        self.ptrs: Dict[str, int] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        missing = [n for n in names if is_input[n] and n not in inputs]
        if missing:
            raise PipelineError(f"The engine needs inputs {missing}; got {sorted(inputs)}.",
                                "Feed every model input (check the data config).")
        for n in names:
            if is_input[n]:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
                host = cuda.pinned(inputs[n].shape, dtype)
                host[...] = np.asarray(inputs[n]).astype(dtype, copy=False)
                self.inputs[n] = host
                self.context.set_input_shape(n, tuple(inputs[n].shape))
        for n in names:
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            if is_input[n]:
                nbytes = self.inputs[n].nbytes
            else:
                shape = tuple(self.context.get_tensor_shape(n))
                if any(d < 0 for d in shape):
                    raise PipelineError(f"Output {n!r} has a data-dependent shape {shape}.",
                                        "This runner times engines with static output shapes only.")
                self.outputs[n] = cuda.pinned(shape, dtype)
                nbytes = self.outputs[n].nbytes
            self.ptrs[n] = cuda.malloc(nbytes)
            self.context.set_tensor_address(n, self.ptrs[n])
        self.copy_inputs()
        cuda.synchronize(self.stream)

    def copy_inputs(self) -> None:
        """Pinned host inputs -> device (async on the session's stream)."""
        for n, host in self.inputs.items():
            self.cuda.htod(self.ptrs[n], host, self.stream)

    def copy_outputs(self) -> None:
        """Device outputs -> pinned host (async on the session's stream)."""
        for n, host in self.outputs.items():
            self.cuda.dtoh(host, self.ptrs[n], self.stream)

    def execute(self) -> None:
        """Enqueue one inference."""
        if not self.context.execute_async_v3(self.stream):
            raise PipelineError("TensorRT execute_async_v3 failed.", "Check the TensorRT log above.")

    def close(self) -> None:
        """Free device buffers."""
        for p in self.ptrs.values():
            self.cuda.free(p)
        self.ptrs.clear()


def _read_sidecar(plan_path: Path) -> Dict[str, Any]:
    side = Path(str(plan_path) + ".json")
    try:
        return json.loads(side.read_text()) if side.is_file() else {}
    except (OSError, ValueError):
        return {}


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
) -> TrtProfile:
    """Check, time and per-layer profile a serialized TensorRT engine.

    Args:
        plan_path: ``.plan`` file (its ``.plan.json`` sidecar adds layer info when present).
        inputs: one batch of host inputs ``{name: array}``; the batch is their leading dimension.
        profile: warmup_s, duration_s, min_iterations, cuda_graph, with_copies, layer_times,
            layer_runs, accuracy_check.
        onnx_path: the FP32 ONNX: reference for accuracy, and node names for per-layer mapping.
        precision: the engine's precision (tolerances; ``precision_executed``).
        onnx_costs: the analyze stage's per-node rows (``name, flops, bytes, compute_s, memory_s,
            bound_s``) for per-layer efficiency.
        peak_ops_per_s: theoretical peak of the precision, ops/s (per-layer ``pct_of_peak``).
        cuda: a CUDA binding (:func:`pipeline.build.cuda_mem.cuda_api` when None).
        log: progress messages.
        accuracy_batches: feed dicts (each of ``inputs``' shapes) for the accuracy check; default
            ``[inputs]``.

    Returns:
        :class:`TrtProfile`.

    Raises:
        StageSkipped: TensorRT is not installed.
        PipelineError: the engine cannot be loaded here, inputs do not match, execution fails.
    """
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as err:
        raise StageSkipped(f"TensorRT is not installed ({err})") from err
    from pipeline.build.cuda_mem import CudaGraph, cuda_api  # noqa: PLC0415
    from pipeline.build.engine import layer_info_from_engine  # noqa: PLC0415
    from pipeline.build.trt_features import gpu_info, library_version  # noqa: PLC0415
    from pipeline.profile.tensorrt_layers import (  # noqa: PLC0415
        engine_layers, layer_rows, make_layer_profiler, onnx_graph_index, onnx_layer_times)

    plan_path = Path(plan_path)
    prec = precision.name if precision is not None else "fp32"
    own_cuda = cuda is None
    cuda = cuda or cuda_api()
    gpu = gpu_info()
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise PipelineError(f"TensorRT could not deserialize {plan_path} (built by another version or GPU?).",
                            "Rebuild it: build.force_rebuild=true.")
    batch = int(next(iter(inputs.values())).shape[0]) if inputs else 1
    notes = [f"GPU compute only: inputs already on the device, no copies (trtexec --noDataTransfers); "
             f"CUDA events around each run; binding {cuda.name}"]
    info: Dict[str, Any] = {"plan": str(plan_path), "tensorrt": library_version(trt), "gpu": gpu.name,
                            "compute_capability": gpu.compute_capability, "cuda_binding": cuda.name}

    accuracy: Dict[str, Any] = {}
    if profile.accuracy_check and onnx_path is not None:
        checked = list(accuracy_batches) if accuracy_batches else [inputs]
        log(f"[profile] accuracy: Polygraphy TrtRunner vs ONNX Runtime on {len(checked)} batch(es)")
        accuracy = accuracy_vs_onnxruntime(engine, checked, onnx_path, prec)

    sess = EngineSession(trt, engine, inputs, cuda)
    try:
        enqueue = sess.execute
        if profile.cuda_graph:
            try:
                sess.execute()  # TensorRT allocates lazily in the first enqueue: never capture it
                cuda.synchronize(sess.stream)
                graph = CudaGraph(sess.stream)
                graph.capture(sess.execute)
                enqueue = graph.launch
                notes.append("CUDA graph replay")
            except (RuntimeError, OSError, PipelineError) as err:
                notes.append(f"CUDA graph capture failed ({err}); plain enqueues timed")
        log(f"[profile] timing {plan_path.name}: warm-up {profile.warmup_s} s, >= {profile.duration_s} s")
        loop = timed_loop(enqueue, cuda, sess.stream, profile.warmup_s, profile.duration_s, profile.min_iterations)
        measurement = _measurement(loop, batch, gpu.name, prec, False, notes)

        with_copies = None
        if profile.with_copies:
            def enqueue_with_copies() -> None:
                sess.copy_inputs()
                enqueue()
                sess.copy_outputs()

            loop_c = timed_loop(enqueue_with_copies, cuda, sess.stream, min(profile.warmup_s, 0.5),
                                profile.duration_s, profile.min_iterations)
            with_copies = _measurement(loop_c, batch, gpu.name, prec, True,
                                       [f"pinned host->device inputs and device->host outputs in every run; "
                                        f"binding {cuda.name}"])

        rows: List[Dict[str, Any]] = []
        node_times: Dict[str, float] = {}
        if profile.layer_times:
            prof = make_layer_profiler(trt)
            sess.context.profiler = prof
            sess.execute()  # the first profiled run includes profiler setup: dropped
            cuda.synchronize(sess.stream)
            prof.reset()
            for _ in range(max(profile.layer_runs, 1)):
                sess.execute()
                cuda.synchronize(sess.stream)
            layers = engine_layers(_read_sidecar(plan_path).get("layers") or layer_info_from_engine(trt, engine))
            index = onnx_graph_index(onnx_path) if onnx_path is not None else None
            rows = layer_rows(prof.mean_ms(), layers, index, onnx_costs, peak_ops_per_s)
            node_times = onnx_layer_times(rows, onnx_costs)
            total_ms = sum(r["measured_ms"] for r in rows)
            info["layer_profile"] = {"runs": max(profile.layer_runs, 1), "sum_of_layers_ms": total_ms,
                                     "note": "IProfiler synchronizes per layer: the sum exceeds the timed latency"}
    finally:
        sess.close()
        if own_cuda:
            cuda.close()
    return TrtProfile(measurement, with_copies, node_times, rows, accuracy, info)
