"""The sensitivity stage as a file-to-file step.

Reads the FP32 ONNX, the calibration statistics of the quantize stage (``<model>.calib_stats.npz``, the ranges
file) and the evaluation samples; writes ``sensitivity.json`` (every layer's sensitivity, the calibration
method chosen per tensor, the search and its Pareto front) and the plan ``<model>.precision_plan.json`` that
the quantize stage takes (``quant.plan=...``). Usable without Hydra::

    run(SensitivityInputs(onnx, stats, eval_data), SensitivitySettings(SensitivityConfig(), QuantConfig()), out)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from pipeline.core.artifacts import write_json
from pipeline.core.errors import PipelineError
from pipeline.quantize.mixed import PLAN_KIND, PLAN_SUFFIX, read_plan  # the plan format lives with its reader

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.core.config import HardwareConfig, QuantConfig, SensitivityConfig

#: Results file of this stage, in the run folder.
RESULTS_NAME = "sensitivity.json"


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


def run(inputs: SensitivityInputs, settings: SensitivitySettings, out: Path, progress: bool = True
        ) -> SensitivityOutputs:
    """Rank every quantized layer, choose calibration per tensor, search the plan; write the two files."""
    from pipeline.sensitivity.analysis import Analysis

    t0 = time.perf_counter()
    a = Analysis.prepare(inputs, settings, progress)
    result = a.run_all()
    result["seconds"]["total"] = time.perf_counter() - t0
    out = Path(out)
    stem = Path(inputs.onnx).name.removesuffix(".onnx")
    plan_path = write_json(out / f"{stem}{PLAN_SUFFIX}", a.plan_file(stem))
    result["plan_file"] = plan_path.name
    results = write_json(out / RESULTS_NAME, result)
    return SensitivityOutputs(results=results, plan=plan_path)


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


__all__ = ["PLAN_KIND", "PLAN_SUFFIX", "RESULTS_NAME", "SensitivityInputs", "SensitivityOutputs",
           "SensitivitySettings", "as_list", "read_plan", "run", "split_samples"]
