"""The sensitivity stage as a file-to-file step.

Reads the FP32 ONNX, the calibration statistics of the quantize stage (``<model>.calib_stats.npz``, the ranges
file) and the evaluation samples; writes ``sensitivity.json`` (every layer's sensitivity, the calibration
method chosen per tensor, the search and its Pareto front) and the plan ``<model>.precision_plan.json`` that
the quantize stage takes (``quant.plan=...``). Usable without Hydra::

    run(SensitivityInputs(onnx, stats, eval_data), SensitivitySettings(SensitivityConfig(), QuantConfig()), out)
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.core.artifacts import write_json
from pipeline.quantize.mixed import PLAN_KIND, PLAN_SUFFIX, read_plan  # the plan format lives with its reader
from pipeline.sensitivity.inputs import (SensitivityInputs, SensitivityOutputs, SensitivitySettings, as_list,
                                         split_samples)

#: Results file of this stage, in the run folder.
RESULTS_NAME = "sensitivity.json"


def run(inputs: SensitivityInputs, settings: SensitivitySettings, out: Path, progress: bool = True
        ) -> SensitivityOutputs:
    """Rank every quantized layer, choose calibration per tensor, search the plan; write the two files."""
    from pipeline.sensitivity.analysis import Analysis

    t0 = time.perf_counter()
    a = Analysis.prepare(inputs, settings, progress)
    result = a.run_all()
    result["seconds"]["total"] = time.perf_counter() - t0
    out = Path(out)
    stem = Path(inputs.onnx).name.removesuffix(".onnx")
    plan_path = write_json(out / f"{stem}{PLAN_SUFFIX}", a.plan_file(stem))
    result["plan_file"] = plan_path.name
    results = write_json(out / RESULTS_NAME, result)
    return SensitivityOutputs(results=results, plan=plan_path)


__all__ = ["PLAN_KIND", "PLAN_SUFFIX", "RESULTS_NAME", "SensitivityInputs", "SensitivityOutputs",
           "SensitivitySettings", "as_list", "read_plan", "run", "split_samples"]
