"""Aggregate a finished sweep again: ``python -m pipeline.optimize SWEEP_DIR [--target-throughput N] ...``.

Reads every job's ``report.json`` under SWEEP_DIR (refreshing its per-layer section from the job's ``explain.json``
where one exists) and writes ``comparison.md`` / ``comparison.json`` with the Pareto front, the pick and the targets,
as the sweep's callback does. For sweeps whose callback did not run (a job array on a cluster, jobs gathered from
several machines) or to check other targets against the same measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pipeline.core.errors import PipelineError


def load_reports(sweep_dir: Path) -> List[Dict[str, Any]]:
    """Every ``*/report.json`` under ``sweep_dir`` (job order), explain sections refreshed from ``explain.json``.

    Raises:
        PipelineError: no readable report under ``sweep_dir``.
    """
    from pipeline.report.explain import compact_explain  # noqa: PLC0415

    reports = []
    for path in sorted(Path(sweep_dir).glob("*/report.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        try:
            report = json.loads(path.read_text())
            explain = path.parent / "explain.json"
            if explain.is_file():
                report["explain"] = compact_explain(json.loads(explain.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            print(f"warning: skipped {path}: {err}", file=sys.stderr)
            continue
        reports.append(report)
    if not reports:
        raise PipelineError(f"No readable report.json under {sweep_dir}/*/.",
                            "Point at a multirun folder (multirun/<time>), whose job folders hold report.json.")
    return reports


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.optimize", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--target-throughput", type=float, default=None, help="samples/s the best run should reach")
    parser.add_argument("--target-latency-ms", type=float, default=None, help="batch-1 median latency to stay under")
    parser.add_argument("--max-latency-ms", type=float, default=None, help="latency limit for the throughput pick")
    parser.add_argument("--out", type=Path, default=None, help="folder for comparison.* (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    from pipeline.report import comparison_table, write_comparison  # noqa: PLC0415

    try:
        reports = load_reports(args.sweep_dir)
        paths = write_comparison(reports, args.out or args.sweep_dir,
                                 {"target_throughput": args.target_throughput,
                                  "target_latency_ms": args.target_latency_ms,
                                  "max_latency_ms": args.max_latency_ms})
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(comparison_table(reports))
    print(f"Comparison of {len(reports)} runs: {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
