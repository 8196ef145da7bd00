"""Cached engines: the cache key, the ``.plan.json`` sidecar, and when a cached engine must not be loaded.

``engines/<model>-<hash>.plan`` sits beside ``<model>-<hash>.plan.json``. The hash covers what changes
the engine's meaning (ONNX content, precision, build settings, batch); the TensorRT version and GPU
are checked from the sidecar instead, so an engine from another version or GPU is rebuilt with a
message under the same name, never deserialized (TensorRT engines are not portable).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from pipeline.core.config import BuildConfig, PrecisionConfig
from pipeline.trt.features import GpuInfo, TrtFeatures
from pipeline.trt.plan import BuildPlan

#: Sidecar schema version (bump when keys change meaning).
SIDECAR_VERSION = 1


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


def calib_digest(batches: Sequence[Mapping[str, np.ndarray]]) -> str:
    """16-hex-digit digest of calibration batches (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for b in batches:
        for name in sorted(b):
            a = np.ascontiguousarray(b[name])
            h.update(name.encode() + str(a.shape).encode() + str(a.dtype).encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


def engine_key(onnx_sha: str, precision: PrecisionConfig, batch_size: int, shapes: Mapping[str, Any],
               plan: BuildPlan, build: BuildConfig,
               batches: Optional[Sequence[Mapping[str, np.ndarray]]]) -> Dict[str, Any]:
    """What the engine's file name hashes: everything that changes the engine's meaning."""
    return {
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
        "calibration": (calib_digest(batches) if batches else None) if plan.calibrator else None,
        # Only when set, so engines built before the option existed keep their names.
        **({"input_format": plan.input_format} if plan.input_format else {}),
    }


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


def read_sidecar(path: Path) -> Optional[Dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
