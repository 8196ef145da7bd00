"""Hydra callbacks: after a multirun, one comparison table over every job's report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

#: Error messages of the jobs of this sweep that failed (pipeline/run.py appends; same process).
FAILED_JOBS: list[str] = []


class ComparisonCallback(Callback):
    """Collects ``report.json`` from every job of a sweep and writes/prints one comparison table."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from pipeline.report import comparison_table, write_comparison

        sweep_dir = Path(config.hydra.sweep.dir)
        reports = []
        for path in sorted(sweep_dir.glob("*/report.json")):
            try:
                reports.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as err:
                print(f"warning: could not read {path}: {err}")
        if not reports:
            print(f"No report.json under {sweep_dir}: every job failed before its report stage.")
        else:
            optimize = config.get("optimize") if hasattr(config, "get") else None
            paths = write_comparison(reports, sweep_dir, dict(optimize) if optimize is not None else None)
            print("\n" + comparison_table(reports))
            print(f"\nComparison of {len(reports)} runs: {paths.get('md', sweep_dir)}")
        if FAILED_JOBS:
            print(f"\nerror: {len(FAILED_JOBS)} job(s) of the sweep failed: " + "; ".join(FAILED_JOBS), file=sys.stderr)
            sys.exit(2)
