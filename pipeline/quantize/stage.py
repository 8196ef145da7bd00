"""The quantize stage as a file-to-file step.

Reads the FP32 ONNX and the calibration/evaluation samples (``.npz`` from :mod:`pipeline.core.datasets`),
writes ``<model>.int8.qdq.onnx`` (explicit Q/DQ, what TensorRT 10/11 build INT8 from),
``<model>.calib.cache`` (TensorRT's calibration-cache format, for the implicit path where a version still
has it) and ``quantization.json`` (ranges, placement, INT8-vs-FP32 metrics: what the report shows).

Usable without Hydra::

    run(QuantizeInputs(onnx, calib_data, eval_data), QuantizeSettings(QuantConfig(calib="max")), out)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

from pipeline.core.artifacts import write_json
from pipeline.core.store import input_record, write_sidecar
from pipeline.core.errors import PipelineError, StageSkipped

if TYPE_CHECKING:
    from pipeline.core.config import QuantConfig

#: Results file of this stage, in the run folder.
RESULTS_NAME = "quantization.json"
#: Suffix of the activation statistics file (what the sensitivity stage reads).
STATS_SUFFIX = ".calib_stats.npz"


@dataclass(frozen=True)
class QuantizeInputs:
    """The FP32 ONNX, calibration samples, held-out evaluation samples (optional) and the export summary."""

    onnx: Path
    calib_data: Path
    eval_data: Optional[Path] = None
    summary: Optional[Path] = None


@dataclass(frozen=True)
class QuantizeSettings:
    """Quantization settings; ``precision`` (int8/best quantize, fp8 is refused, others skip)."""

    quant: "QuantConfig"
    precision: str = "int8"
    batch_size: int = 1


@dataclass(frozen=True)
class QuantizeOutputs:
    """Written files (each with a sidecar)."""

    qdq_onnx: Path
    calib_cache: Optional[Path]
    results: Path
    figures: List[Path] = field(default_factory=list)


def check_precision(precision: str) -> None:
    """Raise StageSkipped when ``precision`` needs no INT8 quantization."""
    if precision == "fp8":
        raise StageSkipped("FP8 Q/DQ needs ONNX opset 19 and TensorRT 10+ on Hopper/Ada; this pipeline's "
                           "quantize stage writes INT8 Q/DQ at opset 17 only.")
    if precision not in ("int8", "best"):
        raise StageSkipped(f"precision={precision} needs no quantization (only int8 and best do).")


def _task(summary_path: Optional[Path]) -> str:
    if summary_path is None:
        return "auto"
    from pipeline.export.stage import read_summary

    task = read_summary(summary_path).get("task") or "auto"
    return task if task in ("classification", "embedding") else "auto"


def run(inputs: QuantizeInputs, settings: QuantizeSettings, out: Path) -> QuantizeOutputs:
    """Calibrate, write the Q/DQ ONNX, the calibration cache and ``quantization.json`` into ``out``."""
    from pipeline.core.datasets import load_dataset_file
    from pipeline.quantize import compare_calibrations, quantize_onnx

    check_precision(settings.precision)
    out = Path(out)
    bs = settings.batch_size
    calib = load_dataset_file(inputs.calib_data)
    if len(calib) == 0:
        raise PipelineError("The calibration set is empty.", "Raise data.calib_samples or point data at real samples.")
    evals = load_dataset_file(inputs.eval_data) if inputs.eval_data else None
    stem = Path(inputs.onnx).name.removesuffix(".onnx")
    task = _task(inputs.summary)
    res = quantize_onnx(inputs.onnx, list(calib.batches(bs)), settings.quant, out / f"{stem}.int8.qdq.onnx",
                        eval_batches=list(evals.batches(bs)) if evals else None,
                        eval_labels=evals.labels if evals else None,
                        cache_path=out / f"{stem}.calib.cache", task=task,
                        stats_path=out / f"{stem}{STATS_SUFFIX}")
    results = res.to_dict()
    # File names, not paths: the stage may write into a store entry that is then linked into a run folder.
    results["qdq_onnx_path"] = Path(res.qdq_onnx_path).name
    if res.calibration_cache_path:
        results["calibration_cache_path"] = Path(res.calibration_cache_path).name
    results["stats_path"] = f"{stem}{STATS_SUFFIX}"
    figures: List[Path] = []
    if settings.quant.compare and evals is not None:
        from pipeline.quantize import save_comparison_figures

        results["comparison"] = compare_calibrations(inputs.onnx, list(calib.batches(bs)), list(evals.batches(bs)),
                                                     eval_labels=evals.labels, cfg=settings.quant, task=task)
        figures = [Path(p) for p in save_comparison_figures(results["comparison"], out)]
    used = {"onnx": input_record(inputs.onnx), "calib_data": input_record(inputs.calib_data)}
    qdq = Path(res.qdq_onnx_path)
    cache = Path(res.calibration_cache_path) if res.calibration_cache_path else None
    for path, kind in ((qdq, "qdq_onnx"), (cache, "calib_cache")):
        if path is not None:
            write_sidecar(path, kind=kind, producer="quantize", inputs=used,
                          config={"quant": vars(settings.quant), "batch_size": bs},
                          extra={"metrics": results.get("metrics")})
    path = write_json(out / RESULTS_NAME, results)
    return QuantizeOutputs(qdq_onnx=qdq, calib_cache=cache, results=path, figures=figures)
