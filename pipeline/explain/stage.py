"""Explain one engine (gap to the roofline per layer, by cause) or two (the engine diff), from files.

Reads, per engine: the profile's ``measurement.json`` (or a ``report.json``: per-layer times mapped to ONNX
nodes, NVML telemetry, end-to-end latency), the engine's sidecar ``<engine>.plan.json`` (inspector layers:
precision and tactic per layer; the precision's byte sizes and peak; the hardware) and the ONNX it was built from
(FLOPs and tensor sizes). Writes ``explain.json``, ``explain.md`` and, with two engines, ``explain_diff.png``.

Usable without Hydra::

    run(ExplainInputs(EngineRun(meas_a, sidecar_a, onnx_a, "fp16"), EngineRun(meas_b, sidecar_b, onnx_b, "int8")),
        ExplainSettings(), out)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from pipeline.core.artifacts import write_json, write_text
from pipeline.core.errors import PipelineError

#: Results file of this stage.
RESULTS_NAME = "explain.json"


@dataclass(frozen=True)
class EngineRun:
    """The files of one profiled engine."""

    measurement: Path
    sidecar: Optional[Path]  # None for ONNX Runtime runs (no engine)
    onnx: Path
    label: str = ""


@dataclass(frozen=True)
class ExplainInputs:
    """One engine, or two to compare (``b`` against ``a``)."""

    a: EngineRun
    b: Optional[EngineRun] = None


@dataclass(frozen=True)
class ExplainSettings:
    """Symbolic dims of the ONNX (e.g. ``{"sequence": 128}``); hardware name overriding the sidecar's."""

    dims: Dict[str, int] = field(default_factory=dict)
    hardware: Optional[str] = None


@dataclass(frozen=True)
class ExplainOutputs:
    results: Path
    markdown: Path
    figures: List[Path] = field(default_factory=list)


def _first(folder: Path, *names: str) -> Optional[Path]:
    for n in names:
        hits = sorted(folder.glob(n))
        if hits:
            return hits[0]
    return None


def engine_run(folder: Path, onnx: Optional[Path] = None, label: str = "") -> EngineRun:
    """The :class:`EngineRun` of a profiled run folder: its ``measurement.json`` (or ``report.json``), the engine sidecar
    (``*.plan.json``, else the one ``engine.json`` names) and the ONNX the engine was built from (``onnx`` overrides)."""
    folder = Path(folder)
    meas = _first(folder, "measurement.json", "report.json")
    if meas is None:
        raise PipelineError(f"{folder} has no measurement.json or report.json", "point at a profiled run's folder")
    measured = json.loads(meas.read_text()).get("measured") or {}
    if measured.get("backend") == "onnxruntime":  # no engine: the model ONNX Runtime ran is in the folder
        model = folder / str(measured.get("measured_model") or "")
        return EngineRun(meas, None, Path(onnx) if onnx else model, label)
    side = _first(folder, "*.plan.json")
    if side is None and (folder / "engine.json").is_file():
        record = json.loads((folder / "engine.json").read_text())
        cand = Path(record.get("engine", "") + ".json")
        # The engine's own sidecar; else the copy the build stage keeps inside engine.json (a committed run folder).
        side = cand if cand.is_file() else folder / "engine.json" if isinstance(record.get("sidecar"), dict) else None
    if side is None:
        raise PipelineError(f"{folder} has no engine sidecar (*.plan.json)", "copy engines/<engine>.plan.json there")
    if onnx is None:
        built = json.loads(side.read_text()).get("built_from")
        onnx = Path(built) if built and Path(built).is_file() else _first(folder, "*.onnx")
    if onnx is None:
        raise PipelineError(f"no ONNX for {folder}", "pass --onnx with the model the engine was built from")
    return EngineRun(meas, side, Path(onnx), label)


def _read(path: Path, what: str) -> Dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{what} not found: {path}", "profile the engine first (stages=[...,build,profile])") from None
    except ValueError as err:
        raise PipelineError(f"{what} {path} is not JSON: {err}", "re-run the stage that wrote it") from err


def _unit_clock(hcfg: Any, key: str) -> Optional[float]:
    unit = (hcfg.units or {}).get(key)
    if unit is None:
        return None
    return unit.get("clock_mhz") if isinstance(unit, Mapping) else getattr(unit, "clock_mhz", None)


def explain_engine(run: EngineRun, settings: ExplainSettings) -> Dict[str, Any]:
    """Gap rows and their breakdown for one engine."""
    from pipeline.analyze.flops import graph_costs
    from pipeline.analyze.hardware import load_hardware, load_hardware_config
    from pipeline.core.config import PrecisionConfig, precision_config
    from pipeline.explain.gap import breakdown, layer_gaps, run_rates

    meas = _read(run.measurement, "measurement")
    side = _read(run.sidecar, "engine sidecar") if run.sidecar is not None else {}
    if isinstance(side.get("sidecar"), Mapping) and "layers" not in side:  # a build stage's engine.json
        side = dict(side["sidecar"])
    rows = meas.get("engine_layers") or []
    if not rows:
        raise PipelineError(f"{run.measurement} has no per-layer times",
                            "profile again: the profile stage records them (TensorRT profiler / ONNX Runtime's)")
    measured = meas.get("measured") or {}
    prec = side.get("precision") or {}
    if prec:
        precision = PrecisionConfig(name=prec.get("name", "fp32"), weight_bytes=float(prec.get("weight_bytes", 4.0)),
                                    activation_bytes=float(prec.get("activation_bytes", 4.0)),
                                    peak=prec.get("peak", "fp32_cuda"))
    else:  # ONNX Runtime: the precision it really computed in
        precision = precision_config(measured.get("precision_executed") or "fp32")
        prec = {"name": precision.name, "weight_bytes": precision.weight_bytes,
                "activation_bytes": precision.activation_bytes, "peak": precision.peak}
    if measured.get("backend") == "onnxruntime" and not settings.hardware:
        from pipeline.analyze import resolve_hardware
        from pipeline.core.config import HardwareConfig

        spec, clock, vclock, hw_name = resolve_hardware(HardwareConfig(name="cpu", kind="cpu")), None, None, "cpu"
    else:
        # The hardware the profile resolved (``auto`` in the sidecar means "detected on that machine").
        hw_name = settings.hardware or measured.get("peak_hardware") or \
            (side.get("hardware_name") if side.get("hardware_name") != "auto" else None)
        if not hw_name:
            raise PipelineError(f"{run.sidecar} names no hardware", "pass the hardware name (e.g. h200)")
        spec, hcfg = load_hardware(hw_name), load_hardware_config(hw_name)
        clock = _unit_clock(hcfg, spec.peak_for(precision).key)
        vclock = _unit_clock(hcfg, spec.vector_peak_for(spec.peak_for(precision)).key)
    peak = spec.peak_for(precision)
    vec = spec.vector_peak_for(peak)
    rates = run_rates(peak.ops_per_s_dense, clock, spec.memory_bandwidth_bytes_s, measured.get("gpu_telemetry"),
                      peak.key, vec.ops_per_s_dense, vclock)
    batch = int(measured.get("batch_size") or (side.get("key") or {}).get("batch_size") or 1)
    if not Path(run.onnx).is_file():
        raise PipelineError(f"ONNX model not found: {run.onnx}", "pass the ONNX the engine was built from")
    costs = graph_costs(run.onnx, batch, precision, settings.dims or None)
    inspector = {str(ly.get("Name")): ly for ly in side.get("layers") or [] if isinstance(ly, Mapping)}
    from pipeline.explain.gap import infer_myelin_nodes, is_myelin, myelin_breakdown

    gaps = layer_gaps(infer_myelin_nodes(rows, costs), costs, rates, inspector)
    half = _half_rate(spec, rates, peak) if measured.get("backend") != "onnxruntime" else None
    myelin = [g for g, r in zip(gaps, rows) if is_myelin(r) and g.onnx_nodes]
    if myelin:  # an INT8 engine's unquantized nodes keep 16-bit tensors: cost those at fp16 sizes
        half_costs = graph_costs(run.onnx, batch, precision_config("fp16"), settings.dims or None) \
            if precision.activation_bytes < 2 else None
        myelin = [myelin_breakdown(g, costs, rates, half, half_costs) for g in myelin]
    e2e = (measured.get("latency_ms") or {}).get("median")
    import onnx

    from pipeline.explain.sparsity import sparsity_payoff, weight_shapes

    sparse = None if measured.get("backend") == "onnxruntime" else sparsity_payoff(  # sparse Tensor Cores: GPU only
        gaps, weight_shapes(onnx.load(str(run.onnx), load_external_data=False)), e2e / 1e3 if e2e else None,
        side.get("sparsity"))
    return {"label": run.label or prec.get("name", ""), "backend": measured.get("backend"), "files": {k: str(getattr(run, k)) for k in
                                                                  ("measurement", "sidecar", "onnx")},
            "precision": prec, "hardware": hw_name, "batch_size": batch, "rates": rates.to_dict(),
            "end_to_end_ms": e2e, "throughput_samples_s": measured.get("throughput_samples_s"),
            "gpu_telemetry": measured.get("gpu_telemetry"),
            "tensorrt": (side.get("tensorrt") or {}).get("library_version"),
            "build": {"optimization_level": (side.get("build") or {}).get("optimization_level"),
                      "route": (side.get("plan") or {}).get("notes"), "timing_cache": side.get("timing_cache")},
            "layers": [g.to_dict() for g in gaps],
            "breakdown": breakdown(gaps, e2e / 1e3 if e2e else None), "sparsity": sparse, "myelin": myelin or None,
            "_gaps": gaps}


def _half_rate(spec: Any, rates: Any, peak: Any) -> Optional[float]:
    """The FP16 Tensor Core peak at the run's clock (what a Myelin layer's unquantized matmuls run at)."""
    from pipeline.core.config import precision_config

    try:
        half = spec.peak_for(precision_config("fp16")).ops_per_s_dense
    except PipelineError:
        return None
    return half * rates.peak_ops_s / peak.ops_per_s_dense if peak.ops_per_s_dense else None


def run(inputs: ExplainInputs, settings: ExplainSettings, out: Path) -> ExplainOutputs:
    """Explain ``inputs.a`` (and diff it with ``inputs.b``); write the files into ``out``."""
    from pipeline.explain.diff import diff_summary, engine_diff
    from pipeline.explain.markdown import markdown

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    engines = [explain_engine(inputs.a, settings)] + ([explain_engine(inputs.b, settings)] if inputs.b else [])
    result: Dict[str, Any] = {"engines": engines}
    figures: List[Path] = []
    if inputs.b is not None:
        la, lb = engines[0]["label"], engines[1]["label"]
        if la == lb:
            la, lb = f"{la} (A)", f"{lb} (B)"
        rows = engine_diff(engines[0]["_gaps"], engines[1]["_gaps"], (la, lb))
        result["diff"] = {"labels": [la, lb], "summary": diff_summary(rows, (la, lb)), "rows": rows}
        from pipeline.explain.plots import diff_chart

        fig = diff_chart(result["diff"], out / "explain_diff.png")
        if fig:
            figures.append(fig)
    for e in engines:
        e.pop("_gaps", None)
    path = write_json(out / RESULTS_NAME, result)
    md = write_text(out / "explain.md", markdown(result))
    return ExplainOutputs(results=path, markdown=md, figures=figures)
