"""Build a TensorRT engine from ONNX: plan -> network -> builder config -> serialized engine -> sidecar.

:func:`engine_from_onnx` composes the loaders of the sibling modules in Polygraphy's style
(features, plan, network, builder_config, timing_cache, calibrator, engine_cache, inspector); each
step is a small function that takes the ``tensorrt`` module as an argument, so the CPU tests drive
every version path with a recording fake. See :mod:`pipeline.trt.plan` for the precision paths.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import numpy as np

from pipeline.core.artifacts import file_lock, file_sha256, short_hash, write_bytes, write_json
from pipeline.core.config import BuildConfig, PrecisionConfig
from pipeline.core.errors import PipelineError
from pipeline.trt.builder_config import add_optimization_profile, attach_calibrator, builder_config, set_input_format
from pipeline.trt.engine_cache import (SIDECAR_VERSION, EngineArtifact, cached_engine_problem, engine_key,
                                       read_sidecar)
from pipeline.trt.features import GpuInfo, TrtFeatures, detect_features, gpu_info, import_tensorrt
from pipeline.trt.inspector import io_tensors, layer_info_from_engine
from pipeline.trt.layer_precision import (PATH_IMPLICIT, LayerPlan, apply_layer_precisions, engine_check,
                                          layer_plan_for, refuse_without_constraints)
from pipeline.trt.logger import recording_logger, sparsity_from_log
from pipeline.trt.network import network_from_onnx, onnx_summary, profile_shapes
from pipeline.trt.plan import BuildPlan, plan_build
from pipeline.trt.timing_cache import TimingCacheUse, keep_timing_cache, timing_cache_path, use_timing_cache


@dataclass
class BuildRequest:
    """Everything one build decided before TensorRT is called (pure data).

    Attributes:
        onnx_path: the ONNX asked for; ``source``: the file TensorRT parses (a typed copy on 11).
        plan: flags and network mode; ``shapes``: the optimization profile.
        key: the cache key; ``stem``: ``<model>-<hash>``; ``plan_path``: the engine file.
        batches: calibration batches (or None); ``calib_cache`` / ``calib_fp``: the calibration cache
            and what it depends on.
        layer_plan: what the build does with a mixed-precision plan (None without one).
    """

    onnx_path: Path
    source: Path
    plan: BuildPlan
    shapes: Dict[str, Dict[str, List[int]]]
    key: Dict[str, Any]
    stem: str
    plan_path: Path
    batches: Optional[List[Mapping[str, np.ndarray]]] = None
    calib_cache: Optional[Path] = None
    calib_fp: Dict[str, Any] = field(default_factory=dict)
    layer_plan: Optional[LayerPlan] = None


def plan_request(onnx_path: Path, precision: PrecisionConfig, build: BuildConfig, batch_size: int, engines_dir: Path,
                 model_name: str, features: TrtFeatures, gpu: GpuInfo,
                 calib_batches: Optional[Iterable[Mapping[str, np.ndarray]]],
                 calibration_cache: Optional[str | Path], precision_plan: Optional[Path] = None) -> BuildRequest:
    """Read the ONNX, decide the plan and profile shapes, and name the engine by its cache key.

    A ``precision_plan`` on the implicit INT8 path adds the precision-constraint flag to the plan and its
    float layers to the key (see :mod:`pipeline.trt.layer_precision`).
    """
    from pipeline.trt.calibrator import cache_is_usable  # noqa: PLC0415

    summary = onnx_summary(onnx_path)
    batches = list(calib_batches) if calib_batches is not None else None
    calib_cache = Path(calibration_cache) if calibration_cache else None
    onnx_sha = file_sha256(onnx_path)
    calib_fp = {"onnx_sha256": onnx_sha, "calibrator": build.calibrator, "batch_size": batch_size}
    cache_ok = cache_is_usable(calib_cache, calib_fp)[0]
    # Before plan_build: its own "no implicit INT8 here" error would not say how to build the plan.
    refuse_without_constraints(features, precision.name, summary["has_qdq"], precision_plan)
    plan = plan_build(features, precision.name, build, summary["has_qdq"],
                      has_calibration=bool(batches) or cache_ok, qdq_types=summary["qdq_types"], gpu=gpu)
    layer_plan = layer_plan_for(features, plan, precision_plan, onnx_path) if precision_plan is not None else None
    shapes = profile_shapes(summary["inputs"], batch_size, build)
    key = engine_key(onnx_sha, precision, batch_size, shapes, plan, build, batches)
    if layer_plan is not None and layer_plan.path == PATH_IMPLICIT:
        key["layer_precisions"] = layer_plan.key()
    stem = f"{model_name}-{short_hash(key)}"
    return BuildRequest(onnx_path, onnx_path, plan, shapes, key, stem, engines_dir / f"{stem}.plan",
                        batches, calib_cache, calib_fp, layer_plan)


def typed_source(req: BuildRequest, engines_dir: Path) -> Path:
    """The file TensorRT parses: the ONNX itself, or its FP16/BF16 conversion (strongly typed TensorRT)."""
    if not req.plan.typed_conversion:
        return req.onnx_path
    from pipeline.trt.onnx_typed import typed_onnx_from_onnx  # noqa: PLC0415

    source = engines_dir / f"{req.stem}.{req.plan.typed_conversion}.onnx"
    typed_onnx_from_onnx(req.onnx_path, source, req.plan.typed_conversion)
    return source


@dataclass
class BuildOutcome:
    """What :func:`build_serialized` produced: the plan bytes and the facts the sidecar records."""

    plan_bytes: bytes
    seconds: float
    preview_state: Dict[str, bool]
    timing: TimingCacheUse
    calibrator: Any
    logger: Any
    layer_record: Optional[Dict[str, Any]] = None


def build_serialized(trt: ModuleType, req: BuildRequest, build: BuildConfig, features: TrtFeatures, gpu: GpuInfo,
                     engines_dir: Path, cuda: Any, log: Callable[[str], None]) -> BuildOutcome:
    """Parse, configure and build; returns the serialized engine and what the build used.

    Raises:
        PipelineError: a parse failure, a bad profile or tactic source, or a failed build (with
            TensorRT's last messages).
    """
    logger = recording_logger(trt, log)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    network, parser = network_from_onnx(trt, builder, req.plan, req.source, logger, features)
    set_input_format(trt, network, req.plan, log)
    lp = req.layer_plan
    layer_record = apply_layer_precisions(trt, network, lp, log) if lp is not None and lp.path == PATH_IMPLICIT \
        else None
    config, preview_state = builder_config(trt, builder, features, req.plan, build)
    profile = add_optimization_profile(builder, network, config, req.shapes)
    cache_file = timing_cache_path(engines_dir, features, gpu) if build.timing_cache and features.timing_cache else None
    timing = use_timing_cache(config, builder, cache_file, logger, log)
    calibrator = None
    if req.plan.calibrator:
        calibrator = attach_calibrator(trt, config, network, profile, features, req.plan.calibrator, req.batches,
                                       req.shapes, req.calib_cache, req.calib_fp, cuda, log)
    log(f"[build] building {req.stem} ({req.plan.precision}, TensorRT {features.library_version}, {gpu.name})")
    try:
        serialized = builder.build_serialized_network(network, config)
    finally:
        if calibrator is not None:
            calibrator.release()
    seconds = time.perf_counter() - t0
    if serialized is None:
        errs = [m for s, m in logger.messages if s != "WARNING"][-5:]
        raise PipelineError(f"TensorRT {features.library_version} failed to build {req.stem}: "
                            + ("; ".join(errs) or "no message"),
                            "Raise build.workspace_mb, lower build.optimization_level, or try another precision.")
    plan_bytes = bytes(serialized)
    write_bytes(req.plan_path, plan_bytes)
    keep_timing_cache(timing, builder, config, logger, log)
    del parser
    return BuildOutcome(plan_bytes, seconds, preview_state, timing, calibrator, logger, layer_record)


def inspect_plan(trt: ModuleType, features: TrtFeatures, plan_bytes: bytes, logger: Any) -> tuple:
    """``(layer info, io tensors)`` of a serialized engine through IEngineInspector (``({}, [])`` without one)."""
    if not features.engine_inspector:
        return {}, []
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_bytes)
    if engine is None:
        return {}, []
    info, io = layer_info_from_engine(trt, engine), io_tensors(trt, engine)
    del engine
    return info, io


def sidecar_of(req: BuildRequest, out: BuildOutcome, precision: PrecisionConfig, build: BuildConfig,
               features: TrtFeatures, gpu: GpuInfo, model_name: str, hardware_name: Optional[str],
               info: Mapping[str, Any], io: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The ``.plan.json`` content of a fresh build."""
    cal = out.calibrator
    return {
        "sidecar_version": SIDECAR_VERSION,
        "model": model_name,
        "onnx_path": str(req.onnx_path),
        "built_from": str(req.source),
        "key": json.loads(json.dumps(req.key, default=str)),
        "precision": asdict(precision),
        "build": asdict(build),
        "plan": asdict(req.plan),
        "tensorrt": {"library_version": features.library_version, "bindings_version": features.bindings_version,
                     "features": features.to_dict()},
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability, "source": gpu.source},
        "hardware_name": hardware_name,
        "preview_features": out.preview_state,
        "build_seconds": round(out.seconds, 3),
        "plan_bytes": len(out.plan_bytes),
        "timing_cache": out.timing.to_dict(),
        "calibration": ({"calibrator": req.plan.calibrator, "cache": str(req.calib_cache) if req.calib_cache else None,
                         "batches_used": cal.batches_used, "samples_dropped": cal.samples_dropped,
                         "rebatch_note": cal.rebatch_note, "cache_read": cal.read_cache, "note": cal.cache_note}
                        if cal is not None else None),
        "io": io,
        "layers": info.get("Layers", []),
        "layer_info_error": info.get("error"),
        "layer_precision_plan": plan_record(req.layer_plan, out.layer_record, info.get("Layers", [])),
        "warnings": [m for s, m in out.logger.messages if s == "WARNING"][:20],
        "sparsity": sparsity_from_log(out.logger.messages) or None,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def plan_record(lp: Optional[LayerPlan], applied: Optional[Mapping[str, Any]],
                layers: Iterable[Any]) -> Optional[Dict[str, Any]]:
    """The sidecar's ``layer_precision_plan``: what the build did with the plan (None without one)."""
    if lp is None:
        return None
    if applied is None:
        return lp.record()
    return engine_check(applied, lp, layers)


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
    precision_plan: Optional[str | Path] = None,
) -> EngineArtifact:
    """Build (or reuse) a TensorRT engine for ``onnx_path``.

    Args:
        onnx_path: the ONNX to build (a Q/DQ ONNX for explicit quantization).
        precision: the precision config (its ``name`` selects the path; see :mod:`pipeline.trt.plan`).
        build: builder settings (profile batches, workspace MiB, optimization level, sparsity,
            timing cache, calibrator, force_rebuild, tactic sources, preview features).
        batch_size: the batch the engine is optimized for (profile ``opt`` unless set).
        engines_dir: folder for ``<model>-<hash>.plan``, its sidecar and the timing cache.
        model_name: file name prefix.
        calib_batches: ``{input: array}`` batches for implicit INT8 calibration (8.6/10.x).
        calibration_cache: calibration cache file to read (when valid) and write.
        hardware_name: the configured hardware name, recorded in the sidecar.
        gpu: target GPU; detected when None.
        trt: the tensorrt module (tests pass a recording fake); imported when None.
        cuda: a :class:`pipeline.trt.runtime.CudaApi` for calibration buffers; created when needed.
        log: where progress messages go.
        precision_plan: the sensitivity stage's ``<model>.precision_plan.json``: on the implicit INT8
            path its float layers get per-layer precision constraints (8.6/10.x; an error on 11); on
            the explicit path the Q/DQ ONNX already carries it. The sidecar's ``layer_precision_plan``
            records what was done (matched and unmatched labels).

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
    req = plan_request(onnx_path, precision, build, batch_size, engines_dir, model_name, features, gpu,
                       calib_batches, calibration_cache, Path(precision_plan) if precision_plan else None)
    # One build per engine at a time, across the processes of a sweep sharing engines_dir: a second job asking for
    # the same engine waits here, then finds the first one's engine in the cache.
    with file_lock(Path(str(req.plan_path) + ".lock"),
                   lambda: log(f"[build] another process is building {req.plan_path.name}; waiting for it")):
        return _cached_or_built(trt, req, precision, build, features, gpu, engines_dir, model_name, hardware_name,
                                cuda, log)


def _cached_or_built(trt: ModuleType, req: BuildRequest, precision: PrecisionConfig, build: BuildConfig,
                     features: TrtFeatures, gpu: GpuInfo, engines_dir: Path, model_name: str,
                     hardware_name: Optional[str], cuda: Any, log: Callable[[str], None]) -> EngineArtifact:
    """The cached engine when valid, else a build; called with the engine's lock held.

    Both files are written whole and renamed into place, the plan first and its sidecar last (a rebuild removes the
    old sidecar first), so a reader that finds a sidecar finds the whole engine it describes.
    """
    side_path = Path(str(req.plan_path) + ".json")
    sidecar = read_sidecar(side_path) if side_path.is_file() else None
    problem = cached_engine_problem(req.plan_path, sidecar, features, gpu, req.key)
    if problem is None and not build.force_rebuild:
        log(f"[build] cache hit: {req.plan_path} (TensorRT {features.library_version}, {gpu.name})")
        return EngineArtifact(req.plan_path, _with_plan_record(sidecar or {}, req.layer_plan), True,
                              float((sidecar or {}).get("build_seconds", 0.0)))
    if req.plan_path.is_file():
        log(f"[build] rebuilding {req.plan_path.name}: " + ("build.force_rebuild=true" if problem is None else problem))
    side_path.unlink(missing_ok=True)  # the old sidecar never describes the new plan
    req.source = typed_source(req, engines_dir)
    out = build_serialized(trt, req, build, features, gpu, engines_dir, cuda, log)
    info, io = inspect_plan(trt, features, out.plan_bytes, out.logger)
    sidecar = sidecar_of(req, out, precision, build, features, gpu, model_name, hardware_name, info, io)
    write_json(side_path, sidecar)
    log(f"[build] wrote {req.plan_path} ({len(out.plan_bytes) / 2**20:.1f} MiB) in {out.seconds:.1f} s"
        + (" with a warm timing cache" if out.timing.loaded else ""))
    return EngineArtifact(req.plan_path, sidecar, False, out.seconds)


def _with_plan_record(sidecar: Mapping[str, Any], lp: Optional[LayerPlan]) -> Dict[str, Any]:
    """A cached engine's sidecar with this build's ``layer_precision_plan``.

    On the implicit path the key holds the plan, so the cached record (with its matches) is this plan's;
    otherwise the plan did not shape the engine and the record says what this request did with it.
    """
    if lp is not None and lp.path == PATH_IMPLICIT:
        return dict(sidecar)
    return {**sidecar, "layer_precision_plan": lp.record() if lp is not None else None}
