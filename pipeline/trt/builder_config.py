"""The builder config: memory pool, optimization level, precision flags, tactic sources, preview
features, the optimization profile and the INT8 calibrator (each a small step over detected features).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import numpy as np

from pipeline.core.config import BuildConfig
from pipeline.core.errors import PipelineError
from pipeline.trt.features import TrtFeatures
from pipeline.trt.network import network_inputs
from pipeline.trt.plan import BuildPlan


def set_memory_and_level(trt: ModuleType, config: Any, features: TrtFeatures, build: BuildConfig) -> None:
    """Workspace limit (MiB -> bytes) and builder optimization level, by the API this version has."""
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


def set_precision_flags(trt: ModuleType, config: Any, plan: BuildPlan) -> None:
    """Set and clear the BuilderFlags the plan names."""
    for name in plan.set_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        config.clear_flag(getattr(trt.BuilderFlag, name))


def set_tactic_sources(trt: ModuleType, config: Any, features: TrtFeatures, sources: Optional[Iterable[str]]) -> None:
    """Restrict tactic sources to ``sources`` (None: TensorRT's default set).

    Raises:
        PipelineError: a source this TensorRT does not have.
    """
    if sources is None:
        return
    mask = 0
    for name in sources:
        if name.upper() not in features.tactic_sources:
            raise PipelineError(f"Unknown tactic source {name!r} for TensorRT {features.library_version}.",
                                f"Choose from {sorted(s.lower() for s in features.tactic_sources)}.")
        mask |= 1 << int(getattr(trt.TacticSource, name.upper()))
    config.set_tactic_sources(mask)


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


def builder_config(trt: ModuleType, builder: Any, features: TrtFeatures, plan: BuildPlan,
                   build: BuildConfig) -> tuple:
    """A builder config with every setting above applied.

    Returns:
        ``(config, preview_state)``: the state of every preview feature after the settings.
    """
    config = builder.create_builder_config()
    set_memory_and_level(trt, config, features, build)
    set_precision_flags(trt, config, plan)
    set_tactic_sources(trt, config, features, build.tactic_sources)
    return config, set_preview_features(trt, config, features, build.preview_features)


def add_optimization_profile(builder: Any, network: Any, config: Any,
                             shapes: Mapping[str, Mapping[str, List[int]]]) -> Any:
    """One optimization profile with min/opt/max for every network input; returns it.

    Raises:
        PipelineError: TensorRT sees an input the ONNX summary lacks.
    """
    profile = builder.create_optimization_profile()
    for t in network_inputs(network):
        s = shapes.get(t.name)
        if s is None:
            raise PipelineError(f"TensorRT sees input {t.name!r} that the ONNX summary lacks.", "Re-export the ONNX.")
        profile.set_shape(t.name, s["min"], s["opt"], s["max"])
    config.add_optimization_profile(profile)
    return profile


def set_input_format(trt: ModuleType, network: Any, plan: BuildPlan, log: Callable[[str], None]) -> List[str]:
    """Give the network's float inputs the plan's ``input_format`` dtype in the linear layout; returns their names."""
    if not plan.input_format:
        return []
    from pipeline.trt.plan import INPUT_FORMATS  # noqa: PLC0415

    dtype = getattr(trt, INPUT_FORMATS[plan.input_format])
    changed = []
    for t in network_inputs(network):
        if t.dtype not in (trt.float32, trt.float16):
            continue  # token ids, masks: their types are not a format choice
        t.dtype = dtype
        if hasattr(trt, "TensorFormat"):
            t.allowed_formats = 1 << int(trt.TensorFormat.LINEAR)
        changed.append(t.name)
    log(f"[build] inputs in {plan.input_format.upper()}: {', '.join(changed) or 'none (no float input)'}")
    return changed


def network_input_dtypes(trt: ModuleType, network: Any) -> Dict[str, np.dtype]:
    """Numpy dtype of each network input TensorRT reports (int64 ids become int32 on 8.6)."""
    out = {}
    for t in network_inputs(network):
        dtype = getattr(t, "dtype", None)
        if dtype is not None and hasattr(trt, "nptype"):
            out[t.name] = np.dtype(trt.nptype(dtype))
    return out


def attach_calibrator(trt: ModuleType, config: Any, network: Any, profile: Any, features: TrtFeatures, kind: str,
                      batches: Optional[List[Mapping[str, np.ndarray]]], shapes: Mapping[str, Mapping[str, List[int]]],
                      cache: Optional[Path], fingerprint: Mapping[str, Any], cuda: Any,
                      log: Callable[[str], None]) -> Any:
    """Create the INT8 calibrator and give it to ``config``; returns it (release it after the build)."""
    from pipeline.trt.calibrator import make_calibrator  # noqa: PLC0415

    # Calibrate at the engine's opt shape: TensorRT 8.6 ran the calibration at the main profile's
    # batch even with a smaller calibration profile (illegal memory access on an H100), so the
    # calibrator re-chunks the samples into batches of exactly this shape instead.
    calib_shapes = {n: list(sh["opt"]) for n, sh in shapes.items()}
    calibrator = make_calibrator(trt, kind, batches, calib_shapes, cache, fingerprint, cuda=cuda,
                                 input_dtypes=network_input_dtypes(trt, network))
    config.int8_calibrator = calibrator
    if features.calibration_profile:
        config.set_calibration_profile(profile)
    log(f"[build] INT8 calibration: {calibrator.cache_note}")
    return calibrator
