"""Validation of the report dict (``schema_version`` 1, see docs/ARCHITECTURE.md).

Only the structure the renderers rely on is checked; section contents are free-form beyond that so
that stages can add fields without touching the report code.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping

from pipeline.core.errors import PipelineError

SCHEMA_VERSION = 1

#: Every top-level key a report must have (sections that did not run hold ``null``).
REQUIRED_SECTIONS = (
    "model",
    "precision",
    "hardware",
    "stages",
    "analysis",
    "layers",
    "measured",
    "accuracy",
    "quantization",
    "environment",
)

#: Sections that must be dicts even when their stage failed (the orchestrator always knows them).
_ALWAYS_DICT = ("model", "precision", "stages", "environment")
#: Sections that are a dict, or null when the stage producing them did not run (``sensitivity`` is optional:
#: only runs with the sensitivity stage have it).
_DICT_OR_NULL = ("hardware", "analysis", "measured", "accuracy", "quantization", "sensitivity", "explain", "prune", "qat")

STAGE_STATUSES = ("ran", "reused", "skipped", "failed", "not requested")


def validate_report(report: Any) -> None:
    """Check that ``report`` has the shape the renderers need.

    Raises:
        PipelineError: listing every problem found, with what the report must look like.
    """
    problems = report_problems(report)
    if problems:
        raise PipelineError(
            "malformed report dict: " + "; ".join(problems),
            f"build it as in docs/ARCHITECTURE.md (schema_version {SCHEMA_VERSION}, sections "
            f"{', '.join(REQUIRED_SECTIONS)}; use null for a section whose stage did not run)",
        )


def report_problems(report: Any) -> List[str]:
    """Every structural problem of ``report`` (empty when valid)."""
    if not isinstance(report, Mapping):
        return [f"report must be a dict, got {type(report).__name__}"]
    problems: List[str] = []
    version = report.get("schema_version")
    if version != SCHEMA_VERSION:
        problems.append(f"schema_version must be {SCHEMA_VERSION}, got {version!r}")
    missing = [s for s in REQUIRED_SECTIONS if s not in report]
    if missing:
        problems.append(f"missing sections {missing}")
    for key in _ALWAYS_DICT:
        if key in report and not isinstance(report[key], Mapping):
            problems.append(f"'{key}' must be a dict, got {type(report[key]).__name__}")
    for key in _DICT_OR_NULL:
        if key in report and report[key] is not None and not isinstance(report[key], Mapping):
            problems.append(f"'{key}' must be a dict or null, got {type(report[key]).__name__}")
    layers = report.get("layers")
    if "layers" in report and layers is not None:
        if not isinstance(layers, list):
            problems.append(f"'layers' must be a list, got {type(layers).__name__}")
        else:
            bad = [i for i, layer in enumerate(layers) if not isinstance(layer, Mapping) or "name" not in layer]
            if bad:
                problems.append(f"layers {bad[:5]} are not dicts with a 'name'")
    stages = report.get("stages")
    if isinstance(stages, Mapping):
        for name, info in stages.items():
            if not isinstance(info, Mapping):
                problems.append(f"stages.{name} must be a dict")
            elif info.get("status") not in STAGE_STATUSES:
                problems.append(f"stages.{name}.status must be one of {STAGE_STATUSES}, got {info.get('status')!r}")
    return problems


def stage_reason(report: Mapping[str, Any], stage: str) -> str:
    """Why ``stage``'s output is missing, for a line in place of an empty section."""
    stages: Dict[str, Any] = report.get("stages") or {}
    info = stages.get(stage)
    if info is None:
        return f"the {stage} stage was not requested in this run (add it to stages=[...])"
    status = info.get("status")
    reason = info.get("reason") or "no reason recorded"
    if status in ("ran", "reused"):
        return f"the {stage} stage ran but recorded no data ({reason})"
    return f"the {stage} stage {status}: {reason}"
