"""Report stage: report.json / report.md / self-contained report.html, and multirun comparisons.

Re-exports only; matplotlib is imported inside the plot functions.
"""

from __future__ import annotations

from pipeline.report.compare import comparison_rows, comparison_table, write_comparison
from pipeline.report.fmt import fmt_ops_per_s, fmt_time
from pipeline.report.schema import REQUIRED_SECTIONS, SCHEMA_VERSION, validate_report
from pipeline.report.writer import write_reports

__all__ = [
    "REQUIRED_SECTIONS",
    "SCHEMA_VERSION",
    "comparison_rows",
    "comparison_table",
    "fmt_ops_per_s",
    "fmt_time",
    "validate_report",
    "write_comparison",
    "write_reports",
]
