"""The report stage: renders a run folder's result files into report.json / report.md / report.html.

It reads only files (``run.json``, ``export.json``, ``analysis.json``, ``quantization.json``,
``sensitivity.json``, ``engine.json``, ``measurement.json``), so any run folder can be re-rendered, on any
machine, and several compared::

    python -m pipeline.report outputs/resnet50-int8-bs256/2026-12-04_10-00-00          # re-render one
    python -m pipeline.report RUN_A RUN_B RUN_C --compare comparison/                   # compare several
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from pipeline.core.errors import PipelineError
from pipeline.report.schema import SCHEMA_VERSION


def _read(folder: Path, name: str) -> Optional[Dict[str, Any]]:
    path = folder / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise PipelineError(f"{path} is not valid JSON ({err}).",
                            "Run the pipeline again to re-create the folder (run.json is the orchestrator's, "
                            "the other files their stages').") from err


def _artifact(folder: Path, manifest: Dict[str, Any], kind: str, default: str) -> Optional[Dict[str, Any]]:
    """A results file of the run: the one its manifest names for ``kind`` (maybe from another run), else ``default``."""
    rel = (manifest.get("artifacts") or {}).get(kind)
    if rel:
        path = folder / rel
        if path.is_file():
            return json.loads(path.read_text())
    return _read(folder, default)


def assemble_report(run_dir: str | Path) -> Dict[str, Any]:
    """The report dict (schema in docs/ARCHITECTURE.md) of the run folder ``run_dir``, from its files alone.

    Raises:
        PipelineError: ``run_dir`` has no ``run.json`` (not a run folder).
    """
    folder = Path(run_dir)
    manifest = _read(folder, "run.json")
    if manifest is None:
        raise PipelineError(f"{folder} is not a run folder (no run.json).",
                            "Give the output folder of a run (the one that holds run.json).")
    summary = _artifact(folder, manifest, "summary", "export.json") or {}
    analysis_file = _artifact(folder, manifest, "analysis", "analysis.json") or {}
    measurement = _artifact(folder, manifest, "measurement", "measurement.json") or {}
    quantization = _artifact(folder, manifest, "quantization", "quantization.json")
    sensitivity = _sensitivity(folder, manifest)
    analysis = dict(analysis_file["analysis"]) if analysis_file.get("analysis") else None
    layers: List[Dict[str, Any]] = []
    if analysis is not None:
        times = measurement.get("layer_times") or {}
        layers = [dict(layer) for layer in analysis.pop("layers", [])]
        for layer in layers:
            if layer.get("name") in times:
                layer["measured_s"] = times[layer["name"]]
    accuracy = dict(measurement.get("accuracy") or {})
    if summary.get("check"):
        accuracy = {"export_check": summary["check"], **accuracy}
    onnx_rel = (manifest.get("artifacts") or {}).get("onnx")
    model = {
        "name": manifest.get("model_name"),
        "onnx_path": str(folder / onnx_rel) if onnx_rel else None,
        "inputs": summary.get("inputs", []),
        "outputs": summary.get("outputs", []),
        "batch_size": manifest.get("batch_size"),
        **{k: summary.get(k) for k in ("task", "num_classes", "notes", "metrics", "parameters", "opset")
           if k in summary},
    }
    precision = dict(manifest.get("precision") or {})
    report = {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "precision": precision,
        "backend": manifest.get("backend"),
        "hardware": manifest.get("hardware") or analysis_file.get("hardware"),
        "stages": manifest.get("stages") or {},
        "analysis": analysis,
        "layers": layers,
        "measured": measurement.get("measured"),
        "engine_layers": measurement.get("engine_layers") or None,
        "accuracy": accuracy or None,
        "quantization": quantization,
        "environment": manifest.get("environment") or {},
    }
    if sensitivity is not None:  # only runs with the sensitivity stage get the key (older reports unchanged)
        report["sensitivity"] = sensitivity
    for key, name in (("prune", "prune.json"), ("qat", "qat.json")):
        raw = _artifact(folder, manifest, f"{key}_results", name)
        if raw is not None:  # only runs with the prune / qat stage get the key
            from pipeline.report import prune as prune_report

            report[key] = getattr(prune_report, f"compact_{key}")(raw)
    explained = _artifact(folder, manifest, "explain", "explain.json")
    if explained is not None:  # runs profiled since the explain step exists
        from pipeline.report.explain import compact_explain

        report["explain"] = compact_explain(explained)
    return report


def _sensitivity(folder: Path, manifest: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """``report["sensitivity"]`` from the run's ``sensitivity.json`` (None without one)."""
    raw = _artifact(folder, manifest, "sensitivity", "sensitivity.json")
    if raw is None:
        return None
    from pipeline.report.sensitivity import compact_sensitivity

    rel = (manifest.get("artifacts") or {}).get("precision_plan") or raw.get("plan_file")
    plan = folder / rel if rel else None
    return compact_sensitivity(raw, str(plan) if plan is not None and plan.is_file() else None)


def render(run_dir: str | Path, out_dir: str | Path | None = None) -> Dict[str, Path]:
    """Write report.json/.md/.html of ``run_dir`` into ``out_dir`` (default: the run folder itself)."""
    from pipeline.report.writer import write_reports

    return write_reports(assemble_report(run_dir), Path(out_dir) if out_dir else Path(run_dir))


def compare(run_dirs: List[Path], out_dir: Path) -> Dict[str, Path]:
    """One comparison table (md/json) over several run folders, written into ``out_dir``."""
    from pipeline.report.compare import comparison_table, write_comparison

    reports = [assemble_report(d) for d in run_dirs]
    paths = write_comparison(reports, out_dir)
    print(comparison_table(reports))
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m pipeline.report RUN [RUN ...] [--compare OUT]``: re-render, or compare runs."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each holds run.json)")
    parser.add_argument("--compare", type=Path, default=None, help="write one comparison of the runs here")
    args = parser.parse_args(argv)
    try:
        if args.compare:
            paths = compare(args.runs, args.compare)
        else:
            paths = {}
            for run in args.runs:
                paths.update({f"{run}:{k}": v for k, v in render(run).items()})
    except PipelineError as err:
        print(f"error: {err.message}" + (f"\n  -> {err.hint}" if err.hint else ""), file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the report: {err}\n  -> --compare takes a folder (created when missing)",
              file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
