"""The profile stage as a file-to-file step: an engine (TensorRT) or an ONNX (ONNX Runtime) -> ``measurement.json``.

Times the model the way trtexec does (warm-up, then a duration), collects per-layer times, checks the
outputs against ONNX Runtime on every evaluation sample, and relates the measured time to the theory
(achieved ops/s and % of the peak of the processor that ran it).

Usable without Hydra: ``run(ProfileInputs(onnx, eval_data, engine=...), ProfileSettings(...), out)``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from pipeline.core.artifacts import write_json
from pipeline.core.errors import PipelineError

if TYPE_CHECKING:
    import numpy as np

    from pipeline.core.config import HardwareConfig, PrecisionConfig, ProfileConfig

#: Results file of this stage, in the run folder.
RESULTS_NAME = "measurement.json"

#: Precisions that ONNX Runtime on the CPU executes as such; others run in FP32 there (and say so).
ORT_CPU_EXECUTES = {"fp32": "fp32", "tf32": "fp32", "int8": "int8"}

@dataclass(frozen=True)
class ProfileInputs:
    """What the stage reads.

    Attributes:
        onnx: the FP32 ONNX (ONNX Runtime reference, node names for per-layer times).
        eval_data: evaluation samples (``.npz``): the timed batch and the accuracy check.
        engine: the TensorRT engine (backend ``tensorrt``).
        qdq_onnx: the Q/DQ ONNX ONNX Runtime measures for int8 (backend ``onnxruntime``).
        analysis: ``analysis.json`` (per-layer efficiency, achieved ops/s), optional.
        quantization: ``quantization.json`` (INT8-vs-FP32 metrics already measured), optional.
        summary: ``export.json`` (the task: which accuracy checks apply), optional.
    """

    onnx: Path
    eval_data: Path
    engine: Optional[Path] = None
    qdq_onnx: Optional[Path] = None
    analysis: Optional[Path] = None
    quantization: Optional[Path] = None
    summary: Optional[Path] = None


@dataclass(frozen=True)
class ProfileSettings:
    """Backend (``tensorrt`` or ``onnxruntime``), timing settings, precision, hardware, batch size."""

    backend: str
    profile: "ProfileConfig"
    precision: "PrecisionConfig"
    hardware: "HardwareConfig"
    batch_size: int = 1


@dataclass(frozen=True)
class ProfileOutputs:
    """``measurement.json``: ``measured``, ``layer_times``, ``engine_layers``, ``accuracy``."""

    results: Path


def batches_of(inputs: Mapping[str, "np.ndarray"], batch_size: int) -> List[Dict[str, "np.ndarray"]]:
    """Split samples into full batches of ``batch_size`` (what the engine's profile accepts).

    A set smaller than one batch is repeated to fill it; samples past the last full batch are left out.
    """
    import numpy as np

    n = len(next(iter(inputs.values())))
    if n < batch_size:
        reps = -(-batch_size // n)
        return [{k: np.ascontiguousarray(np.concatenate([v] * reps)[:batch_size]) for k, v in inputs.items()}]
    return [{k: np.ascontiguousarray(v[i:i + batch_size]) for k, v in inputs.items()}
            for i in range(0, n - batch_size + 1, batch_size)]


def _read(path: Optional[Path]) -> Optional[Dict[str, Any]]:
    return json.loads(Path(path).read_text()) if path else None


def _profile_tensorrt(inputs: ProfileInputs, settings: ProfileSettings, evals, analysis, hw, task) -> Dict[str, Any]:
    from pipeline.trt import profile_engine

    if inputs.engine is None:
        raise PipelineError("The profile stage on TensorRT needs an engine.",
                            "Add build to stages, or pass inputs.engine=/path/to/model.plan.")
    costs, peak = None, None
    if analysis is not None:
        costs = analysis["analysis"]["layers"]
        peak = hw.peak_for(settings.precision).ops_per_s_dense
    bs = settings.batch_size
    # The accuracy check runs every evaluation sample, not only the timed batch: at batch 1 one sample
    # says nothing about top-1 agreement.
    prof = profile_engine(inputs.engine, batches_of(evals.inputs, bs)[0], settings.profile, onnx_path=inputs.onnx,
                          precision=settings.precision, onnx_costs=costs, peak_ops_per_s=peak,
                          accuracy_batches=batches_of(evals.inputs, bs), task=task)
    measured = prof.measured_dict()
    measured["streams"] = max(1, settings.profile.streams)
    return {"measured": measured, "layer_times": dict(prof.layer_times),
            "engine_layers": list(prof.layers), "accuracy": {"engine_vs_onnxruntime": prof.accuracy}}


def _profile_onnxruntime(inputs: ProfileInputs, settings: ProfileSettings, evals, task) -> Dict[str, Any]:
    from pipeline.ort import measure_onnxruntime

    prec = settings.precision.name
    target, executed, notes = inputs.onnx, ORT_CPU_EXECUTES.get(prec, "fp32"), []
    if prec in ("int8", "best") and inputs.qdq_onnx is not None:
        target, executed = inputs.qdq_onnx, "int8"
    elif prec in ("int8", "best"):
        executed = "fp32"
        notes.append("no Q/DQ model (quantize not in stages, no inputs.qdq_onnx): ONNX Runtime measured the FP32 model")
    elif executed != prec and prec != "best":
        notes.append(f"ONNX Runtime on the CPU has no {prec} execution here: measured {executed}")
    m = measure_onnxruntime(target, batches_of(evals.inputs, settings.batch_size)[0], settings.profile,
                            precision_executed=executed)
    m.notes.extend(notes)
    result: Dict[str, Any] = {"measured": m.to_dict(), "layer_times": {}, "engine_layers": [], "accuracy": {}}
    result["measured"]["measured_model"] = Path(target).name
    from pipeline.ort.nodes import profile_nodes

    try:  # per-node times from ONNX Runtime's profiler, mapped to ONNX nodes (what explain.md reads)
        result["engine_layers"] = profile_nodes(target, batches_of(evals.inputs, settings.batch_size)[0],
                                                threads=settings.profile.threads)
    except PipelineError as err:
        result["measured"]["notes"].append(f"no per-node times: {err}")
    if target != inputs.onnx:
        from pipeline.core.accuracy import int8_verdict

        result["accuracy"]["int8_vs_fp32"] = int8_verdict(_int8_metrics(inputs, evals, task), task)
    return result


def _int8_metrics(inputs: ProfileInputs, evals, task) -> Dict[str, Any]:
    """INT8-vs-FP32 metrics: the quantize stage's (same model, same data) or measured here when absent."""
    quant = _read(inputs.quantization)
    if quant and quant.get("metrics"):
        metrics = dict(quant["metrics"])
        return metrics.pop("onnxruntime_int8_kernels", None) or metrics
    from pipeline.core.accuracy import task_metrics
    from pipeline.ort import ort_session, run_first_output

    feeds = list(evals.batches(min(len(evals), 32)))  # bounded memory on any model
    ref = run_first_output(ort_session(inputs.onnx), feeds)
    test = run_first_output(ort_session(inputs.qdq_onnx), feeds)
    return task_metrics(ref, test, evals.labels, task if task in ("classification", "embedding") else "auto")


def achieved_vs_peak(measured: Dict[str, Any], analysis: Optional[Dict[str, Any]], settings: ProfileSettings,
                     hw_analyzed) -> None:
    """Add achieved ops/s and % of the peak of the processor that ran the model to ``measured``."""
    if analysis is None:
        return
    from pipeline.analyze import resolve_hardware
    from pipeline.core.config import HardwareConfig, PrecisionConfig, precision_config
    from pipeline.core.measurement import achieved

    executed = measured.get("precision_executed") or settings.precision.name
    # The % of peak is against the processor that ran the model: with hardware=<gpu> analysed but ONNX
    # Runtime measuring on the CPU, the CPU's peak (not the GPU's) is the honest denominator.
    hw = hw_analyzed
    ran_on = "gpu" if settings.backend == "tensorrt" else "cpu"
    if hw.kind != ran_on:
        hw = resolve_hardware(HardwareConfig(name="auto" if ran_on == "gpu" else "cpu",
                                             kind=ran_on if ran_on == "cpu" else "auto"))
        measured.setdefault("notes", []).append(
            f"% of peak is against {hw.name} (where the model ran), not the analysed {hw_analyzed.name}")
    peak_key = settings.precision.peak if executed == settings.precision.name else precision_config(executed).peak
    try:
        peak = hw.peak_for(PrecisionConfig(name=executed, peak=peak_key))
    except PipelineError:
        return
    total_flops = analysis["analysis"]["totals"]["flops"]
    # With several streams a run's latency includes the others' work: the achieved rate is the throughput's.
    per_batch_s = (measured["batch_size"] / measured["throughput_samples_s"] if measured.get("streams", 1) > 1
                   else measured["latency_ms"]["median"] / 1e3)
    measured.update(achieved(total_flops, per_batch_s, peak.ops_per_s_dense))
    if (measured.get("pct_of_peak") or 0) > 100:
        # Measured above the theoretical peak: an assumption behind the peak is too low, not the kernels
        # too fast. On CPUs it is usually the clock (a VM's 'cpu MHz' is often the base, not the boost).
        detail = (hw.detection or {}).get("clock_source", "") if hw.kind == "cpu" else ""
        measured.setdefault("notes", []).append(
            f"measured {measured['pct_of_peak']:.0f}% of the theoretical {peak.key} peak: the peak "
            f"underestimates this processor{f' (clock from {detail})' if detail else ''}; pass the real boost "
            "clock, e.g. hardware.clock_mhz_max=<MHz>, or the right hardware file")
    measured.update(peak_key=peak.key, peak_hardware=hw.name, peak_ops_per_s=peak.ops_per_s_dense,
                    model_flops_per_batch=total_flops)


def run(inputs: ProfileInputs, settings: ProfileSettings, out: Path) -> ProfileOutputs:
    """Measure, check and relate to the theory; write ``measurement.json`` into ``out``."""
    from pipeline.analyze import resolve_hardware
    from pipeline.core.datasets import load_dataset_file

    evals = load_dataset_file(inputs.eval_data)
    if len(evals) == 0:
        raise PipelineError("The evaluation set is empty.", "Raise data.num_samples.")
    analysis = _read(inputs.analysis)
    summary = _read(inputs.summary) or {}
    task = summary.get("task")
    hw = resolve_hardware(settings.hardware)
    if settings.backend == "tensorrt":
        result = _profile_tensorrt(inputs, settings, evals, analysis, hw, task)
    else:
        result = _profile_onnxruntime(inputs, settings, evals, task)
    achieved_vs_peak(result["measured"], analysis, settings, hw)
    result["measured"]["eval_samples"] = len(evals)
    return ProfileOutputs(results=write_json(Path(out) / RESULTS_NAME, result))
