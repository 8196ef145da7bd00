"""The build stage as a file-to-file step: ONNX (FP32 or Q/DQ) -> a TensorRT engine + ``engine.json``.

The folder is named ``engine/`` because Python tooling treats ``build/`` as build output. All TensorRT
code lives in :mod:`pipeline.trt`; this module only decides what to build from which files. Engines
live in ``engines_dir`` (``<model>-<hash>.plan`` + ``.plan.json``), TensorRT's own engine cache: an
engine made by another TensorRT version or for another GPU is rebuilt with a message, never loaded.

Usable without Hydra::

    run(EngineInputs(onnx=Path("m.onnx"), qdq_onnx=Path("m.int8.qdq.onnx")),
        EngineSettings(precision=precision_config("int8"), build=BuildConfig(), batch_size=32,
                       engines_dir=Path("engines"), model_name="m"), out)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from pipeline.core.artifacts import write_json

if TYPE_CHECKING:
    from pipeline.core.config import BuildConfig, PrecisionConfig

#: Results file of this stage, in the run folder.
RESULTS_NAME = "engine.json"


@dataclass(frozen=True)
class EngineInputs:
    """The ONNX files to build from.

    Attributes:
        onnx: the FP32 ONNX.
        qdq_onnx: an explicit-quantization ONNX; built instead of ``onnx`` for int8/best.
        calib_data: samples for TensorRT's implicit INT8 calibrator (versions that have one), when
            there is no Q/DQ ONNX.
        calib_cache: a TensorRT calibration cache (the quantize stage's) for the implicit path.
        precision_plan: the sensitivity stage's ``<model>.precision_plan.json``. Built from a Q/DQ ONNX,
            the plan is already in it (quant.plan) and only recorded; on the implicit INT8 path its float
            layers get per-layer precision constraints (TensorRT 8.6/10.x; TensorRT 11 refuses: it has
            none). ``engine.json``'s ``precision_plan`` says what was done.
    """

    onnx: Path
    qdq_onnx: Optional[Path] = None
    calib_data: Optional[Path] = None
    calib_cache: Optional[Path] = None
    precision_plan: Optional[Path] = None


@dataclass(frozen=True)
class EngineSettings:
    """Precision, builder settings, batch size, where engines are cached, and names for the files."""

    precision: "PrecisionConfig"
    build: "BuildConfig"
    batch_size: int
    engines_dir: Path
    model_name: str
    hardware_name: Optional[str] = None


@dataclass(frozen=True)
class EngineOutputs:
    """The engine (in ``engines_dir``, with its sidecar) and ``engine.json`` in the run folder."""

    engine: Path
    results: Path


def source_for(inputs: EngineInputs, precision: str) -> Path:
    """Which ONNX to build: the Q/DQ one for int8/best when there is one, else the FP32 one."""
    if precision in ("int8", "best") and inputs.qdq_onnx is not None:
        return inputs.qdq_onnx
    return inputs.onnx


def run(inputs: EngineInputs, settings: EngineSettings, out: Path) -> EngineOutputs:
    """Build (or reuse) the engine and write ``engine.json`` into ``out``."""
    from pipeline.trt import engine_from_onnx

    prec = settings.precision.name
    source = source_for(inputs, prec)
    calib_batches = None
    if prec in ("int8", "best") and inputs.qdq_onnx is None and inputs.calib_data is not None:
        from pipeline.core.datasets import load_dataset_file

        calib_batches = list(load_dataset_file(inputs.calib_data).batches(settings.batch_size, drop_last=False))
    cache = inputs.calib_cache if inputs.calib_cache is not None else Path(out) / f"{settings.model_name}.calib.cache"
    engine = engine_from_onnx(
        source, precision=settings.precision, build=settings.build, batch_size=settings.batch_size,
        engines_dir=Path(settings.engines_dir), model_name=settings.model_name, calib_batches=calib_batches,
        calibration_cache=cache, hardware_name=settings.hardware_name, precision_plan=inputs.precision_plan)
    from pipeline.trt.inspector import precision_summary

    results = {"engine": str(engine.plan_path), "cache_hit": engine.cache_hit,
               "build_seconds": engine.build_seconds, "built_from": str(source),
               "layer_precisions": precision_summary(engine.sidecar.get("layers") or []),
               "precision_plan": engine.sidecar.get("layer_precision_plan"),
               "sidecar": engine.sidecar}
    path = write_json(Path(out) / RESULTS_NAME, results)
    return EngineOutputs(engine=Path(engine.plan_path), results=path)
