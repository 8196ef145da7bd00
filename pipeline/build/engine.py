"""Build a TensorRT engine from ONNX: version-aware precision paths, timing cache, cached engines.

``engine_from_onnx`` writes ``engines/<model>-<hash>.plan`` and a JSON sidecar
(``<model>-<hash>.plan.json``) with the config, the TensorRT *library* version, the GPU and its
compute capability, the build time and IEngineInspector layer information. The hash covers what
changes the engine's meaning (ONNX content, precision, build settings, batch); the TensorRT version
and GPU are checked from the sidecar instead, so an engine from another version or GPU is rebuilt
with a message under the same name, never deserialized (TensorRT engines are not portable).

Precision paths (decided by :func:`plan_build` from detected features, not version strings):

=========  =====================================  ===============================================
precision  TensorRT 8.6 / 10.x (weakly typed)      TensorRT 11 (strongly typed only)
=========  =====================================  ===============================================
fp32       TF32 flag cleared                       as parsed (FP32 ONNX), TF32 cleared if present
tf32       TF32 flag                               TF32 flag if present
fp16       FP16 flag                               ONNX converted to FP16 (unsafe ops kept FP32)
bf16       BF16 flag (10+); error on 8.6           ONNX converted to BF16 (unsafe ops kept FP32)
int8       Q/DQ ONNX + INT8, or calibrator + INT8  Q/DQ ONNX only; error for calibration
fp8        FP8 Q/DQ + FP8 flag (10+, sm >= 8.9)    FP8 Q/DQ ONNX only; error on 8.6
best       every precision flag present            Q/DQ ONNX as typed, else FP16 conversion
=========  =====================================  ===============================================
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from pipeline.artifacts import file_sha256, short_hash, write_bytes, write_json
from pipeline.build.trt_features import GpuInfo, TrtFeatures, detect_features, gpu_info, import_tensorrt
from pipeline.config import BuildConfig, PrecisionConfig
from pipeline.errors import PipelineError

#: Sidecar schema version (bump when keys change meaning).
SIDECAR_VERSION = 1
#: FP8 tensor cores exist from compute capability 8.9 (Ada) and 9.0 (Hopper).
FP8_MIN_CC = (8, 9)


@dataclass
class EngineArtifact:
    """A built (or cached) engine.

    Attributes:
        plan_path: serialized engine file (``engines/<model>-<hash>.plan``).
        sidecar: the JSON sidecar's content (also at ``<plan_path>.json``).
        cache_hit: True when a valid cached engine was reused and nothing was built.
        build_seconds: wall time of this build in seconds (the original build's time on a cache hit).
    """

    plan_path: Path
    sidecar: Dict[str, Any]
    cache_hit: bool
    build_seconds: float

    @property
    def sidecar_path(self) -> Path:
        """``<plan>.json``."""
        return Path(str(self.plan_path) + ".json")


@dataclass
class BuildPlan:
    """What the build will ask TensorRT for (pure data: tested without TensorRT).

    Attributes:
        precision: requested precision name.
        set_flags: BuilderFlag names to set.
        clear_flags: BuilderFlag names to clear (TF32 for strict fp32).
        network_flags: NetworkDefinitionCreationFlag names.
        strongly_typed: the network takes its types from the ONNX.
        calibrator: ``entropy``/``minmax`` for implicit INT8, else None.
        typed_conversion: ``fp16``/``bf16`` when the ONNX must be converted first (TensorRT 11).
        explicit_quantization: the ONNX carries Q/DQ nodes.
        notes: decisions a reader of the report should know.
    """

    precision: str
    set_flags: List[str] = field(default_factory=list)
    clear_flags: List[str] = field(default_factory=list)
    network_flags: List[str] = field(default_factory=list)
    strongly_typed: bool = False
    calibrator: Optional[str] = None
    typed_conversion: Optional[str] = None
    explicit_quantization: bool = False
    notes: List[str] = field(default_factory=list)


def _cc_tuple(cc: Optional[str]) -> Tuple[int, int]:
    try:
        major, minor = str(cc).split(".")[:2]
        return int(major), int(minor)
    except (ValueError, AttributeError):
        return (0, 0)


def plan_build(
    features: TrtFeatures,
    precision: str,
    build: BuildConfig,
    has_qdq: bool,
    has_calibration: bool,
    qdq_types: Sequence[str] = ("int8",),
    gpu: Optional[GpuInfo] = None,
) -> BuildPlan:
    """Decide flags and network mode for ``precision`` on this TensorRT, or explain why it cannot.

    Args:
        features: detected TensorRT capabilities.
        precision: fp32, tf32, fp16, bf16, int8, fp8 or best.
        build: build settings (sparse_weights, calibrator).
        has_qdq: the ONNX to build contains QuantizeLinear/DequantizeLinear nodes.
        has_calibration: calibration batches or a usable calibration cache are available.
        qdq_types: quantized types in the Q/DQ nodes (``int8``, ``fp8``).
        gpu: the target GPU (FP8 needs compute capability >= 8.9).

    Returns:
        :class:`BuildPlan`.

    Raises:
        PipelineError: the path is impossible on this TensorRT or GPU; the hint names the path
            this version allows.
    """
    f = features
    ver = f.library_version
    p = BuildPlan(precision=precision, explicit_quantization=has_qdq)
    if f.explicit_batch_flag:
        p.network_flags.append("EXPLICIT_BATCH")
    has = f.precision_flags.__contains__

    def strongly_typed(note: str) -> None:
        p.strongly_typed = True
        if f.strongly_typed_flag:
            p.network_flags.append("STRONGLY_TYPED")
        p.notes.append(note)

    if precision not in ("fp32", "tf32", "fp16", "bf16", "int8", "fp8", "best"):
        raise PipelineError(f"Unknown precision {precision!r}.", "Use precision=fp32|tf32|fp16|bf16|int8|fp8|best.")

    if precision == "fp32":
        if has("TF32"):
            p.clear_flags.append("TF32")  # TF32 is on by default in TensorRT: strict FP32 turns it off
        if f.strongly_typed_only:
            strongly_typed("strongly typed network: FP32 ONNX builds in FP32")
    elif precision == "tf32":
        if has("TF32"):
            p.set_flags.append("TF32")
        else:
            p.notes.append(f"TensorRT {ver} has no TF32 flag: FP32 math mode is the library's default")
        if f.strongly_typed_only:
            strongly_typed("strongly typed network: FP32 ONNX, TF32 math for matmul/conv")
    elif precision in ("fp16", "bf16"):
        flag = precision.upper()
        if has(flag):
            p.set_flags.append(flag)
            if precision == "fp16" and has("TF32"):
                p.notes.append("FP16 flag: TensorRT may still pick FP32/TF32 kernels where they are faster")
        elif f.strongly_typed_only:
            p.typed_conversion = precision
            strongly_typed(f"TensorRT {ver} is strongly typed: the ONNX was converted to {flag} "
                           "(numerically unsafe ops kept in FP32)")
        else:
            raise PipelineError(
                f"precision={precision} is not available on TensorRT {ver} (no BuilderFlag.{flag}).",
                "BF16 needs TensorRT 10+ (the NGC TensorRT 10 image in docker/); on this version use "
                "precision=fp16 or precision=tf32.",
            )
    elif precision == "int8":
        if has_qdq:
            if "fp8" in qdq_types and "int8" not in qdq_types:
                raise PipelineError("precision=int8 but the Q/DQ ONNX quantizes to FP8.", "Use precision=fp8.")
            if f.strongly_typed_only:
                strongly_typed("explicit quantization: INT8 from the Q/DQ nodes (strongly typed)")
            else:
                p.set_flags.append("INT8")
                if has("FP16"):
                    p.set_flags.append("FP16")  # layers left unquantized run FP16 rather than FP32
                p.notes.append("explicit quantization: INT8 where the Q/DQ nodes say, FP16 elsewhere")
        elif f.implicit_int8:
            if not has_calibration:
                raise PipelineError(
                    "precision=int8 without a Q/DQ ONNX needs calibration data or a calibration cache.",
                    "Set data.calib_samples > 0, pass a cache, or run the quantize stage for a Q/DQ ONNX.",
                )
            p.set_flags.append("INT8")
            if has("FP16"):
                # Layers without INT8 kernels (or where FP16 is faster) may fall back to FP16, as
                # `trtexec --int8 --fp16` allows; otherwise they would run in FP32.
                p.set_flags.append("FP16")
            p.calibrator = build.calibrator
            p.notes.append(f"implicit INT8 calibration ({build.calibrator}), FP16 fallback for other layers")
        else:
            raise PipelineError(
                f"precision=int8 needs a Q/DQ ONNX on TensorRT {ver}: implicit INT8 calibration "
                "(int8_calibrator) was removed in TensorRT 11.",
                "Add quantize to stages (it writes <model>.int8.qdq.onnx), or pass build.qdq_onnx=<Q/DQ ONNX>.",
            )
    elif precision == "fp8":
        if not (has("FP8") or f.strongly_typed_only):
            raise PipelineError(
                f"precision=fp8 is not available on TensorRT {ver} (no FP8 support; its ONNX parser "
                "also stops at opset 17, and FP8 Q/DQ needs opset 19).",
                "Use TensorRT 10+ on an Ada/Hopper GPU (docker/ NGC image) with an FP8 Q/DQ ONNX, "
                "or precision=int8 / fp16 here.",
            )
        if gpu is not None and _cc_tuple(gpu.compute_capability) < FP8_MIN_CC:
            raise PipelineError(f"precision=fp8 needs compute capability >= 8.9; {gpu.name} is {gpu.compute_capability}.",
                                "Use precision=int8 or fp16 on this GPU.")
        if not has_qdq or "fp8" not in qdq_types:
            raise PipelineError("precision=fp8 needs an ONNX with FP8 Q/DQ nodes (opset 19).",
                                "Quantize the model to FP8 (e.g. NVIDIA ModelOpt) and pass build.qdq_onnx=<fp8 ONNX>.")
        if f.strongly_typed_only:
            strongly_typed("explicit FP8 quantization from the Q/DQ nodes (strongly typed)")
        else:
            p.set_flags += ["FP8"] + (["FP16"] if has("FP16") else [])
    elif precision == "best":
        if f.strongly_typed_only:
            if has_qdq:
                strongly_typed("best on a strongly typed TensorRT: the Q/DQ ONNX's types")
            else:
                p.typed_conversion = "fp16"
                strongly_typed("best on a strongly typed TensorRT: FP16 conversion (no Q/DQ ONNX given)")
        else:
            for flag in ("TF32", "FP16", "BF16"):
                if has(flag):
                    p.set_flags.append(flag)
            if has_qdq:
                p.set_flags.append("INT8")
            elif f.implicit_int8 and has_calibration:
                p.set_flags.append("INT8")
                p.calibrator = build.calibrator
            else:
                p.notes.append("best without Q/DQ ONNX or calibration data: INT8 left out")

    if build.sparse_weights:
        if not f.sparse_weights:
            raise PipelineError(f"build.sparse_weights=true, but TensorRT {ver} has no SPARSE_WEIGHTS flag.",
                                "Set build.sparse_weights=false.")
        p.set_flags.append("SPARSE_WEIGHTS")
        p.notes.append("2:4 sparse tactics allowed: TensorRT uses them only on layers whose weights are 2:4 sparse")
    return p


# ------------------------------------------------------------------------------------------- ONNX facts
def onnx_summary(onnx_path: Path) -> Dict[str, Any]:
    """Inputs (name, shape with None for dynamic dims, elem type) and quantization facts of an ONNX.

    Reads the graph structure only (no external weight data).
    """
    import onnx  # noqa: PLC0415

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        inputs.append({"name": vi.name, "shape": dims, "elem_type": int(vi.type.tensor_type.elem_type)})
    ops = {n.op_type for n in model.graph.node}
    qtypes = set()
    fp8_types = {getattr(onnx.TensorProto, n, -1) for n in ("FLOAT8E4M3FN", "FLOAT8E5M2")}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            qtypes.add("int8")
            zp = n.input[2] if len(n.input) > 2 else ""
            for t in model.graph.initializer:
                if t.name == zp and t.data_type in fp8_types:
                    qtypes.discard("int8")
                    qtypes.add("fp8")
    return {
        "inputs": inputs,
        "has_qdq": bool(ops & {"QuantizeLinear", "DequantizeLinear"}),
        "qdq_types": sorted(qtypes) or ["int8"],
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
    }


def profile_shapes(inputs: Sequence[Mapping[str, Any]], batch_size: int, build: BuildConfig) -> Dict[str, Dict[str, List[int]]]:
    """Min/opt/max shapes of each input for the optimization profile (only the batch dim may vary).

    Args:
        inputs: ``[{name, shape}]`` with None for dynamic dimensions.
        batch_size: the run's batch; 0 in min/opt/max_batch means this value.
        build: min_batch/opt_batch/max_batch.

    Returns:
        ``{name: {"min": [...], "opt": [...], "max": [...]}}``; inputs with static shapes get
        min = opt = max = their shape.

    Raises:
        PipelineError: a dynamic non-batch dimension; an inconsistent min <= opt <= max; a static
            batch that differs from ``batch_size``.
    """
    mn, op, mx = (build.min_batch or batch_size), (build.opt_batch or batch_size), (build.max_batch or batch_size)
    if not mn <= op <= mx or not mn <= batch_size <= mx:
        raise PipelineError(f"Optimization profile batch min={mn} opt={op} max={mx} does not hold batch_size={batch_size}.",
                            "Choose build.min_batch <= batch_size <= build.max_batch and min <= opt <= max.")
    out = {}
    for inp in inputs:
        shape = list(inp["shape"])
        if any(d is None or d <= 0 for d in shape[1:]):
            raise PipelineError(f"Input {inp['name']!r} has dynamic non-batch dimensions {shape}.",
                                "Export the ONNX with fixed sizes except the batch (model.input_shape).")
        if not shape or shape[0] is None or shape[0] <= 0:
            out[inp["name"]] = {k: [b] + shape[1:] for k, b in (("min", mn), ("opt", op), ("max", mx))}
        else:
            if shape[0] != batch_size:
                raise PipelineError(f"Input {inp['name']!r} has a fixed batch of {shape[0]}, but batch_size={batch_size}.",
                                    f"Run with batch_size={shape[0]}, or export with a dynamic batch dimension.")
            out[inp["name"]] = {"min": shape, "opt": shape, "max": shape}
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "gpu"


def timing_cache_path(engines_dir: Path, features: TrtFeatures, gpu: GpuInfo) -> Path:
    """Timing caches hold kernel timings for one GPU and TensorRT version: one file per pair."""
    return Path(engines_dir) / f"timing-{_slug(gpu.name)}-trt{features.library_version}.cache"


def _calib_digest(batches: Sequence[Mapping[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for b in batches:
        for name in sorted(b):
            a = np.ascontiguousarray(b[name])
            h.update(name.encode() + str(a.shape).encode() + str(a.dtype).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


#: What TensorRT logs when it drops a timing cache it cannot deserialize (8.6.0: Myelin entries),
#: while ``set_timing_cache`` still returns True.
_CACHE_REJECTED = "timing cache will not be used"


def _cache_messages(logger: Any, since: int) -> List[str]:
    return [m for _, m in logger.messages[since:] if "timing cache" in m.lower() or "myelin" in m.lower()]


#: Timing caches of this process's builds, by cache file: a later build in the same process (a
#: Hydra sweep, several precisions, the benchmark) takes the cache object from memory, which works
#: even where TensorRT cannot deserialize its own file (8.6.0). Each cache is kept with the builder
#: whose config created it: a TensorRT 8.6 cache must not outlive that builder (a segfault on the H200).
_PROCESS_TIMING_CACHES: Dict[str, Tuple[Any, Any]] = {}


_RETIRED_TIMING_CACHES: List[Tuple[Any, Any]] = []


def forget_process_timing_caches() -> None:
    """Stop reusing the in-memory timing caches (the next build reads the cache file, as a new process would).

    The objects stay alive until the process ends: clearing them mid-process segfaulted on the H200.
    """
    _RETIRED_TIMING_CACHES.extend(_PROCESS_TIMING_CACHES.values())
    _PROCESS_TIMING_CACHES.clear()


def attach_timing_cache(config: Any, blob: bytes, logger: Any) -> Tuple[Any, bool, str]:
    """Give ``config`` a timing cache made from ``blob`` (empty: a fresh cache).

    Returns:
        ``(cache, loaded, note)``: the cache object attached; loaded is True when a non-empty
        cache was accepted; note says why not when TensorRT refused it (the build then starts
        from an empty cache).
    """
    since = len(logger.messages)
    tcache = config.create_timing_cache(blob)
    # ignore_mismatch=False: a cache from another device or version is rejected, not trusted.
    ok = bool(config.set_timing_cache(tcache, False))
    msgs = _cache_messages(logger, since)
    if any(_CACHE_REJECTED in m.lower() for m in msgs):
        return tcache, False, "TensorRT rejected the timing cache: " + "; ".join(msgs)[:300]
    if blob and not ok:
        return tcache, False, "TensorRT did not accept the timing cache (set_timing_cache returned False)"
    return tcache, bool(blob) and ok, ""


def save_timing_cache(builder: Any, config: Any, cache_file: Path, logger: Any) -> Tuple[bool, str]:
    """Write the build's timing cache to ``cache_file`` if TensorRT can read it back.

    TensorRT 8.6.0 serializes caches whose Myelin entries it cannot deserialize; such a cache
    would be rejected whole by every later build (and replace a good one), so it is read back in
    a scratch builder config first and written (atomically) only when that load succeeds.

    Returns:
        ``(saved, note)``; the note says why nothing was written.
    """
    blob = bytes(config.get_timing_cache().serialize())
    _, loaded, note = attach_timing_cache(builder.create_builder_config(), blob, logger)
    if not loaded:
        kept = "the previous cache file is kept" if cache_file.is_file() else "no cache file is written"
        return False, (f"this build's timing cache could not be read back ({note or 'empty cache'}); {kept}: "
                       "the next build times its kernels again")
    write_bytes(cache_file, blob)
    return True, ""


def set_preview_features(trt: ModuleType, config: Any, features: TrtFeatures,
                         wanted: Mapping[str, bool]) -> Dict[str, bool]:
    """Switch the requested preview features on/off; return every preview feature's state.

    Raises:
        PipelineError: a requested name this TensorRT does not have.
    """
    for name, on in wanted.items():
        if name.upper() not in features.preview_features:
            have = sorted(n.lower() for n in features.preview_features) or "none"
            raise PipelineError(f"TensorRT {features.library_version} has no preview feature {name!r}.",
                                f"Remove it from build.preview_features (this version has: {have}).")
        config.set_preview_feature(getattr(trt.PreviewFeature, name.upper()), bool(on))
    state = {}
    if hasattr(config, "get_preview_feature"):
        for name in sorted(features.preview_features):
            state[name.lower()] = bool(config.get_preview_feature(getattr(trt.PreviewFeature, name)))
    return state


def cached_engine_problem(plan: Path, sidecar: Optional[Mapping[str, Any]], features: TrtFeatures,
                          gpu: GpuInfo, key: Mapping[str, Any]) -> Optional[str]:
    """Why a cached engine must not be loaded, or None when it is valid here.

    An engine is tied to the TensorRT library version and the GPU model (compute capability and
    SM count, so a different name with the same architecture also counts as different).
    """
    if not plan.is_file():
        return "no cached engine"
    if sidecar is None:
        return f"{plan.name} has no readable sidecar: its origin is unknown"
    trt_old = sidecar.get("tensorrt", {}).get("library_version")
    if trt_old != features.library_version:
        return f"{plan.name} was built by TensorRT {trt_old}; this is TensorRT {features.library_version}"
    g = sidecar.get("gpu", {})
    if g.get("name") != gpu.name or g.get("compute_capability") != gpu.compute_capability:
        return (f"{plan.name} was built for {g.get('name')} (sm {g.get('compute_capability')}); "
                f"this GPU is {gpu.name} (sm {gpu.compute_capability})")
    if sidecar.get("key") != json.loads(json.dumps(key, default=str)):
        return f"{plan.name}'s sidecar records other build settings"
    return None


def _read_sidecar(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class _RecordingLogger:
    """Factory for a trt.ILogger subclass that keeps errors and warnings for the error message."""

    @staticmethod
    def create(trt: ModuleType, echo: Callable[[str], None]) -> Any:
        base = trt.ILogger

        class Logger(base):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                base.__init__(self)
                self.messages: List[Tuple[str, str]] = []

            def log(self, severity: Any, msg: str) -> None:  # noqa: D401 - TensorRT callback
                sev = str(severity).rsplit(".", 1)[-1]
                if sev in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                    self.messages.append((sev, msg))
                if sev in ("INTERNAL_ERROR", "ERROR"):
                    echo(f"[TensorRT {sev}] {msg}")

        return Logger()


def layer_info_from_engine(trt: ModuleType, engine: Any) -> Dict[str, Any]:
    """IEngineInspector JSON (layers and I/O) of a deserialized engine.

    Engines with dynamic input dimensions may need an execution context with shapes set before the
    inspector reports layers, so that is the second attempt. Returns ``{"Layers": [...], ...}`` or
    ``{"error": "..."}``.
    """
    errors = []
    for with_context in (False, True):
        try:
            inspector = engine.create_engine_inspector()
            context = None
            if with_context:
                context = engine.create_execution_context()
                for i in range(int(engine.num_io_tensors)):
                    name = engine.get_tensor_name(i)
                    if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                        context.set_input_shape(name, tuple(engine.get_tensor_profile_shape(name, 0)[1]))
                inspector.execution_context = context
            raw = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
            # TensorRT 8.6 writes raw control characters inside JSON strings (layer metadata):
            # strict=False accepts them.
            info = json.loads(raw, strict=False)
            del inspector, context
            if isinstance(info, dict) and info.get("Layers"):
                return info
            errors.append(f"context={with_context}: no Layers in {str(raw)[:120]!r}")
        except (AttributeError, ValueError, TypeError, RuntimeError) as err:
            errors.append(f"context={with_context}: {type(err).__name__}: {err}")
    return {"error": "; ".join(errors)}


def _io_tensors(trt: ModuleType, engine: Any) -> List[Dict[str, Any]]:
    out = []
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        out.append({
            "name": name,
            "mode": str(engine.get_tensor_mode(name)).rsplit(".", 1)[-1],
            "shape": [int(d) for d in engine.get_tensor_shape(name)],
            "dtype": str(engine.get_tensor_dtype(name)).rsplit(".", 1)[-1],
        })
    return out


def engine_from_onnx(
    onnx_path: str | Path,
    precision: PrecisionConfig,
    build: BuildConfig,
    batch_size: int,
    engines_dir: str | Path,
    model_name: str,
    calib_batches: Optional[Iterable[Mapping[str, np.ndarray]]] = None,
    calibration_cache: Optional[str | Path] = None,
    hardware_name: Optional[str] = None,
    gpu: Optional[GpuInfo] = None,
    trt: Optional[ModuleType] = None,
    cuda: Any = None,
    log: Callable[[str], None] = print,
) -> EngineArtifact:
    """Build (or reuse) a TensorRT engine for ``onnx_path``.

    Args:
        onnx_path: the ONNX to build (a Q/DQ ONNX for explicit quantization).
        precision: the precision config (its ``name`` selects the path; see the module docstring).
        build: builder settings (profile batches, workspace MiB, optimization level, sparsity,
            timing cache, calibrator, force_rebuild, tactic sources).
        batch_size: the batch the engine is optimized for (profile ``opt`` unless set).
        engines_dir: folder for ``<model>-<hash>.plan``, its sidecar and the timing cache.
        model_name: file name prefix.
        calib_batches: ``{input: array}`` batches for implicit INT8 calibration (8.6/10.x).
        calibration_cache: calibration cache file to read (when valid) and write.
        hardware_name: the configured hardware name, recorded in the sidecar.
        gpu: target GPU; detected when None.
        trt: the tensorrt module (tests pass a recording fake); imported when None.
        cuda: a :class:`pipeline.build.cuda_mem.CudaApi` for calibration buffers; created when needed.
        log: where progress messages go.

    Returns:
        :class:`EngineArtifact`.

    Raises:
        PipelineError: an impossible precision path, a parse or build failure (with TensorRT's
            messages), a bad optimization profile.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise PipelineError(f"ONNX file not found: {onnx_path}", "Run the export stage or fix model.onnx_path.")
    trt = trt or import_tensorrt()
    features = detect_features(trt)
    gpu = gpu or gpu_info()
    engines_dir = Path(engines_dir)
    summary = onnx_summary(onnx_path)
    batches = list(calib_batches) if calib_batches is not None else None
    calib_cache = Path(calibration_cache) if calibration_cache else None
    onnx_sha = file_sha256(onnx_path)
    calib_fp = {"onnx_sha256": onnx_sha, "calibrator": build.calibrator, "batch_size": batch_size}
    from pipeline.build.calibrator import cache_is_usable  # noqa: PLC0415

    cache_ok = cache_is_usable(calib_cache, calib_fp)[0]
    plan = plan_build(features, precision.name, build, summary["has_qdq"],
                      has_calibration=bool(batches) or cache_ok, qdq_types=summary["qdq_types"], gpu=gpu)
    shapes = profile_shapes(summary["inputs"], batch_size, build)

    key = {
        "onnx_sha256": onnx_sha,
        "precision": precision.name,
        "batch_size": batch_size,
        "profile": shapes,
        "flags": sorted(plan.set_flags),
        "clear_flags": sorted(plan.clear_flags),
        "strongly_typed": plan.strongly_typed,
        "typed_conversion": plan.typed_conversion,
        "workspace_mb": build.workspace_mb,
        "optimization_level": build.optimization_level,
        "tactic_sources": sorted(build.tactic_sources) if build.tactic_sources is not None else None,
        "preview_features": {k.lower(): bool(v) for k, v in sorted(build.preview_features.items())} or None,
        "calibrator": plan.calibrator,
        "calibration": (_calib_digest(batches) if batches else None) if plan.calibrator else None,
    }
    stem = f"{model_name}-{short_hash(key)}"
    plan_path = engines_dir / f"{stem}.plan"
    side_path = Path(str(plan_path) + ".json")
    sidecar = _read_sidecar(side_path) if side_path.is_file() else None
    problem = cached_engine_problem(plan_path, sidecar, features, gpu, key)
    if problem is None and not build.force_rebuild:
        log(f"[build] cache hit: {plan_path} (TensorRT {features.library_version}, {gpu.name})")
        return EngineArtifact(plan_path, sidecar or {}, True, float((sidecar or {}).get("build_seconds", 0.0)))
    if plan_path.is_file():
        log(f"[build] rebuilding {plan_path.name}: " + ("build.force_rebuild=true" if problem is None else problem))

    source = onnx_path
    if plan.typed_conversion:
        from pipeline.build.onnx_typed import typed_onnx_from_onnx  # noqa: PLC0415

        source = engines_dir / f"{stem}.{plan.typed_conversion}.onnx"
        typed_onnx_from_onnx(onnx_path, source, plan.typed_conversion)

    logger = _RecordingLogger.create(trt, log)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    net_flags = 0
    for name in plan.network_flags:
        net_flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise PipelineError(f"TensorRT {features.library_version} could not parse {source}: " + "; ".join(errs),
                            "Export with opset <= 17 for TensorRT 8.6 (opset 19 for FP8 Q/DQ on 10+), "
                            "and check the ops TensorRT supports.")
    config = builder.create_builder_config()
    if features.memory_pool_limit:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build.workspace_mb) << 20)
    else:
        config.max_workspace_size = int(build.workspace_mb) << 20
    if features.optimization_level:
        config.builder_optimization_level = int(build.optimization_level)
    # DETAILED keeps layer names, fused ONNX nodes and tactics in the engine for the inspector and
    # the per-layer profile; it does not change kernel choice.
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    for name in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))
    if build.tactic_sources is not None:
        mask = 0
        for name in build.tactic_sources:
            if name.upper() not in features.tactic_sources:
                raise PipelineError(f"Unknown tactic source {name!r} for TensorRT {features.library_version}.",
                                    f"Choose from {sorted(s.lower() for s in features.tactic_sources)}.")
            mask |= 1 << int(getattr(trt.TacticSource, name.upper()))
        config.set_tactic_sources(mask)
    preview_state = set_preview_features(trt, config, features, build.preview_features)

    profile = builder.create_optimization_profile()
    net_inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for t in net_inputs:
        s = shapes.get(t.name)
        if s is None:
            raise PipelineError(f"TensorRT sees input {t.name!r} that the ONNX summary lacks.", "Re-export the ONNX.")
        profile.set_shape(t.name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)

    cache_file = timing_cache_path(engines_dir, features, gpu) if build.timing_cache and features.timing_cache else None
    cache_loaded, blob, cache_note, cache_source, tcache, cache_owner = False, b"", "", None, None, builder
    if cache_file is not None:
        held = _PROCESS_TIMING_CACHES.get(str(cache_file))
        if held is not None and bool(config.set_timing_cache(held[1], False)):
            (cache_owner, tcache), cache_loaded, cache_source = held, True, "memory"
        else:
            blob = cache_file.read_bytes() if cache_file.is_file() else b""
            tcache, cache_loaded, cache_note = attach_timing_cache(config, blob, logger)
            cache_source = "file" if cache_loaded else None
            if cache_note:
                log(f"[build] {cache_note}")

    calibrator = None
    if plan.calibrator:
        from pipeline.build.calibrator import make_calibrator  # noqa: PLC0415

        # Calibrate at the engine's opt shape: TensorRT 8.6 ran the calibration at the main profile's
        # batch even with a smaller calibration profile (illegal memory access on an H100), so the
        # calibrator re-chunks the samples into batches of exactly this shape instead.
        calib_shapes = {n: list(sh["opt"]) for n, sh in shapes.items()}
        calibrator = make_calibrator(trt, plan.calibrator, batches, calib_shapes, calib_cache, calib_fp, cuda=cuda)
        config.int8_calibrator = calibrator
        if features.calibration_profile:
            config.set_calibration_profile(profile)
        log(f"[build] INT8 calibration: {calibrator.cache_note}")

    log(f"[build] building {stem} ({precision.name}, TensorRT {features.library_version}, {gpu.name})")
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
    build_seconds = time.perf_counter() - t0
    if serialized is None:
        errs = [m for s, m in logger.messages if s != "WARNING"][-5:]
        raise PipelineError(f"TensorRT {features.library_version} failed to build {stem}: " + ("; ".join(errs) or "no message"),
                            "Raise build.workspace_mb, lower build.optimization_level, or try another precision.")
    plan_bytes = bytes(serialized)
    write_bytes(plan_path, plan_bytes)
    cache_saved, save_note = False, ""
    if cache_file is not None:
        _PROCESS_TIMING_CACHES[str(cache_file)] = (cache_owner, tcache)
        cache_saved, save_note = save_timing_cache(builder, config, cache_file, logger)
        if save_note:
            log(f"[build] {save_note}")

    info: Dict[str, Any] = {}
    io: List[Dict[str, Any]] = []
    if features.engine_inspector:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan_bytes)
        if engine is not None:
            info = layer_info_from_engine(trt, engine)
            io = _io_tensors(trt, engine)
            del engine

    sidecar = {
        "sidecar_version": SIDECAR_VERSION,
        "model": model_name,
        "onnx_path": str(onnx_path),
        "built_from": str(source),
        "key": json.loads(json.dumps(key, default=str)),
        "precision": asdict(precision),
        "build": asdict(build),
        "plan": asdict(plan),
        "tensorrt": {"library_version": features.library_version, "bindings_version": features.bindings_version,
                     "features": features.to_dict()},
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability, "source": gpu.source},
        "hardware_name": hardware_name,
        "preview_features": preview_state,
        "build_seconds": round(build_seconds, 3),
        "plan_bytes": len(plan_bytes),
        "timing_cache": {"path": str(cache_file) if cache_file else None, "loaded": cache_loaded,
                         "source": cache_source, "note": cache_note,
                         "bytes_in": len(blob) if cache_file is not None else 0,
                         "saved": cache_saved, "save_note": save_note},
        "calibration": ({"calibrator": plan.calibrator, "cache": str(calib_cache) if calib_cache else None,
                         "batches_used": calibrator.batches_used, "samples_dropped": calibrator.samples_dropped,
                         "rebatch_note": calibrator.rebatch_note,
                         "cache_read": calibrator.read_cache, "note": calibrator.cache_note}
                        if calibrator is not None else None),
        "io": io,
        "layers": info.get("Layers", []),
        "layer_info_error": info.get("error"),
        "warnings": [m for s, m in logger.messages if s == "WARNING"][:20],
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(side_path, sidecar)
    log(f"[build] wrote {plan_path} ({len(plan_bytes) / 2**20:.1f} MiB) in {build_seconds:.1f} s"
        + (" with a warm timing cache" if cache_loaded else ""))
    return EngineArtifact(plan_path, sidecar, False, build_seconds)
