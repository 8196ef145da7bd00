"""What the sensitivity stage takes and gives (frozen dataclasses of paths and settings), and sample helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from pipeline.core.errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.core.config import HardwareConfig, QuantConfig, SensitivityConfig


@dataclass(frozen=True)
class SensitivityInputs:
    """The FP32 ONNX, the statistics file (or calibration samples to make it), evaluation samples, summary."""

    onnx: Path
    stats: Optional[Path]
    eval_data: Path
    calib_data: Optional[Path] = None
    summary: Optional[Path] = None


@dataclass(frozen=True)
class SensitivitySettings:
    """The search settings, the quantize settings whose placement is ranked, hardware for predicted times."""

    sensitivity: "SensitivityConfig"
    quant: "QuantConfig"
    hardware: Optional["HardwareConfig"] = None
    batch_size: int = 1
    dims: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SensitivityOutputs:
    """Written files."""

    results: Path
    plan: Path


def split_samples(n: int, holdout: float) -> Tuple[np.ndarray, np.ndarray]:
    """Indices of the search and held-out samples: every k-th sample is held out (deterministic, spread)."""
    if not 0.0 <= holdout < 1.0:
        raise PipelineError(f"sensitivity.holdout={holdout} is outside [0, 1)", "use e.g. 0.25 or 0 (no holdout)")
    idx = np.arange(n)
    if holdout <= 0 or n < 8:
        return idx, idx[:0]
    step = max(2, int(round(1.0 / holdout)))
    held = idx[step - 1::step]
    return np.setdiff1d(idx, held), held


def as_list(x: Any) -> List[str]:
    """A config list (Hydra ListConfig or list) as a plain list of strings."""
    return [str(v) for v in (x or [])]
