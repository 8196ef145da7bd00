"""Runs the configured stages in order and writes the report.

Each stage is recorded as ``ran``, ``skipped`` (with the reason: no GPU, no TensorRT, nothing to do for
this precision...) or ``failed`` (with the error). A failed stage stops the run after the report is
written, so the user always sees what ran and what did not. Stage functions live in their folders
(``pipeline/export``, ``pipeline/analyze``...) and know nothing of this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping

from pipeline.config import KNOWN_STAGES, PipelineConfig
from pipeline.errors import PipelineError, StageSkipped

SCHEMA_VERSION = 1

#: Precisions that ONNX Runtime on the CPU executes as such; others run in FP32 there (and say so).
ORT_CPU_EXECUTES = {"fp32": "fp32", "tf32": "fp32", "int8": "int8"}


@dataclass
class StageRecord:
    """Outcome of one stage, as the report shows it."""

    status: str = "pending"  # ran | skipped | failed | not requested
    reason: str = ""
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)


@dataclass
class RunState:
    """What the stages hand each other during one run."""

    cfg: PipelineConfig
    out_dir: Path
    model_name: str
    backend: str = "onnxruntime"
    backend_reason: str = ""
    onnx_path: Path | None = None
    qdq_onnx_path: Path | None = None
    inputs: list = field(default_factory=list)  # list[InputSpec]
    tokenizer: Any = None  # the model's own tokenizer for text data (minilm), else None
    output_names: list = field(default_factory=list)
    model_info: dict = field(default_factory=dict)
    hardware: Any = None  # HardwareSpec
    analysis: Any = None  # Analysis
    engine: Any = None  # EngineArtifact
    measured: dict | None = None
    layer_times: dict = field(default_factory=dict)  # ONNX node name -> measured seconds
    engine_layers: list = field(default_factory=list)  # one row per TensorRT layer: time, bound, efficiency
    accuracy: dict = field(default_factory=dict)
    quantization: dict | None = None
    stages: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- helpers
def _model_name(cfg: PipelineConfig) -> str:
    if cfg.model.name == "onnx":
        if not cfg.model.onnx_path:
            raise PipelineError("model=onnx needs a file.", "Pass model.onnx_path=/path/to/model.onnx.")
        return Path(cfg.model.onnx_path).stem
    return cfg.model.name


def _validate(cfg: PipelineConfig) -> None:
    unknown = [s for s in cfg.stages if s not in KNOWN_STAGES]
    if unknown:
        raise PipelineError(f"Unknown stage(s) {unknown}.", f"Choose from {list(KNOWN_STAGES)}, e.g. stages=[export,analyze].")
    if cfg.batch_size < 1:
        raise PipelineError(f"batch_size must be >= 1, got {cfg.batch_size}.", "Pass e.g. batch_size=8.")
    if cfg.backend.name not in ("auto", "tensorrt", "onnxruntime"):
        raise PipelineError(f"Unknown backend {cfg.backend.name!r}.", "Use backend=auto, tensorrt or onnxruntime.")
    if not cfg.stages:
        raise PipelineError("No stage requested (stages=[]): nothing would run.",
                            f"Name at least one of {list(KNOWN_STAGES)}, e.g. stages=[export,analyze,report].")
    if set(cfg.stages) & {"quantize", "build", "profile"}:
        from pipeline.data import data_names

        if cfg.data.name not in data_names():
            raise PipelineError(f"Unknown data source {cfg.data.name!r}.", f"Use one of {data_names()} (data=<name>).")
        if cfg.data.name in ("folder", "npz"):
            if not cfg.data.path:
                raise PipelineError(f"data={cfg.data.name} needs data.path.",
                                    f"Pass data.path=/path/to/{'images/' if cfg.data.name == 'folder' else 'samples.npz'}.")
            if not Path(cfg.data.path).exists():
                raise PipelineError(f"data.path {cfg.data.path} does not exist.", "Fix data.path (absolute, or relative "
                                    "to where you start the pipeline).")
    if cfg.precision.name in ("int8", "best") and "quantize" in cfg.stages:
        from pipeline.quantize.qdq import COMPUTE_OPS

        bad = [op for op in cfg.quant.op_types if op not in COMPUTE_OPS]
        if bad or not cfg.quant.op_types:
            raise PipelineError(f"quant.op_types={list(cfg.quant.op_types)}: the quantize stage places Q/DQ on "
                                f"{', '.join(COMPUTE_OPS)} only" + (f", not {bad}." if bad else " (the list is empty)."),
                                f"Use a non-empty subset, e.g. quant.op_types=[{','.join(COMPUTE_OPS)}].")


def _select_backend(cfg: PipelineConfig) -> tuple[str, str]:
    """Pick the runtime; ``backend=tensorrt`` without TensorRT or a GPU is an error before any work is done."""
    if cfg.backend.name == "onnxruntime":
        return "onnxruntime", "backend=onnxruntime was requested"
    from pipeline.trt import tensorrt_status

    ok, why = tensorrt_status()
    if ok:
        return "tensorrt", why
    if cfg.backend.name == "tensorrt":
        raise PipelineError(
            f"backend=tensorrt, but TensorRT cannot run here: {why}",
            "Run on a machine with an NVIDIA GPU and TensorRT (e.g. the NGC container in docker/), "
            "or use backend=onnxruntime (or backend=auto) to run on the CPU.",
        )
    return "onnxruntime", f"TensorRT not usable here ({why}); ONNX Runtime on the CPU runs the model"


def _dataset(state: RunState, split: str, num_samples: int):
    from pipeline.data import load_dataset

    return load_dataset(state.cfg.data, state.inputs, split=split, num_samples=num_samples,
                        tokenizer=state.tokenizer)


def _first_batch(state: RunState, batch_size: int) -> dict:
    """One batch of real inputs from the data source, repeated to ``batch_size`` if the source is smaller."""
    ds = _dataset(state, "eval", min(batch_size, state.cfg.data.num_samples))
    return batches_of(ds.inputs, batch_size)[0]


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


# ------------------------------------------------------------------------------------------------ stages
def stage_export(state: RunState) -> dict:
    """Model -> checked, shape-inferred ONNX (or import a given ONNX)."""
    from pipeline.export import export_onnx, onnx_from_file
    from pipeline.models import build_model

    cfg = state.cfg
    out = state.out_dir / f"{state.model_name}.onnx"
    bundle = build_model(cfg.model)
    if bundle.module is None:  # model=onnx: validate and import the file
        res = onnx_from_file(bundle.onnx_path, out)
    else:
        res = export_onnx(bundle, out, opset=cfg.opset, batch_size=cfg.batch_size)
    state.tokenizer = getattr(bundle, "tokenizer", None)
    state.model_info.update(task=bundle.task, num_classes=bundle.num_classes, notes=bundle.notes,
                            metrics=dict(bundle.metrics or {}))
    state.onnx_path = res.onnx_path
    # The bundle's specs have every dimension filled (model.input_shape fills an ONNX file's dynamic ones).
    state.inputs = list(bundle.inputs)
    state.output_names = list(res.output_names)
    state.model_info.update(parameters=res.parameters, opset=res.opset)
    state.accuracy["export_check"] = dict(res.check)
    return {"onnx": str(res.onnx_path), "opset": res.opset, "check": res.check,
            "warnings": list(getattr(res, "warnings", []) or [])}


def _symbolic_dims(onnx_path: Path, specs: list) -> dict[str, int]:
    """Values for the ONNX inputs' symbolic non-batch dimensions (e.g. a dynamic sequence length)."""
    import onnx

    by_name = {s.name: s for s in specs}
    dims: dict[str, int] = {}
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    for inp in graph.input:
        spec = by_name.get(inp.name)
        if spec is None:
            continue
        for i, d in enumerate(inp.type.tensor_type.shape.dim[1:]):
            if d.dim_param and i < len(spec.shape) and int(spec.shape[i]) > 0:
                dims[d.dim_param] = int(spec.shape[i])
    return dims


def _require_onnx(state: RunState, stage: str) -> Path:
    if state.onnx_path is not None:
        return state.onnx_path
    cfg = state.cfg
    if cfg.model.name == "onnx":
        # export not requested: import the file (cheap, no torch needed) so later stages have it.
        stage_export(state)
        return state.onnx_path  # type: ignore[return-value]
    raise PipelineError(
        f"Stage {stage!r} needs an ONNX model, but the export stage was not run.",
        "Add export to stages, or start from a file with model=onnx model.onnx_path=...",
    )


def stage_analyze(state: RunState) -> dict:
    """Theoretical model: per-layer FLOPs/bytes, peaks, roofline."""
    from pipeline.analyze import analyze_onnx

    onnx_path = _require_onnx(state, "analyze")
    try:
        state.hardware.peak_for(state.cfg.precision)
    except PipelineError as err:
        raise StageSkipped(f"{err.message} Pass hardware=<gpu> (e.g. hardware=h100_sxm) to see the theoretical "
                           f"model of {state.cfg.precision.name} on a GPU.") from err
    state.analysis = analyze_onnx(onnx_path, state.hardware, state.cfg.precision, state.cfg.batch_size,
                                  sparse=state.cfg.build.sparse_weights,
                                  dims=_symbolic_dims(onnx_path, state.inputs) or None)
    d = state.analysis.to_dict()
    return {"predicted_latency_s": d.get("predicted_latency_s"),
            "predicted_latency_unfused_s": d.get("predicted_latency_unfused_s"),
            "layers": len(state.analysis.layers), "fused_groups": len(d.get("groups") or [])}


def stage_quantize(state: RunState) -> dict:
    """INT8 post-training quantization: calibration + explicit Q/DQ ONNX (+ TensorRT calibration cache)."""
    prec = state.cfg.precision.name
    if prec == "fp8":
        raise StageSkipped("FP8 Q/DQ needs ONNX opset 19 and TensorRT 10+ on Hopper/Ada; this pipeline's "
                           "quantize stage writes INT8 Q/DQ at opset 17 only.")
    if prec not in ("int8", "best"):
        raise StageSkipped(f"precision={prec} needs no quantization (only int8 and best do).")
    from pipeline.quantize import compare_calibrations, quantize_onnx

    onnx_path = _require_onnx(state, "quantize")
    bs = state.cfg.batch_size
    calib = _dataset(state, "calib", state.cfg.data.calib_samples)
    if len(calib) == 0:
        raise PipelineError("The calibration set is empty.", "Raise data.calib_samples or point data at real samples.")
    evals = _dataset(state, "eval", state.cfg.data.num_samples)
    out = state.out_dir / f"{state.model_name}.int8.qdq.onnx"
    task = state.model_info.get("task") or "auto"
    task = task if task in ("classification", "embedding") else "auto"
    res = quantize_onnx(onnx_path, list(calib.batches(bs)), state.cfg.quant, out,
                        eval_batches=list(evals.batches(bs)), eval_labels=evals.labels,
                        cache_path=state.out_dir / f"{state.model_name}.calib.cache", task=task)
    state.qdq_onnx_path = Path(res.qdq_onnx_path)
    state.quantization = res.to_dict()
    outputs = {"qdq_onnx": str(res.qdq_onnx_path), "calib_cache": str(res.calibration_cache_path or ""),
               "algorithm": state.cfg.quant.calib}
    if state.cfg.quant.compare:
        from pipeline.quantize import save_comparison_figures

        comparison = compare_calibrations(onnx_path, list(calib.batches(bs)), list(evals.batches(bs)),
                                          eval_labels=evals.labels, cfg=state.cfg.quant, task=task)
        state.quantization["comparison"] = comparison
        outputs["figures"] = [str(p) for p in save_comparison_figures(comparison, state.out_dir)]
    return outputs


def stage_build(state: RunState) -> dict:
    """TensorRT engine (cached in engines/)."""
    if state.backend != "tensorrt":
        raise StageSkipped(f"no TensorRT engine is built: {state.backend_reason}")
    from pipeline.trt import engine_from_onnx

    onnx_path = _require_onnx(state, "build")
    calib_batches = None
    if state.cfg.precision.name in ("int8", "best") and state.qdq_onnx_path is None and not state.cfg.build.qdq_onnx:
        calib = _dataset(state, "calib", state.cfg.data.calib_samples)
        calib_batches = list(calib.batches(state.cfg.batch_size))
    source = Path(state.cfg.build.qdq_onnx) if state.cfg.build.qdq_onnx else (state.qdq_onnx_path or onnx_path)
    state.engine = engine_from_onnx(
        source, precision=state.cfg.precision, build=state.cfg.build, batch_size=state.cfg.batch_size,
        engines_dir=Path(state.cfg.engines_dir), model_name=state.model_name, calib_batches=calib_batches,
        calibration_cache=state.out_dir / f"{state.model_name}.calib.cache", hardware_name=state.hardware.name)
    from pipeline.trt.inspector import precision_summary

    return {"engine": str(state.engine.plan_path), "cache_hit": state.engine.cache_hit,
            "build_seconds": state.engine.build_seconds, "built_from": str(source),
            "layer_precisions": precision_summary(state.engine.sidecar.get("layers") or [])}


def _achieved(state: RunState) -> None:
    """Add achieved ops/s and % of the theoretical peak to the measurement."""
    if state.measured is None or state.analysis is None or state.hardware is None:
        return
    from pipeline.profile import achieved

    executed = state.measured.get("precision_executed") or state.cfg.precision.name
    from pipeline.analyze import resolve_hardware
    from pipeline.config import HardwareConfig, PrecisionConfig

    # The % of peak is against the processor that ran the model: with hardware=<gpu> analysed but ONNX
    # Runtime measuring on the CPU, the CPU's peak (not the GPU's) is the honest denominator.
    hw = state.hardware
    ran_on = "gpu" if state.backend == "tensorrt" else "cpu"
    if hw.kind != ran_on:
        hw = resolve_hardware(HardwareConfig(name="auto" if ran_on == "gpu" else "cpu", kind=ran_on if ran_on == "cpu" else "auto"))
        state.measured.setdefault("notes", []).append(
            f"% of peak is against {hw.name} (where the model ran), not the analysed {state.hardware.name}")
    try:
        peak = hw.peak_for(PrecisionConfig(name=executed, peak=_peak_key(state, executed)))
    except PipelineError:
        return
    total_flops = state.analysis.to_dict()["totals"]["flops"]
    lat_s = state.measured["latency_ms"]["median"] / 1e3
    state.measured.update(achieved(total_flops, lat_s, peak.ops_per_s_dense))
    if (state.measured.get("pct_of_peak") or 0) > 100:
        # Measured above the theoretical peak: an assumption behind the peak is too low, not the kernels
        # too fast. On CPUs it is usually the clock (a VM's 'cpu MHz' is often the base, not the boost).
        detail = (hw.detection or {}).get("clock_source", "") if hw.kind == "cpu" else ""
        state.measured.setdefault("notes", []).append(
            f"measured {state.measured['pct_of_peak']:.0f}% of the theoretical {peak.key} peak: the peak "
            f"underestimates this processor{f' (clock from {detail})' if detail else ''}; pass the real boost "
            "clock, e.g. hardware.clock_mhz_max=<MHz>, or the right hardware file")
    state.measured["peak_key"] = peak.key
    state.measured["peak_hardware"] = hw.name
    state.measured["peak_ops_per_s"] = peak.ops_per_s_dense
    state.measured["model_flops_per_batch"] = total_flops


def _peak_key(state: RunState, precision: str) -> str:
    """Peak key of an executed precision (the configured one when they agree)."""
    if precision == state.cfg.precision.name:
        return state.cfg.precision.peak
    from pipeline.config import precision_config

    return precision_config(precision).peak


def stage_profile(state: RunState) -> dict:
    """Measure latency/throughput on the selected backend and check outputs against the reference."""
    cfg = state.cfg
    onnx_path = _require_onnx(state, "profile")
    inputs = _first_batch(state, cfg.batch_size)
    outputs: dict = {}
    if state.backend == "tensorrt":
        from pipeline.trt import profile_engine

        if state.engine is None:
            raise PipelineError("The profile stage on TensorRT needs an engine.", "Add build to stages.")
        costs, peak = None, None
        if state.analysis is not None:
            costs = state.analysis.to_dict()["layers"]
            peak = state.hardware.peak_for(cfg.precision).ops_per_s_dense
        # The accuracy check runs every evaluation sample (data.num_samples), not only the timed batch:
        # at batch_size=1 one sample says nothing about top-1 agreement.
        checked = batches_of(_dataset(state, "eval", cfg.data.num_samples).inputs, cfg.batch_size)
        prof = profile_engine(state.engine.plan_path, inputs, cfg.profile, onnx_path=onnx_path,
                              precision=cfg.precision, onnx_costs=costs, peak_ops_per_s=peak,
                              accuracy_batches=checked)
        state.measured = prof.measured_dict()
        state.layer_times = dict(prof.layer_times)
        state.engine_layers = list(prof.layers)
        state.accuracy["engine_vs_onnxruntime"] = prof.accuracy
        outputs["per_layer_times"] = len(state.layer_times)
    else:
        from pipeline.ort import measure_onnxruntime

        prec = cfg.precision.name
        target = onnx_path
        executed = ORT_CPU_EXECUTES.get(prec, "fp32")
        notes = []
        if prec in ("int8", "best") and state.qdq_onnx_path is not None:
            target, executed = state.qdq_onnx_path, "int8"
        elif prec in ("int8", "best"):
            executed = "fp32"
            notes.append("no Q/DQ model (quantize stage not run): ONNX Runtime measured the FP32 model")
        if executed != prec and prec != "best":
            notes.append(f"ONNX Runtime on the CPU has no {prec} execution here: measured {executed}")
        m = measure_onnxruntime(target, inputs, cfg.profile, precision_executed=executed)
        m.notes.extend(notes)
        state.measured = m.to_dict()
        if target != onnx_path and state.quantization:
            # The quantize stage already ran both models on the held-out data: reuse, do not rerun.
            metrics = dict(state.quantization.get("metrics") or {})
            measured_kernels = metrics.pop("onnxruntime_int8_kernels", None) or metrics
            state.accuracy["int8_vs_fp32"] = _int8_verdict(measured_kernels, state.model_info.get("task"))
        outputs["measured_model"] = str(target)
    _achieved(state)
    outputs["latency_ms_median"] = state.measured["latency_ms"]["median"]
    outputs["throughput_samples_s"] = state.measured["throughput_samples_s"]
    return outputs


#: INT8 acceptance against FP32 (issue 3's tolerances): output cosine, and top-1 agreement on classifiers.
INT8_MIN_COSINE = 0.99
INT8_MIN_TOP1_AGREEMENT = 0.99


def _int8_verdict(metrics: dict, task: str | None) -> dict:
    """INT8-vs-FP32 metrics with a ``passed`` flag against the INT8 tolerances.

    Top-1 agreement is a check only for classifiers: the arg-max of an embedding or a feature map means nothing.
    """
    out = dict(metrics)
    checks = []
    tolerance: dict = {"min_cosine": INT8_MIN_COSINE}
    if out.get("output_cosine") is not None:
        checks.append(out["output_cosine"] >= INT8_MIN_COSINE)
    if task == "classification" and out.get("top1_agreement") is not None:
        checks.append(out["top1_agreement"] >= INT8_MIN_TOP1_AGREEMENT)
        tolerance["min_top1_agreement"] = INT8_MIN_TOP1_AGREEMENT
    out["tolerance"] = tolerance
    out["passed"] = bool(checks) and all(checks)
    return out


STAGE_FUNCS: dict[str, Callable[[RunState], dict]] = {
    "export": stage_export,
    "analyze": stage_analyze,
    "quantize": stage_quantize,
    "build": stage_build,
    "profile": stage_profile,
}


# ------------------------------------------------------------------------------------------------ report
def assemble_report(state: RunState, resolved_config: dict | None) -> dict:
    """The report dict (schema in docs/ARCHITECTURE.md)."""
    from pipeline.environment import environment

    cfg = state.cfg
    layers = []
    analysis = None
    if state.analysis is not None:
        analysis = state.analysis.to_dict()
        layers = [dict(layer) for layer in analysis.pop("layers", [])]
        for layer in layers:
            if layer.get("name") in state.layer_times:
                layer["measured_s"] = state.layer_times[layer["name"]]
    model = {
        "name": state.model_name,
        "onnx_path": str(state.onnx_path) if state.onnx_path else None,
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in state.inputs],
        "outputs": list(state.output_names),
        "batch_size": cfg.batch_size,
        **state.model_info,
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "precision": {"name": cfg.precision.name, "weight_bytes": cfg.precision.weight_bytes,
                      "activation_bytes": cfg.precision.activation_bytes, "peak": cfg.precision.peak},
        "backend": {"requested": cfg.backend.name, "selected": state.backend, "reason": state.backend_reason},
        "hardware": state.hardware.to_dict() if state.hardware is not None else None,
        "stages": {name: vars(rec) for name, rec in state.stages.items()},
        "analysis": analysis,
        "layers": layers,
        "measured": state.measured,
        "engine_layers": state.engine_layers or None,
        "accuracy": state.accuracy or None,
        "quantization": state.quantization,
        "environment": environment(cfg.command_line, resolved_config),
    }


def _print_summary(state: RunState, report_paths: dict) -> None:
    from pipeline.report.fmt import fmt_si, fmt_time

    print(f"\n== {state.model_name} | precision={state.cfg.precision.name} | batch={state.cfg.batch_size} | "
          f"hardware={getattr(state.hardware, 'name', '?')} | backend={state.backend}")
    for name, rec in state.stages.items():
        line = f"  {name:<9} {rec.status:<8} {rec.seconds:7.2f}s"
        if rec.reason:
            line += f"  ({rec.reason})"
        print(line)
    if state.analysis is not None:
        d = state.analysis.to_dict()
        unfused = d.get("predicted_latency_unfused_s")
        print(f"  theory: {fmt_si(d['totals']['flops'], 'FLOPs')}/batch, predicted lower bound "
              f"{fmt_time(d['predicted_latency_s'])} fused"
              + (f" ({fmt_time(unfused)} node by node)" if unfused else "") + f" on {state.hardware.name}")
    if state.measured:
        m = state.measured
        line = (f"  measured ({m['backend']}, {m.get('precision_executed')}): median {m['latency_ms']['median']:.3f} ms, "
                f"{m['throughput_samples_s']:.1f} samples/s")
        if m.get("pct_of_peak") is not None:
            line += (f", {fmt_si(m['achieved_ops_per_s'], 'OPS')} = {m['pct_of_peak']:.1f}% of the "
                     f"{m.get('peak_key')} peak of {m.get('peak_hardware')}")
        print(line)
    for kind, path in report_paths.items():
        print(f"  report.{kind}: {path}")


def run_pipeline(cfg: PipelineConfig, resolved_config: dict | None = None) -> dict:
    """Run ``cfg.stages`` in order and write report.json/.md/.html to ``cfg.output_dir``.

    Returns:
        The report dict. Raises PipelineError (after writing the report) when a stage failed.
    """
    from pipeline.analyze import resolve_hardware

    _validate(cfg)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = RunState(cfg=cfg, out_dir=out_dir, model_name=_model_name(cfg))
    state.backend, state.backend_reason = _select_backend(cfg)
    state.hardware = resolve_hardware(cfg.hardware)

    failure: PipelineError | None = None
    for name in KNOWN_STAGES:
        rec = StageRecord()
        state.stages[name] = rec
        if name not in cfg.stages:
            rec.status, rec.reason = "not requested", "not in stages"
            continue
        if name == "report":
            continue  # written below, once every other stage has a status
        if failure is not None:
            rec.status, rec.reason = "skipped", f"an earlier stage failed: {failure.message}"
            continue
        t0 = time.perf_counter()
        try:
            rec.outputs = STAGE_FUNCS[name](state) or {}
            rec.status = "ran"
        except StageSkipped as skip:
            rec.status, rec.reason = "skipped", skip.reason
        except PipelineError as err:
            rec.status, rec.reason = "failed", err.message + (f" ({err.hint})" if err.hint else "")
            failure = err
        rec.seconds = round(time.perf_counter() - t0, 3)

    report_paths: dict = {}
    if "report" in cfg.stages:
        from pipeline.report import write_reports

        rec = state.stages["report"]
        rec.status = "ran"
        t0 = time.perf_counter()
        report = assemble_report(state, resolved_config)
        report_paths = write_reports(report, out_dir)
        rec.seconds = round(time.perf_counter() - t0, 3)
        rec.outputs = {k: str(v) for k, v in report_paths.items()}
    else:
        report = assemble_report(state, resolved_config)
    _print_summary(state, report_paths)
    if failure is not None:
        raise failure
    return report
