"""Run and time an ONNX model with ONNX Runtime (the CPU backend, and the reference for checks).

Timing follows trtexec's approach: warm up for a fixed time, then time individual synchronous runs
until both a minimum duration and a minimum number of iterations are reached. ``onnxruntime`` is
imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from pipeline.config import ProfileConfig
from pipeline.errors import PipelineError
from pipeline.profile.measurement import Measurement, cpu_name, latency_stats

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

#: Warm-up runs done even when ``warmup_s`` is 0 (first runs allocate arenas and pick kernels).
MIN_WARMUP_RUNS = 3

#: ONNX tensor element types (as ORT spells them) -> numpy dtype names.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def ort_session(onnx_path: str | os.PathLike, threads: int = 0, providers: Optional[Sequence[str]] = None):
    """Create an ONNX Runtime session with all graph optimizations enabled.

    Args:
        onnx_path: ONNX model file.
        threads: intra-op thread count; 0 lets ORT choose (one per physical core).
        providers: execution providers in priority order; default ``["CPUExecutionProvider"]``.

    Returns:
        ``onnxruntime.InferenceSession``.

    Raises:
        PipelineError: onnxruntime missing, file missing or corrupt, a requested provider not
            available in this build, or an operator ORT cannot run.
    """
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise PipelineError("onnxruntime is not installed", "pip install onnxruntime") from err

    path = Path(onnx_path)
    if not path.is_file():
        raise PipelineError(
            f"ONNX model not found: {path}",
            "run the export stage first (stages=[export,...]) or pass an existing file with model.onnx_path=...",
        )
    if threads < 0:
        raise PipelineError(f"profile.threads must be >= 0, got {threads}", "use 0 for ORT's default or a core count")

    providers = list(providers) if providers else ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        # ORT only warns and silently falls back; a silent fallback would mislabel the measurement.
        raise PipelineError(
            f"ONNX Runtime execution provider(s) {missing} not available in this onnxruntime build",
            f"available: {available}; install the matching onnxruntime package or use backend=onnxruntime on CPU",
        )

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise here
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as err:  # ORT raises pybind exception types that do not share a useful base
        raise _session_error(path, err) from err


def _session_error(path: Path, err: Exception) -> PipelineError:
    """Translate an ORT session-creation failure into a PipelineError with a next step."""
    kind = type(err).__name__
    text = str(err)
    if kind == "InvalidProtobuf" or "Protobuf parsing failed" in text:
        return PipelineError(
            f"{path} is not a readable ONNX file (corrupt or truncated): {text}",
            "delete it and re-run the export stage; check the file was fully copied",
        )
    if "not a registered function/op" in text or "Could not find an implementation" in text or kind == "NotImplemented":
        return PipelineError(
            f"ONNX Runtime cannot run an operator in {path}: {text}",
            "the model uses an op (or op/type combination) ORT lacks: export with a different opset "
            "(opset=...), replace the custom op, or profile with backend=tensorrt on a GPU",
        )
    if kind == "InvalidGraph":
        return PipelineError(
            f"ONNX Runtime rejected the graph in {path}: {text}",
            "run `python -m onnx.checker` / onnx.shape_inference on the file and fix the export",
        )
    return PipelineError(f"ONNX Runtime could not load {path}: {kind}: {text}", "check the file with onnx.checker")


def expected_inputs(session) -> List[Dict[str, Any]]:
    """The session's inputs as ``[{name, shape, dtype}]`` (dims may be ``None``/str when symbolic)."""
    return [
        {"name": i.name, "shape": list(i.shape), "dtype": _ORT_DTYPES.get(i.type, i.type)} for i in session.get_inputs()
    ]


def _describe(inputs: List[Dict[str, Any]]) -> str:
    return ", ".join(f"{i['name']}: {i['dtype']}{i['shape']}" for i in inputs)


def validate_inputs(session, inputs: Mapping[str, "np.ndarray"]) -> None:
    """Check feed names, ranks, fixed dimensions and dtypes against the session's inputs.

    Symbolic or unknown dimensions (batch, sequence length) accept any size.

    Raises:
        PipelineError: naming the expected inputs, on any mismatch.
    """
    import numpy as np

    expected = expected_inputs(session)
    want = {e["name"]: e for e in expected}
    problems: List[str] = []
    missing = sorted(set(want) - set(inputs))
    extra = sorted(set(inputs) - set(want))
    if missing:
        problems.append(f"missing inputs {missing}")
    if extra:
        problems.append(f"unexpected inputs {extra}")
    for name, arr in inputs.items():
        if name not in want:
            continue
        e = want[name]
        arr = np.asarray(arr)
        shape_ok = arr.ndim == len(e["shape"]) and all(
            not isinstance(d, int) or d == a for d, a in zip(e["shape"], arr.shape, strict=True)
        )
        if not shape_ok:
            problems.append(f"wrong shapes: {name} has shape {list(arr.shape)}, model expects {e['shape']}")
        if e["dtype"] in _ORT_DTYPES.values() and str(arr.dtype) != e["dtype"]:
            problems.append(f"wrong dtype: {name} is {arr.dtype}, model expects {e['dtype']}")
    if problems:
        raise PipelineError(
            "inputs do not match the ONNX model: " + "; ".join(problems),
            f"the model expects {_describe(expected)} (None/str dims are free); "
            "check model.input_shape, batch_size and the data adapter",
        )


def run_onnxruntime(
    onnx_path: str | os.PathLike,
    inputs: Dict[str, "np.ndarray"],
    threads: int = 0,
    providers: Optional[Sequence[str]] = None,
) -> List["np.ndarray"]:
    """Run the model once and return all outputs (in the model's output order).

    Args:
        onnx_path: ONNX model file.
        inputs: feed dict ``{input name: array}``, validated against the model.
        threads: intra-op threads (0 = ORT default).
        providers: execution providers (default CPU).

    Raises:
        PipelineError: see :func:`ort_session` and :func:`validate_inputs`; or the run itself fails.
    """
    sess = ort_session(onnx_path, threads=threads, providers=providers)
    validate_inputs(sess, inputs)
    try:
        return list(sess.run(None, inputs))
    except Exception as err:  # ORT runtime errors (e.g. a shape mismatch inside the graph)
        raise PipelineError(
            f"ONNX Runtime failed running {onnx_path}: {err}", "check the input values/shapes the model accepts"
        ) from err


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
