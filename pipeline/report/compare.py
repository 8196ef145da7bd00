"""One comparison table across the runs of a Hydra multirun (one row per run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from pipeline.core.artifacts import write_json, write_text
from pipeline.core.config import KNOWN_STAGES
from pipeline.core.errors import PipelineError
from pipeline.report import data
from pipeline.report.blocks import Table
from pipeline.report.fmt import MISSING, _num, fmt_ms, fmt_pct, fmt_time
from pipeline.report.markdown import md_table
from pipeline.report.schema import report_problems

#: Fixed columns, in order; one ``stage:<name>`` column per stage follows.
COLUMNS = (
    "model",
    "precision",
    "batch",
    "hardware",
    "backend",
    "predicted_latency_s",
    "measured_median_ms",
    "throughput_samples_s",
    "pct_of_peak",
    "accuracy",
)

_TITLES = {
    "model": "model",
    "precision": "precision",
    "batch": "batch",
    "hardware": "hardware",
    "backend": "backend",
    "predicted_latency_s": "predicted",
    "measured_median_ms": "measured median",
    "throughput_samples_s": "throughput (samples/s)",
    "pct_of_peak": "% of peak",
    "accuracy": "accuracy",
}


def _stage_names(reports: Sequence[Mapping[str, Any]]) -> List[str]:
    names = [s for s in KNOWN_STAGES if any(s in (r.get("stages") or {}) for r in reports)]
    for r in reports:  # stages added later that KNOWN_STAGES does not list yet, in first-seen order
        names += [s for s in (r.get("stages") or {}) if s not in names]
    return names


def _check(reports: Sequence[Mapping[str, Any]]) -> None:
    if not reports:
        raise PipelineError("no reports to compare", "run a multirun (-m) with at least one job that wrote report.json")
    for i, r in enumerate(reports):
        problems = report_problems(r)
        if problems:
            raise PipelineError(
                f"report #{i} is malformed: " + "; ".join(problems), "compare reports written by write_reports"
            )


def _first_engine(report: Mapping[str, Any]) -> Dict[str, Any]:
    """The first engine of the report's explain section ({} without one)."""
    return dict((data.section(report, "explain").get("engines") or [{}])[0] or {})


def comparison_rows(reports: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Raw (unformatted) values per run: the :data:`COLUMNS` plus ``stage:<name>`` statuses."""
    _check(reports)
    stage_names = _stage_names(reports)
    rows = []
    for r in reports:
        m = data.section(r, "measured")
        env = data.section(r, "environment")
        hw_name = data.section(r, "hardware").get("name")
        ach = data.measured_achieved(r) if m else {"pct_of_peak": None}
        row: Dict[str, Any] = {
            "model": data.section(r, "model").get("name"),
            "precision": data.section(r, "precision").get("name"),
            "batch": data.batch_size(r),
            "hardware": hw_name,
            "backend": m.get("backend"),
            "predicted_latency_s": data.predicted_latency_s(r),
            "measured_median_ms": _num((m.get("latency_ms") or {}).get("median")),
            "throughput_samples_s": _num(m.get("throughput_samples_s")),
            "pct_of_peak": ach["pct_of_peak"],
            "accuracy": data.accuracy_verdict(r),
            "command_line": env.get("command_line"),
            "gpu": env.get("job_gpu"),  # the GPU a per-GPU sweep pinned the job to (pipeline.optimize.gpus)
            "started_at": env.get("started_at"),
            "finished_at": env.get("finished_at"),
            "gpu_telemetry": m.get("gpu_telemetry"),
            "explain_breakdown": _first_engine(r).get("breakdown"),
            "explain_layers": _first_engine(r).get("layers"),
            "kernel_floor": _first_engine(r).get("kernel_floor"),
        }
        stages = r.get("stages") or {}
        for s in stage_names:
            row[f"stage:{s}"] = (stages.get(s) or {}).get("status", "-")
        rows.append(row)
    return rows


def _formatted(rows: List[Dict[str, Any]]) -> Table:
    from pipeline.optimize.gpus import gpu_label

    stage_cols = [k for k in rows[0] if k.startswith("stage:")] if rows else []
    pinned = any(row.get("gpu") for row in rows)  # a per-GPU sweep: which GPU each job ran on
    headers = [_TITLES[c] for c in COLUMNS] + (["gpu"] if pinned else []) + [c.split(":", 1)[1] for c in stage_cols]
    out = []
    for row in rows:
        out.append(
            [
                str(row["model"] or MISSING),
                str(row["precision"] or MISSING),
                str(row["batch"]) if row["batch"] is not None else MISSING,
                str(row["hardware"] or MISSING),
                str(row["backend"] or MISSING),
                fmt_time(row["predicted_latency_s"]),
                fmt_ms(row["measured_median_ms"]),
                f"{row['throughput_samples_s']:.1f}" if row["throughput_samples_s"] is not None else MISSING,
                fmt_pct(row["pct_of_peak"]),
                str(row["accuracy"]),
            ]
            + ([gpu_label(row.get("gpu"))] if pinned else [])
            + [str(row[c]) for c in stage_cols]
        )
    return Table(headers, out)


def comparison_table(reports: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table (aligned columns) with one row per report, for printing after a multirun."""
    table = _formatted(comparison_rows(reports))
    widths = [max(len(h), *(len(r[i]) for r in table.rows)) for i, h in enumerate(table.headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(table.headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table.rows]
    return "\n".join(lines) + "\n"


def _label(row: Mapping[str, Any], rows: Sequence[Mapping[str, Any]] = ()) -> str:
    """Model, precision, batch, backend, and the overrides of its command that not every run of the sweep shares."""
    words = [set(str(r.get("command_line") or "").split()[1:]) for r in rows] or [set()]
    common = set.intersection(*words)
    own = [w for w in str(row.get("command_line") or "").split()[1:] if w not in common and "=" in w
           and not w.startswith(("precision=", "batch_size="))]
    return (f"{row.get('model')} {row.get('precision')} batch {row.get('batch')} ({row.get('backend')})"
            + (f" [{' '.join(own)}]" if own else ""))


def write_comparison(reports: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                     optimize: Optional[Mapping[str, Any]] = None) -> Dict[str, Path]:
    """Write ``comparison.md`` and ``comparison.json`` (one row per run) atomically.

    Args:
        reports: report dicts of the runs (e.g. each job's report.json, loaded).
        out_dir: directory to write into, typically the multirun's sweep directory.
        optimize: the sweep's ``optimize`` settings (:class:`pipeline.core.config.OptimizeConfig`): a latency
            limit for the pick and targets, checked with the measured evidence of what holds a missed one back.

    Returns:
        ``{"md": path, "json": path}``.

    Raises:
        PipelineError: no reports, or a malformed one (its index is named).
    """
    from pipeline.optimize.gpus import gpus_markdown, overlaps
    from pipeline.optimize.pareto import pareto_front, pick
    from pipeline.optimize.targets import check_targets, targets_markdown

    opt = dict(optimize or {})
    rows = comparison_rows(reports)
    table = _formatted(rows)
    out = Path(out_dir)
    md = ["# Comparison of runs", "", f"{len(rows)} run(s); predicted = roofline lower bound, measured = median.", ""]
    md += md_table(table)
    front, chosen = pareto_front(rows), pick(rows, opt.get("max_latency_ms"))
    verdicts = check_targets(rows, opt.get("target_throughput"), opt.get("target_latency_ms"))
    md += ["", "## Throughput / latency Pareto front", "",
           "Runs no other run beats on both median latency and throughput (accuracy not failed):", ""]
    md += [f"- {_label(rows[i], rows)}: {rows[i]['measured_median_ms']:.3f} ms, {rows[i]['throughput_samples_s']:.1f} samples/s"
           for i in front] or ["- (none: no run was measured with its accuracy kept)"]
    md += ["", "## Pick", ""]
    md += [f"- throughput: {_label(rows[chosen['throughput']], rows)} ({chosen['why']})" if chosen["throughput"] is not None
           else f"- throughput: none ({chosen['why']})"]
    if chosen["latency"] is not None:
        md.append(f"- latency at batch 1: {_label(rows[chosen['latency']], rows)}, "
                  f"{rows[chosen['latency']]['measured_median_ms']:.3f} ms")
    md += targets_markdown(verdicts, lambda i: _label(rows[i], rows))
    md += gpus_markdown(rows, lambda i: _label(rows[i], rows))
    return {
        "json": write_json(
            out / "comparison.json", {"schema_version": 1, "columns": list(rows[0].keys()), "rows": rows,
                                      "pareto_front": front, "pick": chosen,
                                      "targets": verdicts, "gpu_overlaps": overlaps(rows)["pairs"]}
        ),
        "md": write_text(out / "comparison.md", "\n".join(md).rstrip() + "\n"),
    }
