"""Write report.json, report.md and report.html for one run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping

from pipeline.core.artifacts import write_json, write_text
from pipeline.core.errors import PipelineError
from pipeline.report.document import build_document
from pipeline.report.html import render_html
from pipeline.report.markdown import render_markdown
from pipeline.report.schema import validate_report


def check_json_serializable(report: Mapping[str, Any]) -> None:
    """Check that ``report`` serializes to strict JSON (no NaN/inf, no arbitrary objects).

    Raises:
        PipelineError: naming the JSON problem.
    """
    from pipeline.core.artifacts import _json_default

    try:
        json.dumps(report, default=_json_default, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise PipelineError(
            f"report cannot be written as JSON: {err}",
            "replace NaN/inf with null and convert custom objects to dicts "
            "(dataclasses, numpy arrays and paths are converted)",
        ) from err


def write_reports(report: Dict[str, Any], out_dir: str | os.PathLike) -> Dict[str, Path]:
    """Validate ``report`` and write ``report.json``, ``report.md`` and a self-contained ``report.html``.

    Every file is written atomically (temp file + rename), so an interrupted run never leaves a
    half-written report under its final name. Nothing is written when validation fails.

    Args:
        report: the report dict (schema_version 1, see docs/ARCHITECTURE.md).
        out_dir: directory to write into (created if missing).

    Returns:
        ``{"json": path, "md": path, "html": path}``.

    Raises:
        PipelineError: malformed report (missing sections, wrong schema_version, NaN values...).
    """
    validate_report(report)
    check_json_serializable(report)
    from pipeline.report.plots import all_plots

    out = Path(out_dir)
    doc = build_document(report)
    markdown = render_markdown(doc)
    html = render_html(doc, all_plots(report))
    return {
        "json": write_json(out / "report.json", report),
        "md": write_text(out / "report.md", markdown),
        "html": write_text(out / "report.html", html),
    }
