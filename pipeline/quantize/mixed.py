"""The mixed-precision plan file: written by the sensitivity stage, read by the quantize stage (``quant.plan``).

``<model>.precision_plan.json`` holds ``float_layers`` (node labels kept in float), ``calibration`` (tensor ->
method), ``amax`` (tensor -> threshold it had), ``layer_precisions`` (node label -> ``int8`` / ``float``, for
TensorRT's implicit path where a version still has per-layer precisions), the budget, and the SHA-256 of the
ONNX it was made for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from pipeline.core.errors import PipelineError

#: Suffix of the plan file and the ``kind`` it declares.
PLAN_SUFFIX = ".precision_plan.json"
PLAN_KIND = "precision_plan"


def read_plan(path: Path) -> Dict[str, Any]:
    """Load a plan file, with clear errors for a missing, corrupt or wrong file."""
    import json

    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"precision plan not found: {p}",
                            "run the sensitivity stage (stages=[...,quantize,sensitivity]) and pass its "
                            f"<model>{PLAN_SUFFIX} as quant.plan=...")
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise PipelineError(f"cannot read precision plan {p}: {err}", "re-run the sensitivity stage") from err
    if not isinstance(d, dict) or d.get("kind") != PLAN_KIND:
        raise PipelineError(f"{p} is not a precision plan (kind={d.get('kind') if isinstance(d, dict) else None})",
                            f"pass the <model>{PLAN_SUFFIX} file the sensitivity stage wrote")
    return d
